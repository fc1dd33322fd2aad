"""Request writers and endpoint audits over real HTTP on loopback; hashing, dedup and checks."""

from __future__ import annotations

import asyncio
import json

import pytest
from fakes.judge_server import FakeJudgeServer
from fakes.openai_chat import FakeChatServer

from genevolve.data.checks import AUDIT_DIMENSIONS, EndpointAuditor, audit_passes
from genevolve.data.taxonomy import Hidden, Recipe, Subject
from genevolve.data.writers import LLMWriter, NearDuplicates, check_request, normalise, prompt_hash
from genevolve.trajectory import Trajectory


def flag_recipe() -> Recipe:
    subject = Subject(key="country:IT", name="Italy", noun="flag of Italy", plural="flags of Italy",
                      renditions=["flag-it", "emoji-1f1ee-1f1f9"], visual_query="flag of Italy",
                      titles=["Flag of Italy (flat, 1000 px)", "Flag of Italy (emoji)"])
    hidden = Hidden(key="wiki:Colosseum", answer="Italy", clue="the country where the Colosseum stands",
                    query="Colosseum", source="Colosseum", fact="The Colosseum is in Rome, Italy.", aliases=["Italy"])
    return Recipe(id="architecture_landmark_00001", track="Knowledge-Anchored", category="architecture_landmark",
                  task_family="symbol_of_hidden", missing_evidence=["which country"], visual_anchor="the flag",
                  dominant="identity", secondary=["text"], difficulty="hard", subjects=[subject], hidden=hidden,
                  texts=["CIAO"], text_slot="caption", skills=["text_rendering"], needs_text_search=True)


def test_prompt_hash_and_near_duplicates():
    a = "Draw the flag of the country where the Colosseum stands, with the caption \"CIAO\"."
    assert prompt_hash(a) == prompt_hash("  draw THE flag of the country where the colosseum stands with the caption CIAO")
    assert normalise("a “quoted”  text") == 'a "quoted" text'
    near = NearDuplicates()
    near.add("r1", a)
    dup, score = near.find(a.replace("Draw", "Please draw"))
    assert dup == "r1" and score >= 0.85
    assert near.find("Exactly five red apples in a row on a wooden table, nothing else.")[0] is None


def test_check_request_names_each_problem():
    r = flag_recipe()
    good = 'Make a travel card with the national flag of the country where the Colosseum stands, captioned "CIAO".'
    assert check_request(good, r) == []
    problems = check_request('Use image_search for the flag of Italy with the caption CIAO.', r)
    text = " | ".join(problems)
    assert "image_search" in text and "gives the hidden answer away: 'Italy'" in text and "'CIAO' is not quoted" in text


def test_llm_writer_retries_a_leaking_request_and_never_sees_the_answer():
    replies = ['Show the flag of Italy with "CIAO" written underneath.',
               'Request: Make a small card with the flag of the country where the Colosseum stands, and the '
               'caption "CIAO" along the bottom.']
    with FakeChatServer(replies) as server:
        writer = LLMWriter(server.base_url, "writer-model", "sk-test")
        text, problems = asyncio.run(writer.write(flag_recipe()))
        asyncio.run(writer.aclose())
        sent = server.requests
    assert problems == [] and text.startswith("Make a small card") and '"CIAO"' in text
    assert len(sent) == 2 and sent[0]["model"] == "writer-model"
    brief = json.loads(sent[0]["messages"][1]["content"])
    assert brief["hidden_subject_clue"] == "the country where the Colosseum stands"
    assert "Italy" not in sent[0]["messages"][1]["content"]
    assert "gives the hidden answer away" in sent[1]["messages"][-1]["content"]     # the retry says why


def test_endpoint_audit_reads_six_dimensions_and_retries_bad_replies():
    scores = {d: 4 for d in AUDIT_DIMENSIONS} | {"rationale": "fine"}
    traj = Trajectory(request="r", messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "r"},
                                             {"role": "assistant", "content": "<think>x</think><answer>{}</answer>"}])
    with FakeJudgeServer(["not json at all", json.dumps({**scores, "process_quality": 9}), json.dumps(scores)]) as srv:
        auditor = EndpointAuditor(srv.base_url, "judge-model")
        got = asyncio.run(auditor.audit(flag_recipe(), "a request", traj))
        asyncio.run(auditor.aclose())
        assert len(srv.requests) == 3
    assert got == {d: 4.0 for d in AUDIT_DIMENSIONS}
    assert audit_passes(got) is None
    assert "process_quality" in audit_passes({**got, "process_quality": 1.0})
    with pytest.raises(ValueError, match="outside 1-5"):
        EndpointAuditor.parse(json.dumps({**scores, "supervised_value": 0}))


def test_sft_record_keeps_token_ids_and_masks_mistakes():
    from genevolve.data.export import sft_record
    from genevolve.trajectory import Turn

    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "r"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "<tool_response>\no\n</tool_response>"},
                {"role": "assistant", "content": "a2"}]
    traj = Trajectory(request="r", messages=messages, termination="answer",
                      turns=[Turn(round=1, action="tool_call", message_index=2, completion_ids=[5, 6]),
                             Turn(round=2, action="answer", message_index=4, completion_ids=[7])])
    teacher = {"trajectory": traj.to_dict(), "teacher": "local", "notes": {"mistakes": [0], "kinds": ["vague_search"]}}
    record = sft_record("x", teacher, flag_recipe(), {"prompt_hash": "h"}, None)
    assert record["completion_ids"] == [[5, 6], [7]]
    assert record["loss_mask"] == [0, 0, 0, 0, 1]            # the first assistant turn was the mistake
    assert record["meta"]["mistakes"] == ["vague_search"] and record["meta"]["teacher"] == "local"
    traj.turns[1].completion_ids = None                       # ids for only some turns: none are claimed
    assert "completion_ids" not in sft_record("x", {**teacher, "trajectory": traj.to_dict()}, flag_recipe(),
                                              {"prompt_hash": "h"}, None)
