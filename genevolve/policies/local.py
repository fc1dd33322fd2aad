"""The embedded offline policy: a GGUF model run in-process by llama.cpp (the `xllamacpp` wheel).

Three things make a 1.5B model on two CPU cores usable as the agent's policy:

- **Constrained decoding.** A GBNF grammar, built from the tools' JSON schemas, admits only a
  protocol turn: `<think>` (bounded length) then one `<tool_call>` naming a real tool with
  schema-shaped arguments, or one `<answer>` with a well-formed program. A small model cannot
  then invent tools, break the JSON or ramble without end.
- **Prefix caching.** The system prompt (~1,800 tokens, minutes of prefill on a busy CPU) is
  evaluated once, kept in the KV cache across rounds and requests, and saved to disk with
  llama.cpp's slot save/restore under `cache_dir()/kv/`, keyed by model, exact system prompt and
  context size, so a new process restores it instead of prefilling it again.
- **One model, serialized calls.** `chat()` runs the blocking call in a worker thread behind a
  lock, so the event loop stays free for tool calls of other requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from ..config import cache_dir
from .base import Policy, PolicyError, PolicyReply, Sampling

MAX_THINK_CHARS = 600          # a 1.5B model left unbounded can think until the context is full
MAX_STRING_CHARS = 300         # default cap for a JSON string the schema does not bound
MAX_GEN_PROMPT_CHARS = 2000
MAX_NOTE_CHARS = 200
MAX_REFERENCES = 2             # protocol.MAX_REFERENCES; the runtime truncates to it anyway
KV_FILES_KEPT = 16             # saved system-prompt prefixes kept on disk (about 30-60 MB each)


# =========================================================================== grammar

def _literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _json_literal(value: Any) -> str:
    """A GBNF literal for the JSON encoding of `value` (used for keys and enum members)."""
    return _literal(json.dumps(value, ensure_ascii=False))


class _GrammarBuilder:
    """Collects named GBNF rules; schema nodes become rules named after where they sit."""

    BASE_RULES = {
        "ws": '" "?',
        "char": r'[^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
        "integer": '"-"? ([0-9] | [1-9] [0-9]{1,15})',
        "number": '"-"? ([0-9] | [1-9] [0-9]{1,15}) ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?',
        "boolean": '"true" | "false"',
    }

    def __init__(self) -> None:
        self.rules: dict[str, str] = dict(self.BASE_RULES)

    def add(self, name: str, body: str) -> str:
        name = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-").lower() or "rule"
        unique, n = name, 2
        while unique in self.rules and self.rules[unique] != body:
            unique, n = f"{name}-{n}", n + 1
        self.rules[unique] = body
        return unique

    def string(self, name: str, min_len: int = 0, max_len: int = MAX_STRING_CHARS) -> str:
        return self.add(name, f'"\\"" char{{{min_len},{max_len}}} "\\""')

    def object(self, name: str, props: list[tuple[str, str, bool]]) -> str:
        """An object whose keys come in the given order; optional ones may be left out.

        `props` holds (key, value rule, required). Required keys come first so that commas
        stay simple; JSON does not care about key order.
        """
        required = [(k, r) for k, r, req in props if req]
        optional = [(k, r) for k, r, req in props if not req]
        pair = lambda k, r: f'{_json_literal(k)} ws ":" ws {r}'     # noqa: E731
        if required:
            body = ' ws "," ws '.join(pair(k, r) for k, r in required)
            body += "".join(f' (ws "," ws {pair(k, r)})?' for k, r in optional)
        elif optional:
            # any non-empty subset in order: start at key i, then each later key optionally
            starts = []
            for i, (k, r) in enumerate(optional):
                tail = "".join(f' (ws "," ws {pair(k2, r2)})?' for k2, r2 in optional[i + 1:])
                starts.append(f"({pair(k, r)}{tail})")
            body = "(" + " | ".join(starts) + ")?"
        else:
            body = ""
        return self.add(name, f'"{{" ws {body} ws "}}"' if body else '"{" ws "}"')

    def array(self, name: str, item: str, min_items: int = 0, max_items: int | None = None) -> str:
        if max_items == 0:
            return self.add(name, '"[" ws "]"')
        if max_items == 1:
            return self.add(name, f'"[" ws {item} ws "]"' if min_items else f'"[" ws {item}? ws "]"')
        more_min = max(min_items - 1, 0)
        more = f'(ws "," ws {item}){{{more_min},{max_items - 1}}}' if max_items else \
            f'(ws "," ws {item}){{{more_min},}}'
        items = f"{item} {more}"
        return self.add(name, f'"[" ws {items} ws "]"' if min_items > 0 else f'"[" ws ({items})? ws "]"')

    def schema(self, name: str, spec: dict[str, Any]) -> str:
        """The rule for a value of the small JSON-schema subset our tools use."""
        if "enum" in spec:
            return self.add(name, " | ".join(_json_literal(v) for v in spec["enum"]))
        kind = spec.get("type")
        if kind == "string":
            return self.string(name, int(spec.get("minLength", 0)),
                               int(spec.get("maxLength", MAX_STRING_CHARS)))
        if kind == "integer":
            lo, hi = spec.get("minimum"), spec.get("maximum")
            if lo is not None and hi is not None and 0 <= hi - lo <= 100:
                return self.add(name, " | ".join(f'"{v}"' for v in range(int(hi), int(lo) - 1, -1)))
            return "integer"
        if kind == "number":
            return "number"
        if kind == "boolean":
            return "boolean"
        if kind == "array":
            item = self.schema(f"{name}-item", spec.get("items", {"type": "string"}))
            return self.array(name, item, int(spec.get("minItems", 0)), spec.get("maxItems"))
        if kind == "object" or "properties" in spec:
            required = set(spec.get("required", []))
            props = [(key, self.schema(f"{name}-{key}", sub), key in required)
                     for key, sub in spec.get("properties", {}).items()]
            return self.object(name, props)
        raise ValueError(f"grammar: unsupported JSON schema at '{name}': {json.dumps(spec)[:120]}")

    def render(self) -> str:
        order = ["root"] + [n for n in self.rules if n != "root"]
        return "\n".join(f"{n} ::= {self.rules[n]}" for n in order) + "\n"


def grammar_for_tools(tool_schemas: list[dict[str, Any]], *, answer_only: bool = False,
                      max_think_chars: int = MAX_THINK_CHARS, max_references: int = MAX_REFERENCES) -> str:
    """A GBNF grammar admitting exactly one protocol turn for these tools.

    `<think>` free text (no '<', at most `max_think_chars`) `</think>`, then either
    `<tool_call>{"name": TOOL, "arguments": {...}}</tool_call>` with each tool's arguments shaped
    by its JSON schema, or `<answer>{"gen_prompt": ..., "reference_images": [...]}</answer>`.
    `answer_only` drops the tool-call branch (the final round, or the tool budget is spent).
    """
    g = _GrammarBuilder()
    branches = []
    if not answer_only:
        calls = []
        for schema in tool_schemas:
            name = schema["name"]
            args = g.schema(f"args-{name}", schema.get("parameters") or {"type": "object"})
            calls.append(g.add(f"call-{name}", f'"{{" ws {_json_literal("name")} ws ":" ws {_json_literal(name)}'
                                                f' ws "," ws {_json_literal("arguments")} ws ":" ws {args} ws "}}"'))
        if calls:
            g.add("tool-call", '"<tool_call>" (' + " | ".join(calls) + ') "</tool_call>"')
            branches.append("tool-call")
    img_id = g.add("img-id", '"\\"IMG_" [0-9]{3} "\\""')
    reference = g.object("reference", [("img_id", img_id, True),
                                       ("note", g.string("note", 0, MAX_NOTE_CHARS), True)])
    program = g.object("program", [
        ("gen_prompt", g.string("gen-prompt", 1, MAX_GEN_PROMPT_CHARS), True),
        ("reference_images", g.array("references", reference, 0, max_references), True)])
    g.add("answer", f'"<answer>" {program} "</answer>"')
    branches.append("answer")
    g.add("think", f'"<think>" [^<]{{0,{max_think_chars}}} "</think>"')
    g.add("root", 'think "\\n"? (' + " | ".join(branches) + ")")
    return g.render()


def _protocol_tool_schemas() -> list[dict[str, Any]]:
    """The three protocol tools' schemas, for a policy used without `set_tools`."""
    from ..tools import ImageSearchTool, KnowledgeTool, SearchTool
    return [{"name": c.name, "description": c.description, "parameters": c.parameters}
            for c in (SearchTool, ImageSearchTool, KnowledgeTool)]


