"""The viewer's reading of records: every kind of folder, both schema versions, live journals.

`view_world` builds, once per session, the folders the viewer tests look at: two real runs made by
the real runtime (`genevolve run --policy scripted`, `render`, `judge --judge offline`), a
`generate` result, a run in the older schema 1 format, a training run written in the documented
layout (the trainer does not exist yet), and a folder of broken and hostile image paths.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from genevolve.view.itemview import build_item
from genevolve.view.discover import discover
from genevolve.view.records import lite_record, summarise

SCRIPT_A = [  # look a fact up, find images, answer naming an id (the runtime repairs it)
    '<think>Which country is meant? Look it up.</think>\n'
    '<tool_call>{"name": "search", "arguments": {"queries": ["Rabat capital country"]}}</tool_call>',
    '<think>Morocco. Now its flag.</think>\n'
    '<tool_call>{"name": "image_search", "arguments": {"query": "flag of Morocco"}}</tool_call>',
    '<think>IMG_001 is the flag.</think>\n<answer>{"gen_prompt": "The flag shown in IMG_001, centered on a '
    'plain light backdrop.", "reference_images": [{"img_id": "IMG_001", "note": "the flag"}]}</answer>',
]
SCRIPT_B = [  # a reply with no action, a search, an answer that goes back, a corrected answer
    "<think>I should find a picture first.</think> Let me look for one.",
    '<think>Search.</think>\n<tool_call>{"name": "image_search", "arguments": {"query": "flag"}}</tool_call>',
    '<think>Answer.</think>\n<answer>{"gen_prompt": "The flag from IMG_009 waving.", '
    '"reference_images": [{"img_id": "IMG_001", "note": "a flag"}]}</answer>',
    '<think>Fix it.</think>\n<answer>{"gen_prompt": "The first reference image beside the second reference '
    'image, both waving.", "reference_images": [{"img_id": "IMG_002", "note": "b"}, {"img_id": "IMG_001", '
    '"note": "a"}]}</answer>',
]
ROWS = [
    {"id": "flag_ma", "prompt": "The national flag of the country whose capital is Rabat.",
     "category": "flags", "eval_type": "Knowledge-Anchored", "meta": {"track": "knowledge"}},
    {"id": "flag_jp", "prompt": "The national flag of Japan on a plain backdrop.",
     "category": "flags", "eval_type": "Knowledge-Anchored", "meta": {"track": "knowledge"}},
    {"id": "apple", "prompt": "One red apple on a white table.", "category": "objects",
     "eval_type": "Quality-Anchored", "meta": {"track": "quality"}},
    {"id": "sign", "prompt": "A wooden sign with the words 'HELLO' on it.", "category": "text",
     "eval_type": "Quality-Anchored", "meta": {"track": "quality"}},
    {"id": "empty", "prompt": "", "category": "objects", "meta": {"track": "quality"}},
]
# A row as `genevolve run` wrote it before schema 2 (trimmed from a real run): issues as strings,
# no token fields beyond completion_tokens, no answer/written_program/images.
V1_ROW = {
    "id": "old_001", "prompt": "Show the national flag of the country whose capital city is Rabat.",
    "category": "flags", "gen_prompt": "The flag shown in the first reference image, centered.",
    "reference_images": [{"img_id": "IMG_001", "note": "the flag", "local_path": "refs/flag-ma.png",
                          "url": "file:///nowhere/flag-ma.png", "title": "Flag of Morocco", "page_url": None}],
    "messages": [
        {"role": "system", "content": "You are an image-generation agent."},
        {"role": "user", "content": "Show the national flag of the country whose capital city is Rabat."},
        {"role": "assistant", "content": '<think>Find it.</think>\n<tool_call>{"name": "image_search", '
                                         '"arguments": {"query": "flag of Morocco"}}</tool_call>'},
        {"role": "user", "content": "<tool_response>\n--- image search result for [flag of Morocco] ---\n"
                                    "[IMG_001] Flag of Morocco\n[IMG_002] Flag of Kosovo\n</tool_response>"},
        {"role": "assistant", "content": '<think>IMG_001.</think>\n<answer>{"gen_prompt": "The flag shown in '
                                         'IMG_001, centered.", "reference_images": [{"img_id": "IMG_001", '
                                         '"note": "the flag"}]}</answer>'},
    ],
    "termination": "answer", "rounds": 2, "error": None,
    "program_issues": ["img_id_replaced: 'IMG_001' -> 'the first reference image'"],
    "tool_calls": [{"round": 1, "name": "image_search", "arguments": {"query": "flag of Morocco"},
                    "observation": "--- image search result for [flag of Morocco] ---\n[IMG_001] Flag of Morocco\n"
                                   "[IMG_002] Flag of Kosovo",
                    "data": {"backend": "offline", "images": [
                        {"img_id": "IMG_001", "title": "Flag of Morocco", "local_path": "refs/flag-ma.png"},
                        {"img_id": "IMG_002", "title": "Flag of Kosovo", "local_path": "refs/flag-xk.png"}]},
                    "error": None, "repeat": False, "started_at": 1.0, "duration_s": 0.2}],
    "turns": [{"round": 1, "action": "tool_call", "prompt_tokens": None, "cached_tokens": None,
               "completion_tokens": 14, "latency_s": 0.5, "note": None, "logprobs": None},
              {"round": 2, "action": "answer", "prompt_tokens": None, "cached_tokens": None,
               "completion_tokens": 22, "latency_s": 0.7, "note": None, "logprobs": None}],
    "policy": "scripted", "duration_s": 1.3,
}

_BUILT: dict[str, dict] = {}


def picture(path: Path, colour: tuple[int, int, int], text: str = "", size=(240, 160)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, (245, 245, 240))
    draw = ImageDraw.Draw(img)
    draw.rectangle([40, 30, size[0] - 40, size[1] - 30], fill=colour)
    if text:
        draw.text((size[0] // 2 - 20, size[1] // 2 - 6), text, fill=(255, 255, 255))
    img.save(path)
    return path


def _canvas(path: Path, background=(236, 238, 242)) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (384, 256), background)
    return img, ImageDraw.Draw(img)


def flag_of_morocco(path: Path) -> None:
    import math

    img, draw = _canvas(path)
    draw.rectangle([72, 48, 312, 208], fill=(193, 39, 45))
    points = [(192 + 46 * math.sin(math.radians(144 * k)), 128 - 46 * math.cos(math.radians(144 * k)))
              for k in range(6)]
    draw.line(points, fill=(0, 98, 51), width=7)
    img.save(path)


def flag_of_japan(path: Path) -> None:
    img, draw = _canvas(path)
    draw.rectangle([72, 48, 312, 208], fill=(255, 255, 255), outline=(210, 210, 210))
    draw.ellipse([144, 80, 240, 176], fill=(188, 0, 45))
    img.save(path)


def red_apple(path: Path) -> None:
    img, draw = _canvas(path, (250, 250, 250))
    draw.ellipse([132, 78, 252, 198], fill=(200, 24, 30))
    draw.line([(192, 84), (200, 58)], fill=(90, 60, 30), width=5)
    draw.ellipse([200, 52, 236, 70], fill=(60, 150, 50))
    img.save(path)


def hello_sign(path: Path) -> None:
    img, draw = _canvas(path, (200, 225, 245))
    draw.rectangle([182, 150, 202, 250], fill=(110, 75, 40))
    draw.rectangle([82, 60, 302, 150], fill=(160, 110, 60), outline=(110, 75, 40), width=4)
    draw.text((162, 96), "HELLO", fill=(255, 255, 255), font_size=24)
    img.save(path)


GROUND_TRUTH = {"flag_ma": flag_of_morocco, "flag_jp": flag_of_japan, "apple": red_apple, "sign": hello_sign}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def cli(*argv: str) -> None:
    from genevolve.cli import main

    code = main([*argv])
    assert code in (0, 1), f"genevolve {' '.join(argv)} exited {code}"


def real_run(root: Path, name: str, script: list[str], bench: Path) -> Path:
    """agent -> render -> judge with the real runtime, as `genevolve bench` lays them out."""
    script_path = root / f"{name}.script.json"
    script_path.write_text(json.dumps(script), encoding="utf-8")
    out = root / "runs" / name
    cli("run", "--policy", "scripted", "--script", str(script_path), "--input", str(bench / "rows.jsonl"),
        "--output-dir", str(out / "agent"), "--quiet")
    cli("render", "--input", str(out / "agent" / "results.jsonl"), "--output-dir", str(out / "render"),
        "--backend", "offline", "--quiet")
    cli("judge", "--results", str(out / "render" / "results.jsonl"), "--gt-root", str(bench), "--judge", "offline",
        "--output-dir", str(out / "eval"), "--quiet")
    return out


def training_run(root: Path, rollout_rows: list[dict]) -> Path:
    """A training folder in the layout INTERFACES.md documents for the trainer."""
    folder = root / "train" / "grpo-ved"
    (folder / "rollouts").mkdir(parents=True)
    (folder / "checkpoints" / "step_00004").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"algorithm": "grpo", "group_size": 4, "lr": 1e-6}))
    metrics = []
    for step in range(1, 9):
        metrics.append({"step": step, "reward_mean": 0.2 + 0.05 * step, "reward_std": 0.1, "answer_rate": 0.6 + 0.04 * step,
                        "tool_calls": {"search": 1.2, "image_search": 1.0 + 0.1 * step}, "skill_calls": 0.1 * step,
                        "loss": {"policy": 0.5 / step, "sdl": 0.2 / step, "kl": 0.01 * step},
                        "seconds": {"rollout": 30.0, "score": 5.0, "update": 12.0 + step}})
    write_jsonl(folder / "metrics.jsonl", metrics)
    rollouts = [{**{k: v for k, v in r.items() if k not in ("output_path",)}, "reward": 0.3 + 0.1 * n}
                for n, r in enumerate(rollout_rows)]
    write_jsonl(folder / "rollouts" / "step_00001.jsonl", rollouts + rollouts[:1])   # K samples of one id
    best, worst = rollouts[0], rollouts[1]
    write_jsonl(folder / "guides.jsonl", [{
        "step": 1, "id": best["id"], "request": best.get("prompt"),
        "guide": "Resolve the capital to its country first, then search the flag by the country's name.",
        "pair": {"best": best, "worst": worst}, "reward_gap": 0.4}])
    (folder / "memory.json").write_text(json.dumps({"entries": [
        {"situation": "a flag named by its capital", "lesson": "look the country up before image_search", "uses": 3},
        {"situation": "quoted words", "lesson": "put the exact words in quotes in gen_prompt", "uses": 1}]}))
    return folder


def hostile_run(root: Path, outside: Path) -> Path:
    """Rows whose images are missing, corrupt, outside the folder, or reached through a symlink."""
    folder = root / "hostile"
    folder.mkdir()
    good = picture(folder / "images" / "good.png", (30, 120, 200), "OK")
    (folder / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 20)
    secret = picture(outside / "secret.png", (200, 30, 30), "SECRET")
    os.symlink(secret, folder / "images" / "link.png")
    (outside / "secret.txt").write_text("do not serve")
    rows = [
        {"id": "good", "prompt": "good image", "output_path": str(good), "image_status": "ok"},
        {"id": "missing", "prompt": "missing image", "output_path": "images/gone.png", "image_status": "ok"},
        {"id": "corrupt", "prompt": "corrupt image", "output_path": "images/corrupt.png", "image_status": "ok"},
        {"id": "outside", "prompt": "absolute path outside", "output_path": str(secret), "image_status": "ok"},
        {"id": "dotdot", "prompt": "relative path outside", "output_path": "../outside/secret.png", "image_status": "ok"},
        {"id": "symlink", "prompt": "symlink to outside", "output_path": "images/link.png", "image_status": "ok"},
        {"id": "text", "prompt": "not an image", "output_path": str(outside / "secret.txt"), "image_status": "ok"},
        {"id": "../../etc/passwd", "prompt": "an id that looks like a path", "output_path": str(good)},
    ]
    write_jsonl(folder / "results.jsonl", rows)
    return folder


def build_world(base: Path) -> dict:
    """Every folder the viewer tests read (built once per session)."""
    if str(base) in _BUILT:
        return _BUILT[str(base)]
    root = base / "world"
    if root.exists():
        shutil.rmtree(root)
    bench = root / "bench"
    rows = []
    for row in ROWS:
        if row["id"] in GROUND_TRUTH:
            GROUND_TRUTH[row["id"]](bench / "images" / f"{row['id']}.png")
            row = {**row, "gt_image": f"images/{row['id']}.png"}
        rows.append(row)
    write_jsonl(bench / "rows.jsonl", rows)
    run_a = real_run(root, "a", SCRIPT_A, bench)
    run_b = real_run(root, "b", SCRIPT_B, bench)
    v1 = root / "runs" / "old"
    write_jsonl(v1 / "results.jsonl", [V1_ROW])
    picture(v1 / "refs" / "flag-ma.png", (193, 39, 45), "MA")
    picture(v1 / "refs" / "flag-xk.png", (40, 80, 160), "XK")
    agent_rows = [json.loads(line) for line in (run_a / "agent" / "results.jsonl").read_text().splitlines()]
    train = training_run(root, [r for r in agent_rows if r.get("termination") == "answer"])
    from genevolve.trajectory import Trajectory     # SFT records, as the data pipeline exports them
    write_jsonl(root / "data" / "sft.jsonl", [{"id": r["id"], **Trajectory.from_dict(r).to_sft_record(),
                                               "meta": r.get("meta")} for r in agent_rows if r.get("messages")])
    script = root / "gen.script.json"
    script.write_text(json.dumps(SCRIPT_A), encoding="utf-8")
    generated = root / "single" / "out.png"
    generated.parent.mkdir(parents=True)
    cli("generate", "The flag of Morocco", "-o", str(generated), "--policy", "scripted", "--script", str(script),
        "--quiet")
    outside = base / "outside"
    outside.mkdir(exist_ok=True)
    hostile = hostile_run(root, outside)
    world = {"root": root, "bench": bench, "sft": root / "data" / "sft.jsonl", "a": run_a, "b": run_b, "v1": v1, "train": train,
             "single": generated.with_suffix(".json"), "hostile": hostile, "outside": outside}
    _BUILT[str(base)] = world
    return world


@pytest.fixture(scope="session")
def view_world(tmp_path_factory) -> dict:
    return build_world(tmp_path_factory.getbasetemp())


# -- the tests of this module -------------------------------------------------------------------
def test_discovers_runs_data_training_and_results(view_world):
    catalog = discover([view_world["root"]])
    kinds = {s.title: s.kind for s in catalog.sources.values()}
    assert kinds["world/runs/a"] == "run" and kinds["world/runs/b"] == "run" and kinds["world/runs/old"] == "run"
    assert kinds["world/bench/rows.jsonl"] == "data"
    assert kinds["world/single/out.json"] == "result"
    assert [t.title for t in catalog.training.values()] == ["world/train/grpo-ved"]
    run_a = next(s for s in catalog.sources.values() if s.title == "world/runs/a")
    stages = [(f.path.parent.name, f.stage) for f in run_a.files]
    assert stages == [("agent", "row"), ("render", "row"), ("eval", "eval")]
    assert len(run_a.entries()) == len(ROWS)
    rollouts = [s for s in catalog.sources.values() if s.kind == "rollouts"]
    assert len(rollouts) == 1 and rollouts[0].parent == next(iter(catalog.training))


def test_the_lite_index_reads_what_a_full_parse_reads(view_world):
    for path in [view_world["a"] / "render" / "results.jsonl", view_world["b"] / "eval" / "results_eval.jsonl",
                 view_world["v1"] / "results.jsonl", view_world["train"] / "rollouts" / "step_00001.jsonl"]:
        stage = "eval" if "eval" in path.name else "row"
        for line in path.read_bytes().splitlines():
            assert summarise(lite_record(line), stage) == summarise(json.loads(line), stage), path


def test_schema_2_item_has_turns_answer_as_written_and_named_repairs(view_world):
    catalog = discover([view_world["a"]])
    source = next(iter(catalog.sources.values()))
    loaded = source.load("flag_ma")
    assert set(loaded.records) == {"row", "eval"}
    assert loaded.records["row"]["schema_version"] == 2 and loaded.records["row"]["image_status"] == "ok"
    view = build_item(loaded.main)
    assert [(t.action, t.tool_name) for t in view.turns] == [("tool_call", "search"), ("tool_call", "image_search"),
                                                            ("answer", None)]
    assert [f.img_id for f in view.turns[1].found][:2] == ["IMG_001", "IMG_002"]
    assert view.turns[1].observation.startswith("--- image search result")
    assert "IMG_001" in view.written["gen_prompt"] and "IMG_001" not in view.program["gen_prompt"]
    assert [(i.kind, i.repair) for i in view.issues] == [("img_id_replaced", True)]
    assert view.turns[0].tokens.get("completion") and view.turns[0].seconds is not None


def test_schema_2_item_with_format_error_and_returned_answer(view_world):
    source = next(iter(discover([view_world["b"]]).sources.values()))
    view = build_item(source.load("flag_ma").main)
    assert [t.action for t in view.turns] == ["format_error", "tool_call", "answer_returned", "answer"]
    assert any("Format error" in r or "format" in r.lower() for r in view.turns[0].replies)
    assert view.turns[2].replies, "the runtime's reason for returning the answer is shown"
    assert len(view.program["reference_images"]) == 2
    assert any(i.kind == "references_reordered" for i in view.issues)


def test_schema_1_row_reads_the_answer_from_the_messages(view_world):
    source = next(iter(discover([view_world["v1"]]).sources.values()))
    view = build_item(source.load("old_001").main)
    assert view.schema_version == 1
    assert [t.action for t in view.turns] == ["tool_call", "answer"]
    assert [f.img_id for f in view.turns[0].found] == ["IMG_001", "IMG_002"]
    assert view.written["gen_prompt"] == "The flag shown in IMG_001, centered."
    assert view.issues[0].kind == "img_id_replaced" and view.issues[0].repair
    assert view.issues[0].detail == "'IMG_001' -> 'the first reference image'"


def test_sft_records_are_read_from_their_messages(view_world):
    source = next(iter(discover([view_world["sft"]]).sources.values()))
    assert source.kind == "data"
    view = build_item(source.load("flag_ma").main)
    assert [(t.action, t.tool_name) for t in view.turns] == [("tool_call", "search"), ("tool_call", "image_search"),
                                                            ("answer", None)]
    assert view.turns[1].observation.startswith("--- image search result")
    found = view.turns[1].found
    assert [f.img_id for f in found][:2] == ["IMG_001", "IMG_002"] and all(f.local_path for f in found)
    assert "IMG_001" in view.written["gen_prompt"] and view.program is None


def test_an_upstream_results_json_array_opens(tmp_path):
    folder = tmp_path / "upstream"
    folder.mkdir()
    rows = [{**V1_ROW, "id": f"u{n}"} for n in range(3)] + [{"prompt": "a row without an id", "termination": "error"}]
    (folder / "results.json").write_text(json.dumps(rows, indent=2))
    source = next(iter(discover([folder]).sources.values()))
    assert [e.id for e in source.entries()] == ["u0", "u1", "u2", "item_000004"]
    assert source.entries()[1].summary["n_tools"] == 1
    assert build_item(source.load("u2").main).turns[0].tool_name == "image_search"


def test_a_growing_journal_is_read_from_where_the_index_stopped(tmp_path):
    journal = write_jsonl(tmp_path / "run" / "results.jsonl", [{"id": "x1", "prompt": "one", "termination": "answer"}])
    source = next(iter(discover([tmp_path / "run"]).sources.values()))
    stamp = source.stamp
    assert [e.id for e in source.entries()] == ["x1"]
    with open(journal, "ab") as f:          # a batch appends; the last line is not finished yet
        f.write(b'{"id": "x2", "prompt": "two", "termination": "error", "error": "boom"}\n{"id": "x3", "pro')
    assert [e.id for e in source.entries()] == ["x1", "x2"] and source.stamp != stamp
    with open(journal, "ab") as f:
        f.write(b'mpt": "three", "termination": "answer"}\n{"id": "x2", "prompt": "two", "termination": "answer"}\n')
    entries = source.entries()
    assert [e.id for e in entries] == ["x1", "x2", "x3"] and entries[1].summary["termination"] == "answer"
    # a rerun compacts the journal (a new file): the index starts over
    write_jsonl(tmp_path / "run" / "results.jsonl.new", [{"id": "x3", "prompt": "three", "termination": "answer"}])
    os.replace(tmp_path / "run" / "results.jsonl.new", journal)
    assert [e.id for e in source.entries()] == ["x3"]


def test_a_stage_that_starts_later_joins_the_run(tmp_path):
    write_jsonl(tmp_path / "run" / "agent" / "results.jsonl", [{"id": "x1", "prompt": "one", "termination": "answer"}])
    source = next(iter(discover([tmp_path / "run"]).sources.values()))
    assert "image_status" not in source.entries()[0].summary
    write_jsonl(tmp_path / "run" / "render" / "results.jsonl", [{"id": "x1", "prompt": "one", "image_status": "ok"}])
    assert source.entries()[0].summary["image_status"] == "ok"


def test_repeated_ids_in_data_files_are_kept_apart(view_world):
    catalog = discover([view_world["train"]])
    rollouts = next(s for s in catalog.sources.values() if s.kind == "rollouts")
    ids = [e.id for e in rollouts.entries()]
    assert ids[-1] == f"{ids[0]}#2" and len(set(ids)) == len(ids)


def test_a_missing_folder_is_named():
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        discover(["/no-such-folder"])
