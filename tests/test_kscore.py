"""KScoreJudge and its client against a loopback judge server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest
from PIL import Image

from genevolve.judges.base import JudgeError
from genevolve.judges.kscore import RUBRIC_VERSION, KScoreJudge, parse_kscore_reply
from genevolve.jsonio import extract_json
from genevolve.judges.vlm_client import RateLimiter, image_data_url, resolve_endpoint
from fakes.judge_server import FakeJudgeServer, Reply, image_urls, kscore_reply, throttled

GOOD = kscore_reply(1, 0.5, 1, 0.5)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """No judge settings leak in from the developer's environment or config file."""
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    monkeypatch.setenv("GENEVOLVE_CONFIG", str(cfg))
    for var in ("GENEVOLVE_JUDGE_BASE_URL", "GENEVOLVE_JUDGE_MODEL", "GENEVOLVE_JUDGE_API_KEY",
                "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def images(tmp_path):
    gen, gt = tmp_path / "gen.png", tmp_path / "gt.png"
    Image.new("RGB", (64, 48), (220, 20, 20)).save(gen)       # red: the generated image
    Image.new("RGBA", (48, 64), (20, 20, 220, 255)).save(gt)  # blue: the ground truth
    return gen, gt


def decode(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")


def judge_for(server: FakeJudgeServer, **kw) -> KScoreJudge:
    kw.setdefault("backoff_s", 0.01)
    return KScoreJudge(base_url=server.base_url, model="judge-model", api_key="sk-test-secret", **kw)


def score(judge: KScoreJudge, gen, gt, request="A red square"):
    async def go():
        try:
            return await judge.score(request=request, generated_image=gen, gt_image=gt)
        finally:
            await judge.aclose()
    return asyncio.run(go())


# ------------------------------------------------------------------ reading replies

@pytest.mark.parametrize("reply", [
    '{"a": 1, "b": [1, 2]}',
    'Here is my grade:\n```json\n{"a": 1, "b": [1, 2],}\n```\nThanks.',
    "Sure! {'a': 1, 'b': [1, 2,],} hope that helps",
    'The verdict {"a": True, "b": [1, 2]} follows.'.replace("True", "1"),
    'prose with a stray { brace, then {"a": 1, "b": [1, 2]}',
    "{a: 1, b: [1, 2]}",
])
def test_extract_json_forgives_common_slips(reply):
    assert extract_json(reply) == {"a": 1, "b": [1, 2]}


def test_extract_json_python_literals_and_quotes():
    obj = extract_json("{'ok': True, 'na': None, 'why': 'the \"sign\" reads EXIT', 'n': False}")
    assert obj == {"ok": True, "na": None, "why": 'the "sign" reads EXIT', "n": False}


@pytest.mark.parametrize("reply", ['{"faithfulness": 1, "visual_corr', "no json here at all", ""])
def test_extract_json_rejects_unreadable(reply):
    with pytest.raises(ValueError):
        extract_json(reply)


def test_parse_kscore_reply_semantics():
    scores, na, why = parse_kscore_reply(kscore_reply(1, 0.5, 0, 0.5, rationale="Constraints: X."))
    assert scores == {"faithfulness": 1, "visual_correctness": 0.5, "text_accuracy": 0, "aesthetics": 0.5}
    assert na is False and why == "Constraints: X."
    # N/A text: text_accuracy is 0.5 whatever the judge wrote, and may be absent or null
    scores, na, _ = parse_kscore_reply(kscore_reply(1, 1, None, 1, na=True))
    assert na is True and scores["text_accuracy"] == 0.5
    # numbers as strings are fine; values off the 0/0.5/1 grid are not
    scores, _, _ = parse_kscore_reply('{"faithfulness": "0.5", "visual_correctness": 1, '
                                      '"text_accuracy": 1.0, "text_accuracy_na": "false", "aesthetics": 0}')
    assert scores["faithfulness"] == 0.5
    for bad in (kscore_reply(0.7, 1, 1, 1), kscore_reply(1, 2, 1, 1), kscore_reply(1, 1, -1, 1),
                '{"faithfulness": 1, "visual_correctness": 1, "aesthetics": 1}',
                '{"faithfulness": true, "visual_correctness": 1, "text_accuracy": 1, "aesthetics": 1}'):
        with pytest.raises(ValueError):
            parse_kscore_reply(bad)


# ------------------------------------------------------------------ images and endpoint

def test_image_data_url_bounds_the_long_side(tmp_path):
    big = tmp_path / "wide.png"
    Image.new("RGBA", (3000, 1000), (0, 128, 0, 128)).save(big)
    im = decode(image_data_url(big, max_side=512))
    assert im.size == (512, 171)
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(small)
    assert decode(image_data_url(small, max_side=512)).size == (40, 30)
    with pytest.raises(JudgeError, match="not found"):
        image_data_url(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(JudgeError, match="cannot read image"):
        image_data_url(tmp_path / "junk.png")


def test_endpoint_needs_an_address_and_a_model_and_hides_the_key():
    # Where the address comes from (flag > GENEVOLVE_JUDGE_BASE_URL > OPENAI_BASE_URL > [judge]) is
    # settled by genevolve.settings (tests/test_settings.py); the endpoint takes what it is given.
    with pytest.raises(JudgeError, match="GENEVOLVE_JUDGE_BASE_URL"):
        resolve_endpoint()
    with pytest.raises(JudgeError, match="--model"):
        resolve_endpoint("http://judge.local/v1")
    ep = resolve_endpoint("http://flag/v1/", "m-flag", "sk-flag")
    assert (ep.base_url, ep.model, ep.api_key) == ("http://flag/v1", "m-flag", "sk-flag")
    assert "sk-flag" not in repr(ep)


# ------------------------------------------------------------------ the judge over HTTP

def test_request_reaches_server_with_image_order_and_temperature_zero(images):
    gen, gt = images
    with FakeJudgeServer(["I looked closely.\n```json\n" + GOOD + "\n```"]) as server:
        result = score(judge_for(server), gen, gt, request="A red square on white")
    assert result.ok and result.error is None and result.attempts == 1
    assert result.scores == {"faithfulness": 1, "visual_correctness": 0.5, "text_accuracy": 1, "aesthetics": 0.5}
    assert result.overall == round(0.1 + 0.2 + 0.4 + 0.05, 2)
    assert (result.model, result.endpoint, result.rubric_version) == ("judge-model", server.base_url, RUBRIC_VERSION)
    [body] = server.requests
    assert body["temperature"] == 0 and body["model"] == "judge-model"
    first, second = (decode(u) for u in image_urls(body))
    assert first.getpixel((5, 5))[0] > 180 and first.getpixel((5, 5))[2] < 80     # image 1 = generated (red)
    assert second.getpixel((5, 5))[2] > 180 and second.getpixel((5, 5))[0] < 80   # image 2 = ground truth (blue)
    user_text = [p["text"] for p in body["messages"][1]["content"] if p["type"] == "text"]
    assert "A red square on white" in user_text[0] and "IMAGE 1" in user_text[0] and "IMAGE 2" in user_text[1]
    assert server.headers[0]["Authorization"] == "Bearer sk-test-secret"
    assert "sk-test-secret" not in json.dumps(result.to_dict())


def test_malformed_replies_are_retried_until_one_is_usable(images):
    gen, gt = images
    script = ["I think the image is quite good overall.",            # prose only
              '{"rationale": "Hard constraints: ...", "faithfulness": 1, "visual_corr',   # cut off
              kscore_reply(1, 0.7, 1, 1),                            # off the grid
              "Result: " + kscore_reply(0.5, 0, None, 1, na=True)]
    with FakeJudgeServer(script) as server:
        result = score(judge_for(server, max_attempts=4), gen, gt)
    assert result.ok and result.attempts == 4 and len(server.requests) == 4
    assert result.text_accuracy_na and result.scores["text_accuracy"] == 0.5
    assert result.overall == round(0.05 + 0 + 0.2 + 0.1, 2)


def test_persistently_bad_replies_become_a_recorded_failure_not_a_zero(images):
    gen, gt = images
    with FakeJudgeServer([kscore_reply(1, 3, 1, 1)] * 3) as server:
        result = score(judge_for(server, max_attempts=3), gen, gt)
    assert not result.ok and result.overall is None and result.scores == {}
    assert "3 attempt" in result.error and "visual_correctness=3" in result.error
    assert result.model == "judge-model" and result.rubric_version == RUBRIC_VERSION
    assert len(server.requests) == 3


def test_429_storm_then_success(images):
    gen, gt = images
    with FakeJudgeServer(throttled(5) + [GOOD]) as server:
        result = score(judge_for(server, retries=6), gen, gt)
    assert result.ok and len(server.requests) == 6


def test_429_storm_longer_than_the_retry_budget_fails_cleanly(images):
    gen, gt = images
    with FakeJudgeServer(throttled(10)) as server:
        result = score(judge_for(server, retries=2), gen, gt)
    assert not result.ok and "429" in result.error and len(server.requests) == 3


def test_server_error_statuses_are_reported(images):
    gen, gt = images
    with FakeJudgeServer([Reply(status=401, content="bad key")]) as server:
        result = score(judge_for(server), gen, gt)
    assert not result.ok and "401" in result.error and "bad key" in result.error


def test_missing_images_fail_without_calling_the_judge(tmp_path, images):
    gen, _ = images
    with FakeJudgeServer([GOOD]) as server:
        result = score(judge_for(server), gen, tmp_path / "missing_gt.png")
        assert "GT image not found" in result.error and result.attempts == 0
        result = score(judge_for(server), None, tmp_path / "missing_gt.png")
        assert "no generated image given" in result.error
    assert server.requests == []


def test_rate_limiter_spaces_requests(monkeypatch):
    """On a virtual clock: each call's start (the clock when it asked plus the pause it was given) is
    exactly one slot after the previous one; after a quiet spell the next call starts at once."""
    import sys
    import types

    clock = {"now": 100.0}
    pauses: dict[object, float] = {}

    async def sleep(seconds):
        pauses[asyncio.current_task()] = seconds
        await asyncio.sleep(0)                      # let the others run, as a real pause would

    module = sys.modules[RateLimiter.__module__]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: clock["now"]))
    monkeypatch.setattr(module, "asyncio", types.SimpleNamespace(sleep=sleep))

    async def start(limiter):
        asked = clock["now"]
        await limiter.wait()
        return asked + pauses.get(asyncio.current_task(), 0.0)

    async def go():
        limiter = RateLimiter(rpm=1200)              # one slot every 50 ms
        burst = await asyncio.gather(*(start(limiter) for _ in range(5)))
        clock["now"] = 200.0                          # a quiet spell
        later = [await start(limiter), await start(limiter)]
        return burst, later

    burst, later = asyncio.run(go())
    assert sorted(burst) == pytest.approx([100.0, 100.05, 100.1, 100.15, 100.2])
    assert later == pytest.approx([200.0, 200.05])
    assert RateLimiter(None).interval == 0


def test_concurrent_scoring_through_one_judge(images):
    gen, gt = images

    async def go(judge):
        try:
            return await asyncio.gather(*(judge.score(request=f"item {i}", generated_image=gen, gt_image=gt)
                                          for i in range(8)))
        finally:
            await judge.aclose()
    with FakeJudgeServer(responder=lambda body: GOOD) as server:
        results = asyncio.run(go(judge_for(server, rpm=6000)))
    assert all(r.ok for r in results) and len(server.requests) == 8


# ------------------------------------------------------------------ the `genevolve judge` command

def make_results(tmp_path):
    """A render-stage results file with every kind of trouble, plus its GT folder."""
    gt_root, renders = tmp_path / "gt", tmp_path / "run"
    gt_root.mkdir()
    renders.mkdir()
    for name, rgb in (("peru", (200, 16, 46)), ("exit", (0, 150, 0)), ("owl", (90, 70, 40))):
        Image.new("RGB", GT_SIDE, rgb).save(gt_root / f"{name}.png")        # the two can be told apart by size
        Image.new("RGB", GEN_SIDE, rgb).save(renders / f"{name}_gen.png")
    rows = [
        {"id": "ka1", "question": "The flag of the country whose capital is Lima", "gt_image": "peru.png",
         "output_path": "peru_gen.png", "eval_type": "Knowledge-Anchored", "category": "flag",
         "difficulty": "hard", "gen_prompt": "The flag of Peru", "reference_images": []},
        {"id": "qa1", "prompt": "A green sign that reads EXIT", "gt_image": "exit.png",
         "output_path": str(renders / "exit_gen.png"), "eval_type": "Quality-Anchored", "category": "text",
         "difficulty": "medium"},
        {"id": "qa2", "prompt": "A brown owl", "gt_image": "owl.png", "output_path": "gone.png",
         "eval_type": "Quality-Anchored", "category": "animal", "difficulty": "medium"},
        {"id": "qa3", "prompt": "A cat", "gt_image": "owl.png", "error": "render failed: out of memory",
         "eval_type": "Quality-Anchored", "category": "animal", "difficulty": "hard"},
        {"id": "ka1", "question": "a repeated row", "gt_image": "peru.png", "output_path": "peru_gen.png"},
        {"id": "ka2", "question": "Missing ground truth", "gt_image": "nope.png", "output_path": "owl_gen.png",
         "eval_type": "Knowledge-Anchored", "category": "animal", "difficulty": "hard"},
    ]
    results = renders / "results.json"
    results.write_text(json.dumps(rows))
    return results, gt_root


GT_SIDE, GEN_SIDE = (32, 32), (48, 24)


def scripted_judge(body):
    first, second = (decode(u) for u in image_urls(body))
    if (first.size, second.size) != (GEN_SIDE, GT_SIDE):
        return kscore_reply(0, 0, 0, 0)             # the generated image must come first
    text = body["messages"][1]["content"][0]["text"]
    if "Lima" in text:
        return "After checking the constraints:\n" + kscore_reply(1, 0.5, None, 1, na=True)
    if "EXIT" in text:
        return kscore_reply(1, 1, 0.5, 0.5)
    return Reply(status=500, content="unexpected request")


def run_cli(argv):
    from genevolve.cli import main
    return main(argv)


def test_judge_command_end_to_end_and_resume(tmp_path, capsys):
    results, gt_root = make_results(tmp_path)
    out = tmp_path / "eval"
    with FakeJudgeServer(responder=scripted_judge) as server:
        argv = ["judge", "--results", str(results), "--gt-root", str(gt_root), "--output-dir", str(out),
                "--base-url", server.base_url, "--model", "judge-model", "--quiet", "--parallel", "3"]
        assert run_cli(argv) == 0
        assert len(server.requests) == 2            # only the two complete items reach the judge
        evals = {r["id"]: r for r in json.loads((out / "results_eval.json").read_text())}
        assert set(evals) == {"ka1", "qa1", "qa2", "qa3", "ka2"}
        assert evals["ka1"]["overall"] == 0.6 and evals["ka1"]["text_accuracy_na"]
        assert evals["ka1"]["judge"] == {"judge": "kscore", "model": "judge-model", "endpoint": server.base_url,
                                         "rubric_version": RUBRIC_VERSION}
        assert evals["qa1"]["overall"] == round(0.1 + 0.4 + 0.2 + 0.05, 2)
        assert "generated image not found" in evals["qa2"]["error"]
        assert "render failed: out of memory" in evals["qa3"]["error"]
        assert "GT image not found" in evals["ka2"]["error"]
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["n_items"], summary["n_scored"], summary["n_failed"]) == (5, 2, 3)
        assert summary["n_duplicate_rows"] == 1 and summary["duplicates"][0]["id"] == "ka1"
        # means: f 1, v .75, text over qa1 only .5, a .75 -> .1 + .3 + .2 + .075
        assert summary["kscore"] == pytest.approx(0.675)
        assert summary["overall_missing_zero"] == pytest.approx((0.6 + 0.75) / 5)
        assert summary["splits"]["eval_type"]["Quality-Anchored"]["n_failed"] == 2
        assert (out / "summary.csv").read_text().startswith("split,group,n_items")
        printed = capsys.readouterr()
        assert "Knowledge-Anchored" in printed.out and "duplicate id 'ka1'" in printed.err

        # a rerun asks the judge nothing new: judged items are kept, failures retried (still missing)
        assert run_cli(argv) == 0
        assert len(server.requests) == 2
        assert json.loads((out / "summary.json").read_text())["kscore"] == pytest.approx(0.675)

        # a different judge model may not append to the same folder
        assert run_cli(argv[:-5] + ["--model", "other-model", "--quiet"]) == 2
        assert "use another --output-dir" in capsys.readouterr().err


