"""The render, judge and bench stages: one record schema, images that can be told apart, kill -9 resume.

The judge and bench tests use a generated image and a ground truth that differ in colour and size, and
a loopback judge that grades 1 only when IMAGE 1 is the generated image and IMAGE 2 the ground truth,
so a stage that swaps the two cannot pass. The kill tests run a stage in a child process that freezes
at a point it reports (after the k-th journaled item, or half way through a rewrite of the results
array), kill it with SIGKILL there, rerun, and check that no item is lost, repeated or redone.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from fakes.judge_server import FakeJudgeServer, image_urls, kscore_reply, message_text

HERE = Path(__file__).parent
GEN_SIZE, GT_SIZE = (64, 48), (40, 24)
GEN_RGB, GT_RGB = (220, 30, 30), (30, 30, 220)
RENDER_FIELDS = {"id", "error", "output_path", "image_path", "success", "image_status"}


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """No settings leak in from the developer's environment or config file."""
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    monkeypatch.setenv("GENEVOLVE_CONFIG", str(cfg))
    for var in ("GENEVOLVE_JUDGE_BASE_URL", "GENEVOLVE_JUDGE_MODEL", "GENEVOLVE_JUDGE_API_KEY", "OPENAI_BASE_URL",
                "OPENAI_API_KEY", "GENEVOLVE_BACKEND", "GENEVOLVE_POLICY", "GENEVOLVE_SEARCH",
                "GENEVOLVE_IMAGE_SEARCH"):
        monkeypatch.delenv(var, raising=False)


