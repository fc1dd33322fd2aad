"""R_text (the program judge) and the training reward R = (1 − α)·R_img + α·R_text."""

from __future__ import annotations

import asyncio
import json

import pytest
from PIL import Image

from fakes.judge_server import FakeJudgeServer, image_urls, kscore_reply, message_text
from genevolve.judges.kscore import KScoreJudge
from genevolve.judges.program_judge import (ALPHA, RUBRIC_VERSION, ProgramJudge, TrainingReward, mixed_reward,
                                            parse_program_reply, protocol_failure, training_reward)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    monkeypatch.setenv("GENEVOLVE_CONFIG", str(cfg))
    for var in ("GENEVOLVE_JUDGE_BASE_URL", "GENEVOLVE_JUDGE_MODEL", "GENEVOLVE_JUDGE_API_KEY",
                "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def files(tmp_path):
    gen, gt, ref = tmp_path / "gen.png", tmp_path / "gt.png", tmp_path / "ref.png"
    for path, rgb in ((gen, (200, 30, 30)), (gt, (30, 30, 200)), (ref, (30, 200, 30))):
        Image.new("RGB", (40, 40), rgb).save(path)
    return {"gen": str(gen), "gt": str(gt), "ref": str(ref), "dir": tmp_path}


def program(ref_path=None, prompt="The flag of Peru: red, white, red vertical bands, coat of arms in the centre"):
    refs = [{"img_id": "IMG_001", "note": "the flag itself", "title": "Flag of Peru", "local_path": ref_path}] \
        if ref_path is not None else []
    return {"gen_prompt": prompt, "reference_images": refs}


def is_program_request(body) -> bool:
    return "You grade the plan" in body["messages"][0]["content"]


def both_judges(r_img_reply: str, r_text_reply: str):
    return lambda body: r_text_reply if is_program_request(body) else r_img_reply


def judges(server, **kw):
    common = dict(base_url=server.base_url, model="judge-model", backoff_s=0.01, **kw)
    return KScoreJudge(**common), ProgramJudge(**common)


async def closing(coro, *closables):
    try:
        return await coro
    finally:
        for c in closables:
            await c.aclose()


def test_parse_program_reply():
    assert parse_program_reply('Here: {"rationale": "close", "score": 0.75}') == (0.75, "close")
    for bad in ('{"score": 0.3}', '{"score": 2}', '{"rationale": "no score"}', "0.75"):
        with pytest.raises(ValueError):
            parse_program_reply(bad)


def test_program_judge_sees_request_gt_and_program_not_the_render(files):
    with FakeJudgeServer(['{"rationale": "Names the flag, misses the arms.", "score": 0.5}']) as server:
        _, pj = judges(server)
        result = asyncio.run(closing(pj.score(request="The flag of the country whose capital is Lima",
                                              gt_image=files["gt"], program=program(files["ref"])), pj))
    assert result.score == 0.5 and result.error is None and result.rubric_version == RUBRIC_VERSION
    assert result.model == "judge-model" and result.endpoint == server.base_url
    [body] = server.requests
    assert body["temperature"] == 0 and len(image_urls(body)) == 1       # the GT image only
    text = message_text(body)
    assert "capital is Lima" in text and "coat of arms" in text and "Flag of Peru" in text
    assert files["ref"] not in text                                       # local paths are not the judge's business


def test_program_judge_failure_is_recorded(files):
    with FakeJudgeServer(['{"score": 0.6}'] * 2) as server:
        _, pj = judges(server, max_attempts=2)
        result = asyncio.run(closing(pj.score(request="x", gt_image=files["gt"], program=program()), pj))
    assert result.score is None and "score=0.6" in result.error and len(server.requests) == 2


def test_protocol_failures(files):
    ok = program(files["ref"])
    assert protocol_failure(None) == "no_answer"
    assert protocol_failure(program(prompt="   "), generated_image=files["gen"]) == "empty_gen_prompt"
    three = {**ok, "reference_images": ok["reference_images"] * 3}
    assert protocol_failure(three, generated_image=files["gen"]).startswith("too_many_references")
    assert protocol_failure(program(), generated_image=files["gen"], require_reference=True) == "no_usable_reference"
    assert protocol_failure(program(str(files["dir"] / "gone.png")), generated_image=files["gen"],
                            require_reference=True) == "no_usable_reference"
    assert protocol_failure(ok, generated_image=files["gen"], require_reference=True) is None
    assert protocol_failure(ok, generated_image=files["gen"], render_error="CUDA OOM") == "render_failed: CUDA OOM"
    assert protocol_failure(ok, generated_image=str(files["dir"] / "none.png")).startswith("render_failed")
    assert protocol_failure(program(), generated_image=files["gen"]) is None


def test_mixed_reward():
    assert ALPHA == 0.5
    assert mixed_reward(0.75, 0.5) == pytest.approx(0.625)
    assert mixed_reward(0.75, 0.5, alpha=0.2) == pytest.approx(0.8 * 0.75 + 0.2 * 0.5)


def test_training_reward_mixes_both_judges(files):
    with FakeJudgeServer(responder=both_judges(kscore_reply(1, 0.5, 1, 0.5), '{"score": 0.5}')) as server:
        ij, pj = judges(server)
        b = asyncio.run(closing(training_reward(request="Peru flag", program=program(files["ref"]),
                                                generated_image=files["gen"], gt_image=files["gt"],
                                                image_judge=ij, program_judge=pj, require_reference=True), ij, pj))
    # R_img = .1 + .2 + .4 + .05 = .75; R_text = .5; R = .5 * .75 + .5 * .5
    assert (b.r_img, b.r_text, b.reward, b.failure) == (0.75, 0.5, pytest.approx(0.625), None)
    assert len(server.requests) == 2
    assert b.image_judgement.model == "judge-model" and b.program_judgement.score == 0.5


def test_training_reward_protocol_failure_is_zero_without_judging(files):
    with FakeJudgeServer(responder=both_judges(kscore_reply(1, 1, 1, 1), '{"score": 1}')) as server:
        ij, pj = judges(server)
        b = asyncio.run(closing(training_reward(request="Peru flag", program=program(), generated_image=files["gen"],
                                                gt_image=files["gt"], image_judge=ij, program_judge=pj,
                                                require_reference=True), ij, pj))
    assert b.reward == 0.0 and b.failure == "no_usable_reference" and server.requests == []


def test_training_reward_judge_failure_gives_no_reward(files):
    with FakeJudgeServer(responder=both_judges("I refuse to grade.", '{"score": 1}')) as server:
        ij, pj = judges(server, max_attempts=2)
        b = asyncio.run(closing(training_reward(request="Peru flag", program=program(), generated_image=files["gen"],
                                                gt_image=files["gt"], image_judge=ij, program_judge=pj), ij, pj))
    assert b.reward is None and b.failure.startswith("judge_failed") and b.r_text == 1.0


def test_trl_style_callable(files):
    answer = json.dumps(program(files["ref"]))
    completions = [
        f"<think>I found it.</think>\n<answer>{answer}</answer>",                      # judged: .75/.5 -> .625
        "<think>hmm</think>\n<tool_call>{\"name\": \"search\", \"arguments\": {}}</tool_call>",   # no answer -> 0
        [{"role": "assistant", "content": f"<think>ok</think><answer>{answer}</answer>"}],   # render failed -> 0
        f"<answer>{answer}</answer>",                                                     # judged, text .25 -> .5
    ]
    prompts = ["Peru flag"] * 3 + [[{"role": "system", "content": "s"}, {"role": "user", "content": "Lima flag"}]]

    def respond(body):
        if is_program_request(body):
            return '{"score": 0.25}' if "Lima flag" in message_text(body) else '{"score": 0.5}'
        return kscore_reply(1, 0.5, 1, 0.5)

    with FakeJudgeServer(responder=respond) as server:
        ij, pj = judges(server)
        reward = TrainingReward(ij, pj)
        values = reward(prompts, completions, gt_image=[files["gt"]] * 4, generated_image=[files["gen"]] * 4,
                        render_error=[None, None, "service down", None])
        again = reward(prompts[:1], completions[:1], gt_image=[files["gt"]], generated_image=[files["gen"]])
    assert values == [pytest.approx(0.625), 0.0, 0.0, pytest.approx(0.5 * 0.75 + 0.5 * 0.25)]
    assert [b.failure for b in reward.last_breakdowns] == [None]
    assert again == [pytest.approx(0.625)]               # a second asyncio.run reuses the judges safely
    assert len(server.requests) == 2 * 2 + 2
    assert reward.__name__ == "genevolve_reward"
    with pytest.raises(ValueError, match="gt_image"):
        reward(prompts, completions)
    with pytest.raises(ValueError, match="generated_image"):
        reward(prompts, completions, gt_image=[files["gt"]] * 4, generated_image=[files["gen"]])
