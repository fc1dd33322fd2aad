"""`genevolve bench`: a benchmark file through agent -> render -> judge, ending in a report.

    genevolve bench build --output-dir D          # the offline benchmark: D/{train,test}.jsonl, D/images/
    genevolve bench --input D/test.jsonl --gt-root D --output-dir OUT [--limit N]
                    [policy flags] [--backend offline] [--judge offline|kscore] [--judge-base-url ...]

The stages and their folders are `genevolve.pipeline.bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from .common import (add_backend_args, add_judge_endpoint_args, add_policy_args, add_tool_args, command_defaults,
                     command_settings, fail, flag, say)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark end to end (agent, render, judge) or build the offline one",
                       description="`genevolve bench build --output-dir D` writes the offline benchmark. "
                                   "`genevolve bench --input ROWS --gt-root D --output-dir OUT` runs the agent on "
                                   "every row, renders each program, judges each image against its ground truth "
                                   "and reports KScore by split. Every stage resumes from OUT.")
    p.add_argument("action", nargs="?", choices=["run", "build"], default="run",
                   help="run (default) or build the offline benchmark")
    p.add_argument("--input", help="benchmark rows (.jsonl/.json: id, question, gt_image, eval_type, ...)")
    p.add_argument("--gt-root", help="folder the rows' gt_image paths are relative to")
    p.add_argument("--output-dir", help="run: where agent/, render/, eval/ and report/ go; build: the benchmark folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows")
    p.add_argument("--parallel", type=int, default=1, help="agent runs at once (default 1)")
    flag(p, "--judge", path="judge.name", help="offline (no model service, a proxy; default) or kscore (a VLM "
         "endpoint)")
    command_defaults(p, {"judge.name": "offline"})
    add_judge_endpoint_args(p, prefix="judge-")
    p.add_argument("--judge-parallel", type=int, default=2, help="items judged at once (default 2)")
    p.add_argument("--long-side", type=int, default=768, help="build: long side of the GT images (default 768)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_policy_args(p)
    add_tool_args(p)
    add_backend_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.action == "build":
        return build(args)
    from ..judges.aggregate import format_table
    from ..pipeline.bench import run_bench, write_charts

    for name in ("input", "gt_root", "output_dir"):
        if not getattr(args, name):
            return fail(f"bench: --{name.replace('_', '-')} is required")
    if args.limit is not None and args.limit < 1:
        return fail("--limit must be at least 1")
    if args.parallel < 1 or args.judge_parallel < 1:
        return fail("--parallel and --judge-parallel must be at least 1")
    summary = asyncio.run(run_bench(command_settings(args), args.input, args.gt_root, args.output_dir,
                                    limit=args.limit, parallel=args.parallel, judge_parallel=args.judge_parallel,
                                    progress=not args.quiet, say=say))
    charts = write_charts(summary, Path(args.output_dir) / "report")
    print(format_table(summary))
    kscore = None if summary.get("kscore") is None else round(summary["kscore"], 4)
    print(json.dumps({"output_dir": args.output_dir, "kscore": kscore, "n_items": summary["n_items"],
                      "n_failed": summary["n_failed"], "charts": [str(c) for c in charts]}))
    return 0


def build(args: argparse.Namespace) -> int:
    from ..data.offline_bench import build_benchmark

    if not args.output_dir:
        return fail("bench build: --output-dir is required")

    def progress(n: int, total: int) -> None:
        if not args.quiet and (n == total or n % 25 == 0):
            print(f"ground truth {n}/{total}", file=sys.stderr)

    counts = build_benchmark(args.output_dir, long_side=args.long_side, progress=progress)
    print(json.dumps({"output_dir": args.output_dir, **counts}))
    return 0
