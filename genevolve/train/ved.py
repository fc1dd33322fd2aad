"""Visual Experience Distillation: the privileged teacher and the SDL term of the GRPO loss.

Once per step (`VEDTerm.prepare`, after the rewards are in):

1. pairs: best and worst rollout of each group, gap >= `ved_min_gap`, at most `ved_max_pairs`
   (train/experience.py);
2. a summariser turns each pair into a five-slot decision guide (train/summarizers.py), written
   to guides.jsonl with the pair that produced it;
3. the guides go into the experience memory, keyed by the request's embedding; each request of
   the step then retrieves the single nearest guide when the cosine similarity reaches the gate
   (train/memory.py; with `ved_same_step` this step's guides are in memory before retrieval);
4. the teacher: for every rollout whose request retrieved a guide, the same weights read the same
   tokens with the guide in the system prompt's guide slot (`teacher_view`), one forward pass
   without gradient; its log-probs at the student's sampled tokens are the targets (fixed for the
   step: with several passes over a batch they stay those of the step's starting weights). Nothing
   is generated, and the system prompt's cache is computed once for all teacher rows.

Then, inside the student's own forward pass of the update (`VEDTerm.loss`), per token
ℓ = log p_student − log p_teacher, k3 = exp(−ℓ) − 1 + ℓ clamped to ±`ved_k3_clamp`, weighted by
ρ = min(p_θ / p_θold, `ved_ratio_cap`) and averaged over the mask: the assistant tokens of guided
rows, and of those only the top `ved_top_frac` of each sequence by |log p_teacher − log p_student|.
Under y ~ p_student, E[k3] = KL(student ‖ teacher): the term pulls the student, which never sees
the guide, toward what it would write if it had. L = L_GRPO + `ved_sdl_weight` · L_SDL.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..jsonio import JsonlAppender, atomic_write_json
from ..protocol import split_guide, with_guide
from .experience import Pair, render_guide, reward_detail, select_pairs
from .memory import Experience, ExperienceMemory, make_embedder
from .sequences import TrainSequence, reprompted_sequence
from .summarizers import Side, make_summarizer


# ----------------------------------------------------------------------------- the math

def k3(logratio: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """exp(−ℓ) − 1 + ℓ per token (ℓ = log p − log q), clamped to [−clamp, clamp]; its mean under
    samples of p estimates KL(p ‖ q) with low variance, and it is never negative."""
    return torch.clamp(torch.exp(-logratio) - 1 + logratio, -clamp, clamp)


def capped_ratio(logp: torch.Tensor, old_logp: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """min(p_θ / p_θold, cap): the importance weight of tokens sampled by the old policy."""
    return torch.clamp(torch.exp(logp - old_logp.detach()), max=cap)


def top_fraction_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """True on the ceil(fraction · n) largest scores (at least one when fraction > 0)."""
    n = scores.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    k = masked_count(n, fraction)
    if k:
        mask[torch.topk(scores.detach().reshape(-1), k).indices] = True
    return mask.reshape(scores.shape)


def masked_count(n: int, fraction: float) -> int:
    if n <= 0 or fraction <= 0:
        return 0
    return min(n, max(1, math.ceil(fraction * n - 1e-9)))


def sdl_per_token(logp: torch.Tensor, teacher_logp: torch.Tensor, old_logp: torch.Tensor, *,
                  clamp: float = 10.0, ratio_cap: float = 2.0, token_cap: float | None = None) -> torch.Tensor:
    """ρ · k3(log p − sg[log q]) per token, optionally capped at `token_cap`."""
    per = capped_ratio(logp, old_logp, ratio_cap) * k3(logp - teacher_logp.detach(), clamp)
    return torch.clamp(per, max=token_cap) if token_cap is not None else per


# ----------------------------------------------------------------------------- the teacher's view

def teacher_view(tokenizer: Any, traj: Any, guide: str) -> TrainSequence:
    """The trajectory's own tokens with `guide` in its system prompt's guide slot (any guide the
    student itself read is replaced). The mask marks the student's written tokens, in order."""
    if not traj.messages or traj.messages[0].get("role") != "system":
        raise ValueError("the trajectory does not start with a system message")
    prefix, _ = split_guide(str(traj.messages[0].get("content") or ""))
    return reprompted_sequence(tokenizer, traj, with_guide(prefix, guide))


