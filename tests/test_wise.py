"""WISE: prompt files, both scoring protocols against hand-computed aggregates, the CLI."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from fakes.judge_server import FakeJudgeServer, message_text
from genevolve.judges.wise import (LEGACY, VERIFIED, load_prompts, parse_legacy_reply, parse_verified_reply,
                                   range_mismatches, summarize_wise, wiscore)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    monkeypatch.setenv("GENEVOLVE_CONFIG", str(cfg))
    for var in ("GENEVOLVE_JUDGE_BASE_URL", "GENEVOLVE_JUDGE_MODEL", "GENEVOLVE_JUDGE_API_KEY",
                "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)


def record(pid, category, prompt=None):
    return {"Prompt": prompt or f"Prompt number {pid}", "Explanation": f"Explanation for item {pid}",
            "Category": category, "Subcategory": "Test", "prompt_id": pid}


def write_prompts(folder, name, records):
    path = folder / name
    path.write_text(json.dumps(records))
    return path


def write_images(folder, ids):
    folder.mkdir(exist_ok=True)
    for pid in ids:
        Image.new("RGB", (40, 30), (pid % 255, 80, 160)).save(folder / f"{pid}.png")
    return folder


def run_cli(argv):
    from genevolve.cli import main
    return main(argv)


def item_of(body) -> int:
    return int(re.search(r"Prompt number (\d+)", message_text(body)).group(1))


# ------------------------------------------------------------------ formulas and parsing

def test_wiscore_and_weights():
    assert wiscore(2, 2, 2) == pytest.approx(1.0)
    assert wiscore(1, 2, 1) == pytest.approx((0.7 + 0.4 + 0.1) / 2)
    assert sum(LEGACY.weights.values()) == pytest.approx(1.0)
    assert sum(VERIFIED.weights.values()) == pytest.approx(1.0)
    assert [LEGACY.category_of(i) for i in (1, 400, 401, 567, 568, 700, 701, 800, 801, 900, 901, 1000, 1001)] == \
        ["cultural", "cultural", "time", "time", "space", "space", "biology", "biology", "physics", "physics",
         "chemistry", "chemistry", None]
    assert [VERIFIED.category_of(i) for i in (400, 401, 520, 521, 640, 641, 760, 761, 880, 881, 1000)] == \
        ["cultural", "time", "time", "space", "space", "biology", "biology", "physics", "physics", "chemistry",
         "chemistry"]


def test_reply_parsing():
    assert parse_legacy_reply('{"consistency": 2, "realism": 1, "aesthetic_quality": 0}') == \
        {"consistency": 2, "realism": 1, "aesthetic_quality": 0}
    assert parse_legacy_reply("Consistency: 1\nRealism: 2\n**Aesthetic Quality:** 1") == \
        {"consistency": 1, "realism": 2, "aesthetic_quality": 1}
    for bad in ('{"consistency": 3, "realism": 1, "aesthetic_quality": 0}', "Consistency: 2\nRealism: 1",
                '{"consistency": 1.5, "realism": 1, "aesthetic_quality": 0}'):
        with pytest.raises(ValueError):
            parse_legacy_reply(bad)
    assert parse_verified_reply("The mooncake is right.\nScore: 1") == 1.0
    assert parse_verified_reply("Earlier I wrote Score: 1 but on reflection\n**Score:** 0") == 0.0
    for bad in ("Looks correct to me.", "Score: 2", "Score: yes"):
        with pytest.raises(ValueError):
            parse_verified_reply(bad)


def test_load_prompts_validates(tmp_path):
    good = write_prompts(tmp_path, "a.json", [record(2, "Cultural knowledge"), record(1, "Cultural knowledge")])
    other = write_prompts(tmp_path, "b.json", [record(401, "time")])
    prompts = load_prompts([good, other])
    assert [p.prompt_id for p in prompts] == [1, 2, 401]
    assert prompts[0].to_row()["id"] == "1" and prompts[0].explanation == "Explanation for item 1"
    dup = write_prompts(tmp_path, "dup.json", [record(1, "Cultural")])
    with pytest.raises(ValueError, match=r"dup.json record 0: prompt_id 1 already appears in .*a.json record 1"):
        load_prompts([good, dup])
    no_expl = write_prompts(tmp_path, "c.json", [{"Prompt": "x", "prompt_id": 5}])
    with pytest.raises(ValueError, match=r"c.json record 0 \(prompt_id 5\): 'Explanation'"):
        load_prompts([no_expl])
    bad_id = write_prompts(tmp_path, "d.json", [record("seven", "time")])
    with pytest.raises(ValueError, match="'prompt_id' must be a positive integer"):
        load_prompts([bad_id])
    (tmp_path / "e.json").write_text('{"not": "an array"}')
    with pytest.raises(ValueError, match="JSON array"):
        load_prompts([tmp_path / "e.json"])


def test_range_mismatch_detects_the_other_protocols_files(tmp_path):
    # verified files put "Space" at 521-640; under legacy ids those are still "time"
    prompts = load_prompts([write_prompts(tmp_path, "v.json", [record(530, "Space"), record(450, "time")])])
    assert range_mismatches(prompts, VERIFIED) == []
    assert range_mismatches(prompts, LEGACY) == [530]


def test_summary_without_every_category():
    records = [{"prompt_id": 1, "score": 1.0}, {"prompt_id": 2, "score": 0.0}, {"prompt_id": 450, "score": 1.0},
               {"prompt_id": 1200, "score": 1.0}]
    s = summarize_wise(records, VERIFIED)
    assert s["overall"] is None and s["overall_missing_zero"] is None
    assert s["overall_renormalised"] == pytest.approx((0.4 * 0.5 + 0.12 * 1.0) / 0.52)
    assert s["unassigned_prompt_ids"] == [1200] and s["n_items"] == 3


# ------------------------------------------------------------------ scoring through the CLI

LEGACY_PROMPTS = [record(1, "Cultural knowledge"), record(2, "Cultural knowledge"), record(3, "Cultural knowledge"),
                  record(401, "time"), record(600, "Space"), record(750, "Biology"),
                  record(850, "Physical Knowledge"), record(950, "Chemistry")]


def legacy_judge():
    asked: dict[int, int] = {}
    replies = {
        1: ['{"consistency": 2, "realism": 2, "aesthetic_quality": 2}'],                 # 1.0
        2: ["Consistency: 1\nRealism: 2\nAesthetic Quality: 1"],                         # 0.6
        401: ["```json\n{'consistency': 0, 'realism': 1, 'aesthetic_quality': 2,}\n```"],  # 0.2
        600: ['{"consistency": 3, "realism": 1, "aesthetic_quality": 1}',                # out of range: asked again
              '{"consistency": 2, "realism": 1, "aesthetic_quality": 1}'],               # 0.85
        750: ['{"consistency": 1, "realism": 1, "aesthetic_quality": 1}'],               # 0.5
        850: ['{"consistency": 2, "realism": 0, "aesthetic_quality": 0}'],               # 0.7
        950: ['Scores: {"consistency": 1, "realism": 0, "aesthetic_quality": 2}'],       # 0.45
        3: ['{"consistency": 2, "realism": 0, "aesthetic_quality": 0}'],                 # 0.7 (second run)
    }

    def respond(body):
        pid = item_of(body)
        n = asked.get(pid, 0)
        asked[pid] = n + 1
        return replies[pid][min(n, len(replies[pid]) - 1)]
    return respond


def test_wise_score_legacy_end_to_end(tmp_path, capsys):
    prompts = write_prompts(tmp_path, "legacy.json", LEGACY_PROMPTS)
    images = write_images(tmp_path / "images", [1, 2, 401, 600, 750, 850, 950])     # 3.png is missing
    out = tmp_path / "scores"
    with FakeJudgeServer(responder=legacy_judge()) as server:
        argv = ["wise", "score", "--prompts", str(prompts), "--images", str(images), "--protocol", "legacy",
                "--base-url", server.base_url, "--model", "gpt-4o-2024-05-13", "--output-dir", str(out), "--quiet"]
        assert run_cli(argv) == 0
        assert len(server.requests) == 8          # 7 images, one asked twice; the missing one never sent
        body = next(b for b in server.requests if item_of(b) == 1)
        assert body["temperature"] == 0 and "Explanation for item 1" in message_text(body)
        assert [p["type"] for p in body["messages"][1]["content"]] == ["text", "image_url"]
        summary = json.loads((out / "wise_legacy_summary.json").read_text())
        cats = {c: v["score"] for c, v in summary["categories"].items()}
        assert cats == pytest.approx({"cultural": 0.8, "time": 0.2, "space": 0.85, "biology": 0.5,
                                      "physics": 0.7, "chemistry": 0.45})
        # .4*.8 + .167*.2 + .133*.85 + .1*(.5 + .7 + .45)
        assert summary["overall"] == pytest.approx(0.63145)
        assert summary["overall_missing_zero"] == pytest.approx(0.4 * 1.6 / 3 + 0.0334 + 0.11305 + 0.165)
        assert summary["n_failed"] == 1 and summary["failures"][0]["prompt_id"] == 3
        assert "not found" in summary["failures"][0]["error"]
        assert summary["judge"]["model"] == "gpt-4o-2024-05-13"
        rows = [json.loads(x) for x in (out / "scores_legacy.jsonl").read_text().splitlines()]
        assert rows[0] == {"prompt_id": 1, "consistency": 2, "realism": 2, "aesthetic_quality": 2}
        assert len(rows) == 7
        assert "0.6315" in capsys.readouterr().out

        # the missing image appears: a rerun judges only that one
        write_images(images, [3])
        asked_before = len(server.requests)
        assert run_cli(argv) == 0
        assert [item_of(b) for b in server.requests[asked_before:]] == [3]
        summary = json.loads((out / "wise_legacy_summary.json").read_text())
        assert summary["categories"]["cultural"]["score"] == pytest.approx((1.0 + 0.6 + 0.7) / 3)
        assert summary["n_failed"] == 0 and summary["overall"] == summary["overall_missing_zero"]


def verified_judge():
    asked: dict[int, int] = {}
    replies = {1: ["The mooncake is shown.\nScore: 1"], 401: ["Daylight, as required. **Score:** 1"],
               450: ["It is night, which is wrong.\nScore: 0"],
               530: ["I cannot decide.", "On reflection the view is right.\nScore: 1"],
               700: ["Score: 1"], 800: ["Score: 0"], 900: ["score = 1"]}

    def respond(body):
        pid = item_of(body)
        n = asked.get(pid, 0)
        asked[pid] = n + 1
        return replies[pid][min(n, len(replies[pid]) - 1)]
    return respond


def test_wise_score_verified_end_to_end(tmp_path, capsys):
    prompts = write_prompts(tmp_path, "verified.json",
                            [record(1, "Cultural knowledge"), record(401, "time"), record(450, "time"),
                             record(530, "Space"), record(700, "Biology"), record(800, "Physical Knowledge"),
                             record(900, "Chemistry")])
    images = write_images(tmp_path / "images", [1, 401, 450, 530, 700, 800, 900])
    with FakeJudgeServer(responder=verified_judge()) as server:
        assert run_cli(["wise", "score", "--prompts", str(prompts), "--images", str(images), "--protocol",
                        "verified", "--base-url", server.base_url, "--model", "Qwen3.5-35B-A3B", "--quiet",
                        "--parallel", "3"]) == 0
        assert len(server.requests) == 8
    out = tmp_path                                   # default: the parent of --images
    summary = json.loads((out / "wise_verified_summary.json").read_text())
    cats = {c: v["score"] for c, v in summary["categories"].items()}
    assert cats == {"cultural": 1.0, "time": 0.5, "space": 1.0, "biology": 1.0, "physics": 0.0, "chemistry": 1.0}
    assert summary["overall"] == pytest.approx(0.40 * 1.0 + 0.12 * (0.5 + 1 + 1 + 0 + 1))    # 0.82
    rows = [json.loads(x) for x in (out / "scores_verified.jsonl").read_text().splitlines()]
    assert {"prompt_id": 450, "score": 0.0} in rows and len(rows) == 7
    assert "warning" not in capsys.readouterr().err


def test_wise_score_warns_on_protocol_mismatch_and_bad_input(tmp_path, capsys):
    prompts = write_prompts(tmp_path, "verified.json", [record(530, "Space")])
    images = write_images(tmp_path / "images", [530])
    with FakeJudgeServer(responder=lambda body: '{"consistency": 2, "realism": 2, "aesthetic_quality": 2}') as server:
        assert run_cli(["wise", "score", "--prompts", str(prompts), "--images", str(images), "--protocol",
                        "legacy", "--base-url", server.base_url, "--model", "m", "--quiet"]) == 0
    assert "are these the verified prompt files?" in capsys.readouterr().err
    assert run_cli(["wise", "score", "--prompts", str(tmp_path / "nope.json"), "--images", str(images),
                    "--protocol", "legacy", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]) == 2
    assert "cannot read the prompt file" in capsys.readouterr().err


def test_wise_run_then_score(tmp_path, capsys):
    """Agent (scripted policy) + offline renderer over WISE prompts, images named {prompt_id}.png."""
    prompts = write_prompts(tmp_path, "p.json", [
        record(1, "Cultural knowledge", "The round pastry shared at the Mid-Autumn Festival"),
        record(401, "time", "The Sydney Opera House when London has just passed midnight")])
    script = tmp_path / "script.json"
    script.write_text(json.dumps(['<think>Known.</think>\n<answer>{"gen_prompt": "A round golden mooncake on a '
                                  'white plate", "reference_images": []}</answer>']))
    out = tmp_path / "run"
    argv = ["wise", "run", "--prompts", str(prompts), "--output-dir", str(out), "--policy", "scripted",
            "--script", str(script), "--backend", "offline", "--backend-opt", "long_side=128", "--quiet"]
    assert run_cli(argv) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["1.png", "401.png"]
    results = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
    assert results["401"]["prompt"].startswith("The Sydney Opera House") and results["401"]["prompt_id"] == 401
    first = json.loads(capsys.readouterr().out)
    assert first["render"]["rendered_now"] == 2 and first["agent"]["ran"] == 2
    assert run_cli(argv) == 0                                        # resumed: nothing left to do
    again = json.loads(capsys.readouterr().out)
    assert again["agent"]["skipped"] == 2 and again["render"]["already_done"] == 2
    renders = json.loads((out / "renders.json").read_text())          # the render stage's records
    assert [r["id"] for r in renders] == ["1", "401"] and all(r["success"] and r["error"] is None for r in renders)
    assert renders[0]["image_path"] == str(out / "images" / "1.png")

    with FakeJudgeServer(responder=lambda body: "Score: 1" if "Mid-Autumn" in message_text(body) else "Score: 0") \
            as server:
        assert run_cli(["wise", "score", "--prompts", str(prompts), "--images", str(out / "images"),
                        "--protocol", "verified", "--base-url", server.base_url, "--model", "m", "--quiet"]) == 0
    summary = json.loads((out / "wise_verified_summary.json").read_text())
    assert summary["categories"]["cultural"]["score"] == 1.0 and summary["categories"]["time"]["score"] == 0.0
    assert summary["overall"] is None and summary["overall_renormalised"] == pytest.approx(0.4 / 0.52)


# ------------------------------------------------------------------ the WISE repository's data folders

VERIFIED_LAYOUT = {       # file name -> (first prompt_id, Category labels in order), as in data_verified/
    "cultural_common_sense_verified.json": [(i, "Cultural knowledge") for i in range(1, 13)],
    "spatio-temporal_reasoning_verified.json": [(i, "time") for i in range(401, 405)]
                                               + [(i, "Space") for i in range(521, 525)],
    "natural_science_verified.json": [(i, "Biology") for i in range(641, 645)]
                                     + [(i, "Physical Knowledge") for i in range(761, 765)]
                                     + [(i, "Chemistry") for i in range(881, 885)],
}


def wise_data_folder(tmp_path, rewritten=False):
    """A folder in the layout of WISE's data_verified/ (category files plus merge.json, which repeats
    their prompt_ids), or of WISE_legacy/data/ (category files plus *_rewrite.json copies)."""
    folder = tmp_path / ("legacy_data" if rewritten else "data_verified")
    folder.mkdir()
    merged = []
    for name, items in VERIFIED_LAYOUT.items():
        records = [record(pid, category) for pid, category in items]
        write_prompts(folder, name, records)
        merged += records
        if rewritten:
            write_prompts(folder, name.replace(".json", "_rewrite.json"),
                          [{**r, "Prompt": f"Answer {r['prompt_id']}."} for r in records])
    if not rewritten:
        write_prompts(folder, "merge.json", merged)
    return folder


@pytest.mark.parametrize("rewritten", [False, True])
def test_a_wise_data_folder_reads_its_category_files_and_skips_the_copies(tmp_path, rewritten):
    folder = wise_data_folder(tmp_path, rewritten)
    notes = []
    prompts = load_prompts([folder], say=notes.append)
    expected = sorted(pid for items in VERIFIED_LAYOUT.values() for pid, _ in items)
    assert [p.prompt_id for p in prompts] == expected
    assert all(p.prompt.startswith("Prompt number") for p in prompts)      # never the rewritten prompts
    assert len(notes) == (3 if rewritten else 1) and all(n.startswith("skipping ") for n in notes)
    assert ("_rewrite.json" if rewritten else "merge.json") in notes[0]
    # the folder's files named one by one (a shell glob) read the same way
    assert [p.prompt_id for p in load_prompts(sorted(folder.glob("*.json")))] == expected
    if not rewritten:                              # the merged file alone is read as asked
        assert [p.prompt_id for p in load_prompts([folder / "merge.json"])] == expected
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .json prompt files"):
        load_prompts([tmp_path / "empty"])


def test_sample_is_stratified_by_category_and_seeded(tmp_path):
    from genevolve.judges.wise import CATEGORIES, normalised_category, sample_prompts

    prompts = load_prompts([wise_data_folder(tmp_path)])           # 12 cultural and 4 in each of 5 others
    picked = sample_prompts(prompts, 8, seed=3)
    by_category = {c: sum(normalised_category(p.category) == c for p in picked) for c in CATEGORIES}
    assert by_category == {"cultural": 3, "time": 1, "space": 1, "biology": 1, "physics": 1, "chemistry": 1}
    assert [p.prompt_id for p in picked] == sorted(p.prompt_id for p in picked)
    assert picked == sample_prompts(prompts, 8, seed=3)
    assert any(sample_prompts(prompts, 8, seed=s) != picked for s in range(4, 10))
    half = sample_prompts(prompts, 16, seed=0)
    counts = {c: sum(normalised_category(p.category) == c for p in half) for c in ("cultural", "time", "space")}
    assert counts == {"cultural": 6, "time": 2, "space": 2}
    assert len(sample_prompts(prompts, 100, seed=0)) == len(prompts)


def test_wise_run_takes_the_data_folder_and_a_sample(tmp_path, capsys):
    folder = wise_data_folder(tmp_path)
    script = tmp_path / "script.json"
    script.write_text(json.dumps(['<think>Known.</think>\n<answer>{"gen_prompt": "A still life", '
                                  '"reference_images": []}</answer>']))
    out = tmp_path / "run"
    assert run_cli(["wise", "run", "--prompts", str(folder), "--sample", "6", "--seed", "1", "--output-dir", str(out),
                    "--policy", "scripted", "--script", str(script), "--backend", "offline", "--backend-opt",
                    "long_side=64", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "skipping" in captured.err and "merge.json" in captured.err
    ids = [int(r["id"]) for r in json.loads((out / "results.json").read_text())]
    assert len(ids) == 6 and len({VERIFIED.category_of(i) for i in ids}) >= 4
    assert sorted(p.stem for p in (out / "images").iterdir()) == sorted(map(str, ids))
