"""A policy served over the OpenAI chat-completions protocol: vLLM, SGLang, Ollama, llama.cpp
server, OpenAI, or anything else that speaks it."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp

from ..httpretry import is_retryable_status, parse_retry_after
from .base import Policy, PolicyError, PolicyReply, Sampling
from .grammar import ProtocolGrammar

MAX_RESPONSE_BYTES = 8 * 1024 * 1024     # a chat reply larger than this is a broken server
# How servers take a GBNF grammar in a chat request.
GRAMMAR_FIELDS = {
    "llama.cpp": lambda g: {"grammar": g},
    "vllm": lambda g: {"structured_outputs": {"grammar": g}},
}

MAX_BACKOFF_S = 8.0
# The chat client uses aiohttp rather than httpx (used elsewhere): with dozens of chats in flight the
# client is CPU-bound, and aiohttp costs several times less CPU per request.


class _SessionPerLoop:
    """One aiohttp session per running event loop (a policy may serve several `asyncio.run` calls)."""

    def __init__(self, max_connections: int, timeout_s: float):
        self.max_connections, self.timeout_s = max_connections, timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections)
            timeout = aiohttp.ClientTimeout(total=self.timeout_s, connect=10.0)
            self._session, self._loop = aiohttp.ClientSession(connector=connector, timeout=timeout), loop
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                await session.close()
            except RuntimeError:        # opened on a loop that has since closed
                pass


class OpenAICompatPolicy(Policy):
    name = "openai"

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 *, timeout_s: float = 300.0, retries: int = 4, backoff_s: float = 1.0,
                 max_connections: int = 256, extra_body: dict[str, Any] | None = None,
                 grammar: str | None = None):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise PolicyError("no policy server given: pass --base-url (e.g. http://127.0.0.1:8000/v1) "
                              "or set OPENAI_BASE_URL")
        self.base_url = base_url.rstrip("/")
        self.model = model or os.environ.get("GENEVOLVE_MODEL") or "default"
        self.name = f"openai:{self.model}"
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.retries, self.backoff_s = retries, backoff_s
        self.extra_body = extra_body or {}
        # Off by default: a server that does not know the field may reject the request.
        if grammar is not None and grammar not in GRAMMAR_FIELDS:
            raise PolicyError(f"grammar must be one of {', '.join(GRAMMAR_FIELDS)}, not {grammar!r}")
        self.grammar_style = grammar
        self.constrained = grammar is not None
        self._grammar: ProtocolGrammar | None = None
        self._sessions = _SessionPerLoop(max_connections, timeout_s)

    def set_tools(self, schemas: list[dict[str, Any]], max_tool_calls: int | None = None
                  ) -> list[dict[str, Any]]:
        """Build the protocol grammar for these tools (sent only when a grammar style is set)."""
        if self.constrained:
            self._grammar = ProtocolGrammar(schemas, max_tool_calls=max_tool_calls)
        return schemas

    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling) -> PolicyReply:
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": sampling.temperature, "top_p": sampling.top_p,
                                "max_tokens": sampling.max_tokens, **self.extra_body}
        if self.constrained and self._grammar:
            body.update(GRAMMAR_FIELDS[self.grammar_style](self._grammar.for_messages(messages)))
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = sampling.stop
        if sampling.logprobs:
            body["logprobs"] = True
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        status, raw = await self._post(f"{self.base_url}/chat/completions",
                                       json.dumps(body, ensure_ascii=False).encode("utf-8"), headers)
        return self._read_reply(status, raw)

    async def _post(self, url: str, payload: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST with retries: 408/429/5xx and connection errors back off exponentially (or as the
        server's Retry-After says); the last answer, or a clear error, comes back."""
        attempts = self.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            wait = min(self.backoff_s * 2 ** attempt, MAX_BACKOFF_S)
            try:
                async with self._sessions.get().post(url, data=payload, headers=headers) as resp:
                    raw = await _read_capped(resp.content, MAX_RESPONSE_BYTES + 1)
                    if not (is_retryable_status(resp.status) and not last):
                        return resp.status, raw
                    asked = parse_retry_after(resp.headers.get("Retry-After"))
                    wait = min(asked if asked is not None else wait, MAX_BACKOFF_S)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if last:
                    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    raise PolicyError(f"policy server {self.base_url} failed after {attempts} attempt(s): "
                                      f"{reason}") from None
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")   # the last attempt returns or raises

    def _read_reply(self, status: int, raw: bytes) -> PolicyReply:
        where = f"policy server {self.base_url}"
        if status >= 400:
            raise PolicyError(f"{where} answered HTTP {status}: {_error_text(raw)}")
        if len(raw) > MAX_RESPONSE_BYTES:
            raise PolicyError(f"{where} sent a reply over the {MAX_RESPONSE_BYTES}-byte limit")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise PolicyError(f"{where} sent a reply that is not UTF-8") from None
        except json.JSONDecodeError:
            raise PolicyError(f"{where} sent a reply that is not JSON: {raw[:120]!r}") from None
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise PolicyError(f"{where} sent JSON without choices[0].message: {str(data)[:200]}") from None
        if not isinstance(text, str):
            raise PolicyError(f"{where} sent a non-text message content")
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        logprobs = None
        lp = choice.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            logprobs = [float(t.get("logprob", 0.0)) for t in lp["content"] if isinstance(t, dict)]
        return PolicyReply(text=text, prompt_tokens=usage.get("prompt_tokens"),
                           cached_tokens=details.get("cached_tokens"),
                           completion_tokens=usage.get("completion_tokens"),
                           finish_reason=choice.get("finish_reason"), logprobs=logprobs)

    async def aclose(self) -> None:
        await self._sessions.aclose()


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, or its first `limit` bytes when it is longer (the caller treats that as too big)."""
    chunks, size = [], 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _error_text(raw: bytes) -> str:
    try:
        data = json.loads(raw)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except (ValueError, UnicodeDecodeError):
        return raw[:300].decode("utf-8", "replace")
