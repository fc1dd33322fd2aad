"""The loader for the published GenEvolve data layout, on a small fixture written in that layout."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from genevolve.cli import main as cli_main
from genevolve.data.published import load_published


def write_layout(root: Path) -> None:
    """Three dataset folders as the release has them: SFT (train/eval), RL (train/eval), Bench (test)."""
    sft = root / "GenEvolve-Data-SFT"
    (sft / "images" / "traj_00001").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(sft / "images" / "traj_00001" / "IMG_001.jpg")
    record = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Draw a red fox."},
                           {"role": "assistant", "content": '<think>fox</think><tool_call>{"name": "image_search", '
                                                            '"arguments": {"query": "red fox"}}</tool_call>'},
                           {"role": "user", "content": "<tool_response>\n[IMG_001] Red fox\n</tool_response>"},
                           {"role": "assistant", "content": '<think>ok</think><answer>{"gen_prompt": "A fox like the '
                                                            'first reference image.", "reference_images": '
                                                            '[{"img_id": "IMG_001", "note": "fox"}]}</answer>'}],
              "images": ["images/traj_00001/IMG_001.jpg"]}
    (sft / "train.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "images": ["images/gone.jpg"]})
                                     + "\n")
    (sft / "eval.jsonl").write_text(json.dumps(record) + "\n")
    rl = root / "GenEvolve-Data-RL"
    (rl / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(rl / "images" / "case_00001.jpg")
    row = {"id": "case_00001", "question": "The flag of the country whose capital is Canberra.",
           "gt_image": "images/case_00001.jpg", "eval_type": "Knowledge-Anchored", "category": "architecture_landmark",
           "difficulty": "hard", "prompt_pool_index": 17, "meta": {"primary_skills": ["text_rendering"]},
           "extra_info": {"note": "x"}}
    (rl / "train.jsonl").write_text(json.dumps(row) + "\n{broken\n")
    (rl / "eval.jsonl").write_text(json.dumps({**row, "id": "case_00002"}) + "\n")
    bench = root / "GenEvolve-Bench"
    (bench / "images").mkdir(parents=True)
    (bench / "data").mkdir()
    Image.new("RGB", (8, 8)).save(bench / "images" / "case_00512.jpg")
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist([{"id": "bench_0001", "question": "Exactly three apples.", "gt_image":
                                   "images/case_00512.jpg", "eval_type": "Quality-Anchored",
                                   "category": "grounded_quantity_scene", "difficulty": "medium",
                                   "meta": json.dumps({"skill_bundle": ["quantity_counting"]})}])
    pq.write_table(table, bench / "data" / "test-00000-of-00001.parquet")


def test_loader_reads_the_published_layout_into_our_records(tmp_path):
    write_layout(tmp_path / "pub")
    pub = load_published(tmp_path / "pub")
    assert pub.counts() == {"sft": {"train": 2, "eval": 1}, "pool": {"train": 1, "eval": 1}, "bench": {"test": 1}}
    sft = pub.sft["train"][0]
    assert sft["loss_mask"] == [0, 0, 1, 0, 1] and Path(sft["images"][0]).is_file()
    assert sft["meta"]["source"] == "published"
    pool = pub.pool["train"][0]
    assert pool["gt_image"] == "images/case_00001.jpg" and pool["meta"]["prompt_pool_index"] == 17
    assert pool["meta"]["primary_skills"] == ["text_rendering"] and len(pool["meta"]["prompt_hash"]) == 16
    bench = pub.bench["test"][0]
    assert bench["id"] == "bench_0001" and bench["meta"]["skill_bundle"] == ["quantity_counting"]
    problems = " | ".join(pub.problems)
    assert "GenEvolve-Data-RL/train.jsonl:2: not valid JSON" in problems
    assert "images/gone.jpg is missing" in problems


def test_cli_writes_the_loaded_data_in_our_layout(tmp_path, capsys):
    write_layout(tmp_path / "pub")
    out = tmp_path / "ours"
    assert cli_main(["data", "load-published", "--input", str(tmp_path / "pub"), "--output-dir", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["bench"] == {"test": 1} and summary["problems"] == 2
    row = json.loads((out / "bench" / "test.jsonl").read_text())
    assert (out / "bench" / row["gt_image"]).is_file()          # resolvable from the split's folder
    assert cli_main(["data", "load-published", "--input", str(tmp_path / "nope"), "--output-dir", str(out)]) == 2
