"""A policy served over the OpenAI chat-completions protocol: vLLM, SGLang, Ollama, llama.cpp
server, OpenAI, or anything else that speaks it.

When the caller asks for log-probs (training), the request also asks for token ids the way vLLM
takes it (`return_token_ids`, `return_tokens_as_token_ids`); a server that returns neither ids nor
per-token log-probs then fails that turn with a clear error. Otherwise nothing extra is asked, so
any server works.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..chat_client import ChatClient, ChatError, chat_choice
from ..httpretry import RetryPolicy
from .base import (LOGPROBS_MODEL, Policy, PolicyError, PolicyReply, Sampling, TurnContext, require_tokens)
from .grammar import ProtocolGrammar

# How servers take a GBNF grammar in a chat request.
GRAMMAR_FIELDS = {
    "llama.cpp": lambda g: {"grammar": g},
    "vllm": lambda g: {"structured_outputs": {"grammar": g}},
}
_TOKEN_ID_RE = re.compile(r"^token_id:(\d+)$")      # vLLM's return_tokens_as_token_ids spelling

# A turn waits at most TIMEOUT_S for the reply's bytes and is tried ATTEMPTS times, so a server that
# never answers costs a person at the terminal about six minutes per turn, not half an hour: 120 s
# still covers a long turn (4,096 tokens at 35 tokens/s) from a busy server. Set them with
# --timeout / --attempts (GENEVOLVE_HTTP_TIMEOUT, GENEVOLVE_HTTP_ATTEMPTS, [http] in the config).
TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0
ATTEMPTS = 3


class OpenAICompatPolicy(Policy):
    name = "openai"

    def __init__(self, base_url: str | None, model: str | None = None, api_key: str = "", *,
                 timeout_s: float = TIMEOUT_S, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 retries: int = ATTEMPTS - 1,
                 backoff_s: float = 1.0, max_connections: int = 256, extra_body: dict[str, Any] | None = None,
                 grammar: str | None = None, logprob_source: str = LOGPROBS_MODEL):
        if not base_url:
            raise PolicyError("no policy server given: pass --base-url (e.g. http://127.0.0.1:8000/v1) "
                              "or set OPENAI_BASE_URL")
        self.model = model or "default"
        self.name = f"openai:{self.model}"
        self.extra_body = extra_body or {}
        # Off by default: a server that does not know the field may reject the request.
        if grammar is not None and grammar not in GRAMMAR_FIELDS:
            raise PolicyError(f"grammar must be one of {', '.join(GRAMMAR_FIELDS)}, not {grammar!r}")
        self.grammar_style = grammar
        self.constrained = grammar is not None
        self._grammar: ProtocolGrammar | None = None
        # vLLM returns raw-model log-probs unless started with another --logprobs-mode.
        self.logprob_source = logprob_source
        self.timeouts = {"timeout_s": timeout_s, "connect_timeout_s": connect_timeout_s}
        self.client = ChatClient(base_url, api_key, label="policy server", timeout_s=timeout_s,
                                 connect_timeout_s=connect_timeout_s, max_connections=max_connections,
                                 retry=RetryPolicy(attempts=retries + 1, backoff_s=backoff_s))
        self.base_url = self.client.base_url

    def set_tools(self, schemas: list[dict[str, Any]], max_tool_calls: int | None = None
                  ) -> list[dict[str, Any]]:
        """Build the protocol grammar for these tools (sent only when a grammar style is set)."""
        if self.constrained:
            self._grammar = ProtocolGrammar(schemas)
        return schemas

    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling,
                   turn: TurnContext | None = None) -> PolicyReply:
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": sampling.temperature, "top_p": sampling.top_p,
                                "max_tokens": sampling.max_tokens, **self.extra_body}
        if sampling.top_k is not None:
            body["top_k"] = sampling.top_k      # vLLM/SGLang extension; -1 means no cut
        if self.constrained and self._grammar:
            body.update(GRAMMAR_FIELDS[self.grammar_style](self._grammar.for_turn(turn or TurnContext())))
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = sampling.stop
        if sampling.logprobs:
            body.update(logprobs=True, return_token_ids=True, return_tokens_as_token_ids=True)
        try:
            data = await self.client.post_json("/chat/completions", body, check=_reply_text)
        except ChatError as exc:
            raise PolicyError(str(exc)) from None
        return require_tokens(self._read_reply(data), sampling, self.client.label)

    def _read_reply(self, data: dict[str, Any]) -> PolicyReply:
        choice = data["choices"][0]
        text = _reply_text(data)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
        ids = _int_list(choice.get("token_ids"))
        logprobs = None
        lp = choice.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            entries = [t for t in lp["content"] if isinstance(t, dict)]
            logprobs = [float(t.get("logprob", 0.0)) for t in entries]
            if ids is None:                 # older vLLM: ids only inside the log-prob entries
                parsed = [_TOKEN_ID_RE.match(str(t.get("token", ""))) for t in entries]
                ids = [int(m.group(1)) for m in parsed] if parsed and all(parsed) else None
        if ids is not None and logprobs is not None and len(logprobs) == len(ids) + 1:
            logprobs = logprobs[:-1]         # a log-prob for an end-of-turn token the ids leave out
        return PolicyReply(text=text, completion_ids=ids, logprobs=logprobs,
                           logprob_source=self.logprob_source if logprobs else None,
                           prompt_ids=_int_list(data.get("prompt_token_ids")),
                           prompt_tokens=_int(usage.get("prompt_tokens")),
                           cached_tokens=_int(details.get("cached_tokens")),
                           completion_tokens=_int(usage.get("completion_tokens")),
                           finish_reason=choice.get("finish_reason"))

    def encode(self, messages: list[dict[str, Any]], completions: Sequence[list[int] | None] = ()) -> list[int]:
        """The prompt ids the server reads for this conversation, from its /tokenize route (vLLM,
        SGLang). The server tokenizes the text of earlier replies, so `completions` is not used."""
        import asyncio

        body = {"model": self.model, "messages": messages, "add_generation_prompt": True}

        async def ask() -> dict[str, Any]:
            client = ChatClient(self.client.base_url, self.client._api_key, label="policy server",
                                retry=self.client.retry, **self.timeouts)
            try:
                return await client.post_json("/tokenize", body, root=True)
            finally:
                await client.aclose()
        try:
            data = asyncio.run(ask())
        except ChatError as exc:
            raise PolicyError(f"cannot encode through the server: {exc}") from None
        ids = _int_list(data.get("tokens"))
        if ids is None:
            raise PolicyError(f"{self.client.label}/tokenize returned no token ids")
        return ids

    async def aclose(self) -> None:
        await self.client.aclose()


def _reply_text(data: Any) -> str:
    """The text of a chat reply: a string, or the text parts of a list of content parts (some
    servers send those). Anything else is ValueError, which the client retries like a broken reply."""
    content = chat_choice(data)["message"].get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, (str, dict)) for p in content):
        return "".join(p if isinstance(p, str) else str(p.get("text") or "") for p in content)
    raise ValueError(f"message content is a {type(content).__name__}, not text")


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
