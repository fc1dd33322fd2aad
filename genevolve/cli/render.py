"""`genevolve render`: render every program of an agent results file with a generator backend."""

from __future__ import annotations

import argparse
import asyncio
import json

from .common import add_backend_args, command_settings, fail, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render the programs of a results file (results.json / .jsonl)",
                       description="Reads the agent's results (a results.json array or results.jsonl, ours or "
                                   "upstream's), renders each row's program (gen_prompt + reference_images) with "
                                   "--backend, saves DIR/images/{id}.png, appends each finished row to "
                                   "DIR/results.jsonl and rewrites DIR/results.json atomically: the input fields "
                                   "plus id, error, output_path (= image_path), success, image_status ('ok', "
                                   "'error: ...' or 'skipped: no program') and render. A rerun skips rows already "
                                   "rendered and retries the failed ones. Exit status 1 when any render failed.")
    p.add_argument("--input", required=True, help="results.json or results.jsonl from `genevolve run`")
    p.add_argument("--output-dir", required=True, help="where images/ and results.json(l) go")
    p.add_argument("--parallel", type=int, default=None,
                   help="renders at once (default and upper bound: what the backend allows)")
    p.add_argument("--seed", type=int, default=None, help="render seed (default: the backend's, 0 as in the paper)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_backend_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..pipeline.render import render_file

    if args.parallel is not None and args.parallel < 1:
        return fail("--parallel must be at least 1")
    summary = asyncio.run(render_file(command_settings(args), args.input, args.output_dir, parallel=args.parallel,
                                      seed=args.seed, progress=not args.quiet, say=say))
    print(json.dumps(summary))
    return 1 if summary["errors"] else 0
