"""Token sequences, SFT masks and SFT training, the in-process policy and its grammar engine.

A tiny randomly initialised model built locally (genevolve.train.tiny); no download.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llguidance")

from genevolve.agent import Agent, AgentConfig  # noqa: E402
from genevolve.policies.base import Sampling  # noqa: E402
from genevolve.policies.hf import HFPolicy  # noqa: E402
from genevolve.train.grpo import token_logprobs  # noqa: E402
from genevolve.train.sequences import encode_chat, end_of_turn_ids, sft_example  # noqa: E402
from genevolve.train.tiny import build_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny)


CONVERSATION = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Draw the flag of Peru."},
    {"role": "assistant", "content": '<think>Peru.</think><tool_call>{"name": "image_search", "arguments": '
                                     '{"query": "flag of Peru"}}</tool_call>'},
    {"role": "user", "content": "<tool_response>\n[IMG_001] Flag of Peru\n</tool_response>"},
    {"role": "assistant", "content": '<think>Found.</think><answer>{"gen_prompt": "The flag.", '
                                     '"reference_images": [{"img_id": "IMG_001", "note": "flag"}]}</answer>'},
]


def test_splice_puts_sampled_ids_in_place_and_keeps_prefixes(tokenizer):
    odd = [5, 6, 7, 8]           # ids that re-tokenising the text would never give
    ids, spans = encode_chat(tokenizer, CONVERSATION[:4], [odd])
    (start, end), = spans
    assert ids[start:end] == odd
    longer, spans2 = encode_chat(tokenizer, CONVERSATION[:4] + [{"role": "assistant", "content": "x"}], [odd, [9, 9]],
                                 add_generation_prompt=False)
    first_turn, _ = encode_chat(tokenizer, CONVERSATION[:2], [])
    assert ids[:len(first_turn)] == first_turn and longer[:len(ids)] == ids
    assert longer[spans2[1][0]:spans2[1][1]] == [9, 9]


def test_sft_labels_cover_only_the_assistant(tokenizer):
    ends = end_of_turn_ids(tokenizer)
    example = sft_example(tokenizer, {"messages": CONVERSATION}, end_ids=ends)
    ids, labels = example["input_ids"], example["labels"]
    trained = [i for i, l in zip(ids, labels) if l != -100]
    text = tokenizer.decode(trained)
    assert text.count("<|im_end|>") == 2                      # each turn learns to stop
    for m in CONVERSATION:
        if m["role"] == "assistant":
            assert m["content"] in text
        else:
            assert m["content"] not in text                   # system, user, observations: no gradient
    assert "<tool_response>" not in text and "Draw the flag" not in text
    # a teacher's deliberate mistake (loss_mask 0) stays as context but is not learnt
    masked = {"messages": CONVERSATION, "loss_mask": [0, 0, 0, 0, 1]}
    text3 = tokenizer.decode([i for i, l in zip(*sft_example(tokenizer, masked, end_ids=ends).values()) if l != -100])
    assert CONVERSATION[2]["content"] not in text3 and CONVERSATION[4]["content"] in text3
    # recorded completion ids are trained as they are
    record = {"messages": CONVERSATION, "completion_ids": [[11, 12, 13], None]}
    trained2 = [i for i, l in zip(*sft_example(tokenizer, record, end_ids=ends).values()) if l != -100]
    assert trained2[:3] == [11, 12, 13]


def test_bad_sft_records_name_the_problem(tokenizer):
    with pytest.raises(ValueError, match="data.jsonl:3: field 'messages'"):
        sft_example(tokenizer, {"messages": "hi"}, where="data.jsonl:3")
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        sft_example(tokenizer, {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]})
    with pytest.raises(ValueError, match="no assistant"):
        sft_example(tokenizer, {"messages": CONVERSATION[:2]})


def _nll(model, example) -> float:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([example["input_ids"]]), labels=torch.tensor([example["labels"]]))
    return out.loss.item()


def test_sft_training_lowers_the_loss_and_resumes(tiny, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from genevolve.train.config import SFTConfig
    from genevolve.train.sft import train_sft
    data = tmp_path / "sft.jsonl"
    # a system prompt long enough that the rows of a batch share it (the shared-prefix loss runs)
    conversation = [{"role": "system", "content": "You are an agent. " + "Follow the protocol closely. " * 12},
                    *CONVERSATION[1:]]
    data.write_text("".join(json.dumps({"messages": conversation, "images": [], "meta": {}}) + "\n"
                            for _ in range(4)))
    example = sft_example(tokenizer, {"messages": conversation}, end_ids=end_of_turn_ids(tokenizer))
    before = _nll(AutoModelForCausalLM.from_pretrained(tiny), example)
    run = tmp_path / "run"
    common = dict(model=str(tiny), output_dir=str(run), data=str(data), learning_rate=5e-3, batch_size=2,
                  per_device_batch=2, lr_schedule="constant", warmup_ratio=0.0, bf16=False, save_steps=1, threads=1,
                  activation_checkpointing=False)
    result = train_sft(SFTConfig.build(max_steps=2, **common))
    assert result["steps"] == 2 and result["records"] == 4 and result["records_seen"] == 4
    after = _nll(AutoModelForCausalLM.from_pretrained(run / "model"), example)
    assert after < before
    # As if the first two steps had taken an hour: a one-hour limit is spent after the next step,
    # though this invocation has run for seconds (the limit is the whole run's).
    metrics = run / "metrics.jsonl"
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert all(r["train_seconds"] > 0 for r in records)
    # the shared-prefix loss logs the figures TRL's own loss does
    stepped = [r for r in records if "loss" in r]
    assert stepped and all(0 <= r["mean_token_accuracy"] <= 1 and r["entropy"] > 0 and r["num_tokens"] > 0
                           for r in stepped)
    metrics.write_text("".join(json.dumps({**r, "train_seconds": 3600.0}) + "\n" for r in records))
    resumed = train_sft(SFTConfig.build(max_steps=4, time_limit_minutes=60, **common))  # from checkpoint-2
    assert resumed["steps"] == 3
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert sorted(set(steps)) == [1, 2, 3] and steps == sorted(steps)
    assert all(r["train_seconds"] > 3600 for r in records if r["step"] == 3)
    note = json.loads((run / "model" / "genevolve_policy.json").read_text())
    assert note["trainer"] == "sft" and note["kind"] == "full"


def test_a_shared_prefix_gives_the_same_loss_and_gradient_as_whole_rows(tiny, tokenizer):
    """Running the system prompt once per batch is exact: loss and every parameter's gradient equal
    those of running each row whole (rows of different lengths, right-padded)."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from genevolve.train.sft import prefix_shared_token_loss, shared_prefix_length
    system = {"role": "system", "content": "You are an agent. " + "Follow the protocol closely. " * 12}
    ends = end_of_turn_ids(tokenizer)
    conversations = [[system, *CONVERSATION[1:]], [system, *CONVERSATION[1:3]],
                     [system, {"role": "user", "content": "Draw a red bicycle leaning on a wall."}, CONVERSATION[4]]]
    examples = [sft_example(tokenizer, {"messages": c}, end_ids=ends) for c in conversations]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id or 0)(examples)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    prefix = shared_prefix_length(ids, mask, labels)
    system_tokens = len(encode_chat(tokenizer, [system], [])[0])
    assert 32 <= prefix <= system_tokens + 3        # the system turn (plus the next turn's opening)
    assert (labels[:, :prefix + 1] == -100).all()
    assert shared_prefix_length(ids[:1], mask[:1], labels[:1]) == 0

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    whole = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
    whole.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    shared = prefix_shared_token_loss(model, ids, mask, labels, prefix)
    shared["nll"].backward()
    assert shared["tokens"] == int(keep.sum()) and 0 <= shared["top1"] <= shared["tokens"]
    assert torch.allclose(shared["nll"], whole, rtol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-4, atol=1e-6), name


