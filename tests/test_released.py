"""`--protocol released`: each behaviour of the released runtime, replayed with a scripted policy on
the loopback OpenAI-compatible fake."""

import asyncio

import pytest

from fakes.openai_chat import FakeChatServer, answer, tool_call
from genevolve.agent import Agent, AgentConfig
from genevolve.policies.base import Sampling
from genevolve.policies.openai_compat import OpenAICompatPolicy
from genevolve.released import (FALLBACK_FINAL_STEP, FINAL_STEP_MARKER, ReleasedAssetsError,
                                load_released_assets, parse_released_turn)
from genevolve.trajectory import Action, Trajectory

RELEASED = AgentConfig(protocol="released")


def run(server, tools, config=RELEASED, request="A poster with the flag of Australia"):
    agent = Agent(OpenAICompatPolicy(server.base_url, "GenEvolve", backoff_s=0.01), tools, config)

    async def go():
        try:
            return await agent.run(request)
        finally:
            await agent.aclose()
    return asyncio.run(go())


def user_messages(body):
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def test_a_policy_that_never_answers_gets_eleven_calls_and_the_last_tool_call_runs(tools):
    def script(body):
        n = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return tool_call("search", {"queries": [f"query {n}"]})
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    assert len(server.requests) == 11 and traj.rounds == 11
    assert len(traj.tool_calls) == 11 and traj.tool_calls[-1].round == 11        # round 11's call ran
    assert traj.termination == "max_rounds_reached" and traj.error is None
    assert user_messages(server.requests[10])[-1].startswith(FINAL_STEP_MARKER)
    assert traj.messages[-1]["content"].startswith("<tool_response>")


def test_the_answer_wins_and_a_tool_call_inside_think_still_runs(tools):
    both = ('<think>x</think><tool_call>{"name": "search", "arguments": {"queries": ["a"]}}</tool_call>'
            '<answer>{"gen_prompt": "a red apple", "reference_images": []}</answer>')
    with FakeChatServer([both]) as server:
        traj = run(server, tools)
    assert traj.termination == "answer" and traj.tool_calls == [] and traj.program.gen_prompt == "a red apple"
    inside = '<think>I will call <tool_call>{"name": "search", "arguments": {"queries": ["Canberra"]}}</tool_call></think>'
    with FakeChatServer([inside, answer("done", [])]) as server:
        traj = run(server, tools)
    assert [c.name for c in traj.tool_calls] == ["search"] and "Canberra" in traj.tool_calls[0].arguments["queries"]


@pytest.mark.parametrize("reply", [
    '<think>x</think><answer>{"gen_prompt": "a cat", "reference_images": [],}</answer>',      # trailing comma
    '<think>x</think><answer>{"gen_prompt": "a cat", "reference_images": []}',                 # no closing tag
    '<think>x</think><tool_call>{"name": "search", "arguments": {"queries": ["a"],}}</tool_call>'])
def test_json_in_tags_is_read_strictly(tools, reply):
    with FakeChatServer([reply, answer("a cat", [])]) as server:
        traj = run(server, tools)
    assert [t.action for t in traj.turns] == [Action.FORMAT_ERROR, Action.ANSWER]
    assert user_messages(server.requests[1])[-1].startswith("<tool_response>\nFormat error")


def test_a_final_round_without_an_action_ends_with_no_answer(tools):
    with FakeChatServer(["thinking aloud, no tags"]) as server:
        traj = run(server, tools, AgentConfig(protocol="released", max_rounds=2))
    assert traj.termination == "no_answer" and traj.error == "no_answer_in_final_round" and traj.rounds == 2


def test_replies_are_stored_stripped(tools):
    with FakeChatServer(["\n\n  " + answer("a cat", []) + "\n  "]) as server:
        traj = run(server, tools)
    stored = traj.messages[-1]["content"]
    assert stored == stored.strip() and stored.startswith("<think>")


def test_unknown_ids_dropped_duplicates_kept_sorted_capped_and_gen_prompt_untouched(tools):
    script = [tool_call("image_search", {"query": "apple"}),       # IMG_001 green, IMG_002 red
              answer("Two apples like IMG_001, see the fifth reference image",
                     ["IMG_003", "IMG_009", "IMG_001", "IMG_001", "IMG_002"])]
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    assert [r.img_id for r in traj.program.references] == ["IMG_001", "IMG_001"]
    assert traj.program.gen_prompt == "Two apples like IMG_001, see the fifth reference image"
    assert traj.program == traj.written_program
    # an unusable answer is accepted as written, never returned
    assert [t.action for t in traj.turns] == [Action.TOOL_CALL, Action.ANSWER] and traj.termination == "answer"
    assert {i.kind for i in traj.program_issues} >= {"unknown_img_id", "ordinal_out_of_range", "img_id_in_gen_prompt"}


