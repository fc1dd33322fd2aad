"""The agent loop against a real OpenAI-compatible HTTP server on loopback."""

import asyncio
import json

import pytest

from fakes.openai_chat import FakeChatServer, answer, tool_call
from genevolve import protocol
from genevolve.agent import Agent, AgentConfig
from genevolve.policies.base import PolicyError
from genevolve.policies.openai_compat import OpenAICompatPolicy
from genevolve.trajectory import ANSWER, ERROR, MAX_ROUNDS, Trajectory


def run(server, tools, config=None, request="A poster with the flag of the country whose capital is Canberra",
        **policy_kw):
    policy = OpenAICompatPolicy(server.base_url, "test-model", backoff_s=0.01, **policy_kw)
    agent = Agent(policy, tools, config)

    async def go():
        try:
            return await agent.run(request)
        finally:
            await agent.aclose()
    return asyncio.run(go())


def user_messages(body):
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def test_full_run_resolves_program(tools):
    script = [tool_call("search", {"queries": ["country whose capital is Canberra"]}),
              tool_call("image_search", {"query": "flag australia"}),
              tool_call("query_knowledge", {"skill_name": "text_rendering"}),
              answer("A poster showing the flag from the first reference image with the words "
                     "'G'DAY MATE' at the top", ["IMG_001"])]
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    assert traj.termination == ANSWER and traj.ok and traj.rounds == 4
    assert [c.name for c in traj.tool_calls] == ["search", "image_search", "query_knowledge"]
    assert "Canberra" in traj.tool_calls[0].observation
    assert "[IMG_001] flag australia" in traj.tool_calls[1].observation
    assert "=== Skill: text_rendering ===" in traj.tool_calls[2].observation
    ref = traj.program.references[0]
    assert ref.img_id == "IMG_001" and ref.local_path.endswith("flag_australia.png")
    assert traj.program_issues == []
    # observations went back as user messages wrapped in <tool_response>
    last = server.requests[-1]
    assert last["messages"][0]["role"] == "system"
    assert all(m.startswith("<tool_response>\n") for m in user_messages(last)[1:])
    assert last["temperature"] == 0.6 and last["top_p"] == 0.9 and last["model"] == "test-model"
    # JSON round-trip and SFT export
    back = Trajectory.from_dict(json.loads(json.dumps(traj.to_dict())))
    assert back == traj
    sft = traj.to_sft_record()
    assert [m["role"] for m in sft["messages"]][:2] == ["system", "user"]
    assert sft["images"] == [traj.images[k].local_path for k in sorted(traj.images)] and len(sft["images"]) == 2


def test_format_error_turn_then_recovery(tools):
    script = ["I think the answer is a flag.", answer("a flag", [])]
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    assert traj.termination == ANSWER
    assert [t.action for t in traj.turns] == ["format_error", "answer"]
    second = user_messages(server.requests[1])
    assert second[-1].startswith("<tool_response>\nFormat error")


def test_last_round_gets_final_step_message_and_forbids_tools(tools):
    script = [tool_call("search", {"queries": [f"q{i}"]}) for i in range(4)]   # never answers
    with FakeChatServer(lambda body: tool_call("search", {"queries": [str(len(body["messages"]))]})) as server:
        traj = run(server, tools, AgentConfig(max_rounds=4))
    assert traj.termination == MAX_ROUNDS and traj.rounds == 4 and traj.program is None
    assert len(server.requests) == 4
    assert user_messages(server.requests[3])[-1] == protocol.FINAL_STEP_MESSAGE
    assert all(protocol.FINAL_STEP_MESSAGE not in user_messages(r) for r in server.requests[:3])
    assert len(traj.tool_calls) == 3 and traj.turns[-1].action == "tool_call_after_final"
    del script


