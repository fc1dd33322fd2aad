"""GRPO over multi-turn tool rollouts: collect, score, normalise within groups, step.

One step, top to bottom (`GRPOTrainer.step`):

1. take the next `requests_per_step` rows of the pool (a seeded shuffle per epoch);
2. run `group_size` agent rollouts of each through the in-process policy (train/rollouts.py);
3. score each with R = (1 − α)·R_img + α·R_text on the program it wrote (train/rewards.py);
4. Â_i = (R_i − mean) / (std + ε) within each group, shared by every token the policy wrote in
   that trajectory; tool observations, system and user tokens are masked out;
5. the clipped surrogate with asymmetric bounds, token-mean over the batch, plus the optional KL
   to the reference (k3 estimator) and any extra loss terms (the VED distillation term plugs in
   here, see `LossTerm`), one forward and backward pass per sequence, then an optimizer step.

Each trajectory is one sequence: its turns' prompt and completion ids chain into a single token
list (the policy splices its replies back as sampled), so one forward pass scores every turn, and
logits are computed only where the policy wrote. With `share_prefix` the system prompt that every
trajectory shares is run once per minibatch (`SharedPrefix`): each sequence reads its keys and values
and the gradients they collect go back through that one pass, so the gradient is the one of running
every sequence whole (a CPU speed-up, exact).
Metrics go to metrics.jsonl, rollouts with rewards to rollouts/step_XXXXX.jsonl, checkpoints to
checkpoints/step_XXXXX (weights, optimizer, scheduler, step), from which `train()` resumes.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol, Sequence

import torch

from ..jsonio import atomic_write_json, write_jsonl_atomic
from .config import GRPOConfig
from .metrics import MetricsLog, plot_curves
from .rollouts import Rollout, collect, load_rows, rollout_item_ids, rollout_stats
from .sequences import TrainSequence, trajectory_sequences, untrained_common_prefix
from .weights import latest_checkpoint, load_trainable, model_device, training_device


# ----------------------------------------------------------------------------- the math

def group_advantages(rewards: Sequence[float | None], groups: Sequence[int], eps: float = 1e-6) -> list[float]:
    """(R − mean) / (std + eps) within each group (sample std); None rewards (judge failures) get 0
    and are left out of their group's statistics; a group with fewer than two scored rollouts, or
    with all rewards equal, gives 0."""
    by_group: dict[int, list[float]] = {}
    for r, g in zip(rewards, groups):
        if r is not None:
            by_group.setdefault(g, []).append(float(r))
    out = []
    for r, g in zip(rewards, groups):
        values = by_group.get(g, [])
        if r is None or len(values) < 2:
            out.append(0.0)
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        out.append(0.0 if std == 0 else (float(r) - mean) / (std + eps))
    return out


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantage: float | torch.Tensor,
                      clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token −min(u·Â, clip(u, 1−ε_low, 1+ε_high)·Â) with u = exp(logp − old_logp), and where
    the clip was the smaller term (no gradient flows there)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantage
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token low-variance KL estimate of KL(π_θ ‖ π_ref): exp(r) − r − 1 with r = ref − logp."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def token_logprobs(model: Any, ids: Sequence[int], positions: Sequence[int], temperature: float = 1.0,
                   autocast: bool = False, entropy: bool = False, prefix: tuple[int, Any] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(ids[p] | ids[:p]) for each p in `positions` (p ≥ 1), from one forward pass that computes
    logits only where they are needed.

    `prefix` = (n, cache): the keys and values of ids[:n], computed beforehand, without gradient
    (`prefix_cache`) or with it (`SharedPrefix`); only ids[n:] then go through the model (every
    position must be > n).
    """
    n, cache = prefix if prefix is not None else (0, None)
    device = model_device(model)
    input_ids = torch.tensor([list(ids[n:])], device=device)
    keep = torch.tensor([p - 1 - n for p in positions], device=device)
    kwargs: dict[str, Any] = {}
    if cache is not None:
        # a forward pass appends to the cache it is given: each pass gets its own
        fresh = cache.fresh() if isinstance(cache, SharedPrefix) else copy.deepcopy(cache)
        kwargs = {"cache": fresh, "use_cache": True,
                  "position_ids": torch.arange(n, len(ids), device=device)[None]}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=input_ids, logits_to_keep=keep, **kwargs).logits[0]
    logits = logits.float() / temperature
    logps = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor([ids[p] for p in positions], device=device)
    chosen = logps.gather(-1, targets[:, None])[:, 0]
    ent = -(logps.exp() * logps).sum(-1) if entropy else None
    return chosen, ent


