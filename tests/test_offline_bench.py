"""The offline benchmark: deterministic rows, valid ground-truth images, and `genevolve bench` end to end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from genevolve.cli import main as cli_main
from genevolve.data.offline_bench import KA, QA, build_benchmark, make_items, rows_digest
from genevolve.tools.image_library import ImageLibrary


@pytest.fixture(scope="module")
def library_ids() -> set[str]:
    return {e.id for e in ImageLibrary(include_user=False).entries()}


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory) -> Path:
    """One row per category, GT images at a small size (the full build draws about 280 images)."""
    out = tmp_path_factory.mktemp("bench")
    build_benchmark(out, long_side=384, per_category=1)
    return out


def test_rows_are_deterministic_and_cover_both_tracks(library_ids):
    items = make_items(library_ids)
    rows = [i.row for i in items]
    assert rows_digest(rows) == rows_digest([i.row for i in make_items(library_ids)])
    assert len(rows) >= 200
    assert len({r["id"] for r in rows}) == len(rows)
    assert set(Counter(r["eval_type"] for r in rows)) == {KA, QA}
    assert set(r["difficulty"] for r in rows) == {"medium", "hard"}
    splits = Counter(r["split"] for r in rows)
    assert 0.2 <= splits["test"] / len(rows) <= 0.3
    for category in {r["category"] for r in rows}:       # every category is held out in part
        assert any(r["split"] == "test" for r in rows if r["category"] == category)
    for r in rows:
        assert set(r) >= {"id", "question", "gt_image", "eval_type", "category", "difficulty", "split", "meta"}
        meta = r["meta"]
        assert meta["gt_program"]["reference_images"] and meta["entity"]
        for text in meta["required_texts"]:
            assert f'"{text}"' in r["question"]
        if r["eval_type"] == KA:          # the subject hides behind a fact: its name is not in the request
            for name in meta["entity"].split("; "):
                assert name.lower() not in r["question"].lower(), r
    counted = [r for r in rows if "count" in r["meta"]]
    assert counted and all(str(r["meta"]["count"]) in r["question"] for r in counted)


def test_build_writes_valid_ground_truth_images(small_bench, tmp_path):
    rows = [json.loads(line) for line in (small_bench / "all.jsonl").read_text().splitlines()]
    test = (small_bench / "test.jsonl").read_text().splitlines()
    train = (small_bench / "train.jsonl").read_text().splitlines()
    assert len(test) + len(train) == len(rows) == len({r["category"] for r in rows}) == 9
    for r in rows:
        with Image.open(small_bench / r["gt_image"]) as im:
            im.verify()
        with Image.open(small_bench / r["gt_image"]) as im:
            assert max(im.size) == 384 and im.mode == "RGB"
    again = tmp_path / "again"
    build_benchmark(again, long_side=384, per_category=1)
    for r in rows:                                        # same program, same pixels
        assert (again / r["gt_image"]).read_bytes() == (small_bench / r["gt_image"]).read_bytes()
    assert (again / "all.jsonl").read_bytes() == (small_bench / "all.jsonl").read_bytes()


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
    argv = ["bench", "--input", str(small_bench / "all.jsonl"), "--gt-root", str(small_bench),
            "--output-dir", str(out), "--limit", "3", "--policy", "scripted", "--script", str(script), "--quiet"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "KScore" in printed and "eval_type" in printed
    final = json.loads(printed.strip().splitlines()[-1])
    assert final["n_items"] == 3 and final["n_failed"] == 0 and 0 <= final["kscore"] <= 1

    results = json.loads((out / "agent" / "results.json").read_text())
    assert len(results) == 3 and all(r["gen_prompt"] and r["reference_images"] for r in results)
    rendered = json.loads((out / "render" / "results.json").read_text())
    assert all(r["image_status"] == "ok" and Path(r["output_path"]).is_file() for r in rendered)
    evals = json.loads((out / "eval" / "results_eval.json").read_text())
    assert [e["id"] for e in evals] == [r["id"] for r in results]
    assert all(e["judge"]["judge"] == "offline" and set(e["scores"]) >= {"faithfulness", "aesthetics"} for e in evals)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert set(summary["splits"]) == {"eval_type", "category", "difficulty"}
    for split in ("eval_type", "category", "difficulty"):
        with Image.open(out / "report" / f"kscore_by_{split}.png") as im:
            assert im.size[0] > 300

    before = (out / "eval" / "results_eval.jsonl").read_text()
    assert cli_main(argv) == 0                            # resume: nothing is run or judged again
    assert (out / "eval" / "results_eval.jsonl").read_text() == before
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kscore"] == final["kscore"]


def test_bench_reports_bad_arguments(tmp_path, capsys):
    assert cli_main(["bench", "--input", str(tmp_path / "x.jsonl"), "--output-dir", str(tmp_path)]) == 2
    assert "--gt-root" in capsys.readouterr().err
    assert cli_main(["bench", "build"]) == 2
