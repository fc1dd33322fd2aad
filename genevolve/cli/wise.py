"""`genevolve wise run|score`: the WISE benchmark with the agent, under either scoring protocol.

  genevolve wise run   --prompts WISE/data_verified --output-dir runs/wise --sample 100 [agent/backend flags]
  genevolve wise score --prompts data_verified/merge.json --images runs/wise/images --protocol verified \
                       --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen3.5-35B-A3B

The stages and their files are `genevolve.pipeline.wise`.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from .common import (add_backend_args, add_judge_endpoint_args, add_policy_args, add_tool_args, command_settings,
                     fail, say)


PROMPTS_HELP = ("WISE prompt files, or the WISE repository's data folders (data_verified, WISE_legacy/data): "
                "their category files are read, the merged and rewritten copies skipped")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("wise", help="WISE benchmark: run the agent on WISE prompts, score the images",
                       description="WISE prompt files are JSON arrays of {Prompt, Explanation, Category, "
                                   "Subcategory, prompt_id}; point --prompts at your own copy.")
    wsub = p.add_subparsers(dest="wise_command", required=True, metavar="STEP")

    r = wsub.add_parser("run", help="agent + render for every prompt; images saved as {prompt_id}.png")
    r.add_argument("--prompts", nargs="+", required=True, help=PROMPTS_HELP)
    r.add_argument("--output-dir", required=True, help="results.json(l), renders.json(l) and images/ go here")
    r.add_argument("--parallel", type=int, default=1, help="agent runs at once (default 1)")
    subset = r.add_mutually_exclusive_group()
    subset.add_argument("--limit", type=int, default=None,
                        help="only the first N prompts by prompt_id (all from the first category)")
    subset.add_argument("--sample", type=int, default=None, metavar="N",
                        help="N prompts drawn at random, each category in its share of the whole")
    r.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    add_policy_args(r)
    add_tool_args(r)
    add_backend_args(r)
    r.set_defaults(func=run_main)

    s = wsub.add_parser("score", help="judge images/{prompt_id}.png under the legacy or verified protocol")
    s.add_argument("--prompts", nargs="+", required=True, help=PROMPTS_HELP + "; the ones the images were made from")
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


def run_main(args: argparse.Namespace) -> int:
    from ..pipeline.wise import run_wise

    if args.parallel < 1:
        return fail("--parallel must be at least 1")
    if args.sample is not None and args.sample < 1:
        return fail("--sample must be at least 1")
    counts = asyncio.run(run_wise(command_settings(args), args.prompts, args.output_dir, parallel=args.parallel,
                                  limit=args.limit, sample=args.sample, seed=args.seed, progress=not args.quiet,
                                  say=say))
    print(json.dumps(counts))
    return 0


def score_main(args: argparse.Namespace) -> int:
    from ..judges.wise import format_wise_table
    from ..pipeline.wise import score_wise

    if args.parallel < 1:
        return fail("--parallel must be at least 1")
    summary = asyncio.run(score_wise(command_settings(args), args.protocol, args.prompts, args.images,
                                     args.output_dir, parallel=args.parallel, retry_errors=not args.no_retry_errors,
                                     progress=not args.quiet, say=say))
    print(format_wise_table(summary))
    print(json.dumps({"output_dir": summary["output_dir"], "protocol": summary["protocol"],
                      "overall": summary["overall"], "n_items": summary["n_items"], "n_failed": summary["n_failed"]}))
    return 0
