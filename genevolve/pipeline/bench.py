"""A benchmark end to end: agent -> render -> judge, each stage resumable in its own folder.

    OUT/agent/results.json(l)        agent results, one per benchmark row
    OUT/render/results.json(l)       render records (+ OUT/render/images/)
    OUT/eval/results_eval.json(l)    judgements, summary.json, summary.csv
    OUT/report/kscore_by_*.png       one bar chart per split

A rerun picks up where a kill left off: each stage skips the ids its folder already holds.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable

from ..settings import Settings
from .batch import StageError, read_input, read_rows
from .generate import run_agents
from .judge import build_stage_judge, judge_rows, load_results
from .render import backend_parallel, render_rows

SPLITS = ("eval_type", "category", "difficulty")


async def run_bench(settings: Settings, input_path: str | Path, gt_root: str | Path, out_dir: str | Path, *,
                    limit: int | None = None, parallel: int = 1, judge_parallel: int = 2, progress: bool = True,
                    say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """The three stages over the rows of `input_path` (the first `limit`); the judge's summary."""
    from ..generators.base import GeneratorError
    from ..settings import build_generator

    out = Path(out_dir)
    if not Path(gt_root).is_dir():
        raise StageError(f"--gt-root {gt_root}: no such folder")
    rows, problems = read_input(input_path, say)
    rows = rows[:limit] if limit is not None else rows
    keep = {r.id for r in rows}          # this run's rows only (an earlier run may have had a longer --limit)

    counts = await run_agents(settings, rows, problems, out / "agent", parallel=parallel, progress=progress)
    say(f"bench: agent: {json.dumps(counts)}")

    try:
        generator = build_generator(settings)
    except (GeneratorError, ValueError, TypeError) as exc:
        raise StageError(f"backend: {exc}") from None
    try:
        agent_rows, agent_problems = read_rows(out / "agent" / "results.json")
        counts = await render_rows(generator, [r for r in agent_rows if r.id in keep], agent_problems,
                                   out / "render", out / "agent", parallel=backend_parallel(generator, None),
                                   progress=progress)
    finally:
        await generator.aclose()
    say(f"bench: render: {json.dumps(counts)}")

    judge = build_stage_judge(settings)
    try:
        rendered, render_problems, duplicates = load_results(out / "render" / "results.json")
        return await judge_rows(judge, [r for r in rendered if r.id in keep], render_problems, gt_root, out / "eval",
                                results_dir=out / "render", source=str(out / "render" / "results.json"),
                                duplicates=duplicates, parallel=judge_parallel, progress=progress)
    finally:
        await judge.aclose()


def write_charts(summary: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """One bar chart per split (KScore of each group, the overall figure as a line); their paths."""
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
        path = Path(out_dir) / f"kscore_by_{split}.png"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
