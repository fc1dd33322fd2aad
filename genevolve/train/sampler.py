"""Batched, KV-cached sampling for a transformers causal LM, one settings set per row.

`transformers.generate` shares one temperature, one random stream and one logits processor across
the batch. Rollouts need per-row seeds (a resumed run must sample what the uninterrupted one
would have), a per-row grammar (each conversation is at its own kind of turn) and the raw model
log-prob of every sampled token, so this module keeps its own short decoding loop:

- **Shared prefix.** Every conversation starts with the same long system prompt. Its keys and
  values are computed once (batch 1), kept, and repeated across the batch; only the rest of each
  prompt is prefilled. The rest is left-padded *after* the prefix (the padding is masked out and
  the position ids skip it), so that every row's next token sits in the same column.
- **Rows leave when done.** A finished row is dropped from the cache, so a batch costs what its
  longest reply costs, not batch × longest.
- **Filters in llama.cpp's order:** grammar mask, then temperature, top-k, top-p. The log-prob
  recorded is the raw model's (temperature 1, before any filter): the distribution a trainer's
  forward pass computes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .weights import model_device

PREFIX_MIN_TOKENS = 32         # shorter common prefixes are not worth caching
PREFIXES_KEPT = 4


@dataclass
class GenRequest:
    prompt_ids: list[int]
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_tokens: int = 256
    seed: int | None = None
    grammar: str | None = None          # GBNF; None: unconstrained
    stop: list[str] | None = None


@dataclass
class GenResult:
    ids: list[int]                      # the content tokens (no end-of-turn token)
    stop_ids: list[int]                 # the end-of-turn token sampled after them, if any
    logprobs: list[float]               # raw model log-prob of each id, then of each stop id
    finish_reason: str                  # "stop" | "length"
    prompt_tokens: int = 0
    cached_tokens: int = 0              # prompt tokens served from the shared-prefix cache
    grammar_error: str | None = None


@dataclass
class _Row:
    index: int
    request: GenRequest
    generator: torch.Generator
    matcher: Any = None
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop_ids: list[int] = field(default_factory=list)
    finish: str | None = None
    position: int = 0
    grammar_error: str | None = None


class Sampler:
    """Samples continuations of token prompts from `model` (any transformers causal LM)."""

    def __init__(self, model: Any, *, eos_ids: list[int], pad_id: int, constraint: Any = None,
                 max_context: int | None = None, tokenizer: Any = None):
        self.model = model
        self.tokenizer = tokenizer            # only needed for stop strings
        self.eos_ids = set(int(i) for i in eos_ids)
        self.pad_id = int(pad_id)
        self.constraint = constraint
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None) or 8192
        self._prefixes: dict[tuple[int, ...], Any] = {}

    def clear_cache(self) -> None:
        """Forget cached prefixes (the weights changed)."""
        self._prefixes.clear()

    # -- the shared prefix ------------------------------------------------------------------
    def _prefix(self, prompts: list[list[int]]) -> tuple[int, Any]:
        """(length, cache at batch 1) of a prefix common to every prompt, or (0, None)."""
        shortest = min(len(p) for p in prompts) - 1          # each row must prefill one token at least
        for key, cache in self._prefixes.items():
            if len(key) <= shortest and all(p[:len(key)] == list(key) for p in prompts):
                return len(key), cache
        n = 0
        first = prompts[0]
        while n < shortest and all(p[n] == first[n] for p in prompts):
            n += 1
        if n < PREFIX_MIN_TOKENS:
            return 0, None
        from transformers import DynamicCache
        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([first[:n]], device=model_device(self.model))
        self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        if len(self._prefixes) >= PREFIXES_KEPT:
            self._prefixes.pop(next(iter(self._prefixes)))
        self._prefixes[tuple(first[:n])] = cache
        return n, cache

    # -- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        for r in requests:
            if not r.prompt_ids:
                raise ValueError("a prompt has no tokens")
            if len(r.prompt_ids) >= self.max_context:
                raise ValueError(f"a prompt has {len(r.prompt_ids)} tokens; the model's context is {self.max_context}")
        rows = []
        for i, r in enumerate(requests):
            gen = torch.Generator()
            gen.manual_seed(r.seed if r.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
            row = _Row(i, r, gen, position=len(r.prompt_ids))
            if r.grammar is not None:
                if self.constraint is None:
                    raise ValueError("a grammar was given but this sampler has no constraint engine")
                row.matcher = self.constraint.matcher(r.grammar)
            rows.append(row)

        prompts = [r.prompt_ids for r in requests]
        n_prefix, prefix_cache = self._prefix(prompts)
        from transformers import DynamicCache
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(rows))
        else:
            cache = DynamicCache(config=self.model.config)
        suffixes = [p[n_prefix:] for p in prompts]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), n_prefix + width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        attention[:, :n_prefix] = 1
        for b, s in enumerate(suffixes):
            input_ids[b, width - len(s):] = torch.tensor(s)
            attention[b, n_prefix + width - len(s):] = 1
            positions[b, width - len(s):] = torch.arange(n_prefix, n_prefix + len(s))
        device = model_device(self.model)
        attention = attention.to(device)
        out = self.model(input_ids=input_ids.to(device), attention_mask=attention, position_ids=positions.to(device),
                         cache=cache, use_cache=True, logits_to_keep=1)
        # Tokens are chosen on the CPU with each row's own CPU generator: the draws then depend on
        # the seed alone, not on the device the model runs on.
        logits = out.logits[:, -1, :].float().cpu()

        active = list(rows)
        while active:
            tokens = self._choose(active, logits)
            keep = []
            for b, (row, token) in enumerate(zip(active, tokens)):
                self._advance(row, token)
                if row.finish is None:
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention = attention[index]
                active = [active[b] for b in keep]
                tokens = [tokens[b] for b in keep]
            attention = torch.cat([attention, torch.ones((len(active), 1), dtype=torch.long, device=device)], dim=1)
            step_ids = torch.tensor([[t] for t in tokens], device=device)
            step_pos = torch.tensor([[row.position - 1] for row in active], device=device)
            out = self.model(input_ids=step_ids, attention_mask=attention, position_ids=step_pos,
                             cache=cache, use_cache=True)
            logits = out.logits[:, -1, :].float().cpu()

        return [GenResult(ids=row.ids, stop_ids=row.stop_ids, logprobs=row.logprobs,
                          finish_reason=row.finish or "length", prompt_tokens=len(row.request.prompt_ids),
                          cached_tokens=n_prefix, grammar_error=row.grammar_error) for row in rows]

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """One token per row; records its raw log-prob on the row (see _advance)."""
        logits = logits[:, :self._vocab(logits)]
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        chosen = []
        for b, row in enumerate(rows):
            scores = logits[b].clone()
            if row.matcher is not None:
                allowed = torch.from_numpy(self.constraint.allowed(row.matcher))
                if not allowed.any():               # the grammar is stuck: end the turn
                    row.grammar_error = row.matcher.get_error() or "the grammar admits no token"
                    allowed[list(self.eos_ids)[0]] = True
                scores[~allowed[:scores.shape[0]]] = -math.inf
            r = row.request
            if r.temperature <= 0:
                token = int(torch.argmax(scores))
            else:
                scores = scores / r.temperature
                if r.top_k and r.top_k > 0 and r.top_k < scores.shape[0]:
                    kth = torch.topk(scores, r.top_k).values[-1]
                    scores[scores < kth] = -math.inf
                probs = torch.softmax(scores, dim=-1)
                if 0 < r.top_p < 1:
                    sorted_p, order = torch.sort(probs, descending=True)
                    cut = torch.cumsum(sorted_p, dim=0) - sorted_p > r.top_p   # keep the first token past top_p
                    sorted_p[cut] = 0
                    probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
                token = int(torch.multinomial(probs, 1, generator=row.generator))
            row.logprobs.append(float(raw_logprobs[b, token]))
            chosen.append(token)
        return chosen

    def _vocab(self, logits: torch.Tensor) -> int:
        return min(logits.shape[-1], self.constraint.vocab_size) if self.constraint is not None else logits.shape[-1]

    def _advance(self, row: _Row, token: int) -> None:
        row.position += 1
        if token in self.eos_ids:
            row.stop_ids.append(token)
            row.finish = "stop"
            return
        row.ids.append(token)
        if row.matcher is not None and not row.matcher.consume_token(token):
            row.grammar_error = row.matcher.get_error() or "token rejected by the grammar"
            row.finish = "stop"
            return
        if len(row.ids) >= row.request.max_tokens or row.position >= self.max_context:
            row.finish = "length"
            return
        if row.request.stop and self.tokenizer is not None:
            # The stop text stays in the reply (its tokens were sampled and are trained on).
            tail = self.tokenizer.decode(row.ids[-16:], skip_special_tokens=False)
            if any(s in tail for s in row.request.stop):
                row.finish = "stop"