def test_rollout_tokens_rebuild_exactly(tiny, tools):
    """What the trainer rebuilds from a rollout record is what the policy read and sampled: the
    prompts, the sampled ids, and (same weights, temperature 1) their log-probs."""
    from transformers import AutoModelForCausalLM
    policy = HFPolicy(tiny, dtype="float32", tool_call_budget=2)
    agent = Agent(policy, tools, AgentConfig(sampling=Sampling(temperature=1.0, top_p=1.0, max_tokens=60,
                                                               logprobs=True, seed=7)))

    async def go():
        try:
            return await asyncio.gather(*(agent.run("Draw the flag of Peru.") for _ in range(2)))
        finally:
            await agent.aclose()
    trajectories = asyncio.run(go())
    assert policy.stats["batches"] < policy.stats["batched_calls"]        # concurrent calls shared batches
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    for traj in trajectories:
        completions = traj.completions()
        ids, mask, logprobs = traj.token_sequence()
        for turn in traj.turns:
            before = traj.messages[:turn.message_index]
            n_before = sum(1 for m in before if m["role"] == "assistant")
            assert policy.encode(before, completions[:n_before]) == turn.prompt_ids
            written = turn.completion_ids + (turn.stop_ids or [])
            start = len(turn.prompt_ids)
            assert ids[start:start + len(written)] == written
            assert policy.tokenizer.decode(turn.completion_ids) == traj.messages[turn.message_index]["content"]
        positions = [p for p, m in enumerate(mask) if m]
        # the VED teacher's view: another system prompt, the same written tokens in the same order
        from genevolve.protocol import with_guide
        from genevolve.train.sequences import reprompted_sequence
        teacher = reprompted_sequence(policy.tokenizer, traj, with_guide(traj.messages[0]["content"], "Search first."))
        t_positions = [p for p, m in enumerate(teacher.mask) if m]
        assert [teacher.input_ids[p] for p in t_positions] == [ids[p] for p in positions]
        assert len(teacher.input_ids) > len(ids)
        recomputed, _ = token_logprobs(model, ids, positions)
        recorded = torch.tensor([logprobs[p] for p in positions])
        assert not any(math.isnan(x) for x in recorded.tolist())
        assert torch.allclose(recomputed, recorded, atol=1e-3)


