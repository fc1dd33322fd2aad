"""`genevolve generate "REQUEST" -o out.png`: agent then renderer, with a live view of the tool calls."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import (add_backend_args, add_policy_args, add_tool_args, build_agent_config, build_generator,
                     build_policy, build_tools, fail)

MAX_REQUEST_CHARS = 4000


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
    from ..agent import Agent
    from ..generators.base import GeneratorError
    from ..jsonio import atomic_write_bytes, atomic_write_json
    from ..policies.base import PolicyError

    request = args.request.strip()
    if not request:
        return fail("the request is empty: say what to draw")
    if len(request) > MAX_REQUEST_CHARS:
        print(f"genevolve: the request has {len(request)} characters; using the first {MAX_REQUEST_CHARS}",
              file=sys.stderr)
        request = request[:MAX_REQUEST_CHARS]
    out_png = Path(args.output)
    if out_png.suffix.lower() != ".png":
        return fail(f"--output {out_png}: the image is written as PNG; give a name ending in .png")
    view = LiveView(not args.quiet)
    try:
        view.say("loading policy and tools …")
        policy = build_policy(args)
        agent = Agent(policy, build_tools(args), build_agent_config(args), progress=view)
        generator = build_generator(args)
    except (PolicyError, GeneratorError, ValueError, OSError) as exc:
        return fail(str(exc))

    async def go():
        try:
            traj = await agent.run(request)
            render = None
            if traj.ok:
                view.say(f"program: {traj.program.gen_prompt[:160]}")
                for ref in traj.program.references:
                    view.say(f"  reference {ref.img_id}: {ref.title}  ({ref.note})")
                view.say(f"rendering with {generator.name} …")
                try:
                    render = await generator.render(traj.program)
                except GeneratorError as exc:
                    render = exc
            return traj, render
        finally:
            await agent.aclose()
            await generator.aclose()

    traj, render = asyncio.run(go())
    record: dict[str, Any] = {"request": request, "trajectory": traj.to_dict(),
                              "program": traj.program.to_dict() if traj.program else None}
    code = 0
    if isinstance(render, Exception) or render is None:
        reason = str(render) if render is not None else (traj.error or f"run ended with {traj.termination}")
        record["image_status"] = f"error: {reason}"
        code = 1
    else:
        import io

        buf = io.BytesIO()
        render.image.save(buf, format="PNG")
        atomic_write_bytes(out_png, buf.getvalue())
        record["image_status"] = "ok"
        record["output_path"] = str(out_png)
        record["render"] = render.metadata
    out_json = out_png.with_suffix(".json")
    atomic_write_json(out_json, record)
    for issue in traj.program_issues:
        view.say(f"program issue: {issue}")
    if code:
        print(f"genevolve: no image: {record['image_status'][7:]} (trajectory in {out_json})", file=sys.stderr)
    else:
        view.say(f"done in {traj.duration_s:.1f}s agent time: {out_png} and {out_json}")
        print(json.dumps({"image": str(out_png), "trajectory": str(out_json),
                          "gen_prompt": traj.program.gen_prompt,
                          "references": [r.title for r in traj.program.references]}, ensure_ascii=False))
    return code