def written_positions(seq: TrainSequence) -> list[int]:
    """The positions the update scores (as GRPOTrainer.update picks them)."""
    return [p for p, m in enumerate(seq.mask) if m and p > 0]


# ----------------------------------------------------------------------------- the loss term

class VEDTerm:
    """The SDL term (see the module docstring); plugs into GRPOTrainer as a `LossTerm`."""

    name = "sdl"

    def __init__(self, config: Any, *, summarizer: Any = None, embedder: Any = None, api_key: str = ""):
        self.cfg = config
        self.summarizer = summarizer
        self.embedder = embedder
        self.api_key = api_key
        self.memory = ExperienceMemory(config.ved_memory_capacity, config.ved_min_similarity,
                                       config.ved_eviction_window)
        self.run_dir: Path | None = None
        self.teacher: dict[int, torch.Tensor] = {}
        self.n_masked: dict[int, int] = {}
        self._norm = 1
        self._stats: dict[str, float] = {}
        self._seen: set[int] = set()
        self._passes = 0

    # -- setup and state ------------------------------------------------------------------------
    def _ensure(self) -> None:
        cfg = self.cfg
        if self.summarizer is None:
            self.summarizer = make_summarizer(cfg.ved_summarizer, base_url=cfg.ved_summarizer_url,
                                              model=cfg.ved_summarizer_model, api_key=self.api_key,
                                              attempts=cfg.ved_summarizer_attempts,
                                              timeout_s=cfg.ved_summarizer_timeout_s, max_rules=cfg.ved_rules_per_slot)
        if self.embedder is None:
            self.embedder = make_embedder(cfg.ved_embedder)

    def attach(self, run_dir: Path, step_done: int, state: dict[str, Any] | None) -> None:
        """Called by the trainer at setup: restore the memory of a checkpoint and drop guides
        written after it (a crash between a step's guides and its checkpoint)."""
        self.run_dir = Path(run_dir)
        if state is not None:
            self.memory = ExperienceMemory.from_state(state["memory"])
        guides = self.run_dir / "guides.jsonl"
        if guides.exists():
            from .metrics import truncate_jsonl
            truncate_jsonl(guides, step_done)
        self._write_memory()

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict()}

    def close(self) -> None:
        if self.summarizer is not None:
            asyncio.run(self.summarizer.aclose())

    # -- once per step ----------------------------------------------------------------------------
    def prepare(self, trainer: Any, batch: Any) -> None:
        cfg = self.cfg
        self._ensure()
        if self.run_dir is None:
            self.run_dir = Path(trainer.run_dir)
        step = trainer.step_done + 1
        self.teacher, self.n_masked, self._seen, self._passes = {}, {}, set(), 0
        stats: dict[str, float] = {}
        t0 = time.perf_counter()
        rollouts = batch.rollouts
        selection = select_pairs([r.group for r in rollouts], batch.rewards, min_gap=cfg.ved_min_gap,
                                 max_pairs=cfg.ved_max_pairs, exclude_protocol_failures=cfg.ved_exclude_protocol_failures)
        summaries = asyncio.run(self._summarise(rollouts, batch.rewards, selection.pairs))
        stats["ved_summarise_s"] = time.perf_counter() - t0
        requests = {r.group: r.trajectory.request for r in rollouts}
        texts = sorted(set(requests.values()))
        keys = dict(zip(texts, self.embedder.encode(texts))) if texts else {}
        new: list[tuple[Pair, Any, Experience]] = []
        for pair, summary in zip(selection.pairs, summaries):
            if summary.bundle is None:
                continue
            best = rollouts[pair.best]
            new.append((pair, summary, Experience(
                request=best.trajectory.request, bundle=summary.bundle, guide=render_guide(summary.bundle),
                reward_gap=pair.gap, best_reward=pair.best_reward, worst_reward=pair.worst_reward, step=step,
                row_id=_str_or_none(best.row.get("id")), summarizer=summary.summarizer)))
        evicted_before = self.memory.evictions
        if cfg.ved_same_step:
            for _, _, exp in new:
                self.memory.add(exp, keys[exp.request])
        guides: dict[int, tuple[Experience, float]] = {}
        sims = []
        for g, text in sorted(requests.items()):
            found = self.memory.nearest(keys[text])
            sims.append(found.similarity)
            if found.experience is not None:
                found.experience.uses += 1
                guides[g] = (found.experience, found.similarity)
        if not cfg.ved_same_step:
            for _, _, exp in new:
                self.memory.add(exp, keys[exp.request])
        self._write_guides(step, rollouts, batch.rewards, new, summaries, selection.pairs)
        self._write_memory()
        t1 = time.perf_counter()
        if cfg.ved_sdl_weight != 0:          # λ = 0 (the ablation): guides and memory, no teacher pass
            self._teacher_pass(trainer, batch, guides, stats)
        stats["ved_teacher_s"] = time.perf_counter() - t1
        guided_rows = sum(1 for r in rollouts if r.group in guides)
        guide_texts = [exp.guide for exp, _ in guides.values()]
        stats.update({
            "sdl_hit_rate": guided_rows / max(len(rollouts), 1),
            "sdl_trained_rows": len({batch.sequences[i].trajectory for i in self.teacher}),
            "ved_groups": selection.groups, "ved_pairs": len(selection.pairs),
            "ved_pairs_below_gap": selection.below_gap, "ved_pairs_protocol_failure": selection.protocol_failures,
            "ved_pairs_over_cap": selection.over_cap,
            "ved_summary_failures": sum(1 for s in summaries if s.bundle is None),
            "ved_guides_written": len(new),
            "ved_guide_chars": sum(map(len, guide_texts)) / len(guide_texts) if guide_texts else 0.0,
            "ved_guide_tokens": (sum(len(trainer.tokenizer(t, add_special_tokens=False)["input_ids"])
                                     for t in guide_texts) / len(guide_texts)) if guide_texts else 0.0,
            "ved_similarity_mean": sum(sims) / len(sims) if sims else 0.0,
            "ved_memory_size": len(self.memory), "ved_evictions": self.memory.evictions - evicted_before,
            "ved_evictions_total": self.memory.evictions,
            "sdl_masked_tokens": 0, "sdl_guided_tokens": 0, "sdl_loss": 0.0,
            "_gap_masked": 0.0, "_gap_all": 0.0, "_k3_clamped": 0, "_ratio_capped": 0, "_sum": 0.0})
        self._stats = stats
        notes = getattr(batch, "notes", None)
        if notes is not None:
            for i, r in enumerate(rollouts):
                if r.group in guides:
                    exp, sim = guides[r.group]
                    notes.setdefault(i, {})["teacher_guide"] = {
                        "similarity": round(sim, 4), "from_step": exp.step, "from_id": exp.row_id,
                        "from_request": exp.request, "guide": exp.guide}

    async def _summarise(self, rollouts: list[Any], rewards: list[Any], pairs: list[Pair]) -> list[Any]:
        jobs = []
        for pair in pairs:
            best, worst = rollouts[pair.best], rollouts[pair.worst]
            jobs.append(self.summarizer.summarise(best.trajectory.request, Side(best.trajectory, rewards[pair.best]),
                                                  Side(worst.trajectory, rewards[pair.worst]), best.row.get("meta")))
        try:
            return list(await asyncio.gather(*jobs))
        finally:            # the client's session belongs to this event loop, which ends here
            await self.summarizer.aclose()

    def _teacher_pass(self, trainer: Any, batch: Any, guides: dict[int, tuple[Experience, float]],
                      stats: dict[str, float]) -> None:
        """Teacher log-probs at the student's tokens for every guided row: one no-grad forward pass
        each, over a prefix cache of the system prompt they all share (exact without gradient)."""
        from .grpo import shared_prefix, token_logprobs
        cfg = self.cfg
        by_traj: dict[int, list[int]] = {}
        for i, seq in enumerate(batch.sequences):
            by_traj.setdefault(seq.trajectory, []).append(i)
        jobs = []
        misaligned = 0
        for t, rollout in enumerate(batch.rollouts):
            if rollout.group not in guides or t not in by_traj:
                continue
            parts = [(i, written_positions(batch.sequences[i])) for i in by_traj[t]]
            written = [batch.sequences[i].input_ids[p] for i, pos in parts for p in pos]
            if not written:
                continue
            view = teacher_view(trainer.tokenizer, rollout.trajectory, guides[rollout.group][0].guide)
            pos = written_positions(view)[:len(written)]
            if [view.input_ids[p] for p in pos] != written:
                misaligned += 1            # the template re-rendered the turn differently: no target
                continue
            end = pos[-1] + 1
            jobs.append((TrainSequence(view.input_ids[:end], view.mask[:end], [], t), pos, parts))
        stats["sdl_misaligned_rows"] = misaligned
        if not jobs:
            return
        model = trainer.model
        with torch.no_grad():
            # The system prompt before the guide slot is the same for every teacher row (and any
            # no-gradient pass of the update): computed once here, kept until the optimizer step.
            n = shared_prefix([j[0] for j in jobs] + list(batch.sequences))
            if n:
                trainer.remember_prefix(jobs[0][0].input_ids[:n])
            by_guide: dict[str, list[Any]] = {}
            for job in jobs:
                by_guide.setdefault(guides[batch.rollouts[job[0].trajectory].group][0].guide, []).append(job)
            for group in by_guide.values():
                n = shared_prefix([j[0] for j in group])
                prefix = (n, trainer.prefix_for(group[0][0].input_ids[:n])) if n else None
                for seq, pos, parts in group:
                    logp = token_logprobs(model, seq.input_ids, pos, cfg.temperature, cfg.bf16, prefix=prefix)[0]
                    start = 0
                    for i, student_pos in parts:
                        self.teacher[i] = logp[start:start + len(student_pos)].detach()
                        self.n_masked[i] = masked_count(len(student_pos), cfg.ved_top_frac)
                        start += len(student_pos)

    # -- inside the update ----------------------------------------------------------------------
    def wants(self, index: int) -> bool:
        return index in self.teacher and self.n_masked.get(index, 0) > 0 and self.cfg.ved_sdl_weight != 0

    def begin(self, members: list[int]) -> None:
        """A minibatch starts: L_SDL is the mean over its masked tokens."""
        self._norm = max(1, sum(self.n_masked.get(i, 0) for i in members if self.wants(i)))
        self._passes += 1

    def loss(self, index: int, logp: torch.Tensor, old_logp: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        teacher = self.teacher[index]
        if teacher.shape != logp.shape:
            raise ValueError(f"sequence {index}: {logp.numel()} student tokens but {teacher.numel()} teacher targets")
        gap = (teacher - logp.detach()).abs()
        mask = top_fraction_mask(gap, cfg.ved_top_frac)
        per = sdl_per_token(logp, teacher, old_logp, clamp=cfg.ved_k3_clamp, ratio_cap=cfg.ved_ratio_cap,
                            token_cap=cfg.ved_token_cap)
        term = per[mask].sum() / self._norm
        s = self._stats
        s["_sum"] += term.item()
        if index not in self._seen:          # token statistics once per sequence, not per epoch
            self._seen.add(index)
            with torch.no_grad():
                ell = (logp - teacher)[mask]
                s["sdl_masked_tokens"] += int(mask.sum())
                s["sdl_guided_tokens"] += logp.numel()
                s["_gap_masked"] += float(gap[mask].sum())
                s["_gap_all"] += float(gap.sum())
                s["_k3_clamped"] += int((torch.exp(-ell) - 1 + ell > cfg.ved_k3_clamp).sum())
                s["_ratio_capped"] += int((torch.exp(logp - old_logp)[mask] > cfg.ved_ratio_cap).sum())
        return cfg.ved_sdl_weight * term, {}

    def metrics(self) -> dict[str, Any]:
        """The step's VED figures for metrics.jsonl (called after the update)."""
        s = dict(self._stats)
        if not s:
            return {}
        masked, guided = s["sdl_masked_tokens"], s["sdl_guided_tokens"]
        # The running sums leave the record whether or not there is anything to divide them by.
        gap_masked, gap_all, clamped, capped = (s.pop(k) for k in ("_gap_masked", "_gap_all", "_k3_clamped",
                                                                     "_ratio_capped"))
        s["sdl_loss"] = s.pop("_sum") / max(self._passes, 1)
        s["sdl_mask_fraction"] = masked / guided if guided else 0.0
        s["sdl_gap_masked"] = gap_masked / masked if masked else 0.0
        s["sdl_gap_all"] = gap_all / guided if guided else 0.0
        s["sdl_k3_clamp_frac"] = clamped / masked if masked else 0.0
        s["sdl_ratio_cap_frac"] = capped / masked if masked else 0.0
        s["ved_seconds"] = {"summarise": round(s.pop("ved_summarise_s"), 3), "teacher": round(s.pop("ved_teacher_s"), 3)}
        return s

    # -- records --------------------------------------------------------------------------------
    def _write_guides(self, step: int, rollouts: list[Any], rewards: list[Any], new: list[tuple[Pair, Any, Experience]],
                      summaries: list[Any], pairs: list[Pair]) -> None:
        """guides.jsonl: one line per guide written this step, with its pair (and one per pair
        whose summary failed, with the problems, so nothing is hidden)."""
        from .rollouts import rollout_item_ids
        ids = rollout_item_ids(rollouts)
        made = {id(p): exp for p, _, exp in new}
        lines = []
        for pair, summary in zip(pairs, summaries):
            best, worst = rollouts[pair.best], rollouts[pair.worst]
            exp = made.get(id(pair))
            lines.append({
                "step": step, "id": _str_or_none(best.row.get("id")), "group": pair.group,
                "request": best.trajectory.request, "guide": exp.guide if exp else None,
                "bundle": summary.bundle, "summarizer": summary.summarizer, "attempts": summary.attempts,
                "problems": summary.problems or None, "reward_gap": round(pair.gap, 4),
                "pair": {"best": _side_record(ids[pair.best], best, rewards[pair.best]),
                         "worst": _side_record(ids[pair.worst], worst, rewards[pair.worst])}})
        if not lines:
            return
        assert self.run_dir is not None
        with JsonlAppender(self.run_dir / "guides.jsonl") as out:      # strict JSON, secrets scrubbed, synced
            for line in lines:
                out.append(line)

    def _write_memory(self) -> None:
        if self.run_dir is not None:
            atomic_write_json(self.run_dir / "memory.json", self.memory.to_view(getattr(self.embedder, "name", "")))


def _side_record(item_id: str, rollout: Any, reward: Any) -> dict[str, Any]:
    """One trajectory of a pair as guides.jsonl keeps it: no token ids, no system prompt."""
    traj = rollout.trajectory.to_dict()
    traj["messages"] = [m if m.get("role") != "system" else {"role": "system", "content": "(the system prompt)"}
                        for m in traj.get("messages") or []]
    traj["turns"] = [{k: v for k, v in t.items() if k not in ("prompt_ids", "completion_ids", "logprobs", "stop_ids")}
                     for t in traj.get("turns") or []]
    detail = reward_detail(reward)
    return {"id": item_id, "k": rollout.k, "reward": detail.get("reward"), "reward_detail": detail, "trajectory": traj}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