def test_grammar_engine_uses_special_tag_tokens(tiny):
    """A tag the tokenizer holds as one special token must be sampled as that token."""
    from transformers import AutoTokenizer

    from genevolve.policies.grammar import grammar_for_tools, protocol_tool_schemas
    from genevolve.train.constraint import GrammarConstraint
    tok = AutoTokenizer.from_pretrained(tiny)
    tok.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]})
    call_id = tok.convert_tokens_to_ids("<tool_call>")
    engine = GrammarConstraint(tok, len(tok), [tok.eos_token_id])
    assert engine.tag_ids == {"<tool_call>": call_id, "</tool_call>": call_id + 1}
    grammar = grammar_for_tools(protocol_tool_schemas(), mode="tools_only", max_think_chars=10,
                                tag_tokens=engine.tag_tokens())
    matcher = engine.matcher(grammar)
    for t in tok("<think>ok</think>", add_special_tokens=False)["input_ids"]:
        assert engine.allowed(matcher)[t] and matcher.consume_token(t)
    allowed = engine.allowed(matcher)
    assert allowed[call_id]
    assert not allowed[tok("<", add_special_tokens=False)["input_ids"][0]]     # not spelled as text


def test_student_view_replaces_the_system_prompt_and_cuts_observations(tokenizer):
    from genevolve.train.sft import cut_observation, student_view, tokenize_records
    prompt, chars = student_view({"observation_chars": 10})
    assert chars == 10 and "# Tools" in prompt
    long = {"role": "user", "content": "<tool_response>\n" + "y" * 50 + "\n</tool_response>"}
    record = {"messages": [CONVERSATION[0], CONVERSATION[1], CONVERSATION[2], long, CONVERSATION[4]]}
    (example,) = tokenize_records([record], tokenizer, max_length=100_000, student=(prompt, chars))
    text = tokenizer.decode(example["input_ids"])
    assert prompt in text and "You are an agent." not in text
    assert cut_observation(long["content"], 10) in text and "y" * 11 not in text
    assert cut_observation("plain user text", 3) == "plain user text"
