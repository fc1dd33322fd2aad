"""Trajectory records fit for learning: token-exact turns, the answer as written beside the repaired
program, structured issues, the round budget, turn contexts, the guide slot, and loading every row
this project writes. Runs against the loopback OpenAI-compatible fake (which speaks vLLM's token
fields) and the real agent."""

import asyncio
import json
import math

import pytest

from fakes.openai_chat import IM_END, FakeChatServer, answer, tool_call, toy_template, toy_tokenize
from genevolve import protocol
from genevolve.agent import Agent, AgentConfig
from genevolve.policies.base import ANSWER_ONLY, IMAGE_SEARCH_ONLY, TOOLS_ONLY, ANY, Policy, PolicyReply, Sampling
from genevolve.policies.openai_compat import OpenAICompatPolicy
from genevolve.program import ProgramIssue
from genevolve.trajectory import SCHEMA_VERSION, Action, Trajectory, result_row

TRAINING = Sampling(temperature=0.7, top_p=0.95, logprobs=True)


def run(server, tools, config=None, request="A poster with the flag of the country whose capital is Canberra",
        guide=None, **policy_kw):
    policy = OpenAICompatPolicy(server.base_url, "test-model", backoff_s=0.01, **policy_kw)
    agent = Agent(policy, tools, config)

    async def go():
        try:
            return await agent.run(request, guide=guide)
        finally:
            await agent.aclose()
    return asyncio.run(go()), policy


SCRIPT = [tool_call("search", {"queries": ["capital Canberra"]}),
          tool_call("image_search", {"query": "flag australia"}),
          answer("A poster with the flag from the first reference image", ["IMG_001"])]


# -- token-exact turns ---------------------------------------------------------------------------

def test_training_turns_record_the_exact_tokens_the_server_read_and_wrote(tools):
    with FakeChatServer(SCRIPT) as server:
        traj, policy = run(server, tools, AgentConfig(sampling=TRAINING))
        assert traj.ok and len(traj.turns) == 3
        for turn, body in zip(traj.turns, server.requests):
            fed = toy_tokenize(toy_template(body["messages"]))
            assert turn.prompt_ids == fed                          # what the server read
            wrote = traj.messages[turn.message_index]["content"]
            assert turn.completion_ids == toy_tokenize(wrote) + [IM_END]
            assert len(turn.logprobs) == len(turn.completion_ids) and turn.logprob_source == "model"
            assert turn.sampling["temperature"] == 0.7 and turn.finish_reason == "stop"
            # the policy renders the same ids from the record alone
            assert policy.encode(traj.messages[:turn.message_index]) == fed
        # token_turns rebuilds each turn from the record, with or without recorded prompt ids
        stored = Trajectory.from_dict(json.loads(json.dumps(traj.to_dict())))
        for t in stored.turns:
            t.prompt_ids = None
        rebuilt = stored.token_turns(policy.encode)
        assert [r.prompt_ids for r in rebuilt] == [t.prompt_ids for t in traj.turns]
        # one sequence: each prompt extends the previous prompt and reply; the mask marks replies
        ids, mask, logprobs = stored.token_sequence(policy.encode)
    last = traj.turns[-1]
    assert ids == last.prompt_ids + last.completion_ids
    assert sum(mask) == sum(len(t.completion_ids) for t in traj.turns)
    assert all(math.isnan(lp) for lp, m in zip(logprobs, mask) if not m)
    assert all(not math.isnan(lp) for lp, m in zip(logprobs, mask) if m)
    written = [ids[i] for i, m in enumerate(mask) if m]
    assert written == [t for turn in traj.turns for t in turn.completion_ids]


def test_older_vllm_ids_inside_logprob_entries_are_read(tools):
    with FakeChatServer(SCRIPT, tokens="in_logprobs") as server:
        traj, _ = run(server, tools, AgentConfig(sampling=TRAINING))
    assert traj.ok
    assert traj.turns[0].completion_ids == toy_tokenize(traj.messages[2]["content"]) + [IM_END]
    assert traj.turns[0].prompt_ids is None                       # that server does not report them


def test_server_without_tokens_is_a_clear_error_when_training_asks(tools):
    with FakeChatServer(SCRIPT, tokens="none") as server:
        traj, _ = run(server, tools, AgentConfig(sampling=TRAINING))
    assert traj.termination == "error" and "token ids" in traj.error
    # without training, the same server works and nothing extra is asked for
    with FakeChatServer(SCRIPT, tokens="none") as server:
        traj, _ = run(server, tools)
        assert "return_token_ids" not in server.requests[0] and "logprobs" not in server.requests[0]
    assert traj.ok and traj.turns[0].completion_ids is None


