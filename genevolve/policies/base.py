"""The policy interface: an async chat call over OpenAI-style messages."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


class PolicyError(RuntimeError):
    """The policy could not produce a reply (server down, bad response, model missing)."""


@dataclass
class Sampling:
    # Inference defaults of the released agent (paper notes §2.1).
    temperature: float = 0.6
    top_p: float = 0.9
    max_tokens: int = 4096
    seed: int | None = None
    stop: list[str] | None = None
    logprobs: bool = False          # ask for per-token log-probs of the reply (training)


@dataclass
class PolicyReply:
    text: str
    prompt_tokens: int | None = None
    cached_tokens: int | None = None      # prompt tokens that came from a prefix cache
    completion_tokens: int | None = None
    finish_reason: str | None = None
    logprobs: list[float] | None = None   # one per completion token, when asked for
    raw: dict[str, Any] = field(default_factory=dict)


class Policy(ABC):
    """Anything that continues a chat: a vLLM server, an embedded GGUF model, a script."""

    name: str = "policy"
    # Whether the policy constrains its own output to the protocol grammar.
    constrained: bool = False
    # Characters of one tool observation this policy can afford to read (None: the runtime's
    # default). A small model on a CPU pays seconds for every hundred tokens it reads.
    observation_chars: int | None = None
    # Tool calls per request this policy can afford (None: the protocol's budget). The agent
    # uses it unless its own config sets one.
    tool_call_budget: int | None = None
    # Whether the system prompt should carry the skills' short rules, so that the policy need not
    # spend tool calls loading them (see protocol.build_system_prompt).
    inline_skills: bool = False

    @abstractmethod
    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling) -> PolicyReply: ...

    async def warm(self, system_prompt: str) -> None:
        """Get ready to serve conversations that start with this system prompt (load a model,
        prefill the prompt); a no-op for policies with nothing to prepare."""

    def set_tools(self, schemas: list[dict[str, Any]], max_tool_calls: int | None = None
                  ) -> list[dict[str, Any]]:
        """Told the tools and the tool-call budget before the first chat; returns the schemas as
        this policy will use them (a constrained policy may cap lists and counts), which the
        system prompt then shows."""
        return schemas

    async def aclose(self) -> None:
        pass
