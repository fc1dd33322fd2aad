"""The offline benchmark, built by the data pipeline: deterministic rows, cross-rendition ground truth,
entity-disjoint splits, and `genevolve bench` end to end on it."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from genevolve.cli import main as cli_main
from genevolve.data.offline_bench import KA, QA, bench_categories, build_benchmark, rows_digest


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory) -> Path:
    """Two rows per category, GT images at a small size (the default build draws 20 per category)."""
    out = tmp_path_factory.mktemp("bench")
    build_benchmark(out, long_side=384, per_category=2)
    return out


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_cover_every_supported_category_and_both_splits(small_bench):
    rows = rows_of(small_bench / "all.jsonl")
    assert {r["category"] for r in rows} == set(bench_categories())
    assert "material_physics" not in bench_categories()
    assert set(Counter(r["eval_type"] for r in rows)) == {KA, QA}
    assert len({r["id"] for r in rows}) == len(rows)
    test, train = rows_of(small_bench / "test.jsonl"), rows_of(small_bench / "train.jsonl")
    assert test and train and len(test) + len(train) == len(rows)
    held = {(r["category"], k) for r in test for k in r["meta"]["entity"]["keys"]}
    assert not held & {(r["category"], k) for r in train for k in r["meta"]["entity"]["keys"]}
    for r in rows:
        assert set(r) >= {"id", "question", "gt_image", "eval_type", "category", "difficulty", "split", "meta"}
        meta = r["meta"]
        if r["eval_type"] == KA:              # the subject hides behind a fact: its name is not in the request
            assert not re.search(rf"\b{re.escape(meta['hidden'].lower())}\b", r["question"].lower()), r
        elif meta["required_texts"]:
            assert all(f'"{t}"' in r["question"] for t in meta["required_texts"])
        assert all(u["rendition"] in ("alternate", "restaged") for u in meta["gt_renditions"])
        with Image.open(small_bench / r["gt_image"]) as im:
            assert max(im.size) == 384 and im.mode == "RGB"


def test_build_is_deterministic(small_bench, tmp_path):
    """The first row of each category does not depend on how many rows are drawn: a one-per-category
    build elsewhere must reproduce those rows and their pixels exactly (the split aside)."""
    again = tmp_path / "again"
    build_benchmark(again, long_side=384, per_category=1)
    first = {r["id"]: {k: v for k, v in r.items() if k != "split"} for r in rows_of(small_bench / "all.jsonl")}
    rows = [{k: v for k, v in r.items() if k != "split"} for r in rows_of(again / "all.jsonl")]
    assert len(rows) == len(bench_categories())
    assert rows_digest(rows) == rows_digest([first[r["id"]] for r in rows])
    for r in rows:                           # same program, same pixels
        assert (again / r["gt_image"]).read_bytes() == (small_bench / r["gt_image"]).read_bytes()


def test_bench_runs_agent_render_judge_end_to_end(small_bench, tmp_path, capsys):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([
        '<think>I need a picture of the subject.</think>\n'
        '<tool_call>{"name": "image_search", "arguments": {"query": "flag"}}</tool_call>',
        '<think>The first result will do.</think>\n'
        '<answer>{"gen_prompt": "The first reference image, centered, with the caption \\"PEACE\\" at the bottom.", '
        '"reference_images": [{"img_id": "IMG_001", "note": "the subject"}]}</answer>',
    ]))
    out = tmp_path / "run"
    argv = ["bench", "--input", str(small_bench / "test.jsonl"), "--gt-root", str(small_bench),
            "--output-dir", str(out), "--limit", "3", "--policy", "scripted", "--script", str(script), "--quiet"]
    assert cli_main(argv) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["n_items"] == 3 and final["n_failed"] == 0 and 0 <= final["kscore"] <= 1
    evals = json.loads((out / "eval" / "results_eval.json").read_text())
    assert len(evals) == 3 and all(e["judge"]["judge"] == "offline" for e in evals)


def test_bench_build_cli_and_bad_arguments(tmp_path, capsys):
    assert cli_main(["bench", "build"]) == 2
    assert cli_main(["bench", "--input", str(tmp_path / "x.jsonl"), "--output-dir", str(tmp_path)]) == 2
    assert "--gt-root" in capsys.readouterr().err