# -- the answer as written beside the repaired program ------------------------------------------------

def test_answer_as_written_is_kept_beside_the_repaired_program(tools):
    raw = '{"gen_prompt": "The flag from IMG_001 on a pole", "reference_images": [{"img_id": "IMG_001", "note": "flag"}]}'
    script = [tool_call("image_search", {"query": "flag australia"}), f"<think>done</think><answer>{raw}</answer>"]
    with FakeChatServer(script) as server:
        traj, _ = run(server, tools)
    assert traj.answer.raw == raw and traj.answer.parsed["gen_prompt"] == "The flag from IMG_001 on a pole"
    assert traj.answer.round == 2
    assert traj.written_program.gen_prompt == "The flag from IMG_001 on a pole"      # what the policy wrote
    assert traj.program.gen_prompt == "The flag from the first reference image on a pole"
    assert traj.program_issues == [ProgramIssue("img_id_replaced", "'IMG_001' -> 'the first reference image'")]
    assert traj.reward_program() == traj.written_program and traj.reward_program(repaired=True) == traj.program
    row = traj.to_dict()
    assert row["program_issues"] == [{"kind": "img_id_replaced", "detail": "'IMG_001' -> 'the first reference image'"}]


def test_strict_protocol_repairs_and_returns_nothing(tools):
    bad = answer("The flag from IMG_001 beside the second reference image", ["IMG_001"])
    with FakeChatServer([tool_call("image_search", {"query": "flag australia"}), bad]) as server:
        traj, _ = run(server, tools, AgentConfig(protocol="strict"))
    assert [t.action for t in traj.turns] == [Action.TOOL_CALL, Action.ANSWER]
    assert traj.program == traj.written_program
    assert {i.kind for i in traj.program_issues} == {"img_id_in_gen_prompt", "ordinal_out_of_range"}
    # one repair switched back on by name
    with FakeChatServer([tool_call("image_search", {"query": "flag australia"}), bad]) as server:
        traj, _ = run(server, tools, AgentConfig(protocol="strict", repairs=("img_id_replaced",)))
    assert traj.program.gen_prompt.startswith("The flag from the first reference image")
    with pytest.raises(ValueError, match="unknown repair"):
        Agent(OpenAICompatPolicy("http://127.0.0.1:9", "m"), tools, AgentConfig(repairs=("guess",)))


# -- the round budget ---------------------------------------------------------------------------------

def test_a_policy_that_never_answers_gets_exactly_eleven_calls(tools):
    def script(body):
        n = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return tool_call("search", {"queries": [f"query {n}"]})
    with FakeChatServer(script) as server:
        traj, _ = run(server, tools, AgentConfig(answer_retries=1))
    assert len(server.requests) == 11 and traj.rounds == 11 and len(traj.tool_calls) == 10
    assert traj.termination == "max_rounds"
    assert [t.final for t in traj.turns] == [False] * 10 + [True]


def test_a_returned_answer_adds_one_round(tools):
    bad = answer("The first reference image beside the second reference image", ["IMG_001"])

    def script(body):
        n = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return {0: tool_call("image_search", {"query": "flag australia"}), 1: bad}.get(
            n, tool_call("search", {"queries": [f"query {n}"]}))
    with FakeChatServer(script) as server:
        traj, _ = run(server, tools)
    assert len(server.requests) == 12 and traj.rounds == 12
    actions = [t.action for t in traj.turns]
    assert actions[1] == Action.ANSWER_RETURNED and actions[-1] == Action.TOOL_CALL_AFTER_FINAL
    assert len(traj.tool_calls) == 10


# -- what the agent tells the policy ------------------------------------------------------------------

class RecordingPolicy(Policy):
    """Replays replies and keeps the turn context the agent sent with each call."""

    name = "recording"

    def __init__(self, replies):
        self.replies, self.contexts, self.systems = list(replies), [], []
        self.tool_call_budget = 3

    async def chat(self, messages, sampling, turn=None):
        self.contexts.append(turn)
        self.systems.append(messages[0]["content"])
        return PolicyReply(text=self.replies[len(self.contexts) - 1], completion_ids=[len(self.contexts)] * 3)


