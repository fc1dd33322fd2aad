"""The embedded offline policy: a GGUF model run in-process by llama.cpp (the `xllamacpp` wheel).

Three things make a 1.5B model on two CPU cores usable as the agent's policy:

- **Constrained decoding.** A GBNF grammar, built from the tools' JSON schemas, admits only a
  protocol turn: `<think>` (bounded length) then one `<tool_call>` naming a real tool with
  schema-shaped arguments, or one `<answer>` with a well-formed program. A small model cannot
  then invent tools, break the JSON or ramble without end.
- **Prefix caching.** The system prompt (~1,450 tokens with skill briefs and worked turns: over a
  minute of prefill here) is evaluated once, kept in the KV cache across rounds and requests, and
  saved to disk with llama.cpp's slot save/restore under `cache_dir()/kv/`, keyed by model, exact
  system prompt and context size, so a new process restores it instead of prefilling it again.
  The policy sends llama.cpp token ids it built itself (`encode`): each earlier reply goes back as
  the tokens that were sampled, so the cache also covers every earlier turn, and the ids the model
  read are exactly those a trainer rebuilds from the record.
- **One model, serialized calls.** `chat()` runs the blocking call in a worker thread behind a
  lock, so the event loop stays free for tool calls of other requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ..config import cache_dir
from .. import protocol
from ..config import parse_bool
from .base import (LOGPROBS_MODEL, Policy, PolicyError, PolicyReply, Sampling, TurnContext, require_tokens,
                   splice_points)
from .grammar import PROTOCOL_TAGS, ProtocolGrammar, protocol_tool_schemas, tighten_schemas

KV_FILES_KEPT = 16             # saved system-prompt prefixes kept on disk (about 30-60 MB each)
TOKENIZED_KEPT = 64            # long text segments (system prompts) whose token ids are kept


# =========================================================================== policy

class LocalGGUFPolicy(Policy):
    """A GGUF chat model in this process; by default the hash-pinned Qwen2.5-Coder-1.5B.

    The model loads on the first `chat()` (or an explicit `load()`), so constructing the policy
    is cheap. `stats` records load time and how the system-prompt prefix was obtained.
    """

    name = "local"
    # What one request may cost. On the project's two CPU cores this model reads ~20 prompt
    # tokens/s and writes 6-10 tokens/s, so every observation token and every generated token is time:
    # these defaults keep a request to two tool calls, results a few lines long, short thinking
    # and a gen_prompt of two whole sentences (benchmarks/offline_latency.py measures the effect).
    DEFAULT_BUDGET = {"tool_call_budget": 2, "observation_chars": 350, "max_think_chars": 80,
                      "max_gen_prompt_chars": 240, "max_gen_prompt_sentences": 2, "max_note_chars": 40,
                      "max_queries": 1, "max_results": 3}
    inline_skills = True

    def __init__(self, model_path: str | os.PathLike | None = None, n_ctx: int = 8192,
                 n_threads: int | None = None, constrained: bool = True, prefix_cache: bool = True,
                 tool_schemas: list[dict[str, Any]] | None = None, kv_dir: str | os.PathLike | None = None,
                 verbose: bool = False, lora_path: str | os.PathLike | None = None, **budget: Any):
        unknown = set(budget) - set(self.DEFAULT_BUDGET)
        if unknown:
            raise TypeError(f"local policy: unknown option(s) {', '.join(sorted(unknown))}")
        budget = {key: int(budget.get(key, default)) for key, default in self.DEFAULT_BUDGET.items()}
        self.model_path = model_path
        self.lora_path = Path(lora_path) if lora_path else None   # a LoRA adapter GGUF, applied at load
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads) if n_threads else (os.cpu_count() or 1)
        self.constrained = parse_bool(constrained, "constrained")
        self.prefix_cache = parse_bool(prefix_cache, "prefix_cache")
        self.kv_dir = Path(kv_dir) if kv_dir else None
        self.tool_call_budget = budget["tool_call_budget"]
        self.observation_chars = budget["observation_chars"]
        self.max_think_chars = budget["max_think_chars"]
        self.max_gen_prompt_chars = budget["max_gen_prompt_chars"]
        self.max_gen_prompt_sentences = budget["max_gen_prompt_sentences"]
        self.max_note_chars = budget["max_note_chars"]
        self.max_queries, self.max_results = budget["max_queries"], budget["max_results"]
        self.verbose = parse_bool(verbose, "verbose")
        self.stats: dict[str, Any] = {}
        self._tag_tokens: dict[str, str] = {}     # known once the model is loaded
        self.set_tools(tool_schemas if tool_schemas is not None else protocol_tool_schemas())
        self._lock = threading.Lock()
        self._server: Any = None
        self._base_url = ""
        self._api_key = secrets.token_hex(16)
        self._model_id = ""
        self._resident_prefix: str | None = None      # key of the prefix now at the slot's start
        self._tokenized: dict[str, list[int]] = {}         # long segment text -> its token ids

    # -- configuration ----------------------------------------------------------------------
    def set_tools(self, schemas: list[dict[str, Any]], max_tool_calls: int | None = None
                  ) -> list[dict[str, Any]]:
        """Constrain tool calls to these tools, with argument lists and result counts capped to
        what this policy can afford; returns the capped schemas for the system prompt."""
        schemas = tighten_schemas(schemas, max_items=self.max_queries, max_integer=self.max_results)
        self._tool_schemas = schemas
        self._build_grammar()
        return schemas

    def _build_grammar(self) -> None:
        self.grammar = ProtocolGrammar(self._tool_schemas, max_think_chars=self.max_think_chars,
                                       max_gen_prompt_chars=self.max_gen_prompt_chars,
                                       max_gen_prompt_sentences=self.max_gen_prompt_sentences,
                                       max_note_chars=self.max_note_chars, tag_tokens=self._tag_tokens)

    # -- loading ----------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model now (thread-safe; a no-op when it is loaded)."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._server is not None:
            return
        from ..models import ModelError, PINNED_MODEL, ensure_model, pinned_model_path
        try:
            path = ensure_model(self.model_path)
        except ModelError as exc:
            raise PolicyError(f"local policy: {exc}") from None
        # llama.cpp's OpenMP threads spin while they wait. On a shared or busy CPU a spinning
        # thread steals the core its peer needs: on 2 cores at load average ~6, decoding ran at
        # 0.5-0.7 tok/s spinning and 5 tok/s waiting passively (prefill speed unchanged, model
        # load 9.5 s vs 3.7 s). Set OMP_WAIT_POLICY=ACTIVE to override; it is read when
        # llama.cpp's OpenMP runtime loads, so it must be set before the first model load.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import xllamacpp
        except ImportError:
            raise PolicyError("local policy needs the xllamacpp package: "
                              "pip install 'xllamacpp==2026.10.11549' (or genevolve[offline])") from None
        st = path.stat()
        model_key = PINNED_MODEL.sha256 if path == pinned_model_path() else \
            f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if self.lora_path is not None:
            if not self.lora_path.is_file():
                raise PolicyError(f"local policy: no LoRA adapter at {self.lora_path}")
            lt = self.lora_path.stat()
            model_key += f"+lora:{self.lora_path.resolve()}:{lt.st_size}:{lt.st_mtime_ns}"
        # Saved KV states are only valid for the same model and the same llama.cpp build.
        self._model_id = f"{model_key}|xllamacpp-{xllamacpp.__version__}"
        kv_dir = self.kv_dir or cache_dir() / "kv"
        kv_dir.mkdir(parents=True, exist_ok=True)
        self.kv_dir = kv_dir

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        if self.lora_path is not None:
            adapter = xllamacpp.CommonAdapterLoraInfo()
            adapter.path, adapter.scale = str(self.lora_path), 1.0
            params.lora_adapters = [adapter]
        params.n_ctx = self.n_ctx
        params.n_parallel = 1                    # one slot: its KV cache is the prefix cache
        params.cpuparams.n_threads = self.n_threads
        params.cpuparams_batch.n_threads = self.n_threads
        params.cache_prompt = True
        params.cache_ram_mib = 1024
        params.slot_save_path = str(kv_dir) + os.sep     # llama.cpp appends the file name as is
        params.api_keys = [self._api_key]        # the side HTTP port answers only to us
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.ui = False
        params.verbosity = 3 if self.verbose else 0
        started = time.perf_counter()
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:
            raise PolicyError(f"local policy: llama.cpp could not load {path} ({exc}). The file may be "
                              f"truncated or not a chat model; check it with `genevolve doctor`.") from None
        self._base_url = self._server.listening_address.rstrip("/")
        self.stats.update(model_path=str(path), lora_path=str(self.lora_path) if self.lora_path else None,
                          load_s=round(time.perf_counter() - started, 3))
        self._tag_tokens = self._protocol_tag_tokens()
        self._build_grammar()

    def _protocol_tag_tokens(self) -> dict[str, str]:
        """GBNF token expressions for the protocol tags that must be sampled as exact tokens.

        Tags that are one vocabulary token (Qwen's `<tool_call>`) are matched as that token, the
        way the model was trained to write them, and the opening `<think>`, which starts every
        reply so nothing merges into it, as its own tokens. A tag spelled as text could be sampled
        in pieces ('<', 'tool', '_call', '>'); a reply re-tokenized from its text (one this
        process did not sample, see `_segments`) would then no longer match the KV cache there.
        """
        def tokenize(text: str) -> list[dict[str, Any]]:
            return self._post("/tokenize", {"content": text, "add_special": False, "parse_special": True,
                                            "with_pieces": True})["tokens"]
        exprs = {}
        for tag in PROTOCOL_TAGS:
            tokens = tokenize(tag)
            if "".join(str(t.get("piece")) for t in tokens) == tag and (len(tokens) == 1 or tag == "<think>"):
                exprs[tag] = " ".join(f"<[{int(t['id'])}]>" for t in tokens)
        return exprs

    async def warm(self, system_prompt: str) -> None:
        """Load the model and put this system prompt's prefix in the KV cache (from disk if saved)."""
        await asyncio.to_thread(self.prefill, system_prompt)

    def prefill(self, system_prompt: str) -> None:
        """Blocking `warm`: load the model and make sure the prefix is cached (on disk too)."""
        with self._lock:
            self._load_locked()
            if self.prefix_cache:
                segments, prefix_end = self._segments([{"role": "system", "content": system_prompt},
                                                       {"role": "user", "content": "."}])
                self._ensure_prefix([t for seg in segments[:prefix_end] for t in seg])

    # -- chat -------------------------------------------------------------------------------
    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling,
                   turn: TurnContext | None = None) -> PolicyReply:
        return await asyncio.to_thread(self.chat_blocking, messages, sampling, turn)

    def chat_blocking(self, messages: list[dict[str, Any]], sampling: Sampling,
                      turn: TurnContext | None = None) -> PolicyReply:
        if not messages:
            raise PolicyError("local policy: no messages to continue")
        turn = turn or TurnContext()
        with self._lock:
            self._load_locked()
            segments, prefix_end = self._segments(messages, turn.completions)
            prompt_ids = [t for seg in segments for t in seg]
            if self.prefix_cache and prefix_end:
                self._ensure_prefix([t for seg in segments[:prefix_end] for t in seg])
            else:
                self._resident_prefix = None       # this request overwrites the slot's start
            body: dict[str, Any] = {
                "prompt": prompt_ids, "n_predict": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                # llama.cpp cuts to 40 candidates unless told otherwise; None means no cut here.
                "top_k": sampling.top_k if sampling.top_k and sampling.top_k > 0 else 0,
                "cache_prompt": True, "return_tokens": True,
            }
            if sampling.seed is not None:
                body["seed"] = sampling.seed
            if sampling.stop:
                body["stop"] = list(sampling.stop)
            if sampling.logprobs:
                body["n_probs"] = 1          # llama.cpp reports each sampled token's raw-model log-prob
            if self.constrained:
                body["grammar"] = self.grammar.for_turn(turn)
            result = self._post("/completion", body, timeout=None)
        reply = _reply_from(result)
        reply.prompt_ids = prompt_ids
        return require_tokens(reply, sampling, "local policy")

    # -- token ids --------------------------------------------------------------------------
    def encode(self, messages: list[dict[str, Any]], completions: Sequence[list[int] | None] = ()) -> list[int]:
        """The ids `chat` sends for this conversation (see `_segments`)."""
        with self._lock:
            self._load_locked()
            segments, _ = self._segments(messages, completions)
        return [t for seg in segments for t in seg]

    def _segments(self, messages: list[dict[str, Any]], completions: Sequence[list[int] | None] = ()
                  ) -> tuple[list[list[int]], int]:
        """The chat-template prompt as token-id segments, and how many segments the cacheable
        system-prompt prefix spans (0 when the conversation has no system message).

        The template text is cut at every message's content, and each piece is tokenized on its
        own: template markup, each message, and the system prompt's shared part apart from its
        per-request guide (`protocol.split_guide`). An assistant message whose sampled ids are
        known goes in as those ids: re-tokenizing a reply's text does not always give them back
        (when the grammar cuts thinking at its cap the model spells `</think>` as '<', '/', 'th',
        'ink' where the tokenizer writes '</', 'think'), and llama.cpp reuses its KV cache only up
        to the first token that differs. Cutting at the same places every time makes the prefix
        tokens identical across requests, so its cache always matches.
        """
        rendered = str(self._post("/apply-template", {"messages": messages})["prompt"])
        spliced = splice_points(messages, completions)
        pieces: list[str | list[int]] = []
        prefix_end = 0
        pos = 0
        for i, message in enumerate(messages):
            content = message.get("content")
            if not isinstance(content, str) or not content:
                continue
            at = rendered.find(content, pos)
            if at < 0:
                continue          # the template rewrote this message: it stays inside the markup text
            if at > pos:
                pieces.append(rendered[pos:at])
            if i in spliced:
                pieces.append(spliced[i])
            elif i == 0 and message.get("role") == "system":
                shared, guide = protocol.split_guide(content)
                pieces.append(shared)
                prefix_end = len(pieces)
                if guide:
                    pieces.append(guide)
            else:
                pieces.append(content)
            pos = at + len(content)
        if pos < len(rendered):
            pieces.append(rendered[pos:])
        return [p if isinstance(p, list) else self._tokenize(p) for p in pieces], prefix_end

    def _tokenize(self, text: str) -> list[int]:
        if text in self._tokenized:
            return self._tokenized[text]
        # Special tokens are parsed in every piece, as llama.cpp does for a text prompt, so the
        # template's markers and the protocol's one-token tags keep their ids.
        ids = [int(t) for t in self._post("/tokenize", {"content": text, "add_special": False,
                                                         "parse_special": True})["tokens"]]
        if len(text) > 200:           # the system prompt comes back every turn; short pieces are cheap
            self._tokenized[text] = ids
            while len(self._tokenized) > TOKENIZED_KEPT:
                self._tokenized.pop(next(iter(self._tokenized)))
        return ids

    # -- the system-prompt prefix -----------------------------------------------------------
    def _ensure_prefix(self, prefix_ids: list[int]) -> None:
        """Make the slot's KV cache start with these ids: restore from disk, or prefill once."""
        key = hashlib.sha256(f"{self._model_id}\n{self.n_ctx}\n{prefix_ids}".encode()).hexdigest()[:40]
        if key == self._resident_prefix:
            return                     # already at the slot's start; llama.cpp reuses it by itself
        file = self.kv_dir / f"prefix-{key}.bin"
        started = time.perf_counter()
        if file.exists():
            try:
                info = self._slot_action("restore", file.name)
                os.utime(file)        # keep recently used prefixes when pruning
                self._resident_prefix = key
                self.stats.update(prefix_source="disk", prefix_tokens=info.get("n_restored"),
                                  prefix_s=round(time.perf_counter() - started, 3))
                return
            except PolicyError:
                file.unlink(missing_ok=True)          # stale or corrupt: rebuild it below
        timings = self._post("/completion", {"prompt": prefix_ids, "n_predict": 1, "temperature": 0.0,
                                             "cache_prompt": True}, timeout=None).get("timings") or {}
        tmp_name = f"tmp-{key}-{os.getpid()}.bin"
        try:
            self._slot_action("save", tmp_name)
            os.replace(self.kv_dir / tmp_name, file)
        except (PolicyError, OSError):
            (self.kv_dir / tmp_name).unlink(missing_ok=True)   # the cache is an optimisation only
        self._prune_kv_files()
        self._resident_prefix = key
        self.stats.update(prefix_source="prefill", prefix_tokens=timings.get("prompt_n"),
                          prefix_s=round(time.perf_counter() - started, 3))

    def _slot_action(self, action: str, filename: str) -> dict[str, Any]:
        return self._post(f"/slots/0?action={action}", {"filename": filename})

    def _post(self, route: str, body: dict[str, Any], timeout: float | None = 600) -> dict[str, Any]:
        import httpx
        try:
            response = httpx.post(self._base_url + route, json=body, timeout=timeout,
                                  headers={"Authorization": f"Bearer {self._api_key}"})
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PolicyError(f"local policy: llama.cpp {route} failed: {exc}") from None
        if response.status_code != 200 or "error" in data:
            raise PolicyError(f"local policy: llama.cpp {route} failed: {_error_text(data)}")
        return data

    def _prune_kv_files(self) -> None:
        files = sorted(self.kv_dir.glob("prefix-*.bin"), key=lambda f: f.stat().st_mtime, reverse=True)
        for old in files[KV_FILES_KEPT:]:
            old.unlink(missing_ok=True)

    # -- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            server, self._server, self._resident_prefix = self._server, None, None
        del server                     # the destructor stops llama.cpp's loop and frees the model

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def _error_text(result: Any) -> str:
    if isinstance(result, dict) and isinstance(result.get("error"), dict):
        return str(result["error"].get("message") or result["error"])
    return str(result)[:500]


def _reply_from(result: dict[str, Any]) -> PolicyReply:
    """A reply from llama.cpp's native /completion answer."""
    timings = result.get("timings") or {}
    tokens = [int(t) for t in result.get("tokens") or []]
    n_sampled = len(tokens)
    stop_type = result.get("stop_type")
    stop_ids = None
    if stop_type == "eos" and tokens:
        # The end-of-turn token is the reply's last; the chat template writes it back after the
        # content, so it is kept apart from the content's ids.
        tokens, stop_ids = tokens[:-1], tokens[-1:]
    probs = result.get("completion_probabilities") or []
    logprobs = [float(t["logprob"]) for t in probs if "logprob" in t][:n_sampled] or None
    return PolicyReply(
        text=str(result.get("content") or ""),
        completion_ids=tokens or None,
        stop_ids=stop_ids,
        logprobs=logprobs,
        logprob_source=LOGPROBS_MODEL if logprobs else None,
        prompt_tokens=result.get("tokens_evaluated"),
        cached_tokens=timings.get("cache_n"),
        completion_tokens=result.get("tokens_predicted"),
        finish_reason="length" if stop_type == "limit" else "stop",
        raw={"timings": timings, "model": result.get("model"), "stop_type": stop_type},
    )
