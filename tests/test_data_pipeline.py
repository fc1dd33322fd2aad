"""The data pipeline on the real offline world: recipes, requests, the expert teacher through the real
agent runtime, checks, splits, ground truth, export, resume and bad input."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from genevolve.agent import Agent
from genevolve.cli import main as cli_main
from genevolve.pipeline import data as stages
from genevolve.data.grounding import program_grounding
from genevolve.data.recipes import sample_recipes
from genevolve.data.splits import verify_decontamination
from genevolve.data.taxonomy import CATEGORIES, KA, QA, Recipe, RecipeError
from genevolve.data.world import OfflineWorld
from genevolve.data.writers import OfflineWriter, check_request
from genevolve.policies.base import Sampling
from genevolve.policies.expert import ExpertPolicy
from genevolve.policies.scripted import ScriptedPolicy
from genevolve.protocol import parse_turn


@pytest.fixture(scope="module")
def world() -> OfflineWorld:
    return OfflineWorld.load()


@pytest.fixture(scope="module")
def built(world, tmp_path_factory) -> Path:
    """A tiny offline build through every stage (recipes -> report), shared by the tests below."""
    out = tmp_path_factory.mktemp("data")
    stages.stage_recipes(out, n=40, seed=3, world=world)
    asyncio.run(stages.stage_requests(out))
    asyncio.run(stages.stage_teacher(out, teacher_options={"mistake_rate": 0.5}))
    asyncio.run(stages.stage_checks(out))
    stages.stage_splits(out, bench_share=0.25)
    asyncio.run(stages.stage_gt(out, long_side=256))
    from genevolve.data.export import stage_export
    from genevolve.data.report import stage_calibrate, stage_report
    stage_export(out, hf=True)
    asyncio.run(stage_calibrate(out, pairs=1, long_side=256))
    stage_report(out)
    return out


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_world_binds_entities_in_every_category(world):
    counts = world.counts()
    assert set(counts["entities"]) == set(CATEGORIES)
    assert all(n > 0 for n in counts["entities"].values()), counts["entities"]
    assert "material_physics" in counts["no_offline_gt"]
    for cat, entities in world.by_category().items():
        for e in entities[:20]:
            assert e.renditions and all(r in world.entries for r in e.renditions)
            if CATEGORIES[cat].track == KA:
                assert e.clues, e.key
                for clue in e.clues:             # the clue hides the name and the search finds the fact
                    answer = e.facts.get("country") if e.kind == "landmark" else e.name
                    assert not re.search(rf"\b{re.escape(answer.lower())}", clue["clue"].lower()), (e.key, clue)
                    assert 1 <= clue["rank"] <= 3


def test_recipes_are_balanced_seeded_and_checked(world):
    recipes = sample_recipes(world, 64, seed=1)
    again = sample_recipes(world, 64, seed=1)
    assert [r.to_dict() for r in recipes] == [r.to_dict() for r in again]
    assert [r.to_dict() for r in sample_recipes(world, 64, seed=2)] != [r.to_dict() for r in recipes]
    by_track = Counter(r.track for r in recipes)
    assert by_track[KA] == round(0.6 * 64) and by_track[QA] == 64 - by_track[KA]
    assert set(Counter(r.category for r in recipes)) == set(CATEGORIES)
    for r in recipes:
        assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))).to_dict() == r.to_dict()
        assert (r.hidden is not None) == (r.track == KA) == r.needs_text_search
    with pytest.raises(RecipeError, match="unknown categories"):
        sample_recipes(world, 4, categories=["dragons"])
    bad = {**recipes[0].to_dict(), "category": "dragons"}
    with pytest.raises(RecipeError, match="field 'category'"):
        Recipe.from_dict(bad, "recipes.jsonl:7")


def test_offline_writer_requests_pass_their_checks(world):
    writer = OfflineWriter()
    for r in sample_recipes(world, 48, seed=5):
        text = writer.write(r)
        problems = check_request(text, r)
        if problems:                             # a retry with other wording must fix it
            problems = check_request(writer.write(r, 1), r)
        assert not problems, (text, problems)
        assert "image_search" not in text and "query_knowledge" not in text


def test_expert_resolves_hidden_subjects_with_real_tools(world):
    recipe = next(r for r in sample_recipes(world, 32, seed=7) if r.category == "architecture_landmark"
                  and r.task_family == "symbol_of_hidden")
    request = OfflineWriter().write(recipe)
    expert = ExpertPolicy(mistake_rate=1.0)
    expert.add(request, recipe)
    agent = Agent(expert, stages.offline_tools())
    traj = agent.run_sync(request)
    assert traj.termination == "answer"
    calls = [c.name for c in traj.tool_calls]
    first_search = calls.index("search")
    assert calls.index("image_search", first_search) > first_search      # resolved before the flag search
    assert any(recipe.hidden.answer in c.observation for c in traj.tool_calls if c.name == "search")
    grounding = program_grounding({"recipe": recipe.to_dict()}, traj.program.to_dict(),
                                  {k: v.to_dict() for k, v in traj.images.items()})
    assert grounding["grounded"], grounding
    assert expert.notes(request)["mistakes"] == [0]                        # the planned wrong first step
    # the old two-argument call works too
    reply = asyncio.run(expert.chat(traj.messages[:2], Sampling()))
    assert parse_turn(reply.text).kind == "tool_call"


def test_build_exports_replayable_sft_and_decontaminated_splits(built):
    manifest = json.loads((built / "export" / "MANIFEST.json").read_text())
    assert manifest["decontamination"].startswith("clean")
    sft = jsonl(built / "export" / "sft" / "train.jsonl")
    assert sft and all(len(r["loss_mask"]) == len(r["messages"]) for r in sft)
    tools = stages.offline_tools()
    for r in sft[:6]:
        assistants = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        assert all(parse_turn(a).kind in ("tool_call", "answer") for a in assistants)
        # replaying the recorded turns through the agent reproduces the conversation exactly
        replay = Agent(ScriptedPolicy(turns=assistants), tools).run_sync(r["messages"][1]["content"])
        assert [m["content"] for m in replay.messages] == [m["content"] for m in r["messages"]]
    masked = [r for r in sft if r["meta"]["mistakes"]]
    assert all(r["loss_mask"][2] == 0 for r in masked)                   # the mistake turn is not learned
    rows = []
    for kind, name, split in (("sft", "train", "sft_train"), ("pool", "train", "pool_train"), ("bench", "test", "bench")):
        for r in jsonl(built / "export" / kind / f"{name}.jsonl"):
            meta = r["meta"]
            rows.append({"id": r["id"], "split": split, "category": meta.get("category") or r["category"],
                         "entity_keys": meta["entity_keys"] if kind == "sft" else meta["entity"]["keys"],
                         "prompt_hash": meta["prompt_hash"]})
    assert not verify_decontamination(rows)
    bench = jsonl(built / "export" / "bench" / "test.jsonl")
    assert bench and {"id", "question", "gt_image", "eval_type", "category", "difficulty", "meta"} <= set(bench[0])
    for r in bench:
        assert (built / "export" / "bench" / r["gt_image"]).is_file()
        assert r["category"] != "material_physics"
    gts = jsonl(built / "gt" / "results.jsonl")
    for g in gts:                                # the GT never reuses the image the teacher chose
        teacher = json.loads(json.dumps(stages.load(built, "teacher")[g["id"]]))
        chosen = {Path(ref["local_path"]).stem for ref in teacher["trajectory"]["program"]["reference_images"]}
        assert not any(u["rendition"] == "alternate" and u["library_id"] in chosen for u in g["renditions"])
        assert all(u["rendition"] in ("alternate", "restaged") for u in g["renditions"])
    from datasets import load_from_disk
    dd = load_from_disk(str(built / "export" / "hf"))
    assert dd["sft_train"].num_rows == len(sft) and dd["bench"].num_rows == len(bench)


def test_report_has_yield_table_reasons_and_calibration(built):
    report = json.loads((built / "report.json").read_text())
    stages_seen = [row["stage"] for row in report["table"]]
    assert stages_seen == ["recipes", "requests", "teacher", "checks", "gt"]
    assert all(0 <= row["kept"] <= row["in"] for row in report["table"])
    assert report["calibration"]["pairs"] == 1
    text = (built / "REPORT.md").read_text()
    assert "| stage | in | kept | yield |" in text and "cross-rendition" in text and "material_physics" in text


def test_stages_resume_without_loss_or_duplicates(built, tmp_path):
    out = tmp_path / "copy"
    import shutil
    shutil.copytree(built, out)
    journal = out / "teacher" / "results.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][: len(lines[-3]) // 2])   # a kill mid-write
    counts = asyncio.run(stages.stage_teacher(out))
    assert counts["ran"] == 3 and counts["skipped"] == len(lines) - 3
    again = jsonl(journal)
    assert len(again) == len({r["id"] for r in again}) == len(lines)
    assert asyncio.run(stages.stage_teacher(out))["ran"] == 0


def test_bad_input_gets_per_item_reasons(world, tmp_path):
    out = tmp_path / "bad"
    recipes = sample_recipes(world, 6, seed=11)
    path = tmp_path / "recipes.jsonl"
    rows = [r.to_dict() for r in recipes]
    rows[1]["category"] = "dragons"
    rows.append(rows[0])                                                  # a duplicate id
    path.write_text("\n".join(json.dumps(r) for r in rows[:2] + rows[2:6]) + "\nnot json\n")
    counts = stages.import_recipes(out, path)
    records = stages.load(out, "recipes")
    assert counts["kept"] == 5
    assert "unknown category 'dragons'" in records[recipes[1].id]["error"] and ":2:" in records[recipes[1].id]["error"]
    assert any("not valid JSON" in (r.get("error") or "") for r in records.values())
    asyncio.run(stages.stage_requests(out))
    # a teacher that never answers: every run ends without a program and says so
    never = ScriptedPolicy(turns=['<think>x</think><tool_call>{"name": "search", "arguments": {"queries": ["x"]}}'
                                  '</tool_call>'] * 20)
    asyncio.run(stages.stage_teacher(out, policy=never))
    teacher = stages.load(out, "teacher")
    assert teacher and all("teacher gave no answer" in r["error"] for r in teacher.values())
    with pytest.raises(stages.StageError, match="run the 'checks' stage first"):
        stages.stage_splits(out)


def test_duplicate_requests_are_dropped_with_the_first_id(world, tmp_path):
    out = tmp_path / "dups"
    recipe = sample_recipes(world, 1, seed=13, categories=["grounded_quantity_scene"])[0]
    twin = Recipe.from_dict({**recipe.to_dict(), "id": recipe.id + "_twin"})
    (tmp_path / "r.jsonl").write_text(json.dumps(recipe.to_dict()) + "\n" + json.dumps(twin.to_dict()) + "\n")
    stages.import_recipes(out, tmp_path / "r.jsonl")
    asyncio.run(stages.stage_requests(out, attempts=1))
    records = stages.load(out, "requests")
    assert records[recipe.id]["error"] is None
    assert f"duplicate prompt of {recipe.id}" in records[twin.id]["error"]


def test_cli_build_runs_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["data", "build", "--offline", "--n", "8", "--output-dir", str(out), "--pairs", "0", "--no-hf",
            "--quiet", "--long-side", "256", "--categories", "city_street,grounded_text_layout"]
    assert cli_main(argv) == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["stage"] for r in table][:2] == ["recipes", "requests"]
    before = (out / "teacher" / "results.jsonl").read_text()
    assert cli_main(argv) == 0
    assert (out / "teacher" / "results.jsonl").read_text() == before
    assert cli_main(["data", "report", "--output-dir", str(out)]) == 0
    assert "# Data build report" in capsys.readouterr().out
    assert cli_main(["data", "teacher"]) == 2
    assert cli_main(["data", "recipes", "--output-dir", str(tmp_path / "x"), "--categories", "dragons", "--n", "3"]) == 2
    assert "unknown categories" in capsys.readouterr().err


def test_checks_drop_ungrounded_programs_and_grounding_reads_the_recipe(world):
    recipe = next(r for r in sample_recipes(world, 40, seed=17) if r.category == "city_street")
    request = OfflineWriter().write(recipe)
    flag = recipe.subjects[0]
    # skips the search, finds the flag by its (privileged) name, forgets the city's name on the sign
    lazy = ScriptedPolicy(turns=[
        f'<think>Flag first.</think><tool_call>{{"name": "image_search", "arguments": {{"query": "{flag.visual_query}"}}}}'
        '</tool_call>',
        '<think>Done.</think><answer>{"gen_prompt": "The flag from the first reference image, centered.", '
        '"reference_images": [{"img_id": "IMG_001", "note": "flag"}]}</answer>'])
    traj = Agent(lazy, stages.offline_tools()).run_sync(request)
    from genevolve.data.checks import offline_audit, run_checks
    checks = run_checks(recipe, traj)
    assert "no search observation names the hidden answer" in checks["grounded"]
    assert "program misses text" in checks["constraints"] and "skills not loaded" in checks["skills"]
    assert offline_audit(recipe, request, traj, checks)["reference_grounding"] == 1.0
    meta = {"recipe": recipe.to_dict()}
    right = {"gen_prompt": f'The flag, with a sign that reads "{recipe.texts[0]}".',
             "reference_images": [{"img_id": "IMG_001", "title": flag.titles[0]}]}
    assert program_grounding(meta, right)["grounded"]
    unnamed = {**right, "gen_prompt": "The flag."}
    assert program_grounding(meta, unnamed)["names"]["present"] == []
    wrong = {**right, "reference_images": [{"img_id": "IMG_001", "title": "Flag of Atlantis (emoji)"}]}
    result = program_grounding({"meta": meta}, wrong)
    assert not result["grounded"] and result["score"] == 0.5 and result["hidden"] == recipe.hidden.answer


def test_missing_library_images_fail_their_row_only(world, tmp_path):
    out = tmp_path / "gt"
    recipes = sample_recipes(world, 2, seed=19, categories=["grounded_text_layout"], per_category=2)
    broken = recipes[0].to_dict()
    broken["subjects"][0]["renditions"] = ["emoji-not-in-the-library"]
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(broken) + "\n" + json.dumps(recipes[1].to_dict()) + "\n")
    stages.import_recipes(out, path)
    asyncio.run(stages.stage_requests(out))
    stages.stage_splits(out, source="requests", bench_share=0.0)
    counts = asyncio.run(stages.stage_gt(out, long_side=128))
    records = stages.load(out, "gt")
    assert counts["errors"] == 1 and records[recipes[1].id]["error"] is None
    assert "emoji-not-in-the-library" in records[recipes[0].id]["error"]


def test_cli_teacher_runs_any_policy_by_name(world, tmp_path, capsys):
    out = tmp_path / "policy"
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in sample_recipes(world, 2, seed=23,
                                                                                    categories=["spatial_composition"])))
    assert cli_main(["data", "recipes", "--input", str(path), "--output-dir", str(out)]) == 0
    assert cli_main(["data", "requests", "--output-dir", str(out), "--quiet"]) == 0
    script = tmp_path / "script.json"
    script.write_text(json.dumps(['<think>x</think><tool_call>{"name": "image_search", "arguments": {"query": "cat"}}'
                                  '</tool_call>', '<think>y</think><answer>{"gen_prompt": "The first reference image.",'
                                  ' "reference_images": [{"img_id": "IMG_001", "note": "x"}]}</answer>']))
    assert cli_main(["data", "teacher", "--output-dir", str(out), "--teacher", "policy", "--policy", "scripted",
                     "--script", str(script), "--quiet"]) == 0
    assert cli_main(["data", "checks", "--output-dir", str(out), "--quiet"]) == 0
    capsys.readouterr()
    teacher, checks = stages.load(out, "teacher"), stages.load(out, "checks")
    assert len(teacher) == 2 and all(r["teacher"] == "scripted" and r["error"] is None for r in teacher.values())
    assert all("skills not loaded" in r["error"] for r in checks.values())     # a lazy teacher is not kept
