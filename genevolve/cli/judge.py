"""`genevolve judge`: score rendered results against ground-truth images and summarise KScore.

The stage itself (inputs, outputs, resume) is `genevolve.pipeline.judge`.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from ..judges import JUDGES
from .common import add_judge_endpoint_args, command_settings, fail, flag, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge", help="score rendered results with a judge; write results_eval.json and summary",
                       description="Judge every rendered item of a results file against its ground-truth "
                                   "image and report KScore, overall and by eval_type, category and difficulty. "
                                   "Resumable: a rerun keeps judged items and retries failed ones.")
    p.add_argument("--results", required=True, help="results.json/.jsonl of the render stage (or its folder)")
    p.add_argument("--gt-root", required=True, help="folder that rows' gt_image paths are relative to")
    flag(p, "--judge", path="judge.name", choices=sorted(JUDGES))
    add_judge_endpoint_args(p)
    p.add_argument("--output-dir", default=None, help="where results_eval/summary go (default: next to --results)")
    p.add_argument("--parallel", type=int, default=4, help="items judged concurrently (default 4)")
    p.add_argument("--no-retry-errors", action="store_true", help="on a rerun, keep items that ended in error")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..judges.aggregate import format_table
    from ..pipeline.judge import judge_file

    if args.parallel < 1:
        return fail("--parallel must be at least 1")
    summary = asyncio.run(judge_file(command_settings(args), args.results, args.gt_root, args.output_dir,
                                     parallel=args.parallel, retry_errors=not args.no_retry_errors,
                                     progress=not args.quiet, say=say))
    print(format_table(summary))
    kscore = None if summary["kscore"] is None else round(summary["kscore"], 4)
    print(json.dumps({"output_dir": summary["output_dir"], "kscore": kscore, "n_items": summary["n_items"],
                      "n_failed": summary["n_failed"], "n_duplicate_rows": summary["n_duplicate_rows"]}))
    return 0