def test_tool_budget_exhaustion(tools):
    def script(body):
        n = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return tool_call("search", {"queries": [f"query {n}"]}) if n < 4 else answer("done", [])
    with FakeChatServer(script) as server:
        traj = run(server, tools, AgentConfig(max_tool_calls=2, max_rounds=11))
    assert len(traj.tool_calls) == 2
    assert [t.action for t in traj.turns] == ["tool_call", "tool_call", "budget_exceeded", "budget_exceeded",
                                              "answer"]
    assert "Tool budget exhausted" in user_messages(server.requests[3])[-1]


def test_repeated_query_answered_from_cache(tools):
    call = tool_call("search", {"queries": ["capital Canberra"]})
    with FakeChatServer([call, call, answer("x", [])]) as server:
        traj = run(server, tools)
    first, second = traj.tool_calls
    assert not first.repeat and second.repeat
    assert second.observation.startswith(protocol.REPEAT_NOTE)
    assert first.observation in second.observation
    assert tools[0].backend.queries == ["capital Canberra"]    # the backend was asked once


def test_unknown_duplicate_and_unsorted_ids(tools):
    script = [tool_call("image_search", {"query": "apple"}),      # IMG_001 green, IMG_002 red
              tool_call("image_search", {"query": "flag peru"}),  # IMG_003
              answer("the first reference image beside the second reference image",
                     ["IMG_003", "IMG_009", "IMG_001", "IMG_003", "IMG_002"])]
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    assert [r.img_id for r in traj.program.references] == ["IMG_001", "IMG_002"]
    issues = "\n".join(map(str, traj.program_issues))
    assert "unknown_img_id: IMG_009" in issues and "duplicate_img_id: IMG_003" in issues
    assert "references_reordered" in issues and "references_truncated" in issues


def test_same_image_found_twice_keeps_its_id(tools):
    script = [tool_call("image_search", {"query": "red"}), tool_call("image_search", {"query": "apple"}),
              answer("x", [])]
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    assert "[IMG_001] red apple" in traj.tool_calls[0].observation
    assert "[IMG_002] green apple" in traj.tool_calls[1].observation
    assert "[IMG_001] red apple" in traj.tool_calls[1].observation
    assert sorted(traj.images) == ["IMG_001", "IMG_002"]


def test_ordinal_out_of_range_and_ids_in_prompt_flagged(tools):
    script = [tool_call("image_search", {"query": "flag australia"}),
              answer("Combine the first and the second reference image; see IMG_007", ["IMG_001"])]
    with FakeChatServer(script) as server:
        traj = run(server, tools, AgentConfig(answer_retries=0))
    issues = "\n".join(map(str, traj.program_issues))
    assert "ordinal_out_of_range" in issues and "img_id_in_gen_prompt" in issues


def test_ids_of_chosen_references_become_ordinals(tools):
    script = [tool_call("image_search", {"query": "flag australia"}),
              answer("Put the flag from reference image IMG-001 on a pole", ["IMG_001"])]
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    assert traj.program.gen_prompt == "Put the flag from the first reference image on a pole"
    assert list(map(str, traj.program_issues)) == ["img_id_replaced: 'reference image IMG-001' -> 'the first reference image'"]
    assert [t.action for t in traj.turns] == ["tool_call", "answer"]


def test_found_image_named_by_id_joins_the_references_when_no_ordinal_moves(tools):
    search = tool_call("image_search", {"query": "apple"})          # IMG_001 green, IMG_002 red
    script = [search, answer("The first reference image on a table and the fruit from IMG-002", ["IMG_001"])]
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    assert [r.img_id for r in traj.program.references] == ["IMG_001", "IMG_002"]
    assert traj.program.gen_prompt == "The first reference image on a table and the fruit from the second reference image"
    assert list(map(str, traj.program_issues)) == ["reference_added: IMG_002 named in gen_prompt",
                                   "img_id_replaced: 'IMG-002' -> 'the second reference image'"]
    # IMG_001 would become the first reference and move "the first reference image" to it: not added.
    script = [search, answer("The first reference image beside IMG_001", ["IMG_002"])]
    with FakeChatServer(script) as server:
        traj = run(server, tools, AgentConfig(answer_retries=0))
    assert [r.img_id for r in traj.program.references] == ["IMG_002"]
    assert any(i.kind == "img_id_in_gen_prompt" for i in traj.program_issues)


