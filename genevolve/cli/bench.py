"""`genevolve bench`: a benchmark file through agent -> render -> judge, ending in a report.

    genevolve bench build --output-dir D          # the offline benchmark: D/{train,test}.jsonl, D/images/
    genevolve bench --input D/test.jsonl --gt-root D --output-dir OUT [--limit N]
                    [policy flags] [--backend offline] [--judge offline|kscore] [--judge-base-url ...]

Each stage keeps its own resumable folder under OUT (agent/, render/, eval/), so a rerun picks up
where a kill left off. The report prints KScore overall and by eval_type, category and difficulty,
and draws one bar chart per split into OUT/report/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .common import add_backend_args, add_policy_args, add_tool_args, fail

SPLITS = ("eval_type", "category", "difficulty")


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
    p.add_argument("--judge", choices=["offline", "kscore"], default="offline",
                   help="offline (no model service, a proxy; default) or kscore (a VLM endpoint)")
    g = p.add_argument_group("judge endpoint (--judge kscore)")
    g.add_argument("--judge-base-url", default=None, help="env GENEVOLVE_JUDGE_BASE_URL")
    g.add_argument("--judge-model", default=None, help="env GENEVOLVE_JUDGE_MODEL")
    g.add_argument("--judge-api-key", default=None, help="prefer env GENEVOLVE_JUDGE_API_KEY")
    g.add_argument("--judge-rpm", type=float, default=None, help="judge requests per minute at most")
    g.add_argument("--judge-parallel", type=int, default=2, help="items judged at once (default 2)")
    p.add_argument("--long-side", type=int, default=768, help="build: long side of the GT images (default 768)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_policy_args(p)
    add_tool_args(p)
    add_backend_args(p, default="offline")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.action == "build":
        return build(args)
    for flag in ("input", "gt_root", "output_dir"):
        if not getattr(args, flag):
            return fail(f"bench: --{flag.replace('_', '-')} is required")
    if args.limit is not None and args.limit < 1:
        return fail("--limit must be at least 1")
    if args.parallel < 1 or args.judge_parallel < 1:
        return fail("--parallel and --judge-parallel must be at least 1")
    if not Path(args.gt_root).is_dir():
        return fail(f"--gt-root {args.gt_root}: no such folder")
    try:
        summary = asyncio.run(run_bench(args))
    except BenchError as exc:
        return fail(str(exc))
    out = Path(args.output_dir)
    charts = write_charts(summary, out / "report")
    from ..judges.aggregate import format_table
    print(format_table(summary))
    print(json.dumps({"output_dir": str(out), "kscore": _round(summary.get("kscore")),
                      "n_items": summary["n_items"], "n_failed": summary["n_failed"],
                      "charts": [str(c) for c in charts]}))
    return 0


class BenchError(RuntimeError):
    """A stage could not start (bad input file, policy or backend that cannot be built)."""


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


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The three stages, each resumable in its own folder; returns the judge's summary."""
    from ..agent import Agent
    from ..generators.base import GeneratorError
    from ..pipeline.agent_runs import run_agent_batch
    from ..pipeline.batch import InputError, read_rows
    from ..policies.base import PolicyError
    from .common import build_agent_config, build_generator, build_policy, build_tools
    from .judge import judge_batch, make_judge
    from .render import render_rows

    out = Path(args.output_dir)
    try:
        rows, problems = read_rows(args.input)
    except InputError as exc:
        raise BenchError(str(exc)) from None
    for p in problems:
        print(f"genevolve: {p.message}", file=sys.stderr)
    if args.limit is not None:
        rows = rows[:args.limit]
    progress = not args.quiet

    try:
        agent = Agent(build_policy(args), build_tools(args), build_agent_config(args))
    except (PolicyError, ValueError) as exc:
        raise BenchError(f"policy: {exc}") from None
    try:
        counts = await run_agent_batch(agent, rows, problems, out / "agent", parallel=args.parallel,
                                       progress=progress)
    finally:
        await agent.aclose()
    _stage("agent", counts)

    try:
        generator = build_generator(args)
    except (GeneratorError, ValueError, TypeError) as exc:
        raise BenchError(f"backend: {exc}") from None
    agent_rows, agent_problems = read_rows(out / "agent" / "results.json")
    keep = {r.id for r in rows}
    agent_rows = [r for r in agent_rows if r.id in keep]      # a shorter --limit than an earlier run
    parallel = max(1, int(generator.max_concurrency))
    counts = await render_rows(generator, agent_rows, agent_problems, out / "render", out / "agent",
                               parallel=parallel, seed=None, progress=progress)
    _stage("render", counts)

    judge_args = argparse.Namespace(base_url=args.judge_base_url, model=args.judge_model,
                                    api_key=args.judge_api_key, rpm=args.judge_rpm, max_attempts=4,
                                    max_side=4096)
    try:
        judge = make_judge(args.judge, judge_args)
    except (ValueError, ImportError, RuntimeError) as exc:
        raise BenchError(f"judge: {exc}") from None
    render_results = out / "render" / "results.json"
    if args.limit is not None:                # judge only this run's slice of the render folder
        from ..jsonio import atomic_write_json
        rendered = json.loads(render_results.read_text(encoding="utf-8"))
        render_results = out / "render" / "results_slice.json"
        atomic_write_json(render_results, [r for r in rendered if str(r.get("id")) in keep])
    try:
        summary = await judge_batch(judge, render_results, args.gt_root, out / "eval",
                                    parallel=args.judge_parallel, progress=progress)
    finally:
        await judge.aclose()
    return summary


def _stage(name: str, counts: dict[str, Any]) -> None:
    print(f"genevolve bench: {name}: " + json.dumps(counts), file=sys.stderr)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def write_charts(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """One bar chart per split (KScore of each group, the overall figure as a line); their paths."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..jsonio import atomic_write_bytes

    paths = []
    overall = summary.get("kscore")
    for split in SPLITS:
        groups = summary.get("splits", {}).get(split)
        if not groups:
            continue
        names = list(groups)
        values = [groups[n]["kscore"] or 0.0 for n in names]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 2), 3.6), dpi=110)
        bars = ax.bar(range(len(names)), values, color="#4c72b0")
        for bar, name in zip(bars, names):
            n = groups[name]["n_items"]
            ax.annotate(f"{bar.get_height():.3f}\nn={n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        if overall is not None:
            ax.axhline(overall, color="#c44e52", linestyle="--", linewidth=1, label=f"overall {overall:.3f}")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center",
                           fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("KScore")
        judge = (summary.get("judge") or {}).get("judge", "")
        ax.set_title(f"KScore by {split}" + (f" ({judge} judge)" if judge else ""), fontsize=9)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        path = out_dir / f"kscore_by_{split}.png"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