def prefix_cache(model: Any, ids: Sequence[int], autocast: bool = False, base: tuple[int, Any] | None = None) -> Any:
    """Keys and values of `ids` under the current weights, with no gradient (see token_logprobs).
    `base` = (m, cache of ids[:m]): extend that cache (left as it is) instead of starting over."""
    from transformers import DynamicCache
    m, cache = (base[0], copy.deepcopy(base[1])) if base is not None else (0, DynamicCache(config=model.config))
    if m < len(ids):
        device = model_device(model)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            model(input_ids=torch.tensor([list(ids[m:])], device=device), cache=cache, use_cache=True,
                  logits_to_keep=1, position_ids=torch.arange(m, len(ids), device=device)[None])
    return cache


class SharedPrefix:
    """The keys and values of a prefix several sequences share, computed once with gradient.

    Each sequence's pass reads them through leaf copies (`fresh`), so its backward stops there and
    leaves the leaves' gradients; `backward()` then sends their sum back through the one prefix pass.
    The parameters end with the gradient that running every sequence whole would give them, for the
    price of one prefix forward and backward instead of one per sequence. (Autograd has no way to
    share a subgraph among separate backward calls other than keeping it alive, which would run the
    prefix's backward once per sequence.)"""

    def __init__(self, model: Any, ids: Sequence[int], autocast: bool = False):
        from transformers import DynamicCache
        self.config = model.config
        device = model_device(model)
        cache = DynamicCache(config=model.config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            model(input_ids=torch.tensor([list(ids)], device=device), cache=cache, use_cache=True, logits_to_keep=1)
        self.tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        self.leaves = [t.detach().requires_grad_(True) for t in self.tensors]
        self.grads: list[torch.Tensor | None] = [None] * len(self.leaves)

    def fresh(self) -> Any:
        """A cache over the leaves for one forward pass (the pass appends to its own copy)."""
        from transformers import DynamicCache
        self.collect()
        pairs = [(self.leaves[i], self.leaves[i + 1]) for i in range(0, len(self.leaves), 2)]
        return DynamicCache(ddp_cache_data=pairs, config=self.config)

    def collect(self) -> None:
        """Move what the leaves have gathered so far into float32 sums (bf16 sums would lose the
        small contributions)."""
        for i, leaf in enumerate(self.leaves):
            if leaf.grad is not None:
                g = leaf.grad.float()
                self.grads[i] = g if self.grads[i] is None else self.grads[i] + g
                leaf.grad = None

    def backward(self) -> None:
        self.collect()
        pairs = [(t, g.to(t.dtype)) for t, g in zip(self.tensors, self.grads) if g is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        self.tensors, self.grads = [], []


def shared_prefix(sequences: Sequence[TrainSequence], minimum: int = 64) -> int:
    """Length of the token prefix every sequence shares and none is trained on (0 if short)."""
    return untrained_common_prefix([s.input_ids for s in sequences],
                                   [s.mask.index(1) if 1 in s.mask else len(s.mask) for s in sequences], minimum)


class LossTerm(Protocol):
    """An extra term of the step's loss (VED's distillation term is one).

    `prepare` runs once per step after the advantages are known (a teacher forward pass, a mask,
    the term's normaliser); `loss` returns the term's contribution for one sequence, already
    weighted and normalised over the step, given the student's log-probs on its masked tokens.
    Optional hooks, used when a term has them: `begin(members)` before each minibatch (the
    sequence indices it trains), `metrics()` after the update (merged into the step's record),
    `state_dict()` saved in every checkpoint and `attach(run_dir, step_done, state)` at setup
    (state: what the resumed checkpoint saved, or None), `close()` at the end of training.
    """

    name: str

    def prepare(self, trainer: "GRPOTrainer", batch: "StepBatch") -> None: ...

    def wants(self, index: int) -> bool: ...

    def loss(self, index: int, logp: torch.Tensor, old_logp: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class StepBatch:
    rollouts: list[Rollout]
    rewards: list[Any]                       # train.rewards.Reward per rollout
    advantages: list[float]
    sequences: list[TrainSequence]
    notes: dict[int, dict[str, Any]] = field(default_factory=dict)   # per rollout, added to its record


# ----------------------------------------------------------------------------- the trainer

RewardFn = Callable[[Rollout, int, Path], Awaitable[Any]]


class GRPOTrainer:
    def __init__(self, config: GRPOConfig, *, rows: list[dict[str, Any]] | None = None,
                 tools: list[Any] | None = None, reward_fn: RewardFn | None = None,
                 loss_terms: Sequence[LossTerm] = (), agent_config: Any = None, ved_api_key: str = "",
                 rollout_api_key: str = ""):
        """Rollouts are sampled where `config.rollouts` says (train/rollout_backends.py);
        `rollout_api_key` is the vLLM server's key, if it needs one.
        With `config.ved` the VED term (train/ved.py) joins `loss_terms`; `ved_api_key` is the
        key of its summariser endpoint, if that needs one."""
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.rows = rows if rows is not None else load_rows(config.pool)
        if not self.rows:
            raise ValueError("the pool has no rows")
        self.tools = tools
        self._own_tools: list[Any] = []
        self.reward_fn = reward_fn
        self.loss_terms = list(loss_terms)
        if config.ved and not any(getattr(t, "name", None) == "sdl" for t in self.loss_terms):
            from .ved import VEDTerm
            self.loss_terms.append(VEDTerm(config, api_key=ved_api_key))
        self.agent_config = agent_config
        self.rollout_api_key = rollout_api_key
        self.rollouts: Any = None             # the rollout backend, made in _setup
        self.model: Any = None
        self.tokenizer: Any = None
        self.step_done = 0
        # (ids, their keys and values) under the current weights: a prefix several passes of one
        # update share (the system prompt); set by `remember_prefix`, dropped at every optimizer step
        self._base_prefix: tuple[list[int], Any] | None = None

    # -- setup ------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(cfg.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "rollouts").mkdir(exist_ok=True)
        latest = latest_checkpoint(self.run_dir / "checkpoints")
        config_path = self.run_dir / "config.json"
        if latest is None or not config_path.exists():
            atomic_write_json(config_path, cfg.to_dict())
        from .base_models import resolve_model
        self.base_path = resolve_model(cfg.model)
        self.model, self.tokenizer, self.rollout_model, self.ref_model = load_trainable(
            self.base_path, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, bf16=cfg.bf16,
            want_ref=cfg.kl_beta > 0, resume_from=latest, device=training_device(cfg.device),
            rollout_copy=cfg.rollouts == "hf")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        total = cfg.steps * cfg.epochs_per_step * cfg.minibatches
        warm = cfg.warmup_steps * cfg.epochs_per_step * cfg.minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(cfg.lr_schedule, warm, total))
        self.metrics = MetricsLog(self.run_dir)
        state: dict[str, Any] = {}
        if latest is not None:
            state = torch.load(latest / "trainer_state.pt", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            self.step_done = int(state["step"])
        # Whatever a stopped run wrote after its last checkpoint (or before its first) is redone now.
        self.metrics.truncate_after(self.step_done)
        self.metrics.start_clock()          # goes on from where the checkpoint left it
        for f in (self.run_dir / "rollouts").glob("step_*.jsonl"):
            if int(f.stem.split("_")[1]) > self.step_done:
                f.unlink()
        for term in self.loss_terms:
            if hasattr(term, "attach"):
                term.attach(self.run_dir, self.step_done,
                            (state.get("terms") or {}).get(term.name) if latest is not None else None)
        from .rollout_backends import make_rollouts
        self.rollouts = make_rollouts(cfg, run_dir=self.run_dir, rollout_model=self.rollout_model,
                                      tokenizer=self.tokenizer, base_path=self.base_path,
                                      api_key=self.rollout_api_key)
        self.rollouts.start(self.model, self.step_done)
        if self.tools is None:             # ours to close at the end (a caller's tools are the caller's)
            from ..tools import default_tools, make_image_search_backend, make_search_backend
            self.tools = self._own_tools = default_tools(make_search_backend("offline"),
                                                         make_image_search_backend("offline"))
        if self.reward_fn is None:
            from .rewards import default_reward_fn
            self.reward_fn = default_reward_fn(cfg)

    # -- the loop ---------------------------------------------------------------------------
    def train(self, until: int | None = None) -> list[dict[str, Any]]:
        """Run (or resume) to `config.steps`, or stop after step `until` with a checkpoint (the
        schedule still spans `config.steps`); returns the metrics of the steps run now."""
        self._setup()
        last = min(self.config.steps, until) if until is not None else self.config.steps
        limit = self.config.time_limit_minutes
        out = []
        try:
            for step in range(self.step_done + 1, last + 1):
                out.append(self.step(step))
                out_of_time = limit is not None and self.metrics.train_seconds() > limit * 60
                if step % self.config.save_every == 0 or step == last or out_of_time:
                    self.save_checkpoint(step)
                if out_of_time:
                    break
            if self.step_done == self.config.steps or limit is not None:
                self.save_final()
        finally:
            self.metrics.close()
            plot_curves(self.metrics.records(), self.run_dir / "curves.png", title=f"GRPO {self.config.model}")
            if self._own_tools:
                asyncio.run(_close_tools(self._own_tools))
            if self.rollouts is not None:
                self.rollouts.close()
            for term in self.loss_terms:
                if hasattr(term, "close"):
                    term.close()
        return out

    def batch_rows(self, step: int) -> list[dict[str, Any]]:
        """The rows of a step: consecutive slices of a seeded shuffle, reshuffled every epoch."""
        n, b = len(self.rows), self.config.requests_per_step
        picked = []
        for slot in range((step - 1) * b, step * b):
            epoch, pos = divmod(slot, n)
            order = list(range(n))
            random.Random(f"{self.config.seed}:{epoch}").shuffle(order)
            picked.append(self.rows[order[pos]])
        return picked

    def step(self, step: int) -> dict[str, Any]:
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        rows = self.batch_rows(step)
        rollouts, rewards = asyncio.run(self._rollouts_and_rewards(rows, step, seconds))
        groups = [r.group for r in rollouts]
        values = [w.reward for w in rewards]
        batch = self.make_batch(rollouts, rewards)
        t = time.perf_counter()
        for term in self.loss_terms:
            term.prepare(self, batch)
        seconds["prepare"] = time.perf_counter() - t
        t = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]          # the rate this step's update uses
        losses = self.update(batch)
        seconds["update"] = time.perf_counter() - t
        self._write_rollouts(step, batch)
        seconds["step"] = time.perf_counter() - t0
        record = {"step": step, **_reward_stats(values, groups), **rollout_stats(rollouts), **losses,
                  "lr": lr,
                  "seconds": {k: round(v, 3) for k, v in seconds.items()}, "seconds_step": round(seconds["step"], 3),
                  "train_seconds": round(self.metrics.train_seconds(), 3)}
        for term in self.loss_terms:
            if hasattr(term, "metrics"):
                record.update(term.metrics())
        self.metrics.write(record)
        self.step_done = step
        return record

    def make_batch(self, rollouts: list[Rollout], rewards: list[Any]) -> StepBatch:
        """Advantages within groups and the token sequences of a step's rollouts."""
        cfg = self.config
        advantages = group_advantages([w.reward for w in rewards], [r.group for r in rollouts], cfg.adv_eps)
        sequences = []
        for i, r in enumerate(rollouts):
            for seq in trajectory_sequences(r.trajectory, i, self.encode):
                if len(seq.input_ids) > cfg.max_sequence_tokens:
                    seq.input_ids, seq.mask = seq.input_ids[:cfg.max_sequence_tokens], seq.mask[:cfg.max_sequence_tokens]
                sequences.append(seq)
        return StepBatch(rollouts, rewards, advantages, sequences)

    def encode(self, messages: list[dict[str, Any]], completions: Sequence[list[int] | None] = ()) -> list[int]:
        """The training tokenizer's rendering of a conversation (turns with no recorded prompt ids)."""
        from .sequences import encode_chat
        return encode_chat(self.tokenizer, messages, completions)[0]

    async def _rollouts_and_rewards(self, rows: list[dict[str, Any]], step: int,
                                    seconds: dict[str, float]) -> tuple[list[Rollout], list[Any]]:
        cfg = self.config
        from ..agent import AgentConfig
        from ..policies.base import Sampling
        self.rollout_model.eval()
        agent_config = self.agent_config or AgentConfig(protocol=cfg.agent_protocol)
        sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, logprobs=True)
        t = time.perf_counter()
        rollouts = await collect(self.policy, self.tools, rows, group_size=cfg.group_size, sampling=sampling,
                                 agent_config=agent_config, seed=cfg.seed, step=step)
        seconds["rollout"] = time.perf_counter() - t
        t = time.perf_counter()
        images = self.run_dir / "rollouts" / "images" / f"step_{step:05d}"
        rewards = []
        for i, r in enumerate(rollouts):       # one at a time: the judges use the same cores
            rewards.append(await self.reward_fn(r, step, images / f"{i:03d}_{_safe(r.row.get('id'))}_{r.k}.png"))
        seconds["score"] = time.perf_counter() - t
        return rollouts, rewards

    # -- the update -------------------------------------------------------------------------
    def update(self, batch: StepBatch) -> dict[str, Any]:
        cfg = self.config
        model = self.model
        model.train()
        seqs = batch.sequences
        positions = [[p for p, m in enumerate(s.mask) if m and p > 0] for s in seqs]
        active = [i for i, s in enumerate(seqs) if positions[i] and (
            batch.advantages[s.trajectory] != 0 or cfg.kl_beta > 0 or any(t.wants(i) for t in self.loss_terms))]
        old: dict[int, torch.Tensor] = {}
        ref: dict[int, torch.Tensor] = {}
        recompute_old = cfg.epochs_per_step > 1 or cfg.minibatches > 1
        with torch.no_grad():
            prefix = self._prefix([seqs[i] for i in active]) if recompute_old else None
            for i in active:
                if recompute_old:
                    old[i] = token_logprobs(model, seqs[i].input_ids, positions[i], cfg.temperature, cfg.bf16,
                                            prefix=prefix)[0]
                if cfg.kl_beta > 0:
                    ref[i] = self._ref_logprobs(seqs[i].input_ids, positions[i])
        totals: dict[str, float] = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clipped_tokens": 0, "tokens": 0, "entropy": 0.0,
                                    "ratio": 0.0}
        extra: dict[str, float] = {}
        grad_norms = []
        rng = random.Random(f"{cfg.seed}:minibatch:{self.step_done}")
        for _ in range(cfg.epochs_per_step):
            order = list(range(len(seqs)))
            if cfg.minibatches > 1:
                rng.shuffle(order)
            for m in range(cfg.minibatches):
                members = order[m::cfg.minibatches]
                n_tokens = sum(len(positions[i]) for i in members)       # token-mean over the minibatch
                if n_tokens == 0:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                for term in self.loss_terms:
                    if hasattr(term, "begin"):
                        term.begin([i for i in members if i in active])
                trained = [seqs[i] for i in members if i in active]
                n = shared_prefix(trained) if cfg.share_prefix else 0
                prefix = (n, SharedPrefix(model, trained[0].input_ids[:n], cfg.bf16)) if n else None
                for i in members:
                    if i not in active:
                        continue
                    seq = seqs[i]
                    logp, ent = token_logprobs(model, seq.input_ids, positions[i], cfg.temperature, cfg.bf16,
                                               entropy=True, prefix=prefix)
                    old_logp = old.get(i, logp.detach())
                    per_token, clipped = clipped_surrogate(logp, old_logp, batch.advantages[seq.trajectory],
                                                           cfg.clip_low, cfg.clip_high)
                    loss = per_token.sum() / n_tokens
                    if cfg.kl_beta > 0:
                        kl = k3_kl(logp, ref[i])
                        loss = loss + cfg.kl_beta * kl.sum() / n_tokens
                        totals["kl"] += kl.sum().item()
                    for term in self.loss_terms:
                        if term.wants(i):
                            term_loss, stats = term.loss(i, logp, old_logp)
                            loss = loss + term_loss
                            for k, v in stats.items():
                                extra[k] = extra.get(k, 0.0) + v
                    loss.backward()
                    totals["loss"] += loss.item()
                    totals["pg_loss"] += per_token.sum().item() / n_tokens
                    totals["clipped_tokens"] += int(clipped.sum())
                    totals["tokens"] += len(positions[i])
                    totals["entropy"] += ent.sum().item()
                    totals["ratio"] += torch.exp(logp - old_logp).sum().item()
                if prefix is not None:
                    prefix[1].backward()
                norm = (torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                       cfg.max_grad_norm) if cfg.max_grad_norm > 0 else
                        torch.tensor(0.0))
                grad_norms.append(float(norm))
                self.optimizer.step()
                self._base_prefix = None
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.rollouts.sync(self.model, self.step_done + 1)
        n = max(totals["tokens"], 1)
        passes = cfg.epochs_per_step * cfg.minibatches
        return {"loss": totals["loss"] / passes,
                "pg_loss": totals["pg_loss"] / passes,
                "kl": totals["kl"] / n, "clip_fraction": totals["clipped_tokens"] / n,
                "ratio_mean": totals["ratio"] / n, "entropy": totals["entropy"] / n,
                "trained_tokens": totals["tokens"], "trained_sequences": len(active),
                "sequences": len(seqs), "grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
                **extra}

    def _prefix(self, sequences: list[TrainSequence]) -> tuple[int, Any] | None:
        """The shared prefix of these sequences under the current weights, without gradient (share_prefix)."""
        n = shared_prefix(sequences) if self.config.share_prefix else 0
        return (n, self.prefix_for(sequences[0].input_ids[:n])) if n else None

    def prefix_for(self, ids: list[int]) -> Any:
        """Keys and values of `ids` (no gradient, current weights), extending the remembered prefix
        when it starts `ids`."""
        base = self._base_prefix
        use = (len(base[0]), base[1]) if base and len(base[0]) <= len(ids) and ids[:len(base[0])] == base[0] else None
        return prefix_cache(self.model, ids, self.config.bf16, base=use)

    def remember_prefix(self, ids: list[int]) -> None:
        """Keep the cache of `ids` until the next optimizer step (a loss term's teacher pass and
        the update both start from the system prompt: it is computed once)."""
        self._base_prefix = (list(ids), prefix_cache(self.model, ids, self.config.bf16))

    def _ref_logprobs(self, ids: list[int], positions: list[int]) -> torch.Tensor:
        cfg = self.config
        if self.ref_model is not None:
            return token_logprobs(self.ref_model, ids, positions, cfg.temperature, cfg.bf16)[0]
        with self.model.disable_adapter():           # LoRA: the base weights are the reference
            return token_logprobs(self.model, ids, positions, cfg.temperature, cfg.bf16)[0]

    @property
    def policy(self) -> Any:
        """The policy rollouts go through now (a backend may replace it at each step)."""
        return self.rollouts.policy

    # -- records ----------------------------------------------------------------------------
    def _write_rollouts(self, step: int, batch: StepBatch) -> None:
        # `id` tells a group's K rollouts apart (row id, id#2, id#3, ...); `row_id` is the pool row's.
        ids = rollout_item_ids(batch.rollouts)
        write_jsonl_atomic(self.run_dir / "rollouts" / f"step_{step:05d}.jsonl", (
            {"step": step, "id": ids[i], "row_id": r.row.get("id"), "group": r.group, "k": r.k,
             "reward": w.reward, "reward_detail": w.to_dict() if hasattr(w, "to_dict") else w,
             "advantage": a, "trajectory": r.trajectory.to_dict(), **batch.notes.get(i, {})}
            for i, (r, w, a) in enumerate(zip(batch.rollouts, batch.rewards, batch.advantages))))

    def save_checkpoint(self, step: int) -> Path:
        from .weights import save_checkpoint
        terms = {t.name: t.state_dict() for t in self.loss_terms if hasattr(t, "state_dict")}
        return save_checkpoint(self.run_dir / "checkpoints", step, self.model, self.tokenizer,
                               {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                                "torch_rng": torch.get_rng_state(), "step": step, "terms": terms},
                               {"step": step, "base": str(self.base_path), "lora": self.config.lora_r > 0},
                               keep=self.config.keep_checkpoints)

    def save_final(self) -> Path:
        """The trained policy for `--policy hf:DIR` and `genevolve export gguf DIR`."""
        from .weights import save_policy
        return save_policy(self.model, self.tokenizer, self.run_dir / "model", base=self.base_path,
                           note={"trainer": "grpo", "steps": self.step_done, "config": self.config.to_dict()})


def _schedule(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(i: int) -> float:
        if warmup and i < warmup:
            return (i + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (i - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _reward_stats(values: list[float | None], groups: list[int]) -> dict[str, Any]:
    scored = [v for v in values if v is not None]
    mean = sum(scored) / len(scored) if scored else 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in scored) / len(scored)) if scored else 0.0
    per_group: dict[int, list[float]] = {}
    for v, g in zip(values, groups):
        if v is not None:
            per_group.setdefault(g, []).append(v)
    group_std = [math.sqrt(sum((v - sum(vs) / len(vs)) ** 2 for v in vs) / len(vs)) for vs in per_group.values()]
    return {"reward_mean": mean, "reward_std": std,
            "reward_group_std": sum(group_std) / len(group_std) if group_std else 0.0,
            "groups_with_signal": sum(1 for s in group_std if s > 0),
            "reward_missing": sum(1 for v in values if v is None)}


def _safe(text: Any) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))[:60]


async def _close_tools(tools: list[Any]) -> None:
    for tool in tools:
        await tool.aclose()
