"""`genevolve generate "REQUEST" -o out.png`: agent then renderer, with a live view of the tool calls."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..limits import MAX_REQUEST_CHARS
from .common import add_backend_args, add_policy_args, add_tool_args, command_settings, fail, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="turn one request into an image (agent + renderer)",
                       description="Runs the agent on REQUEST, renders its program, and saves the image "
                                   "and a JSON file with the trajectory and program next to it. Offline "
                                   "by default: embedded policy, local search, local image library, CPU "
                                   "preview renderer.")
    p.add_argument("request", help="what to draw, in plain words")
    p.add_argument("-o", "--output", default="out.png", help="image file to write (default out.png); "
                   "the trajectory goes to the same name with .json")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.add_argument("--view", action="store_true",
                   help="when done, show the result in the browser view (genevolve view); Ctrl-C stops it")
    add_policy_args(p)
    add_tool_args(p)
    add_backend_args(p)
    p.set_defaults(func=main)


class LiveView:
    """Prints each turn and tool call as it happens (stderr, so stdout stays machine-readable)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    def __call__(self, event: str, traj: Any, obj: Any) -> None:
        if event == "turn":
            tokens = f"{obj.prompt_tokens or 0}→{obj.completion_tokens or 0} tok"
            cached = f", {obj.cached_tokens} cached" if obj.cached_tokens else ""
            self.say(f"round {obj.round}: {obj.action} ({obj.latency_s:.1f}s, {tokens}{cached})")
        elif event == "tool_call":
            args = json.dumps(obj.arguments, ensure_ascii=False)
            first = obj.observation.splitlines()[1] if obj.observation.count("\n") else obj.observation
            status = f"ERROR {obj.error}" if obj.error else ("(repeat) " if obj.repeat else "") + first[:90]
            self.say(f"  {obj.name}({args[:120]}) → {status}")


def main(args: argparse.Namespace) -> int:
    from ..pipeline.generate import generate_one

    request = args.request.strip()
    if not request:
        return fail("the request is empty: say what to draw")
    if len(request) > MAX_REQUEST_CHARS:
        say(f"the request has {len(request):,} characters, over the limit of {MAX_REQUEST_CHARS:,}; "
            f"using the first {MAX_REQUEST_CHARS:,}")
        request = request[:MAX_REQUEST_CHARS]
    out_png = Path(args.output)
    if out_png.suffix.lower() != ".png":
        return fail(f"--output {out_png}: the image is written as PNG; give a name ending in .png")
    view = LiveView(not args.quiet)
    record = asyncio.run(generate_one(command_settings(args), request, out_png, progress=view, say=view.say))
    traj = record["trajectory_object"]
    out_json = out_png.with_suffix(".json")
    for issue in traj.program_issues:
        view.say(f"program issue: {issue}")
    if not record["success"]:
        say(f"no image: {record['error']} (trajectory in {out_json})")
    else:
        view.say(f"done in {traj.duration_s:.1f}s agent time: {out_png} and {out_json}")
        print(json.dumps({"image": str(out_png), "trajectory": str(out_json), "gen_prompt": traj.program.gen_prompt,
                          "references": [r.title for r in traj.program.references]}, ensure_ascii=False))
    if args.view:
        show(out_json)
    return 0 if record["success"] else 1


def show(out_json: Path) -> None:
    """Serve the result in the browser view until interrupted."""
    from ..config import cache_dir
    from ..view import open_result

    server, address = open_result(out_json, image_roots=[cache_dir() / "images"])
    say(f"viewing {address} (Ctrl-C stops)")
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
