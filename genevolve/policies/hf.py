"""A transformers checkpoint as the agent's policy, in this process (`make_policy("hf", path=DIR)`).

This is the policy that training rolls out, and the way to run a trained checkpoint before it is
exported to GGUF. It behaves like the embedded llama.cpp policy: the same per-request budget, the
same protocol grammar (through llguidance), skills inline in the system prompt, and every earlier
reply sent back as the exact tokens that were sampled.

Concurrent `chat` calls (the K rollouts of a GRPO group, or `genevolve run --parallel`) are
gathered into one batch: a call waits up to `batch_window_s` for others to join, then the batch
decodes together (train/sampler.py), sharing the system prompt's keys and values. Replies carry
the prompt ids, completion ids, end-of-turn id and the raw model log-prob of each sampled token.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Sequence

from ..config import parse_bool
from .base import LOGPROBS_MODEL, Policy, PolicyError, PolicyReply, Sampling, TurnContext
from .grammar import ProtocolGrammar, protocol_tool_schemas, tighten_schemas

DTYPES = ("bfloat16", "float32", "float16")


class HFPolicy(Policy):
    """A causal LM checkpoint directory (config.json + weights + tokenizer), or a loaded model."""

    name = "hf"
    inline_skills = True

    def __init__(self, path: str | os.PathLike | None = None, *, model: Any = None, tokenizer: Any = None,
                 dtype: str = "bfloat16", n_threads: int | None = None, constrained: bool = True,
                 batch_window_s: float = 0.05, max_batch: int = 64, tool_schemas: list[dict[str, Any]] | None = None,
                 device: str = "auto", **budget: Any):
        from .local import LocalGGUFPolicy

        defaults = LocalGGUFPolicy.DEFAULT_BUDGET
        unknown = set(budget) - set(defaults)
        if unknown:
            raise TypeError(f"hf policy: unknown option(s) {', '.join(sorted(unknown))}")
        if path is None and model is None:
            raise ValueError("hf policy: give a checkpoint path or a loaded model")
        if model is not None and tokenizer is None:
            raise ValueError("hf policy: a loaded model needs its tokenizer")
        if dtype not in DTYPES:
            raise ValueError(f"hf policy: dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        budget = {key: int(budget.get(key, default)) for key, default in defaults.items()}
        self.path = str(path) if path is not None else None
        self.dtype = dtype
        self.device = device                  # for a checkpoint path; a loaded model stays where it is
        self.n_threads = int(n_threads) if n_threads else None
        self.constrained = parse_bool(constrained, "constrained")
        self.batch_window_s = float(batch_window_s)
        self.max_batch = int(max_batch)
        self.tool_call_budget = budget["tool_call_budget"]
        self.observation_chars = budget["observation_chars"]
        self.budget = budget
        self.model, self.tokenizer = model, tokenizer
        self.sampler: Any = None
        self.stats: dict[str, Any] = {"batches": 0, "batched_calls": 0}
        self._load_lock = threading.Lock()
        self._pending: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._batcher: asyncio.Task | None = None
        self._tag_tokens: dict[str, str] = {}
        self._tool_schemas = tool_schemas if tool_schemas is not None else protocol_tool_schemas()
        self.set_tools(self._tool_schemas)

    # -- configuration ----------------------------------------------------------------------
    def set_tools(self, schemas: list[dict[str, Any]], max_tool_calls: int | None = None
                  ) -> list[dict[str, Any]]:
        schemas = tighten_schemas(schemas, max_items=self.budget["max_queries"], max_integer=self.budget["max_results"])
        self._tool_schemas = schemas
        self._build_grammar()
        return schemas

    def _build_grammar(self) -> None:
        b = self.budget
        self.grammar = ProtocolGrammar(self._tool_schemas, max_think_chars=b["max_think_chars"],
                                       max_gen_prompt_chars=b["max_gen_prompt_chars"],
                                       max_gen_prompt_sentences=b["max_gen_prompt_sentences"],
                                       max_note_chars=b["max_note_chars"], tag_tokens=self._tag_tokens)

    # -- loading ----------------------------------------------------------------------------
    def load(self) -> None:
        with self._load_lock:
            if self.sampler is not None:
                return
            import torch
            from ..train.sampler import Sampler
            from ..train.sequences import end_of_turn_ids

            if self.n_threads:
                torch.set_num_threads(self.n_threads)
            if self.model is None:
                from transformers import AutoModelForCausalLM, AutoTokenizer
                try:
                    self.tokenizer = AutoTokenizer.from_pretrained(self.path)
                    from ..train.weights import training_device
                    self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, self.dtype))
                    self.model.to(training_device(self.device))
                except (OSError, ValueError) as exc:
                    raise PolicyError(f"hf policy: cannot load a checkpoint from {self.path}: {exc}") from None
                self.model.eval()
            eos = end_of_turn_ids(self.tokenizer, getattr(self.model, "generation_config", None))
            if not eos:
                raise PolicyError("hf policy: the tokenizer has no end-of-turn token")
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]
            constraint = None
            if self.constrained:
                try:
                    from ..train.constraint import GrammarConstraint
                except ImportError:
                    raise PolicyError("hf policy: constrained decoding needs llguidance "
                                      "(pip install 'genevolve[train]'), or pass constrained=false") from None
                constraint = GrammarConstraint(self.tokenizer, self.model.config.vocab_size, eos)
                self._tag_tokens = constraint.tag_tokens()
                self._build_grammar()
            self.sampler = Sampler(self.model, eos_ids=eos, pad_id=pad, constraint=constraint,
                                   tokenizer=self.tokenizer)

    def weights_changed(self) -> None:
        """Call after the model's weights were updated in place (a training step)."""
        if self.sampler is not None:
            self.sampler.clear_cache()

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, messages: list[dict[str, Any]], completions: Sequence[list[int] | None] = ()) -> list[int]:
        if self.tokenizer is None:
            self.load()
        from ..train.sequences import encode_chat
        return encode_chat(self.tokenizer, messages, completions)[0]

    # -- chat -------------------------------------------------------------------------------
    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling,
                   turn: TurnContext | None = None) -> PolicyReply:
        if not messages:
            raise PolicyError("hf policy: no messages to continue")
        await asyncio.to_thread(self.load)
        completions = turn.completions if turn is not None else ()
        prompt_ids = self.encode(messages, completions)
        from ..train.sampler import GenRequest
        seed = sampling.seed
        if seed is not None:        # one run, one seed: each turn draws its own stream from it
            seed = (seed + 1_000_003 * sum(1 for m in messages if m.get("role") == "assistant")) % 2**62
        request = GenRequest(prompt_ids=prompt_ids, temperature=sampling.temperature, top_p=sampling.top_p,
                             top_k=sampling.top_k if sampling.top_k and sampling.top_k > 0 else None,
                             max_tokens=sampling.max_tokens, seed=seed, stop=sampling.stop,
                             grammar=(self.grammar.for_turn(turn) if turn is not None else self.grammar.build())
                             if self.constrained else None)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append(({"request": request}, future))
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches())
        result = await future
        text = self.tokenizer.decode(result.ids, skip_special_tokens=False)
        return PolicyReply(text=text, completion_ids=result.ids, stop_ids=result.stop_ids or None,
                           logprobs=result.logprobs if sampling.logprobs else None,
                           logprob_source=LOGPROBS_MODEL if sampling.logprobs else None,
                           prompt_ids=prompt_ids, finish_reason=result.finish_reason,
                           prompt_tokens=result.prompt_tokens, cached_tokens=result.cached_tokens,
                           completion_tokens=len(result.ids) + len(result.stop_ids),
                           raw={"grammar_error": result.grammar_error} if result.grammar_error else {})

    async def _run_batches(self) -> None:
        """Gather calls that arrive within the window into one decoding batch, until none wait."""
        while self._pending:
            seen = -1
            while len(self._pending) != seen and len(self._pending) < self.max_batch:
                seen = len(self._pending)
                await asyncio.sleep(self.batch_window_s)
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            try:
                results = await asyncio.to_thread(self.sampler.generate, [item["request"] for item, _ in batch])
            except Exception as exc:        # every waiting call learns why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(PolicyError(f"hf policy: generation failed: {exc}"))
                continue
            self.stats["batches"] += 1
            self.stats["batched_calls"] += len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def aclose(self) -> None:
        if self._batcher is not None and not self._batcher.done():
            await self._batcher
