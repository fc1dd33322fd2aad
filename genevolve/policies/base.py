"""The policy interface: an async chat call over OpenAI-style messages.

The agent tells the policy what the next turn may do (`TurnContext`), so a policy that constrains
its own output builds its grammar from the agent's state rather than re-reading the conversation.
A reply carries the tokens the policy wrote when it knows them, so a trainer can rebuild exactly
what the model read and wrote (`Policy.encode` renders a conversation to prompt token ids).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


class PolicyError(RuntimeError):
    """The policy could not produce a reply (server down, bad response, model missing)."""


@dataclass
class Sampling:
    # Inference defaults of the released agent (paper notes §2.1).
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int | None = None        # None or -1: no top-k cut
    max_tokens: int = 4096
    seed: int | None = None
    stop: list[str] | None = None
    # Training asks for the reply's token ids and per-token log-probs. A policy that cannot give
    # them raises PolicyError for that turn: a missing log-prob must never become a silent zero.
    logprobs: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# What a turn may do. The agent decides; a constrained policy narrows its grammar to it.
ANY, TOOLS_ONLY, ANSWER_ONLY, IMAGE_SEARCH_ONLY = "any", "tools_only", "answer_only", "image_search_only"
TURN_MODES = (ANY, TOOLS_ONLY, ANSWER_ONLY, IMAGE_SEARCH_ONLY)


@dataclass(frozen=True)
class TurnContext:
    """What the agent knows about the next turn and tells the policy."""

    mode: str = ANY                          # one of TURN_MODES
    final: bool = False                      # the final-step message has just been sent
    image_ids: tuple[str, ...] = ()          # ids the image searches returned so far, sorted
    loaded_skills: frozenset[str] = frozenset()
    tool_calls_left: int | None = None
    # The token ids the policy sampled for each earlier assistant message, in order (None where
    # unknown). A policy that sends them back as tokens keeps its prefix cache exact.
    completions: tuple[list[int] | None, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in TURN_MODES:
            raise ValueError(f"turn mode must be one of {TURN_MODES}, not {self.mode!r}")


# Which distribution `PolicyReply.logprobs` come from.
LOGPROBS_MODEL = "model"              # the raw model at temperature 1, before any filter
LOGPROBS_SAMPLING = "sampling"        # after temperature, top-k and top-p
LOGPROBS_CONSTRAINED = "constrained"  # after the grammar mask as well


@dataclass
class PolicyReply:
    text: str
    completion_ids: list[int] | None = None   # the tokens of the reply's content
    stop_ids: list[int] | None = None         # the end-of-turn token(s) sampled after it, when known
    logprobs: list[float] | None = None       # one per completion id, then one per stop id, when asked for
    logprob_source: str | None = None         # LOGPROBS_MODEL | LOGPROBS_SAMPLING | LOGPROBS_CONSTRAINED
    prompt_ids: list[int] | None = None       # exactly what the model read, when the policy knows it
    finish_reason: str | None = None          # "stop" | "length" | ...
    prompt_tokens: int | None = None
    cached_tokens: int | None = None          # prompt tokens that came from a prefix cache
    completion_tokens: int | None = None
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
    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling,
                   turn: TurnContext | None = None) -> PolicyReply: ...

    def encode(self, messages: list[dict[str, Any]], completions: Sequence[list[int] | None] = ()) -> list[int]:
        """The prompt token ids of this conversation, with the generation prompt appended.

        An assistant message whose sampled ids are given (`completions`, one entry per assistant
        message in order) is spliced in as those ids, as `chat` sends it. Policies without a
        tokenizer raise PolicyError.
        """
        raise PolicyError(f"the {self.name} policy has no tokenizer to encode a conversation with")

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


def require_tokens(reply: PolicyReply, sampling: Sampling, where: str) -> PolicyReply:
    """Raise when training asked for token ids and log-probs and the reply lacks them."""
    if not sampling.logprobs:
        return reply
    if not reply.completion_ids:
        raise PolicyError(f"{where} returned no completion token ids, which training needs "
                          "(for vLLM: a version that supports return_token_ids)")
    n = len(reply.completion_ids) + len(reply.stop_ids or [])
    if reply.logprobs is None or len(reply.logprobs) != n:
        got = "none" if reply.logprobs is None else f"{len(reply.logprobs)} for {n} tokens"
        raise PolicyError(f"{where} returned no per-token log-probs for the reply ({got}), which training needs")
    return reply


def splice_points(messages: Sequence[dict[str, Any]], completions: Sequence[list[int] | None]
                  ) -> dict[int, list[int]]:
    """Message index -> sampled token ids, for the assistant messages whose ids are known."""
    out: dict[int, list[int]] = {}
    k = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        ids = completions[k] if k < len(completions) else None
        k += 1
        if ids:
            out[i] = list(ids)
    return out
