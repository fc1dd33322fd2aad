"""The yield report, like the paper's table: in, kept and yield per stage and per category, with reasons.

It reads every stage's records under the build folder (so it also reports a partial or resumed build),
groups the drop reasons by their leading words, and adds the world's entity counts, the categories the
offline world cannot give a ground truth (and why), the split sizes, the cross-rendition calibration of
the offline judge and the stage timings. Written as REPORT.md and report.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..jsonio import atomic_write_json, atomic_write_text
from .taxonomy import CATEGORIES

YIELD_STAGES = ("recipes", "requests", "teacher", "checks", "gt")
STAGE_TITLES = {"recipes": "recipes (entities bound)", "requests": "requests (checks + dedup)",
                "teacher": "teacher trajectories (answered)", "checks": "programmatic checks + audit",
                "gt": "GT render + visual filter"}


def _reasons(error: str) -> list[str]:
    """An item's drop reasons (checks join several with '; ') without their item-specific details, so
    that reasons can be counted."""
    out = []
    for part in error.split("; "):
        part = re.sub(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|\([^)]*\)|\b\w+_\d{3,}\b|\d+(?:\.\d+)?", "…", part)
        if part.strip() and part[:90] not in out:
            out.append(part[:90])
    return out


def stage_report(out: Path) -> dict[str, Any]:
    from ..pipeline.data import load

    out = Path(out)
    table, by_category, reasons = [], {}, {}
    for stage in YIELD_STAGES:
        records = load(out, stage)
        if not records:
            continue
        n_in, n_kept = len(records), sum(1 for r in records.values() if not r.get("error"))
        table.append({"stage": stage, "in": n_in, "kept": n_kept, "yield": round(n_kept / n_in, 4) if n_in else None})
        counts: dict[str, int] = {}
        for r in records.values():
            for reason in _reasons(str(r["error"])) if r.get("error") else []:
                counts[reason] = counts.get(reason, 0) + 1
            cat = r.get("category") or "?"
            c = by_category.setdefault(cat, {})
            c.setdefault(stage, [0, 0])
            c[stage][0] += 1
            c[stage][1] += not r.get("error")
        reasons[stage] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    splits = load(out, "splits")
    split_counts: dict[str, dict[str, int]] = {}
    for r in splits.values():
        split_counts.setdefault(r.get("split") or "none", {}).setdefault(r["category"], 0)
        split_counts[r.get("split") or "none"][r["category"]] += 1
    report = {"table": table, "by_category": by_category, "reasons": reasons,
              "splits": {s: {"total": sum(c.values()), **dict(sorted(c.items()))} for s, c in split_counts.items()},
              "world": _read(out / "world.json"), "export": _read(out / "export" / "MANIFEST.json"),
              "calibration": _summary(_read(out / "calibration.json")), "timings": _read(out / "timings.json")}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "REPORT.md", to_markdown(report))
    return report


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _summary(cal: Any) -> Any:
    return {k: v for k, v in cal.items() if k != "rows"} if isinstance(cal, dict) else cal


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# Data build report", "", "| stage | in | kept | yield |", "| --- | ---: | ---: | ---: |"]
    for row in report["table"]:
        y = f"{100 * row['yield']:.1f}%" if row["yield"] is not None else "-"
        lines.append(f"| {STAGE_TITLES.get(row['stage'], row['stage'])} | {row['in']} | {row['kept']} | {y} |")
    lines += ["", "## Drop reasons (an item may have several)", ""]
    for stage, counts in report["reasons"].items():
        for reason, n in list(counts.items())[:8]:
            lines.append(f"- {stage}: {n} × {reason}")
    stages = [r["stage"] for r in report["table"]]
    lines += ["", "## Per category (kept / in)", "",
              "| category | track | entities | " + " | ".join(stages) + " |",
              "| --- | --- | ---: | " + " | ".join("---:" for _ in stages) + " |"]
    entities = ((report.get("world") or {}).get("entities")) or {}
    for cat, per in sorted(report["by_category"].items()):
        track = CATEGORIES[cat].track.split("-")[0] if cat in CATEGORIES else "?"
        cells = [f"{per[s][1]}/{per[s][0]}" if s in per else "-" for s in stages]
        lines.append(f"| {cat} | {track} | {entities.get(cat, '-')} | " + " | ".join(cells) + " |")
    lines += ["", "## Splits", ""]
    for split, counts in sorted(report["splits"].items()):
        lines.append(f"- {split}: {counts['total']} rows, {len(counts) - 1} categories")
    no_gt = ((report.get("world") or {}).get("no_offline_gt")) or {}
    if no_gt:
        lines += ["", "## Categories without an offline ground truth", ""]
        lines += [f"- {c}: {why}" for c, why in no_gt.items()]
    cal = report.get("calibration")
    if cal:
        lines += ["", "## Offline judge on cross-rendition pairs", "",
                  f"Pairs: {cal.get('pairs')}. Ranking accuracy (right program above wrong, ties half) against a GT "
                  f"drawn from another rendition: {cal.get('cross_accuracy')} ({cal.get('cross_ties')} ties); against "
                  f"a GT drawn from the candidate's own images: {cal.get('same_accuracy')} ({cal.get('same_ties')} ties).",
                  "", "By category (cross-rendition): " + ", ".join(
                      f"{c} {a}" for c, a in (cal.get("cross_accuracy_by_category") or {}).items())]
    timings = report.get("timings")
    if timings:
        lines += ["", "## Timings (s)", "", ", ".join(f"{k} {v}" for k, v in timings.items())]
    return "\n".join(lines) + "\n"


async def stage_calibrate(out: Path, *, pairs: int = 32, seed: int = 0, long_side: int = 512,
                          judge: Any = None, generator: Any = None) -> dict[str, Any]:
    """The offline judge's ranking accuracy on cross-rendition pairs, from the pool and bench rows."""
    from ..generators.offline import OfflineRenderer
    from ..jsonio import atomic_write_json as write
    from .ground_truth import cross_rendition_pairs
    from .recipes import gt_gen_prompt
    from ..pipeline.data import kept, load, recipe_of

    out = Path(out)
    recipes, requests, teacher, gts = kept(out, "recipes"), kept(out, "requests"), load(out, "teacher"), load(out, "gt")
    items = []
    for rid, gt in gts.items():
        trajectory = (teacher.get(rid) or {}).get("trajectory") or {}
        program = trajectory.get("written_program") or trajectory.get("program")
        if gt.get("error") or not program or not program.get("reference_images"):
            continue
        recipe = recipe_of(recipes[rid], f"recipes:{rid}")
        items.append({"id": rid, "category": recipe.category, "request": requests[rid]["request"],
                      "subject_key": recipe.subjects[0].key, "program": program,
                      "gt_image": str(out / "gt" / gt["gt_image"]),
                      "same_gt_program": {"gen_prompt": gt_gen_prompt(recipe),
                                          "reference_images": program["reference_images"]},
                      "meta": {"required_texts": recipe.texts, **({"count": recipe.count} if recipe.count else {}),
                               **({"relation": recipe.relation} if recipe.relation else {})}})
    if judge is None:
        from ..judges.offline import OfflineJudge
        judge = OfflineJudge(concurrency=2)      # OCR and feature matching leave the GIL: use both cores
    result = await cross_rendition_pairs(items, judge=judge, generator=generator or OfflineRenderer(long_side=long_side),
                                         work_dir=out / "calibration", pairs=pairs, seed=seed)
    write(out / "calibration.json", result)
    return {k: v for k, v in result.items() if k != "rows"}
