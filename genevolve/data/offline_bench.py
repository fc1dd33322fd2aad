"""The offline benchmark: GenEvolve-Bench-style rows with GT images, built by the data pipeline.

It is one client of the pipeline (`genevolve.pipeline.data`), not a second generator: recipes bound to
the offline world, requests from the offline writer, entity-disjoint splits, and ground truth drawn
from another rendition of each subject. There is no teacher stage: a benchmark needs requests and
ground truth, not trajectories. Rows of every category the offline world can give a ground truth are
drawn (materials cannot: see `taxonomy.CATEGORIES`); a quarter of each category, by entity, is `test`.

Output (`output_dir`): all.jsonl, train.jsonl, test.jsonl (rows: id, question, gt_image, eval_type,
category, difficulty, split, meta), images/<id>.png and BENCH.json; the pipeline's own stage folders
stay under `output_dir/_build/`, so a rerun resumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ..jsonio import atomic_write_json, write_jsonl_atomic
from .taxonomy import CATEGORIES, KA, QA

BENCH_VERSION = 2
TEST_SHARE = 0.25
DEFAULT_PER_CATEGORY = 20
__all__ = ["KA", "QA", "BENCH_VERSION", "build_benchmark", "rows_digest"]


def bench_categories() -> list[str]:
    return [c for c, cat in CATEGORIES.items() if cat.offline_gt]


def build_benchmark(output_dir: str | Path, *, long_side: int = 768, per_category: int | None = None,
                    seed: int = 0, progress: Callable[[int, int], None] | None = None,
                    library: Any = None) -> dict[str, Any]:
    """Build (or resume) the benchmark under `output_dir`; returns counts for the report.

    `per_category` rows of each category (default 20; 1 makes a quick smoke build)."""
    from .export import bench_row
    from .splits import BENCH
    from ..pipeline.data import kept, recipe_of, stage_gt, stage_recipes, stage_requests, stage_splits

    out = Path(output_dir)
    work = out / "_build"
    per = per_category or DEFAULT_PER_CATEGORY
    cats = bench_categories()
    stage_recipes(work, n=per * len(cats), seed=seed, categories=cats, per_category=per)
    asyncio.run(stage_requests(work))
    stage_splits(work, source="requests", seed=seed, bench_share=TEST_SHARE)
    asyncio.run(stage_gt(work, long_side=long_side, library=library))
    recipes, requests, splits, gts = (kept(work, s) for s in ("recipes", "requests", "splits", "gt"))
    rows = []
    for rid in sorted(gts):
        recipe = recipe_of(recipes[rid], f"recipes:{rid}")
        row = bench_row(rid, recipe, requests[rid], gts[rid])
        row["split"] = "test" if splits[rid]["split"] == BENCH else "train"
        _place(work / "gt" / gts[rid]["gt_image"], out / row["gt_image"])
        rows.append(row)
    if progress:
        progress(len(rows), len(rows))
    write_jsonl_atomic(out / "all.jsonl", rows)
    for split in ("train", "test"):
        write_jsonl_atomic(out / f"{split}.jsonl", [r for r in rows if r["split"] == split])
    counts = {"rows": len(rows), "test": sum(r["split"] == "test" for r in rows),
              "train": sum(r["split"] == "train" for r in rows),
              "by_eval_type": _tally(rows, "eval_type"), "by_category": _tally(rows, "category"),
              "by_difficulty": _tally(rows, "difficulty")}
    atomic_write_json(out / "BENCH.json", {"version": BENCH_VERSION, "long_side": long_side, "seed": seed,
                                           "per_category": per, **counts})
    return counts


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and dst.read_bytes() == src.read_bytes():
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _tally(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r[key]] = out.get(r[key], 0) + 1
    return dict(sorted(out.items()))


def rows_digest(rows: list[dict[str, Any]]) -> str:
    """A fingerprint of the rows, to check that two builds agree."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode("utf-8")).hexdigest()