def test_turn_context_comes_from_the_run_state(tools):
    replies = [tool_call("query_knowledge", {"skill_name": "text_rendering"}),
               tool_call("search", {"queries": ["capital Canberra"]}),
               tool_call("image_search", {"query": "flag australia"}),
               answer("The flag from the first reference image", ["IMG_001"])]
    policy = RecordingPolicy(replies)
    traj = asyncio.run(Agent(policy, tools).run("a flag"))
    modes = [c.mode for c in policy.contexts]
    # no image search yet: tools only; one call left and still none: image search only; budget spent
    assert modes == [TOOLS_ONLY, TOOLS_ONLY, IMAGE_SEARCH_ONLY, ANSWER_ONLY]
    assert policy.contexts[1].loaded_skills == {"text_rendering"}
    assert policy.contexts[3].image_ids == ("IMG_001", "IMG_002") and policy.contexts[3].tool_calls_left == 0
    assert policy.contexts[3].completions == ([1, 1, 1], [2, 2, 2], [3, 3, 3])
    assert [t.mode for t in traj.turns] == modes and traj.ok


def test_guide_goes_after_the_cacheable_prefix_and_is_recorded(tools):
    replies = [tool_call("image_search", {"query": "flag australia"}), answer("a flag", ["IMG_001"])]
    policy = RecordingPolicy(replies)
    agent = Agent(policy, tools, AgentConfig(max_tool_calls=5))
    traj = asyncio.run(agent.run("a flag", guide="Search the country before its flag."))
    system = policy.systems[0]
    assert system.startswith(agent.system_prompt)
    assert system.endswith(protocol.GUIDE_HEADING + "Search the country before its flag.")
    assert protocol.split_guide(system)[0] == agent.system_prompt
    assert traj.guide == "Search the country before its flag."
    assert Trajectory.from_dict(traj.to_dict()).guide == traj.guide
    plain = asyncio.run(Agent(RecordingPolicy(replies), tools, AgentConfig(max_tool_calls=5)).run("a flag"))
    assert plain.messages[0]["content"] == agent.system_prompt and plain.guide is None


# -- one schema -----------------------------------------------------------------------------------------

def test_result_rows_and_trajectories_load_through_one_schema(tools):
    with FakeChatServer(SCRIPT) as server:
        traj, _ = run(server, tools)
    row = result_row("item_1", traj.request, traj, data={"category": "flags", "id": "ignored"})
    assert row["id"] == "item_1" and row["category"] == "flags" and row["prompt"] == traj.request
    assert row["schema_version"] == SCHEMA_VERSION and row["gen_prompt"] == traj.program.gen_prompt
    back = Trajectory.from_dict(json.loads(json.dumps(row)))
    assert back.request == traj.request and back.program == traj.program and back.turns == traj.turns
    assert back.written_program == traj.written_program and back.answer == traj.answer
    assert Trajectory.from_dict(json.loads(json.dumps(traj.to_dict()))) == traj
    failed = result_row("item_2", None, data={"question": "a cat"}, error="bad row")
    assert failed["prompt"] == "a cat" and failed["termination"] == "error"
    assert Trajectory.from_dict(failed).program is None


def test_rows_of_schema_version_one_load():
    old = {"id": "x", "prompt": "a cat", "gen_prompt": "A cat on the first reference image",
           "reference_images": [{"img_id": "IMG_001", "note": "", "local_path": "/a.png"}],
           "messages": [], "termination": "answer", "rounds": 2, "error": None,
           "program_issues": ["img_id_replaced: 'IMG_001' -> 'the first reference image'", "url_in_gen_prompt"],
           "turns": [{"round": 1, "action": "tool_call", "latency_s": 1.0, "logprobs": None}],
           "tool_calls": [{"round": 1, "name": "image_search", "arguments": {"query": "cat"}}]}
    traj = Trajectory.from_dict(old)
    assert traj.request == "a cat" and traj.program.references[0].local_path == "/a.png"
    assert traj.program_issues == [ProgramIssue("img_id_replaced", "'IMG_001' -> 'the first reference image'"),
                                   ProgramIssue("url_in_gen_prompt")]
    assert traj.turns[0].action == Action.TOOL_CALL and traj.schema_version == SCHEMA_VERSION
    assert traj.reward_program() == traj.program           # no written program recorded: the program


@pytest.mark.parametrize("row,field", [({"prompt": "a", "turns": "x"}, "turns"),
                                       ({"prompt": "a", "schema_version": 99}, "schema_version"),
                                       ({"prompt": "a", "tool_calls": [{"round": 1}]}, "wrong shape")])
def test_malformed_records_name_the_field(row, field):
    with pytest.raises(ValueError, match=field):
        Trajectory.from_dict(row)


def test_turn_actions_are_the_documented_set():
    assert {a.value for a in Action} == {"tool_call", "answer", "answer_returned", "format_error",
                                         "budget_exceeded", "tool_call_after_final"}
    assert ANY == "any"