def test_ordinal_past_the_list_is_renumbered_without_sending_the_answer_back(tools):
    script = [tool_call("image_search", {"query": "apple"}),
              answer("The table is the first reference image. The apple is the fourth reference image.",
                     ["IMG_001", "IMG_002"])]
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    assert traj.program.gen_prompt.endswith("The apple is the second reference image.")
    assert list(map(str, traj.program_issues)) == ["ordinal_renumbered: 'fourth reference image' -> 'second reference image'"]
    assert [t.action for t in traj.turns] == ["tool_call", "answer"]


def test_unusable_answer_goes_back_with_the_reason_and_the_correction_is_kept(tools):
    bad = answer("The first reference image beside the second reference image", ["IMG_001"])
    good = answer("The flag from the first reference image on a pole", ["IMG_001"])
    script = [tool_call("image_search", {"query": "flag australia"}), bad, good]
    with FakeChatServer(script) as server:
        traj = run(server, tools, grammar="llama.cpp")
    assert [t.action for t in traj.turns] == ["tool_call", "answer_returned", "answer"]
    assert traj.termination == ANSWER and traj.program_issues == []
    assert traj.program.gen_prompt.startswith("The flag from the first")
    returned = user_messages(server.requests[2])[-1]
    assert returned.startswith("Your answer cannot be rendered") and "ordinal_out_of_range" in returned
    # a missing reference may still be searched for, or the answer corrected
    assert "<tool_call>" in server.requests[2]["grammar"] and "<answer>" in server.requests[2]["grammar"]


def test_answer_goes_back_only_once(tools):
    bad = answer("The first reference image beside the second reference image", ["IMG_001"])
    with FakeChatServer([tool_call("image_search", {"query": "flag australia"}), bad, bad]) as server:
        traj = run(server, tools)
    assert [t.action for t in traj.turns] == ["tool_call", "answer_returned", "answer"]
    assert traj.termination == ANSWER and any(i.kind == "ordinal_out_of_range" for i in traj.program_issues)


def test_policy_budget_sets_tool_calls_and_rounds_unless_the_config_does(tools):
    policy = OpenAICompatPolicy("http://127.0.0.1:9", "m")
    policy.tool_call_budget = 2
    agent = Agent(policy, tools)
    # rounds: the calls and one for the answer (a returned answer adds one when it happens)
    assert (agent.max_tool_calls, agent.max_rounds) == (2, 3) and "At most 2 tool calls" in agent.system_prompt
    agent = Agent(policy, tools, AgentConfig(max_tool_calls=5, answer_retries=0))
    assert (agent.max_tool_calls, agent.max_rounds) == (5, 6)
    released = Agent(OpenAICompatPolicy("http://127.0.0.1:9", "m"), tools, AgentConfig(answer_retries=0))
    assert (released.max_tool_calls, released.max_rounds) == (10, 11)


def test_wrong_argument_types_and_unknown_tool_are_observations(tools):
    script = [tool_call("image_search", {"query": 42}), tool_call("paint", {"x": 1}),
              tool_call("query_knowledge", {"skill_name": "juggling"}), answer("x", [])]
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    errs = [c.error for c in traj.tool_calls]
    assert "arguments.query must be of type string" in errs[0]
    assert "unknown tool 'paint'" in errs[1]
    assert "arguments.skill_name must be one of" in errs[2]
    assert traj.termination == ANSWER


def test_server_500_then_recovers(tools):
    with FakeChatServer([answer("a red apple", [])], fail_first=2) as server:
        traj = run(server, tools)
    assert traj.termination == ANSWER and len(server.requests) == 3


def test_server_down_gives_clear_error(tools):
    with FakeChatServer([answer("x", [])]) as server:
        url = server.base_url
    policy = OpenAICompatPolicy(url, "m", retries=1, backoff_s=0.01)
    traj = asyncio.run(Agent(policy, tools).run("a cat"))
    assert traj.termination == ERROR
    assert "policy error" in traj.error and "127.0.0.1" in traj.error


