"""KScore aggregation against hand-computed numbers and the published Table 1."""

from __future__ import annotations

import csv
import json

import pytest

from genevolve.judges.aggregate import (evaluation_record, format_table, group_stats, kscore_from_means,
                                        sample_overall, summarize, write_summary)
from genevolve.judges.base import JudgeResult


def rec(item_id, eval_type, category, difficulty, f=None, v=None, t=None, a=None, na=False, error=None):
    row = {"eval_type": eval_type, "category": category, "difficulty": difficulty}
    if error:
        return evaluation_record(item_id, row, None, error=error)
    scores = {"faithfulness": f, "visual_correctness": v, "text_accuracy": 0.5 if na else t, "aesthetics": a}
    return evaluation_record(item_id, row, JudgeResult(scores=scores, text_accuracy_na=na, judge="kscore"))


# Hand-worked set. Per-sample overall:
#   A  1, .5, 1, 1        -> .1 + .2 + .4 + .1   = .80
#   B  .5, 0, N/A, .5     -> .05 + 0 + .2 + .05  = .30   (text counts .5 when N/A)
#   C  1, 1, .5, .5       -> .1 + .4 + .2 + .05  = .75
#   D  judge failure
#   E  0, 0, N/A, 1       -> 0 + 0 + .2 + .1     = .30
RECORDS = [
    rec("A", "Knowledge-Anchored", "landmark", "hard", 1, 0.5, 1, 1),
    rec("B", "Knowledge-Anchored", "flag", "medium", 0.5, 0, None, 0.5, na=True),
    rec("C", "Quality-Anchored", "text", "hard", 1, 1, 0.5, 0.5),
    rec("D", "Quality-Anchored", "text", "medium", error="unusable judge reply after 4 attempt(s)"),
    rec("E", "Knowledge-Anchored", "flag", "hard", 0, 0, None, 1, na=True),
]


@pytest.mark.parametrize("means,expected", [
    # Table 1 rows (faith, vis, text, aesth -> KScore), as published
    ((.7970, .3832, .6218, .9222), .5739),    # GenEvolve + Nano Banana Pro
    ((.5303, .1338, .4907, .6347), .3663),    # GenEvolve + Qwen-Image-Edit-2511
    ((.7465, .3378, .6198, .9036), .5481),    # Gen-Searcher 8B + Nano Banana Pro
    ((.1044, .0000, .3308, .2694), .1697),    # Lumina-Image 2.0
    ((.3729, .0623, .4226, .6751), .2987),    # Qwen-Image (.29876 from the rounded means)
])
def test_reported_kscore_reproduces_table_1(means, expected):
    names = ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics")
    # the published means are themselves rounded to 4 places, so the last digit may move by one
    assert abs(kscore_from_means(dict(zip(names, means))) - expected) <= 1e-4 + 1e-12


def test_genevolve_nano_banana_pro_row_exactly():
    means = {"faithfulness": .7970, "visual_correctness": .3832, "text_accuracy": .6218, "aesthetics": .9222}
    assert round(kscore_from_means(means), 4) == .5739      # .0797 + .15328 + .24872 + .09222


def test_sample_overall_is_published_formula():
    s = {"faithfulness": 1, "visual_correctness": 0.5, "text_accuracy": 0, "aesthetics": 0.5}
    assert sample_overall(s, False) == 0.35              # .1 + .2 + 0 + .05
    assert sample_overall(s, True) == 0.55               # text N/A counts .5 -> .1 + .2 + .2 + .05
    half = dict.fromkeys(s, 0.5)
    assert sample_overall({**half, "visual_correctness": 0}, False) == 0.3   # float noise rounded away


def test_whole_set_figures_match_hand_computation():
    stats = group_stats(RECORDS)
    assert (stats["n_items"], stats["n_scored"], stats["n_failed"], stats["n_text_required"]) == (5, 4, 1, 2)
    m = stats["dimension_means"]
    assert m["faithfulness"] == pytest.approx(0.625)         # (1 + .5 + 1 + 0) / 4
    assert m["visual_correctness"] == pytest.approx(0.375)   # (.5 + 0 + 1 + 0) / 4
    assert m["text_accuracy"] == pytest.approx(0.75)         # (1 + .5) / 2, text-required only
    assert m["aesthetics"] == pytest.approx(0.75)            # (1 + .5 + .5 + 1) / 4
    assert stats["kscore"] == pytest.approx(0.5875)          # .0625 + .15 + .3 + .075
    assert stats["mean_overall"] == pytest.approx(0.5375)    # (.8 + .3 + .75 + .3) / 4
    assert stats["overall_missing_zero"] == pytest.approx(0.43)   # 2.15 / 5: the failure counts 0 here only


def test_splits_match_hand_computation():
    summary = summarize(RECORDS, judge_info={"judge": "kscore", "model": "m"})
    ka = summary["splits"]["eval_type"]["Knowledge-Anchored"]
    # A, B, E: f (1+.5+0)/3, v (.5+0+0)/3, text A only = 1, a (1+.5+1)/3
    assert ka["kscore"] == pytest.approx(0.1 * 0.5 + 0.4 / 6 + 0.4 * 1 + 0.1 * 2.5 / 3)
    assert ka["kscore"] == pytest.approx(0.6)
    assert ka["mean_overall"] == pytest.approx(1.4 / 3)
    qa = summary["splits"]["eval_type"]["Quality-Anchored"]
    assert (qa["n_items"], qa["n_failed"], qa["kscore"], qa["overall_missing_zero"]) == (2, 1, 0.75, 0.375)
    flag = summary["splits"]["category"]["flag"]
    # no text-required item: the text mean is .5 -> .1*.25 + 0 + .4*.5 + .1*.75
    assert flag["n_text_required"] == 0 and flag["dimension_means"]["text_accuracy"] == 0.5
    assert flag["kscore"] == pytest.approx(0.3)
    assert set(summary["splits"]["difficulty"]) == {"hard", "medium"}
    assert summary["splits"]["difficulty"]["medium"]["n_failed"] == 1
    assert summary["failures"] == [{"id": "D", "error": "unusable judge reply after 4 attempt(s)"}]
    assert summary["judge"]["model"] == "m"


def test_all_failed_group_has_no_kscore_and_is_not_zero():
    stats = group_stats([rec("X", "k", "c", "d", error="no generated image")])
    assert stats["kscore"] is None and stats["mean_overall"] is None
    assert stats["overall_missing_zero"] == 0.0 and stats["n_failed"] == 1


def test_summary_files(tmp_path):
    summary = summarize(RECORDS, duplicates=[{"id": "A", "row": 6, "error": "duplicate id"}])
    json_path, csv_path = write_summary(summary, tmp_path)
    loaded = json.loads(json_path.read_text())
    assert loaded["kscore"] == pytest.approx(0.5875) and loaded["n_duplicate_rows"] == 1
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["split"] == "all" and rows[0]["kscore"] == "0.5875" and rows[0]["n_failed"] == "1"
    qa = next(r for r in rows if r["group"] == "Quality-Anchored")
    assert qa["kscore"] == "0.7500" and qa["overall_missing_zero"] == "0.3750"
    assert len(rows) == 1 + 2 + 3 + 2     # all, 2 eval types, 3 categories, 2 difficulties
    table = format_table(summary)
    assert "Knowledge-Anchored" in table and "0.5875" in table


def test_records_without_split_fields():
    r = evaluation_record("x", {}, JudgeResult(scores=dict.fromkeys(
        ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics"), 1.0)))
    summary = summarize([r])
    assert summary["splits"] == {} and summary["kscore"] == pytest.approx(1.0) and r["overall"] == 1.0
