"""What one agent run did, turn by turn, as a plain record that round-trips through JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .program import Program, Reference

# How a run ended.
ANSWER = "answer"            # the policy gave an <answer> that parsed
MAX_ROUNDS = "max_rounds"    # the round budget ran out with no usable answer
ERROR = "error"              # the run could not go on (policy unreachable, crash, ...)


@dataclass
class ToolCall:
    round: int
    name: str
    arguments: dict[str, Any]
    observation: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    repeat: bool = False          # answered from this trajectory's own cache
    started_at: float = 0.0       # unix time
    duration_s: float = 0.0


@dataclass
class Turn:
    """One policy call: what it cost and what the runtime made of the reply."""

    round: int
    action: str                   # "tool_call" | "answer" | "format_error" | "budget_exceeded"
    prompt_tokens: int | None = None
    cached_tokens: int | None = None      # prompt tokens served from a prefix/KV cache
    completion_tokens: int | None = None
    latency_s: float = 0.0
    note: str | None = None       # e.g. "second <tool_call> ignored"
    logprobs: list[float] | None = None


@dataclass
class Trajectory:
    request: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    images: dict[str, Reference] = field(default_factory=dict)   # IMG id -> what image_search found
    program: Program | None = None
    program_issues: list[str] = field(default_factory=list)
    termination: str = ""
    rounds: int = 0
    error: str | None = None
    policy: str | None = None
    started_at: float = 0.0
    duration_s: float = 0.0

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images"] = {k: v.to_dict() for k, v in self.images.items()}
        d["program"] = self.program.to_dict() if self.program else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        d = dict(d)
        d["turns"] = [Turn(**t) for t in d.get("turns", [])]
        d["tool_calls"] = [ToolCall(**c) for c in d.get("tool_calls", [])]
        d["images"] = {k: Reference.from_dict(v) for k, v in (d.get("images") or {}).items()}
        d["program"] = Program.from_dict(d["program"]) if d.get("program") else None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    # -- exports ----------------------------------------------------------------------------
    def to_sft_record(self) -> dict[str, Any]:
        """The chat record used for SFT: every message, plus the image files the run retrieved.

        Images are listed in IMG id order, so `images[k]` is the k-th image the policy was
        shown an id for; records whose images were not downloaded list only those on disk.
        """
        images = [ref.local_path for _, ref in sorted(self.images.items()) if ref.local_path]
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in self.messages],
                "images": images}

    def to_result(self) -> dict[str, Any]:
        """The upstream `results.json` row for this run (without `id`/`prompt`, added by the caller)."""
        program = self.program or Program(gen_prompt="")
        return {
            "gen_prompt": program.gen_prompt,
            "reference_images": [r.to_dict() for r in program.references],
            "messages": self.messages,
            "termination": self.termination,
            "rounds": self.rounds,
            "error": self.error,
            "program_issues": self.program_issues,
            "tool_calls": [asdict(c) for c in self.tool_calls],
            "turns": [asdict(t) for t in self.turns],
            "policy": self.policy,
            "duration_s": round(self.duration_s, 3),
        }

    @property
    def ok(self) -> bool:
        """True when the run ended with a program a generator can render."""
        return self.termination == ANSWER and self.program is not None and bool(self.program.gen_prompt.strip())