def test_observation_layouts_are_the_released_ones(tools):
    script = [tool_call("image_search", {"query": "flag australia"}),
              tool_call("search", {"queries": ["capital Canberra"]}),
              tool_call("query_knowledge", {"skill_name": "text_rendering"}),
              tool_call("query_knowledge", {"skill_name": "juggling"}),
              answer("x", [])]
    with FakeChatServer(script) as server:
        traj = run(server, tools)
    image, search, skill, unknown = (c.observation for c in traj.tool_calls)
    lines = image.splitlines()
    assert lines[0] == "--- image search result for [flag australia] ---"
    assert lines[1] == "IMG_001: title: flag australia"
    assert lines[2] == "  url: https://example.org/flag_australia.png"
    assert lines[3].startswith("  local_path: ") and lines[3].endswith("flag_australia.png")
    assert lines[-1] == "--- end of image search result ---"
    assert search.splitlines()[:4] == ["--- search result for [capital Canberra] ---", "1. title: Australia",
                                       "  url: https://en.wikipedia.org/wiki/Australia",
                                       "  snippet: Australia is a country whose capital is Canberra."]
    assert search.splitlines()[-1] == "--- end of search result ---"
    assert skill.startswith("## Skill Guidance\n\n=== Skill: text_rendering ===\n")
    assert unknown.startswith("Unknown skill 'juggling'")


def test_final_step_message_has_the_released_marker_and_forbids_think(tools):
    with FakeChatServer([tool_call("search", {"queries": ["a"]}), answer("x", [])]) as server:
        traj = run(server, tools, AgentConfig(protocol="released", max_rounds=2))
    final = user_messages(server.requests[1])[-1]
    assert final == FALLBACK_FINAL_STEP and final.startswith("=== FINAL STEP: OUTPUT ANSWER NOW ===")
    assert "Do not write <think>" in final
    assert FINAL_STEP_MARKER in traj.messages[0]["content"]       # the system prompt watches for it


def test_top_k_is_sent(tools):
    with FakeChatServer([answer("x", [])]) as server:
        run(server, tools, AgentConfig(protocol="released", sampling=Sampling(top_k=20)))
    assert server.requests[0]["top_k"] == 20


def _upstream_copy(root):
    """A folder laid out like the released repository, with stand-in texts written for this test."""
    package = root / "genevolve"
    (package / "knowledge" / "skills").mkdir(parents=True)
    (package / "system_prompt.py").write_text(
        'FINAL_STEP_MESSAGE = """=== FINAL STEP: OUTPUT ANSWER NOW ===\\nstand-in final words"""\n'
        'SYSTEM_PROMPT = """stand-in system prompt"""\n', encoding="utf-8")
    (package / "agent.py").write_text(
        'def f(messages):\n    messages.append({"role": "user", "content": (\n'
        '        "<tool_response>\\n"\n        "Format error: stand-in.\\n"\n        "</tool_response>")})\n',
        encoding="utf-8")
    (package / "knowledge" / "skills" / "text_rendering.md").write_text("stand-in skill text", encoding="utf-8")
    return root


def test_texts_come_from_the_users_copy_of_the_released_repository(tools, tmp_path):
    root = _upstream_copy(tmp_path / "GenEvolve")
    assets = load_released_assets(root)
    assert assets.system_prompt == "stand-in system prompt"
    assert assets.format_error_message == "<tool_response>\nFormat error: stand-in.\n</tool_response>"
    script = ["no tags", tool_call("query_knowledge", {"skill_name": "text_rendering"}), answer("x", [])]
    with FakeChatServer(script) as server:
        traj = run(server, tools, AgentConfig(protocol="released", released_assets=str(root), max_rounds=4))
    assert server.requests[0]["messages"][0]["content"] == "stand-in system prompt"
    assert user_messages(server.requests[1])[-1] == assets.format_error_message
    assert traj.tool_calls[0].observation.endswith("stand-in skill text")
    (root / "genevolve" / "agent.py").write_text("x = 1\n", encoding="utf-8")
    with pytest.raises(ReleasedAssetsError, match="agent.py"):
        load_released_assets(root)


def test_released_reading_of_single_replies():
    assert parse_released_turn("<answer>{bad}</answer>").kind == "error"
    t = parse_released_turn('<answer>{"gen_prompt": "a", "reference_images": []}</answer> trailing')
    assert t.kind == "answer" and t.raw == '{"gen_prompt": "a", "reference_images": []}'
    assert parse_released_turn('<tool_call>{"name": "x", "arguments": [1]}</tool_call>').kind == "error"


def test_released_records_round_trip(tools):
    with FakeChatServer([answer("x", [])]) as server:
        traj = run(server, tools)
    assert traj.protocol == "released" and Trajectory.from_dict(traj.to_dict()) == traj
