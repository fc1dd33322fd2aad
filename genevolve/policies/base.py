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

    @abstractmethod
    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling) -> PolicyReply: ...

    async def aclose(self) -> None:
        pass