def _wants_answer_only(messages: list[dict[str, Any]]) -> bool:
    """True when the runtime has forbidden tools: the final round, or the tool budget is spent."""
    from .. import protocol
    last = messages[-1] if messages else {}
    content = last.get("content") if last.get("role") == "user" else None
    if not isinstance(content, str):
        return False
    budget_note = protocol.BUDGET_EXHAUSTED_MESSAGE.split("{n}")[0]
    return content.strip() == protocol.FINAL_STEP_MESSAGE or budget_note in content


# =========================================================================== policy

class LocalGGUFPolicy(Policy):
    """A GGUF chat model in this process; by default the hash-pinned Qwen2.5-Coder-1.5B.

    The model loads on the first `chat()` (or an explicit `load()`), so constructing the policy
    is cheap. `stats` records load time and how the system-prompt prefix was obtained.
    """

    name = "local"

    def __init__(self, model_path: str | os.PathLike | None = None, n_ctx: int = 8192,
                 n_threads: int | None = None, constrained: bool = True, prefix_cache: bool = True,
                 tool_schemas: list[dict[str, Any]] | None = None, kv_dir: str | os.PathLike | None = None,
                 max_think_chars: int = MAX_THINK_CHARS, verbose: bool = False):
        self.model_path = model_path
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads) if n_threads else (os.cpu_count() or 1)
        self.constrained = _as_bool(constrained)
        self.prefix_cache = _as_bool(prefix_cache)
        self.kv_dir = Path(kv_dir) if kv_dir else None
        self.max_think_chars = int(max_think_chars)
        self.verbose = _as_bool(verbose)
        self.stats: dict[str, Any] = {}
        self._grammars: dict[bool, str] = {}
        self._tool_schemas: list[dict[str, Any]] = []
        self.set_tools(tool_schemas if tool_schemas is not None else _protocol_tool_schemas())
        self._lock = threading.Lock()
        self._server: Any = None
        self._base_url = ""
        self._api_key = secrets.token_hex(16)
        self._model_id = ""
        self._resident_prefix: str | None = None      # key of the prefix now at the slot's start
        self._prefix_keys: dict[str, tuple[str, str]] = {}   # system prompt -> (key, template text)

    # -- configuration ----------------------------------------------------------------------
    def set_tools(self, schemas: list[dict[str, Any]]) -> None:
        """Constrain tool calls to these tools (the agent passes `[tool.schema() for tool in tools]`)."""
        self._tool_schemas = list(schemas)
        self._grammars = {answer_only: grammar_for_tools(self._tool_schemas, answer_only=answer_only,
                                                         max_think_chars=self.max_think_chars)
                          for answer_only in (False, True)}

    def grammar(self, answer_only: bool = False) -> str:
        return self._grammars[answer_only]

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
        # Saved KV states are only valid for the same model and the same llama.cpp build.
        self._model_id = f"{model_key}|xllamacpp-{xllamacpp.__version__}"
        kv_dir = self.kv_dir or cache_dir() / "kv"
        kv_dir.mkdir(parents=True, exist_ok=True)
        self.kv_dir = kv_dir

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
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
        params.force_pure_content_parser = True  # keep <think>/<tool_call> in the text, unparsed
        params.reasoning_format = xllamacpp.common_reasoning_format.COMMON_REASONING_FORMAT_NONE
        params.ui = False
        params.verbosity = 3 if self.verbose else 0
        started = time.perf_counter()
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:
            raise PolicyError(f"local policy: llama.cpp could not load {path} ({exc}). The file may be "
                              f"truncated or not a chat model; check it with `genevolve doctor`.") from None
        self._base_url = self._server.listening_address.rstrip("/")
        self.stats.update(model_path=str(path), load_s=round(time.perf_counter() - started, 3))

    # -- chat -------------------------------------------------------------------------------
    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling) -> PolicyReply:
        return await asyncio.to_thread(self.chat_blocking, messages, sampling)

    def chat_blocking(self, messages: list[dict[str, Any]], sampling: Sampling) -> PolicyReply:
        if not messages:
            raise PolicyError("local policy: no messages to continue")
        with self._lock:
            self._load_locked()
            if self.prefix_cache and messages[0].get("role") == "system":
                self._ensure_prefix(str(messages[0].get("content") or ""))
            else:
                self._resident_prefix = None       # this request overwrites the slot's start
            body: dict[str, Any] = {
                "messages": messages, "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "cache_prompt": True,
            }
            if sampling.seed is not None:
                body["seed"] = sampling.seed
            if sampling.stop:
                body["stop"] = list(sampling.stop)
            if sampling.logprobs:
                body["logprobs"] = True
            if self.constrained:
                body["grammar"] = self._grammars[_wants_answer_only(messages)]
            try:
                result = self._server.handle_chat_completions(body)
            except Exception as exc:            # the binding raises on malformed requests
                raise PolicyError(f"local policy: llama.cpp rejected the request: {exc}") from None
        return _reply_from(result)

    # -- the system-prompt prefix -----------------------------------------------------------
    def _ensure_prefix(self, system_prompt: str) -> None:
        """Make the slot's KV cache start with this system prompt: restore from disk, or prefill once."""
        if system_prompt not in self._prefix_keys:
            prefix = self._template_prefix(system_prompt)
            key = hashlib.sha256(f"{self._model_id}\n{self.n_ctx}\n{prefix}".encode()).hexdigest()[:40]
            self._prefix_keys = {**dict(list(self._prefix_keys.items())[-7:]), system_prompt: (key, prefix)}
        key, prefix = self._prefix_keys[system_prompt]
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
        try:
            result = self._server.handle_completions(
                {"prompt": prefix, "max_tokens": 1, "temperature": 0.0, "cache_prompt": True})
        except Exception as exc:
            result = {"error": {"message": str(exc)}}
        if not isinstance(result, dict) or "error" in result:
            raise PolicyError(f"local policy: prefilling the system prompt failed: {_error_text(result)}")
        timings = result.get("timings") or {}
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

    def _template_prefix(self, system_prompt: str) -> str:
        """The chat-template text every conversation with this system prompt starts with.

        Rendering two conversations that differ only in the user text and keeping their common
        beginning works for any chat template, without knowing its markers.
        """
        rendered = [self._post("/apply-template", {"messages": [
            {"role": "system", "content": system_prompt}, {"role": "user", "content": user}]})["prompt"]
            for user in ("A", "B")]
        return os.path.commonprefix(rendered)

    def _slot_action(self, action: str, filename: str) -> dict[str, Any]:
        return self._post(f"/slots/0?action={action}", {"filename": filename})

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx
        try:
            response = httpx.post(self._base_url + route, json=body, timeout=600,
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


def _as_bool(value: Any) -> bool:
    """Options may arrive as strings from flags, env or TOML ("false", "0", "no")."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def _error_text(result: Any) -> str:
    if isinstance(result, dict) and isinstance(result.get("error"), dict):
        return str(result["error"].get("message") or result["error"])
    return str(result)[:500]


def _reply_from(result: Any) -> PolicyReply:
    if not isinstance(result, dict) or "error" in result or not result.get("choices"):
        raise PolicyError(f"local policy: llama.cpp returned an error: {_error_text(result)}")
    choice = result["choices"][0]
    usage = result.get("usage") or {}
    logprobs = None
    content_lp = (choice.get("logprobs") or {}).get("content")
    if content_lp:
        logprobs = [float(t["logprob"]) for t in content_lp]
    return PolicyReply(
        text=(choice.get("message") or {}).get("content") or "",
        prompt_tokens=usage.get("prompt_tokens"),
        cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        finish_reason=choice.get("finish_reason"),
        logprobs=logprobs,
        raw={"timings": result.get("timings") or {}, "model": result.get("model")},
    )
