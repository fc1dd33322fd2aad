"""`genevolve run`: the agent over one prompt or a file of prompts, results in upstream format."""

from __future__ import annotations

import argparse
import asyncio
import json

from .common import add_policy_args, add_tool_args, command_settings, fail, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the agent on prompts and write results.json / results.jsonl",
                       description="Run the agent on one prompt or a .jsonl/.json file of rows with a "
                                   "'prompt' or 'question' field (extra fields pass through). Each finished "
                                   "item is appended to DIR/results.jsonl; DIR/results.json is rewritten "
                                   "atomically. A rerun skips ids already done and retries failed runs. "
                                   "Exit status 1 when every item failed.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="a single request")
    src.add_argument("--input", help="a .jsonl or .json file of rows")
    p.add_argument("--output-dir", required=True, help="where results go")
    p.add_argument("--parallel", type=int, default=1, help="items run concurrently (default 1)")
    p.add_argument("--no-retry-errors", action="store_true", help="on a rerun, keep items that ended in error")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_policy_args(p)
    add_tool_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..pipeline.batch import Row, read_input
    from ..pipeline.generate import run_agents

    if args.parallel < 1:
        return fail("--parallel must be at least 1")
    if args.prompt is not None:
        rows, problems = [Row(id="item_000001", line=1, data={"prompt": args.prompt})], []
    else:
        rows, problems = read_input(args.input, lambda message: say(f"skipping {message}"))
    counts = asyncio.run(run_agents(command_settings(args), rows, problems, args.output_dir, parallel=args.parallel,
                                    retry_errors=not args.no_retry_errors, progress=not args.quiet))
    first_error = counts.pop("first_error", None)
    print(json.dumps({"output_dir": args.output_dir, **counts}))
    items = len(rows) + len(problems)
    if items and counts.get("failed") == items:       # nothing ran: say so, and let scripts see it
        return fail(f"every item failed ({items} of {items}); the first: {str(first_error)[:300]}", code=1)
    return 0