def test_judge_command_resumes_a_partial_journal(tmp_path):
    results, gt_root = make_results(tmp_path)
    out = tmp_path / "eval"
    with FakeJudgeServer(responder=scripted_judge) as server:
        argv = ["judge", "--results", str(results), "--gt-root", str(gt_root), "--output-dir", str(out),
                "--base-url", server.base_url, "--model", "judge-model", "--quiet"]
        assert run_cli(argv) == 0
        journal = out / "results_eval.jsonl"
        lines = journal.read_text().splitlines()
        kept = [ln for ln in lines if json.loads(ln)["id"] != "qa1"]
        journal.write_text("\n".join(kept) + "\n" + lines[0][:25])      # lose qa1, tear the last line
        before = len(server.requests)
        assert run_cli(argv) == 0
        assert len(server.requests) == before + 1       # only qa1 is judged again
        assert "EXIT" in server.requests[-1]["messages"][1]["content"][0]["text"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == 2 and summary["kscore"] == pytest.approx(0.675)


def test_judge_command_reports_bad_arguments(tmp_path, capsys, monkeypatch):
    results, gt_root = make_results(tmp_path)
    assert run_cli(["judge", "--results", str(tmp_path / "none.json"), "--gt-root", str(gt_root)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert run_cli(["judge", "--results", str(results), "--gt-root", str(gt_root)]) == 2
    assert "GENEVOLVE_JUDGE_BASE_URL" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n{"id": "b", oops}\n')
    monkeypatch.setenv("GENEVOLVE_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("GENEVOLVE_JUDGE_MODEL", "m")
    assert run_cli(["judge", "--results", str(bad), "--gt-root", str(gt_root), "--quiet",
                    "--output-dir", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    errors = {f["id"]: f["error"] for f in summary["failures"]}
    assert "bad.jsonl:2" in errors["line_2"] and "no 'prompt' or 'question'" in errors["a"]


def test_judge_batch_survives_a_crashing_judge_and_jsonl_duplicates(tmp_path):
    from genevolve.pipeline.judge import judge_batch
    from genevolve.judges.base import Judge, JudgeResult

    class FlakyJudge(Judge):
        """Scores everything 1 except requests mentioning 'boom', where it raises."""
        name = "flaky"

        async def score(self, *, request, generated_image, gt_image, program=None, meta=None):
            if "boom" in request:
                raise RuntimeError("model server exploded")
            return JudgeResult(scores=dict.fromkeys(("faithfulness", "visual_correctness", "text_accuracy",
                                                     "aesthetics"), 1.0), judge=self.name)

    _, gt_root = make_results(tmp_path)
    results = tmp_path / "run" / "results.jsonl"
    rows = [{"id": "a", "prompt": "fine", "gt_image": "peru.png", "output_path": "peru_gen.png"},
            {"id": "b", "prompt": "boom", "gt_image": "exit.png", "output_path": "exit_gen.png"},
            {"id": "a", "prompt": "again", "gt_image": "peru.png", "output_path": "peru_gen.png"}]
    results.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    summary = asyncio.run(judge_batch(FlakyJudge(), results, gt_root, tmp_path / "out", progress=False))
    assert (summary["n_items"], summary["n_scored"], summary["n_failed"], summary["n_duplicate_rows"]) == (2, 1, 1, 1)
    assert "judge crashed: RuntimeError: model server exploded" in summary["failures"][0]["error"]
    assert summary["duplicates"][0]["line"] == 3 and summary["kscore"] == pytest.approx(1.0)
