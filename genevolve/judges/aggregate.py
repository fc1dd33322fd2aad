"""KScore aggregation exactly as published, with splits, failure accounting and summary files.

Per sample:  overall = round(0.1·f + 0.4·v + 0.4·t + 0.1·a, 2), with t = 0.5 when no text is required.
Reported:    KScore  = the same weights applied to the dimension means, where the text mean runs
             over text-required samples only (0.5 when there are none).
Also:        the mean of per-sample overall, and `overall_missing_zero`, the only figure in which
             failed items (judge failure, missing image, agent/render error) count as 0.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

from ..jsonio import atomic_write_json, atomic_write_text
from .base import DIMENSIONS, JudgeResult

WEIGHTS: dict[str, float] = {"faithfulness": 0.1, "visual_correctness": 0.4,
                             "text_accuracy": 0.4, "aesthetics": 0.1}
TEXT_NA_VALUE = 0.5
SPLIT_FIELDS = ("eval_type", "category", "difficulty")
CSV_COLUMNS = ("split", "group", "n_items", "n_scored", "n_failed", "n_text_required", "kscore",
               *DIMENSIONS, "mean_overall", "overall_missing_zero")


def sample_overall(scores: dict[str, float], text_accuracy_na: bool) -> float:
    """The published per-sample overall, rounded to two decimals."""
    t = TEXT_NA_VALUE if text_accuracy_na else scores["text_accuracy"]
    return round(WEIGHTS["faithfulness"] * scores["faithfulness"] + WEIGHTS["visual_correctness"]
                 * scores["visual_correctness"] + WEIGHTS["text_accuracy"] * t
                 + WEIGHTS["aesthetics"] * scores["aesthetics"], 2)


def kscore_from_means(means: dict[str, float]) -> float:
    """The reported KScore from dimension means (text mean already over text-required samples)."""
    return sum(WEIGHTS[d] * means[d] for d in DIMENSIONS)


def evaluation_record(item_id: Any, row: dict[str, Any], result: JudgeResult | None,
                      error: str | None = None) -> dict[str, Any]:
    """One line of results_eval: the item's split fields, its judgement, or why it has none."""
    record: dict[str, Any] = {"id": item_id}
    for key in SPLIT_FIELDS:
        if row.get(key) is not None:
            record[key] = row[key]
    if result is not None:
        judged = result.to_dict()
        record.update(scores=judged["scores"], text_accuracy_na=judged["text_accuracy_na"],
                      overall=judged["overall"], rationale=judged["rationale"],
                      judge={k: judged[k] for k in ("judge", "model", "endpoint", "rubric_version")},
                      attempts=judged["attempts"], error=judged["error"])
        if judged["extra"]:
            record["extra"] = judged["extra"]
    else:
        record.update(scores={}, text_accuracy_na=False, overall=None, error=error or "not judged")
    return record


def is_scored(record: dict[str, Any]) -> bool:
    return not record.get("error") and all(d in (record.get("scores") or {}) for d in DIMENSIONS)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def group_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Every figure for one group of evaluation records (the whole set or one split value)."""
    scored = [r for r in records if is_scored(r)]
    text_required = [r for r in scored if not r.get("text_accuracy_na")]
    means: dict[str, float | None] = {d: _mean([r["scores"][d] for r in scored])
                                      for d in DIMENSIONS if d != "text_accuracy"}
    means["text_accuracy"] = (_mean([r["scores"]["text_accuracy"] for r in text_required])
                              if text_required else (TEXT_NA_VALUE if scored else None))
    overalls = [sample_overall(r["scores"], bool(r.get("text_accuracy_na"))) for r in scored]
    return {
        "n_items": len(records),
        "n_scored": len(scored),
        "n_failed": len(records) - len(scored),
        "n_text_required": len(text_required),
        "kscore": kscore_from_means(means) if scored else None,   # type: ignore[arg-type]
        "dimension_means": {d: means[d] for d in DIMENSIONS},
        "mean_overall": _mean(overalls),
        "overall_missing_zero": sum(overalls) / len(records) if records else None,
    }


def summarize(records: Iterable[dict[str, Any]], *, judge_info: dict[str, Any] | None = None,
              duplicates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """summary.json content: overall figures, splits by eval_type/category/difficulty, failures.

    `records` holds one record per unique item; `duplicates` lists extra rows that repeated an id
    (they are reported, never judged twice, never part of any mean).
    """
    records = list(records)
    summary: dict[str, Any] = {**group_stats(records)}
    summary["splits"] = {}
    for key in SPLIT_FIELDS:
        if not any(key in r for r in records):
            continue
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            groups.setdefault(str(r.get(key, "(none)")), []).append(r)
        summary["splits"][key] = {name: group_stats(rows) for name, rows in sorted(groups.items())}
    summary["failures"] = [{"id": r.get("id"), "error": r.get("error") or "incomplete scores"}
                           for r in records if not is_scored(r)]
    summary["duplicates"] = list(duplicates or [])
    summary["n_duplicate_rows"] = len(summary["duplicates"])
    if judge_info:
        summary["judge"] = dict(judge_info)
    summary["formula"] = ("overall = round(0.1*faithfulness + 0.4*visual_correctness + 0.4*text_accuracy "
                          "+ 0.1*aesthetics, 2), text_accuracy = 0.5 when N/A; kscore applies the same "
                          "weights to dimension means, text mean over text-required items only")
    return summary


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows for the CSV: the whole set first, then each split group."""
    rows = [_flat("all", "all", summary)]
    for split, groups in summary.get("splits", {}).items():
        rows += [_flat(split, name, stats) for name, stats in groups.items()]
    return rows


def _flat(split: str, group: str, stats: dict[str, Any]) -> dict[str, Any]:
    row = {"split": split, "group": group}
    for key in ("n_items", "n_scored", "n_failed", "n_text_required", "kscore",
                "mean_overall", "overall_missing_zero"):
        row[key] = stats.get(key)
    row.update(stats.get("dimension_means", {}))
    return row


def write_summary(summary: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write summary.json and summary.csv (atomically) into `out_dir`; their paths."""
    out_dir = Path(out_dir)
    json_path, csv_path = out_dir / "summary.json", out_dir / "summary.csv"
    atomic_write_json(json_path, summary)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in summary_rows(summary):
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v))
                         for k, v in row.items()})
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of KScore by split, for the terminal."""
    lines = [f"{'split':<12} {'group':<28} {'n':>5} {'fail':>5} {'KScore':>7} {'faith':>6} {'vis':>6} "
             f"{'text':>6} {'aesth':>6}"]
    for row in summary_rows(summary):
        def f(v: Any) -> str:
            return "   -  " if v is None else f"{v:.4f}"
        lines.append(f"{row['split']:<12} {str(row['group'])[:28]:<28} {row['n_items']:>5} {row['n_failed']:>5} "
                     f"{f(row['kscore']):>7} {f(row['faithfulness']):>6} {f(row['visual_correctness']):>6} "
                     f"{f(row['text_accuracy']):>6} {f(row['aesthetics']):>6}")
    return "\n".join(lines)