def decode(data_url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")


def is_red(im: Image.Image) -> bool:
    r, g, b = im.getpixel((im.width // 2, im.height // 2))
    return r > 150 and b < 100


def is_blue(im: Image.Image) -> bool:
    r, g, b = im.getpixel((im.width // 2, im.height // 2))
    return b > 150 and r < 100


def order_checking_judge(generated_ok, truth_ok):
    """Grades 1 everywhere when IMAGE 1 passes `generated_ok` and IMAGE 2 passes `truth_ok`, else 0."""
    def respond(body):
        first, second = (decode(u) for u in image_urls(body))
        good = generated_ok(first) and truth_ok(second)
        return kscore_reply(*([1] * 4 if good else [0] * 4))
    return respond


def run_cli(argv):
    from genevolve.cli import main
    return main(argv)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ the judge stage

def judged_results(tmp_path: Path) -> tuple[Path, Path]:
    """Render-stage rows in our format and in the released runtime's (image_path, success)."""
    gt_root, run = tmp_path / "gt", tmp_path / "render"
    gt_root.mkdir()
    run.mkdir()
    Image.new("RGB", GT_SIZE, GT_RGB).save(gt_root / "truth.png")
    for name in ("ours", "upstream"):
        Image.new("RGB", GEN_SIZE, GEN_RGB).save(run / f"{name}.png")
    rows = [
        {"id": "ours", "prompt": "a red card", "gt_image": "truth.png", "output_path": str(run / "ours.png"),
         "image_path": str(run / "ours.png"), "success": True, "image_status": "ok", "error": None},
        {"id": "upstream", "prompt": "a red card", "gt_image": "truth.png", "image_path": "upstream.png",
         "success": True},
        {"id": "failed", "prompt": "a red card", "gt_image": "truth.png", "image_path": None, "success": False,
         "error": "generation failed: CUDA out of memory"},
    ]
    return write_jsonl(run / "results.jsonl", rows), gt_root


def test_judge_stage_passes_generated_as_image_1_and_ground_truth_as_image_2(tmp_path):
    results, gt_root = judged_results(tmp_path)
    out = tmp_path / "eval"
    responder = order_checking_judge(lambda im: is_red(im) and im.size == GEN_SIZE,
                                     lambda im: is_blue(im) and im.size == GT_SIZE)
    with FakeJudgeServer(responder=responder) as server:
        assert run_cli(["judge", "--results", str(results), "--gt-root", str(gt_root), "--output-dir", str(out),
                        "--base-url", server.base_url, "--model", "judge-model", "--quiet"]) == 0
        assert len(server.requests) == 2 and all("a red card" in message_text(b) for b in server.requests)
    evals = {r["id"]: r for r in json.loads((out / "results_eval.json").read_text())}
    assert evals["ours"]["overall"] == 1.0 and evals["upstream"]["overall"] == 1.0
    assert evals["ours"]["generated_image"] == str(tmp_path / "render" / "ours.png")
    assert evals["upstream"]["generated_image"] == str(tmp_path / "render" / "upstream.png")
    assert evals["ours"]["gt_image"] == str(gt_root / "truth.png")
    assert "generation failed: CUDA out of memory" in evals["failed"]["error"]
    assert all("id" in r and "error" in r for r in evals.values())
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_items"], summary["n_scored"], summary["n_failed"]) == (3, 2, 1)
    assert summary["kscore"] == pytest.approx(1.0)


# ------------------------------------------------------------------ the render stage

def upstream_results(tmp_path: Path, n: int = 4) -> Path:
    """An agent results.json as upstream writes it: references carry local paths relative to the file."""
    run = tmp_path / "agent"
    (run / "cache").mkdir(parents=True)
    Image.new("RGB", (48, 32), (200, 160, 20)).save(run / "cache" / "IMG_001.png")
    rows = [{"id": f"r{i}", "prompt": f"request {i}", "gen_prompt": f"The first reference image, number {i}",
             "reference_images": [{"img_id": "IMG_001", "note": "the subject", "local_path": "cache/IMG_001.png",
                                   "url": "https://example.org/a.png", "title": "a", "page_url": None}],
             "messages": [], "termination": "answer", "rounds": 2, "error": None} for i in range(n)]
    rows.append({"id": "noanswer", "prompt": "x", "gen_prompt": "", "reference_images": [], "messages": [],
                 "termination": "max_rounds", "rounds": 11, "error": None})
    path = run / "results.json"
    path.write_text(json.dumps(rows))
    return path


def test_render_stage_records_share_one_schema(tmp_path):
    results = upstream_results(tmp_path, n=2)
    out = tmp_path / "render"
    assert run_cli(["render", "--input", str(results), "--output-dir", str(out), "--backend", "offline",
                    "--backend-opt", "long_side=64", "--quiet"]) == 0
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
    for i in (0, 1):
        r = rows[f"r{i}"]
        assert RENDER_FIELDS <= set(r) and r["error"] is None and r["success"] is True
        assert r["image_path"] == r["output_path"] and Path(r["output_path"]).is_file()
        assert r["image_status"] == "ok" and isinstance(r["render"], dict)
        assert r["prompt"] == f"request {i}" and r["termination"] == "answer"      # input fields pass through
    skipped = rows["noanswer"]
    assert RENDER_FIELDS <= set(skipped) and skipped["success"] is False and skipped["output_path"] is None
    assert skipped["image_status"] == "skipped: no program" and skipped["error"]


# ------------------------------------------------------------------ kill -9 and resume

def start_child(stop: str, event: Path, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "batch_child.py"), stop, str(event), "cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_at_stop(stop: str, event: Path, argv: list[str]) -> None:
    child = start_child(stop, event, argv)
    while not event.exists():
        if child.poll() is not None:
            raise AssertionError(f"the child ended before its stop point {stop}: {child.communicate()[1][-3000:]}")
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def rerun(argv: list[str], expect: int = 0) -> None:
    child = start_child("-", Path(os.devnull), argv)
    _, err = child.communicate(timeout=300)
    assert child.returncode == expect, err[-3000:]


def journal_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def assert_complete(folder: Path, name: str, ids: list[str]) -> list[dict]:
    """Every id once in the journal and, in input order, in the array; no temporary file left."""
    assert sorted(journal_ids(folder / f"{name}.jsonl")) == sorted(ids)
    records = json.loads((folder / f"{name}.json").read_text())
    assert [r["id"] for r in records] == ids
    assert not list(folder.glob(".*.tmp")), list(folder.glob(".*.tmp"))
    return records


@pytest.mark.parametrize("stop", ["add:render:2", "json:render:1", "json:render:2"])
def test_render_survives_kill_9(tmp_path, stop):
    results = upstream_results(tmp_path)
    out = tmp_path / "render"
    argv = ["render", "--input", str(results), "--output-dir", str(out), "--backend", "offline",
            "--backend-opt", "long_side=64", "--quiet"]
    kill_at_stop(stop, tmp_path / "event", argv)
    before = journal_ids(out / "results.jsonl")
    assert before and len(set(before)) == len(before)
    rerun(argv)
    records = assert_complete(out, "results", ["r0", "r1", "r2", "r3", "noanswer"])
    assert [r["image_status"] for r in records] == ["ok"] * 4 + ["skipped: no program"]
    for r in records[:4]:
        with Image.open(r["output_path"]) as im:
            im.verify()


def bench_files(tmp_path: Path, n: int = 4) -> tuple[Path, Path]:
    gt_root = tmp_path / "bench"
    gt_root.mkdir()
    Image.new("RGB", GT_SIZE, GT_RGB).save(gt_root / "truth.png")
    rows = [{"id": f"b{i}", "question": f"A poster saying \"HELLO {i}\"", "gt_image": "truth.png",
             "eval_type": "Quality-Anchored", "category": "text", "difficulty": "medium"} for i in range(n)]
    return write_jsonl(gt_root / "test.jsonl", rows), gt_root


@pytest.mark.parametrize("stop", ["add:eval:2", "json:eval:1", "json:eval:2"])
def test_judge_survives_kill_9(tmp_path, stop):
    gt_root = tmp_path / "gt"
    gt_root.mkdir()
    Image.new("RGB", GT_SIZE, GT_RGB).save(gt_root / "truth.png")
    run = tmp_path / "run"
    run.mkdir()
    ids = [f"j{i}" for i in range(4)]
    for i in ids:
        Image.new("RGB", GEN_SIZE, GEN_RGB).save(run / f"{i}.png")
    results = write_jsonl(run / "results.jsonl", [{"id": i, "prompt": f"card {i}", "gt_image": "truth.png",
                                                   "output_path": f"{i}.png", "error": None} for i in ids])
    out = tmp_path / "eval"
    with FakeJudgeServer(responder=order_checking_judge(is_red, is_blue)) as server:
        argv = ["judge", "--results", str(results), "--gt-root", str(gt_root), "--output-dir", str(out),
                "--base-url", server.base_url, "--model", "m", "--parallel", "1", "--quiet"]
        kill_at_stop(stop, tmp_path / "event", argv)
        judged_before = len(journal_ids(out / "results_eval.jsonl"))
        assert len(server.requests) == judged_before          # one item at a time: nothing was in flight
        rerun(argv)
        assert len(server.requests) == len(ids)                # each item judged exactly once overall
    records = assert_complete(out, "results_eval", ids)
    assert all(r["overall"] == 1.0 for r in records)
    assert json.loads((out / "summary.json").read_text())["n_scored"] == 4


# ------------------------------------------------------------------ bench: agent -> render -> judge

SCRIPT = ['<think>Known.</think>\n<answer>{"gen_prompt": "A plain poster with the words \\"HELLO\\" in the middle", '
          '"reference_images": []}</answer>']


def bench_argv(tmp_path: Path, inp: Path, gt_root: Path, base_url: str) -> list[str]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    return ["bench", "--input", str(inp), "--gt-root", str(gt_root), "--output-dir", str(tmp_path / "out"),
            "--policy", "scripted", "--script", str(script), "--backend", "offline", "--backend-opt", "long_side=64",
            "--judge", "kscore", "--judge-base-url", base_url, "--judge-model", "m", "--judge-parallel", "1",
            "--quiet"]


def rendered(im: Image.Image) -> bool:
    return max(im.size) == 64


def truth(im: Image.Image) -> bool:
    return im.size == GT_SIZE and is_blue(im)


def test_bench_passes_generated_as_image_1_and_ground_truth_as_image_2(tmp_path, capsys):
    inp, gt_root = bench_files(tmp_path, n=2)
    with FakeJudgeServer(responder=order_checking_judge(rendered, truth)) as server:
        assert run_cli(bench_argv(tmp_path, inp, gt_root, server.base_url)) == 0
        assert len(server.requests) == 2
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["n_items"] == 2 and final["n_failed"] == 0 and final["kscore"] == pytest.approx(1.0)
    evals = json.loads((tmp_path / "out" / "eval" / "results_eval.json").read_text())
    renders = {r["id"]: r for r in json.loads((tmp_path / "out" / "render" / "results.json").read_text())}
    for e in evals:
        assert e["generated_image"] == renders[e["id"]]["output_path"]
        assert e["gt_image"] == str(gt_root / "truth.png")


@pytest.mark.parametrize("stop", ["add:agent:2", "add:render:1", "json:render:2", "add:eval:2", "json:eval:2"])
def test_bench_survives_kill_9(tmp_path, stop):
    inp, gt_root = bench_files(tmp_path)
    ids = [f"b{i}" for i in range(4)]
    out = tmp_path / "out"
    with FakeJudgeServer(responder=order_checking_judge(rendered, truth)) as server:
        argv = bench_argv(tmp_path, inp, gt_root, server.base_url)
        kill_at_stop(stop, tmp_path / "event", argv)
        agent_before = (out / "agent" / "results.jsonl").read_text().splitlines()
        rerun(argv)
        assert len(server.requests) == len(ids)                # each item judged exactly once overall
    agent_after = (out / "agent" / "results.jsonl").read_text().splitlines()
    assert agent_after[:len(agent_before)] == agent_before      # finished agent runs were kept, not redone
    assert_complete(out / "agent", "results", ids)
    assert [r["image_status"] for r in assert_complete(out / "render", "results", ids)] == ["ok"] * 4
    assert all(r["overall"] == 1.0 for r in assert_complete(out / "eval", "results_eval", ids))
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert (summary["n_items"], summary["n_scored"]) == (4, 4)


# ------------------------------------------------------------------ registries and older records

def test_one_class_loader_behind_every_registry():
    from genevolve.generators import make_generator
    from genevolve.judges import JUDGES, make_judge
    from genevolve.registry import load_class

    assert load_class(JUDGES["offline"]).__name__ == "OfflineJudge"
    assert make_judge("offline").name == "offline"
    with pytest.raises(ValueError, match=r"unknown judge 'vibes' \(choose from kscore, offline\)"):
        make_judge("vibes")
    with pytest.raises(ValueError, match="unknown generator backend 'dall-e'"):
        make_generator("dall-e")
    with pytest.raises(ValueError, match="package.module:Name"):
        load_class("genevolve.judges.kscore.KScoreJudge")


def test_render_rerun_reads_records_of_older_versions(tmp_path):
    from genevolve.pipeline.render import needs_render

    image = tmp_path / "1.png"
    Image.new("RGB", (8, 8)).save(image)
    assert not needs_render({"id": "1", "output_path": str(image), "error": None})          # old WISE renderer
    assert needs_render({"id": "2", "output_path": None, "error": "render failed: boom"})
    assert not needs_render({"id": "3", "image_status": "ok", "output_path": str(image)})  # old render stage
    assert needs_render({"id": "4", "image_status": "ok", "output_path": str(tmp_path / "gone.png")})
    assert not needs_render({"id": "5", "image_status": "skipped: no program", "output_path": None})
