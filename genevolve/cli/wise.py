"""`genevolve wise run|score`: the WISE benchmark with the agent, under either scoring protocol.

  genevolve wise run   --prompts data_verified/merge.json --output-dir runs/wise [agent/backend flags]
  genevolve wise score --prompts data_verified/merge.json --images runs/wise/images --protocol verified \
                       --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen3.5-35B-A3B

`run` writes results.json(l) (agent stage) and images/{prompt_id}.png; `score` writes the WISE score
rows and a summary. Both resume: a rerun skips finished items and retries failed ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .common import (add_backend_args, add_policy_args, add_tool_args, build_agent_config, build_generator,
                     build_policy, build_tools, fail)
from .judge import add_judge_endpoint_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("wise", help="WISE benchmark: run the agent on WISE prompts, score the images",
                       description="WISE prompt files are JSON arrays of {Prompt, Explanation, Category, "
                                   "Subcategory, prompt_id}; point --prompts at your own copy.")
    wsub = p.add_subparsers(dest="wise_command", required=True, metavar="STEP")

    r = wsub.add_parser("run", help="agent + render for every prompt; images saved as {prompt_id}.png")
    r.add_argument("--prompts", nargs="+", required=True, help="WISE prompt files")
    r.add_argument("--output-dir", required=True, help="results.json(l), renders.json(l) and images/ go here")
    r.add_argument("--parallel", type=int, default=1, help="agent runs at once (default 1)")
    r.add_argument("--limit", type=int, default=None, help="only the first N prompts (by prompt_id)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    add_policy_args(r)
    add_tool_args(r)
    add_backend_args(r)
    r.set_defaults(func=run_main)

    s = wsub.add_parser("score", help="judge images/{prompt_id}.png under the legacy or verified protocol")
    s.add_argument("--prompts", nargs="+", required=True, help="the WISE prompt files the images were made from")
    s.add_argument("--images", required=True, help="folder of {prompt_id}.png")
    s.add_argument("--protocol", choices=["legacy", "verified"], required=True,
                   help="legacy: 0-2 consistency/realism/aesthetic, WiScore (GPT-4o-2024-05-13 in the paper); "
                        "verified: binary Score: 0/1 (Qwen3.5-35B-A3B upstream)")
    s.add_argument("--output-dir", default=None, help="default: the parent of --images")
    s.add_argument("--parallel", type=int, default=4, help="images judged at once (default 4)")
    s.add_argument("--no-retry-errors", action="store_true", help="on a rerun, keep items that ended in error")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    add_judge_endpoint_args(s)
    s.set_defaults(func=score_main)


# ---------------------------------------------------------------------------------------------
# run

async def render_results(generator: Any, records: list[dict[str, Any]], images_dir: Path, out_dir: Path,
                         *, progress: bool = True) -> dict[str, int]:
    """Render every agent result whose image is not there yet to images_dir/{id}.png."""
    import io

    from ..jsonio import atomic_write_bytes
    from ..pipeline.batch import ResultStore, Row, run_items
    from ..program import Program

    store = ResultStore(out_dir, "renders", retry=lambda r: bool(r.get("error")))
    rows = [Row(id=str(r["id"]), line=i, data=r) for i, r in enumerate(records, 1)]

    async def work(row: Row) -> dict[str, Any]:
        target = images_dir / f"{row.id}.png"
        base = {"id": row.id, "output_path": str(target)}
        if target.is_file():
            return {**base, "error": None}
        data = row.data
        if data.get("error") or not str(data.get("gen_prompt") or "").strip():
            return {**base, "output_path": None,
                    "error": f"no program to render: {data.get('error') or 'empty gen_prompt'}"}
        result = await generator.render(Program.from_dict(data))
        buf = io.BytesIO()
        result.image.save(buf, format="PNG")
        atomic_write_bytes(target, buf.getvalue())
        return {**base, "error": None, "render": result.metadata}

    def on_error(row: Row, exc: BaseException) -> dict[str, Any]:
        return {"id": row.id, "output_path": None, "error": f"render failed: {type(exc).__name__}: {exc}"}

    try:
        return await run_items(rows, work, store, parallel=max(1, getattr(generator, "max_concurrency", 1)),
                               desc="render", on_error=on_error, progress=progress)
    finally:
        store.close(order=[r.id for r in rows])


def run_main(args: argparse.Namespace) -> int:
    from ..agent import Agent
    from ..generators.base import GeneratorError
    from ..judges.wise import load_prompts
    from ..pipeline.agent_runs import run_agent_batch
    from ..pipeline.batch import Row
    from ..policies.base import PolicyError

    if args.parallel < 1:
        return fail("--parallel must be at least 1")
    try:
        prompts = load_prompts(args.prompts)
    except ValueError as exc:
        return fail(str(exc))
    if args.limit is not None:
        prompts = prompts[:max(0, args.limit)]
    rows = [Row(id=str(p.prompt_id), line=p.prompt_id, data=p.to_row()) for p in prompts]
    out_dir = Path(args.output_dir)
    try:
        agent = Agent(build_policy(args), build_tools(args), build_agent_config(args))
        generator = build_generator(args)
    except (PolicyError, GeneratorError, ValueError, OSError) as exc:
        return fail(str(exc))

    async def go() -> dict[str, Any]:
        try:
            agent_counts = await run_agent_batch(agent, rows, [], out_dir, parallel=args.parallel,
                                                 progress=not args.quiet)
            results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
            wanted = {r.id for r in rows}
            render_counts = await render_results(generator, [r for r in results if str(r.get("id")) in wanted],
                                                 out_dir / "images", out_dir, progress=not args.quiet)
            return {"agent": agent_counts, "render": render_counts}
        finally:
            await agent.aclose()
            await generator.aclose()

    counts = asyncio.run(go())
    print(json.dumps({"output_dir": str(out_dir), "images": str(out_dir / "images"), **counts}))
    return 0


# ---------------------------------------------------------------------------------------------
# score

def score_main(args: argparse.Namespace) -> int:
    from ..judges.base import JudgeError
    from ..judges.wise import PROTOCOLS, WiseJudge, format_wise_table, load_prompts, range_mismatches, score_images

    images = Path(args.images)
    if not images.is_dir():
        return fail(f"--images {images}: no such folder")
    if args.parallel < 1:
        return fail("--parallel must be at least 1")
    try:
        prompts = load_prompts(args.prompts)
    except ValueError as exc:
        return fail(str(exc))
    mismatched = range_mismatches(prompts, PROTOCOLS[args.protocol])
    if mismatched:
        other = "legacy" if args.protocol == "verified" else "verified"
        print(f"genevolve: warning: {len(mismatched)} prompt(s) (e.g. prompt_id {mismatched[0]}) carry a Category "
              f"that disagrees with the {args.protocol} id ranges; are these the {other} prompt files?",
              file=sys.stderr)
    try:
        judge = WiseJudge(args.protocol, args.base_url, args.model, args.api_key, rpm=args.rpm,
                          max_attempts=args.max_attempts, max_side=args.max_side)
    except (JudgeError, ValueError) as exc:
        return fail(str(exc))
    out_dir = Path(args.output_dir) if args.output_dir else images.parent

    async def go() -> dict[str, Any]:
        try:
            return await score_images(judge, prompts, images, out_dir, parallel=args.parallel,
                                      retry_errors=not args.no_retry_errors, progress=not args.quiet)
        finally:
            await judge.aclose()

    try:
        summary = asyncio.run(go())
    except ValueError as exc:
        return fail(str(exc))
    print(format_wise_table(summary))
    print(json.dumps({"output_dir": str(out_dir), "protocol": summary["protocol"], "overall": summary["overall"],
                      "n_items": summary["n_items"], "n_failed": summary["n_failed"]}))
    return 0
