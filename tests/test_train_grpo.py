"""GRPO: advantages, the clipped surrogate, the KL estimate, rewards, one real step, checkpoint/resume.

Models are tiny and randomly initialised (genevolve.train.tiny), rollouts go through the real agent
with the in-process policy and the protocol grammar, and tools are the in-memory backends of
conftest.py; no model is downloaded.
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

from PIL import Image  # noqa: E402

from genevolve.generators.base import Generator, GeneratorError, RenderResult  # noqa: E402
from genevolve.judges.base import Judge, JudgeResult  # noqa: E402
from genevolve.program import Program, Reference  # noqa: E402
from genevolve.trajectory import Trajectory  # noqa: E402
from genevolve.train.config import GRPOConfig  # noqa: E402
from genevolve.train.grpo import (GRPOTrainer, clipped_surrogate, group_advantages, k3_kl,  # noqa: E402
                                  token_logprobs)
from genevolve.train.rewards import OfflineProgramJudge, Reward, RolloutScorer, program_checks  # noqa: E402
from genevolve.train.sequences import TrainSequence  # noqa: E402
from genevolve.train.tiny import build_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


# ------------------------------------------------------------------------------ advantages

def test_group_advantages_hand_made_groups():
    rewards = [1.0, 0.0, 0.0, 1.0,      # group 0: mean .5, sample std 1/sqrt(3)
               0.5, 0.5, 0.5, 0.5,      # group 1: no signal
               0.2, None, 0.8, 0.2]     # group 2: the judge failed once
    groups = [0] * 4 + [1] * 4 + [2] * 4
    adv = group_advantages(rewards, groups, eps=0.0)
    s = math.sqrt(1 / 3)
    assert adv[:4] == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s])
    assert adv[4:8] == [0.0] * 4
    mean, std = 0.4, math.sqrt(((0.2 - 0.4) ** 2 * 2 + 0.4 ** 2) / 2)
    assert adv[8] == pytest.approx((0.2 - mean) / std) and adv[9] == 0.0 and adv[10] == pytest.approx(0.4 / std)
    # a group left with one scored rollout carries no signal
    assert group_advantages([1.0, None], [0, 0]) == [0.0, 0.0]


def test_clipping_uses_asymmetric_bounds():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.1, 0.5, 0.9])).requires_grad_(True)
    # positive advantage: the ratio is capped at 1 + 0.28 (not 1.2)
    loss, clipped = clipped_surrogate(logp, old, 1.0, 0.20, 0.28)
    assert loss.tolist() == pytest.approx([-1.28, -1.1, -0.5, -0.9])
    assert clipped.tolist() == [True, False, False, False]
    loss.sum().backward()
    assert logp.grad[0] == 0 and logp.grad[1] == pytest.approx(-1.1)   # no gradient through the clip
    # negative advantage: the ratio is floored at 1 - 0.20
    logp2 = logp.detach().clone().requires_grad_(True)
    loss, clipped = clipped_surrogate(logp2, old, -1.0, 0.20, 0.28)
    assert loss.tolist() == pytest.approx([1.5, 1.1, 0.8, 0.9])
    assert clipped.tolist() == [False, False, True, False]


def test_k3_kl_matches_hand_computation():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.0, -1.0, -2.0])
    expected = [math.exp(r - p) - (r - p) - 1 for p, r in zip(logp.tolist(), ref.tolist())]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected)
    assert k3_kl(logp, logp).tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------ rewards

class FlatGenerator(Generator):
    name = "flat"

    def __init__(self, fail: bool = False):
        self.fail = fail

    async def render(self, program, *, seed=None):
        if self.fail:
            raise GeneratorError("the service is down")
        return RenderResult(Image.new("RGB", (32, 32), (200, 30, 30)))


class FixedJudge(Judge):
    """Grades every image the same (the judge is not what these tests are about)."""

    name = "fixed"

    async def score(self, *, request, generated_image, gt_image, program=None):
        return JudgeResult(scores={"faithfulness": 1.0, "visual_correctness": 1.0, "text_accuracy": 1.0,
                                   "aesthetics": 1.0}, judge=self.name)


def _traj(program: Program | None, termination: str = "answer") -> Trajectory:
    return Trajectory(request="The flag of Peru", written_program=program, program=program,
                      termination=termination)


def test_each_protocol_failure_scores_zero(tmp_path):
    gt = tmp_path / "gt.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(gt)
    ref_file = tmp_path / "flag-pe.png"
    Image.new("RGB", (8, 8)).save(ref_file)
    ref = lambda i, path=None: Reference(img_id=f"IMG_00{i}", local_path=path, title="Flag of Peru")  # noqa: E731
    row = {"meta": {"entity": "Peru"}}
    scorer = RolloutScorer(FlatGenerator(), FixedJudge(), OfflineProgramJudge())
    cases = {
        "no_answer": (scorer, _traj(None, "max_rounds")),
        "empty_gen_prompt": (scorer, _traj(Program("   ", [ref(1)]))),
        "too_many_references": (scorer, _traj(Program("Three flags.", [ref(1), ref(2), ref(3)]))),
        "render_failed": (RolloutScorer(FlatGenerator(fail=True), FixedJudge(), OfflineProgramJudge()),
                          _traj(Program("The flag of Peru.", [ref(1, str(ref_file))]))),
        "no_usable_reference": (RolloutScorer(FlatGenerator(), FixedJudge(), OfflineProgramJudge(),
                                              require_reference=True),
                                _traj(Program("The flag of Peru.", [ref(1, str(tmp_path / "missing.png"))]))),
    }
    for kind, (s, traj) in cases.items():
        reward = asyncio.run(s.score(traj, row, gt, tmp_path / f"{kind}.png"))
        assert reward.reward == 0.0 and reward.failure.startswith(kind), (kind, reward)
    # a valid program is judged: R = 0.5 * R_img + 0.5 * R_text
    good = asyncio.run(scorer.score(_traj(Program("The flag of Peru.", [ref(1, str(ref_file))])), row, gt,
                                    tmp_path / "good.png"))
    assert good.failure is None and good.r_img == 1.0 and good.r_text == 1.0 and good.reward == 1.0
    # the reward reads the program the policy wrote, not the runtime's repair of it
    repaired = _traj(Program("The flag of Peru.", [ref(1, str(ref_file)), ref(2), ref(3)]))
    repaired.program = Program("The flag of Peru.", [ref(1, str(ref_file))])      # truncated by the runtime
    assert asyncio.run(scorer.score(repaired, row, gt, tmp_path / "r.png")).failure.startswith("too_many")


def test_offline_program_checks_follow_the_recipe():
    meta = {"entity": "elephant", "required_texts": ["HELLO"], "count": 3,
            "gt_program": {"reference_images": [{"img_id": "IMG_001", "library_id": "emoji-1f418"}]}}
    ref = {"img_id": "IMG_001", "local_path": "/lib/emoji/emoji-1f418.png", "title": "Elephant (emoji)"}
    good = {"gen_prompt": 'Three elephants with the caption "HELLO".', "reference_images": [ref]}
    checks = {name: ok for name, ok, _ in program_checks(meta, good)}
    assert checks == {"entity:elephant": True, "text:HELLO": True, "count:3": True}
    judge = OfflineProgramJudge()
    assert asyncio.run(judge.score(request="", gt_image="", program=good, meta=meta)).score == 1.0
    wrong = {"gen_prompt": "Two elephants.", "reference_images": [{**ref, "local_path": "/x/cat.png",
                                                                  "title": "Cat"}]}
    assert asyncio.run(judge.score(request="", gt_image="", program=wrong, meta=meta)).score == 0.0


# ------------------------------------------------------------------------------ one real step

def test_one_step_lowers_the_loss(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    ids = tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>ok</think><|im_end|>")["input_ids"]
    positions = list(range(len(ids) - 6, len(ids)))       # the assistant's tokens
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss_now() -> torch.Tensor:
        logp, _ = token_logprobs(model, ids, positions)
        per_token, _ = clipped_surrogate(logp, logp.detach(), 1.0, 0.2, 0.28)   # a positive advantage
        return per_token.mean(), logp

    before, logp_before = loss_now()
    before.backward()
    optimizer.step()
    after, logp_after = loss_now()
    # the surrogate at ratio 1 is -A for any weights; what falls is the sampled tokens' NLL
    assert float(-logp_after.detach().sum()) < float(-logp_before.detach().sum())
    assert after.item() == pytest.approx(-1.0)


def test_detached_prefix_scores_like_the_full_pass(tiny):
    from transformers import AutoModelForCausalLM
    from genevolve.train.grpo import prefix_cache, shared_prefix
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    ids = list(range(5, 105))
    positions = list(range(80, 100))
    full, _ = token_logprobs(model, ids, positions)
    cut, _ = token_logprobs(model, ids, positions, prefix=(70, prefix_cache(model, ids[:70])))
    assert torch.allclose(full, cut, atol=1e-5)
    cut.sum().backward()                      # gradients flow through the part after the prefix
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    seqs = [TrainSequence(ids, [0] * 80 + [1] * 20, [], 0), TrainSequence(ids[:90] + [1], [0] * 75 + [1] * 16, [], 1)]
    assert shared_prefix(seqs) == 74 and shared_prefix(seqs, minimum=100) == 0
    # rollouts of one request share every token before the first one written: the prefix stops one
    # short of it, since that token's logit comes from the position before it
    group = [TrainSequence(ids, [0] * 80 + [1] * 20, [], 0), TrainSequence(ids[:80] + [7] * 20, [0] * 80 + [1] * 20, [], 1)]
    n = shared_prefix(group)
    assert n == 79
    for seq in group:
        whole, _ = token_logprobs(model, seq.input_ids, positions)
        shared, _ = token_logprobs(model, seq.input_ids, positions, prefix=(n, prefix_cache(model, seq.input_ids[:n])))
        assert torch.allclose(whole, shared, atol=1e-5)


def test_a_shared_prefix_with_gradient_is_exact(tiny):
    """Two sequences over one prefix run once (SharedPrefix): every parameter ends with the gradient
    that running both whole gives."""
    from transformers import AutoModelForCausalLM
    from genevolve.train.grpo import SharedPrefix
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    seqs = [list(range(5, 105)), list(range(5, 75)) + [9] * 40]
    positions = [list(range(80, 100)), list(range(75, 110))]
    weights = [1.0, -0.5]                   # advantages of either sign
    for ids, pos, w in zip(seqs, positions, weights):
        (w * token_logprobs(model, ids, pos)[0].sum()).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    shared = SharedPrefix(model, seqs[0][:70])
    for ids, pos, w in zip(seqs, positions, weights):
        (w * token_logprobs(model, ids, pos, prefix=(70, shared))[0].sum()).backward()
    shared.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-4, atol=1e-6), name


def test_training_positions_are_the_policy_tokens_only(tiny, tools, tmp_path):
    """Observation, system and user tokens are never trained: the step's positions are the
    tokens the policy sampled, exactly."""
    trainer, rows = _trainer(tiny, tools, tmp_path, steps=1)
    trainer._setup()
    rollouts, _ = asyncio.run(trainer._rollouts_and_rewards(rows, 1, {}))
    from genevolve.train.sequences import trajectory_sequences
    for i, r in enumerate(rollouts):
        (seq,) = trajectory_sequences(r.trajectory, i, trainer.policy.encode)
        written = [p for p, m in enumerate(seq.mask) if m]
        expected = []
        for turn in r.trajectory.turns:
            start = len(turn.prompt_ids)
            expected += list(range(start, start + len(turn.completion_ids) + len(turn.stop_ids or [])))
        assert written == expected
        tool_text = "".join(m["content"] for m in r.trajectory.messages if m["role"] == "user")
        written_text = trainer.tokenizer.decode([seq.input_ids[p] for p in written])
        assert "<tool_response>" in tool_text and "<tool_response>" not in written_text
    asyncio.run(_close(tools))


# ------------------------------------------------------------------------------ the trainer

ROWS = [{"id": "peru", "question": "Draw the flag of Peru.", "meta": {"entity": "Peru"}},
        {"id": "apples", "question": "A red apple on the left and a green apple on the right.",
         "meta": {"entity": "red apple; green apple"}}]


async def length_reward(rollout, step, image_path) -> Reward:
    """A deterministic reward that differs between rollouts (the scorer is tested above)."""
    n = sum(len(t.completion_ids or []) for t in rollout.trajectory.turns)
    return Reward(reward=(n % 7) / 7)


def _trainer(tiny: Path, tools, out: Path, steps: int, **kw) -> tuple[GRPOTrainer, list]:
    cfg = GRPOConfig.build(model=str(tiny), output_dir=str(out), steps=steps, requests_per_step=2, group_size=3,
                           max_tokens=80, bf16=False, save_every=1, learning_rate=1e-3, threads=1,
                           policy_options={"tool_call_budget": 2}, **kw)
    return GRPOTrainer(cfg, rows=ROWS, reward_fn=length_reward, tools=tools), ROWS


async def _close(tools):
    for t in tools:
        await t.aclose()


def test_resume_gives_the_same_run(tiny, tools, tmp_path):
    straight = _trainer(tiny, tools, tmp_path / "a", steps=2)[0].train()
    # a run stopped before its first checkpoint left a step's metrics and rollouts: they are redone
    (tmp_path / "b" / "rollouts").mkdir(parents=True)
    (tmp_path / "b" / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward_mean": -1.0}) + "\n")
    (tmp_path / "b" / "rollouts" / "step_00001.jsonl").write_text("{}\n")
    first = _trainer(tiny, tools, tmp_path / "b", steps=2)[0].train(until=1)      # interrupted
    resumed = _trainer(tiny, tools, tmp_path / "b", steps=2)[0].train()
    assert [r["step"] for r in first] == [1] and [r["step"] for r in resumed] == [2]
    keys = ("reward_mean", "reward_std", "answer_rate", "loss", "pg_loss", "trained_tokens", "lr", "grad_norm")
    for a, b in zip(straight, first + resumed):
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys})
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    wa = {k: v for k, v in _weights(tmp_path / "a" / "checkpoints" / "step_00002").items()}
    wb = _weights(tmp_path / "b" / "checkpoints" / "step_00002")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the run dir holds what INTERFACES.md promises
    run = tmp_path / "b"
    assert (run / "config.json").exists() and (run / "curves.png").exists() and (run / "model" / "config.json").exists()
    record = json.loads((run / "rollouts" / "step_00002.jsonl").read_text().splitlines()[0])
    assert {"reward", "advantage", "trajectory", "group", "k", "row_id"} <= set(record)
    assert record["trajectory"]["turns"][0]["completion_ids"]


def test_a_time_limit_spans_the_invocations_of_a_run(tiny, tools, tmp_path):
    run = tmp_path / "run"
    _trainer(tiny, tools, run, steps=3)[0].train(until=1)
    metrics = run / "metrics.jsonl"
    (record,) = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert record["train_seconds"] >= record["seconds_step"] > 0
    # as if step 1 had taken an hour: a one-hour limit is spent once the next step is done
    metrics.write_text(json.dumps({**record, "train_seconds": 3600.0}) + "\n")
    resumed = _trainer(tiny, tools, run, steps=3, time_limit_minutes=60)[0].train()
    assert [r["step"] for r in resumed] == [2] and resumed[0]["train_seconds"] > 3600
    assert (run / "checkpoints" / "step_00002").is_dir() and (run / "model" / "config.json").exists()


def _weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(ckpt / "model.safetensors"))


class CountingTerm:
    """A loss term that only counts (the plug-in point VED uses)."""

    name = "count"

    def __init__(self):
        self.prepared = 0
        self.seen = 0

    def prepare(self, trainer, batch):
        self.prepared += 1
        self.n = len(batch.sequences)

    def wants(self, index):
        return True

    def loss(self, index, logp, old_logp):
        self.seen += 1
        return (logp * 0).sum(), {"count_calls": 1.0}


def test_extra_loss_terms_join_the_step(tiny, tools, tmp_path):
    term = CountingTerm()
    # two minibatches (old log-probs recomputed, ratio and clip active) over a shared, detached prefix
    cfg = GRPOConfig.build(model=str(tiny), output_dir=str(tmp_path), steps=1, requests_per_step=1, group_size=2,
                           max_tokens=48, bf16=False, threads=1, policy_options={"tool_call_budget": 1},
                           minibatches=2, share_prefix=True)
    async def by_index(rollout, step, image_path):          # every group has signal
        return Reward(reward=float(rollout.k))
    (record,) = GRPOTrainer(cfg, rows=ROWS[:1], reward_fn=by_index, tools=tools, loss_terms=[term]).train()
    assert term.prepared == 1 and term.seen == term.n == record["sequences"] and record["count_calls"] == term.n
    assert record["trained_tokens"] > 0 and math.isfinite(record["loss"]) and record["grad_norm"] > 0


def test_config_presets_and_validation():
    cfg = GRPOConfig.build("gpu")
    assert (cfg.requests_per_step, cfg.group_size, cfg.learning_rate, cfg.clip_low, cfg.clip_high, cfg.kl_beta) \
        == (8, 6, 1e-6, 0.20, 0.28, 0.0)
    assert GRPOConfig.build("cpu", learning_rate=3e-6).learning_rate == 3e-6
    assert (GRPOConfig.build().group_size, GRPOConfig.build().temperature, GRPOConfig.build().top_p) == (6, 0.7, 0.95)
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig.build(group_size=1)
    with pytest.raises(ValueError, match="unknown GRPO setting"):
        GRPOConfig.build(lerning_rate=1)


def test_sequences_are_trained_in_one_pass():
    seq = TrainSequence([1, 2, 3], [0, 1, 1], [math.nan, -1.0, -2.0], 0)
    assert seq.n_tokens == 2


def test_lora_run_saves_an_adapter_the_policy_loads(tiny, tools, tmp_path):
    pytest.importorskip("peft")
    from genevolve.policies.base import Sampling
    from genevolve.policies.hf import HFPolicy
    cfg = GRPOConfig.build(model=str(tiny), output_dir=str(tmp_path), steps=1, requests_per_step=1, group_size=2,
                           max_tokens=40, bf16=False, threads=1, lora_r=4, kl_beta=1e-3,
                           policy_options={"tool_call_budget": 1})

    async def by_index(rollout, step, image_path):
        return Reward(reward=float(rollout.k))
    (record,) = GRPOTrainer(cfg, rows=ROWS[:1], reward_fn=by_index, tools=tools).train()
    assert record["trained_tokens"] > 0 and record["kl"] >= 0
    model_dir = tmp_path / "model"
    assert (model_dir / "adapter_config.json").exists() and not (model_dir / "model.safetensors").exists()
    assert json.loads((model_dir / "genevolve_policy.json").read_text())["kind"] == "lora"
    policy = HFPolicy(model_dir, dtype="float32", tool_call_budget=1)
    reply = asyncio.run(policy.chat([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                    Sampling(max_tokens=20, seed=1)))
    assert reply.text.startswith("<think>") and reply.completion_ids


def test_training_device_is_the_gpu_when_torch_sees_one():
    from genevolve.train.weights import training_device
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert training_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no GPU"):
            training_device("cuda:0")