def test_garbage_every_turn_ends_at_round_budget(tools):
    with FakeChatServer(["\x00\x01 garbage"]) as server:
        traj = run(server, tools, AgentConfig(max_rounds=3))
    assert traj.termination == MAX_ROUNDS and [t.action for t in traj.turns] == ["format_error"] * 3


@pytest.mark.parametrize("raw,expected", [(b"\xff\xfe not utf8", "not UTF-8"), (b"<html>oops</html>", "not JSON"),
                                          (b'{"choices": []}', "without choices")])
def test_broken_server_replies_are_clear_errors(tools, raw, expected):
    with FakeChatServer([""], raw_reply=raw) as server:
        traj = run(server, tools)
    assert traj.termination == ERROR and expected in traj.error


def test_huge_reply_is_refused(tools):
    big = json.dumps({"choices": [{"message": {"content": "x" * (9 * 1024 * 1024)}}]}).encode()
    with FakeChatServer([""], raw_reply=big) as server:
        traj = run(server, tools)
    assert traj.termination == ERROR and "limit" in traj.error


def test_api_key_sent_but_never_recorded(tools):
    with FakeChatServer([answer("x", [])]) as server:
        traj = run(server, tools, api_key="sk-secret-123")
    assert server.headers[0]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in json.dumps(traj.to_dict())


def test_policy_without_server_is_a_clear_error():
    with pytest.raises(PolicyError, match="--base-url"):
        OpenAICompatPolicy(None)


def test_empty_request_is_an_error_record(tools):
    with FakeChatServer([answer("x", [])]) as server:
        traj = run(server, tools, request="   ")
    assert traj.termination == ERROR and "empty" in traj.error and server.requests == []


@pytest.mark.parametrize("style", ["llama.cpp", "vllm"])
def test_remote_grammar_is_sent_and_narrows_on_the_last_round(tools, style):
    def script(body):
        return tool_call("query_knowledge", {"skill_name": "text_rendering"})
    with FakeChatServer(script) as server:
        traj = run(server, tools, AgentConfig(max_rounds=2), grammar=style)
    assert traj.termination == MAX_ROUNDS

    def grammar_of(body):
        return body["grammar"] if style == "llama.cpp" else body["structured_outputs"]["grammar"]
    first, last = (grammar_of(b) for b in server.requests)
    assert "<tool_call>" in first and '\\"query_knowledge\\"' in first and "<answer>" in first
    assert "<tool_call>" not in last and "<answer>" in last        # tools are forbidden on the last round


def test_no_grammar_field_by_default(tools):
    with FakeChatServer([answer("x", [])]) as server:
        run(server, tools)
    assert "grammar" not in server.requests[0] and "structured_outputs" not in server.requests[0]


def test_search_results_are_trimmed_to_the_policy_budget(tools):
    from genevolve.tools.base import SearchHit
    tools[0].backend.docs = [SearchHit(f"Doc {i}", f"https://example.org/{i}", "word " * 400, "t") for i in range(5)]
    with FakeChatServer([tool_call("search", {"queries": ["word"]}), answer("x", [])]) as server:
        policy = OpenAICompatPolicy(server.base_url, "m")
        policy.observation_chars = 1500
        traj = asyncio.run(Agent(policy, tools).run("words"))
    obs = traj.tool_calls[0].observation
    assert len(obs) <= 1500 and obs.count("Source:") == 5 and "…" in obs
    with FakeChatServer([tool_call("search", {"queries": ["word", "doc"]}), answer("x", [])]) as server:
        policy = OpenAICompatPolicy(server.base_url, "m")
        policy.observation_chars = 500     # too small for ten usable snippets: one hit per query
        traj = asyncio.run(Agent(policy, tools).run("words"))
    obs = traj.tool_calls[0].observation
    assert obs.count("Source:") == 2 and len(obs) <= 700
