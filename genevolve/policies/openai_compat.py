"""A policy served over the OpenAI chat-completions protocol: vLLM, SGLang, Ollama, llama.cpp
server, OpenAI, or anything else that speaks it."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

from ..httpretry import HTTPRetryError, LoopLocalClient, request_with_retries
from .base import Policy, PolicyError, PolicyReply, Sampling
from .grammar import TURN_MODES, grammar_for_tools, turn_mode

MAX_RESPONSE_BYTES = 8 * 1024 * 1024     # a chat reply larger than this is a broken server
# How servers take a GBNF grammar in a chat request.
GRAMMAR_FIELDS = {
    "llama.cpp": lambda g: {"grammar": g},
    "vllm": lambda g: {"structured_outputs": {"grammar": g}},
}

# httpx's connection pool does work proportional to its open connections on every request, which
# makes one pool CPU-bound at a few dozen concurrent chats. Requests are spread over several small
# pools instead, each holding at most this many connections.
CONNECTIONS_PER_POOL = 8


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
        self._grammars: dict[str, str] = {}
        timeout = httpx.Timeout(timeout_s, connect=10.0)
        n_pools = max(1, -(-max_connections // CONNECTIONS_PER_POOL))
        per_pool = httpx.Limits(max_connections=CONNECTIONS_PER_POOL, max_keepalive_connections=CONNECTIONS_PER_POOL)
        tls = httpx.create_ssl_context()         # built once: each costs ~0.3 s of CPU
        self._pools = [LoopLocalClient(lambda: httpx.AsyncClient(timeout=timeout, limits=per_pool, verify=tls))
                       for _ in range(n_pools)]
        self._in_flight = [0] * n_pools

    def set_tools(self, schemas: list[dict[str, Any]]) -> None:
        """Build the protocol grammar for these tools (sent only when a grammar style is set)."""
        if self.constrained:
            self._grammars = {mode: grammar_for_tools(schemas, mode=mode) for mode in TURN_MODES}

    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling) -> PolicyReply:
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": sampling.temperature, "top_p": sampling.top_p,
                                "max_tokens": sampling.max_tokens, **self.extra_body}
        if self.constrained and self._grammars:
            body.update(GRAMMAR_FIELDS[self.grammar_style](self._grammars[turn_mode(messages)]))
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = sampling.stop
        if sampling.logprobs:
            body["logprobs"] = True
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        url = f"{self.base_url}/chat/completions"
        # The first pool with a free connection, so pools open only as concurrency grows.
        pool = next((i for i, n in enumerate(self._in_flight) if n < CONNECTIONS_PER_POOL),
                    min(range(len(self._pools)), key=self._in_flight.__getitem__))
        self._in_flight[pool] += 1
        try:
            resp = await request_with_retries(self._pools[pool].get(), "POST", url, json=body, headers=headers,
                                              retries=self.retries, backoff=self.backoff_s)
        except HTTPRetryError as exc:
            raise PolicyError(f"policy server {self.base_url} failed: {exc}") from None
        finally:
            self._in_flight[pool] -= 1
        return self._read_reply(resp)

    def _read_reply(self, resp: httpx.Response) -> PolicyReply:
        where = f"policy server {self.base_url}"
        if resp.status_code >= 400:
            raise PolicyError(f"{where} answered HTTP {resp.status_code}: {_error_text(resp)}")
        raw = resp.content
        if len(raw) > MAX_RESPONSE_BYTES:
            raise PolicyError(f"{where} sent a {len(raw)}-byte reply (limit {MAX_RESPONSE_BYTES})")
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
        for pool in self._pools:
            await pool.aclose()


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except (ValueError, UnicodeDecodeError):
        return resp.text[:300]
