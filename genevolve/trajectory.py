"""What one agent run did, turn by turn, as a plain record that round-trips through JSON.

One schema serves inference, data and training: a trajectory keeps the conversation exactly as the
policy saw and wrote it, each turn's tokens when the policy knows them (so a trainer rebuilds the
exact sequence without re-tokenising text), the answer as written next to the program after the
runtime's repairs, and every repair as a structured issue. `Trajectory.from_dict` reads every row
this project writes: trajectories, result rows of `genevolve run` (upstream results.json fields),
and rows of earlier schema versions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Callable, Sequence

from .program import Program, ProgramIssue, Reference

# Version 1: no schema_version field, program_issues as "kind: detail" strings, no token fields.
SCHEMA_VERSION = 2


class Termination(StrEnum):
    """How a run ended."""

    ANSWER = "answer"                          # the policy gave an <answer> that parsed
    MAX_ROUNDS = "max_rounds"                  # the round budget ran out with no answer
    MAX_ROUNDS_REACHED = "max_rounds_reached"  # the same, spelled as the released runtime records it
    NO_ANSWER = "no_answer"                    # released protocol: the final round had no readable action
    ERROR = "error"                            # the run could not go on (policy unreachable, crash, ...)


ANSWER, MAX_ROUNDS, NO_ANSWER, ERROR = Termination.ANSWER, Termination.MAX_ROUNDS, Termination.NO_ANSWER, \
    Termination.ERROR


class Action(StrEnum):
    """What the runtime made of one policy reply."""

    TOOL_CALL = "tool_call"                        # a tool was called (or its error observed)
    ANSWER = "answer"                              # the answer ended the run
    ANSWER_RETURNED = "answer_returned"            # an unusable answer went back to the policy
    FORMAT_ERROR = "format_error"                  # neither a call nor an answer could be read
    BUDGET_EXCEEDED = "budget_exceeded"            # a call after the tool budget was spent: not run
    TOOL_CALL_AFTER_FINAL = "tool_call_after_final"  # a call in the final round, where tools are forbidden


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
    """One policy call: what the policy was allowed, what it wrote, and what it cost."""

    round: int
    action: str                   # an Action
    mode: str = "any"             # what the turn allowed (policies.base.TURN_MODES)
    final: bool = False           # the final-step message preceded it
    message_index: int | None = None      # its assistant message in Trajectory.messages
    completion_ids: list[int] | None = None   # the tokens of the reply's content
    stop_ids: list[int] | None = None     # the end-of-turn token(s) the policy sampled after them
    prompt_ids: list[int] | None = None   # exactly what the model read, when recorded
    logprobs: list[float] | None = None
    logprob_source: str | None = None     # which distribution the log-probs are under (policies.base)
    finish_reason: str | None = None
    sampling: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None      # prompt tokens served from a prefix/KV cache
    completion_tokens: int | None = None
    latency_s: float = 0.0
    note: str | None = None       # e.g. "1 extra action(s) after the first ignored"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Turn":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Answer:
    """The answer exactly as the policy wrote it: the text inside <answer> and what it parsed to."""

    raw: str
    parsed: dict[str, Any] | None = None
    round: int | None = None


@dataclass
class TokenTurn:
    """One turn as token ids: what the model read and what it wrote (content, then end-of-turn)."""

    round: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float] | None            # one per completion id where known
    logprob_source: str | None


@dataclass
class Trajectory:
    request: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    images: dict[str, Reference] = field(default_factory=dict)   # IMG id -> what image_search found
    answer: Answer | None = None
    written_program: Program | None = None    # ids resolved, nothing repaired: what rewards score
    program: Program | None = None            # after the protocol's repairs: what gets rendered
    program_issues: list[ProgramIssue] = field(default_factory=list)
    termination: str = ""
    rounds: int = 0
    error: str | None = None
    policy: str | None = None
    protocol: str = "default"
    guide: str | None = None                  # per-request system-prompt text (VED teacher view)
    started_at: float = 0.0
    duration_s: float = 0.0
    schema_version: int = SCHEMA_VERSION

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images"] = {k: v.to_dict() for k, v in self.images.items()}
        d["program"] = self.program.to_dict() if self.program else None
        d["written_program"] = self.written_program.to_dict() if self.written_program else None
        d["program_issues"] = [i.to_dict() for i in self.program_issues]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        """A trajectory from its own dict, from a result row, or from a row of schema version 1.

        Raises ValueError naming the field when a field has the wrong shape.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a trajectory record must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        version = d.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {version!r}: this version of genevolve reads up to {SCHEMA_VERSION}")
        if "request" not in d:            # a result row: the request is `prompt` (or `question`)
            d["request"] = d.get("prompt") if isinstance(d.get("prompt"), str) else d.get("question") or ""
        if "program" not in d and ("gen_prompt" in d or "reference_images" in d):
            d["program"] = {"gen_prompt": d.get("gen_prompt") or "",
                            "reference_images": d.get("reference_images") or []}
            if not str(d["program"]["gen_prompt"]).strip() and not d["program"]["reference_images"]:
                d["program"] = None      # a row with no answer writes an empty program
        for name, kind in (("messages", list), ("turns", list), ("tool_calls", list), ("program_issues", list)):
            if d.get(name) is not None and not isinstance(d[name], kind):
                raise ValueError(f"field '{name}' must be a list, got {type(d[name]).__name__}")
        try:
            d["turns"] = [Turn.from_dict(t) for t in d.get("turns") or []]
            d["tool_calls"] = [ToolCall(**_known(ToolCall, c)) for c in d.get("tool_calls") or []]
            d["images"] = {k: Reference.from_dict(v) for k, v in (d.get("images") or {}).items()}
            d["program"] = Program.from_dict(d["program"]) if d.get("program") else None
            d["written_program"] = Program.from_dict(d["written_program"]) if d.get("written_program") else None
            d["program_issues"] = [ProgramIssue.from_any(i) for i in d.get("program_issues") or []]
            answer = d.get("answer")
            d["answer"] = Answer(**_known(Answer, answer)) if isinstance(answer, dict) else None
        except (TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"trajectory record: a field has the wrong shape ({exc})") from None
        d["schema_version"] = SCHEMA_VERSION
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_result(self) -> dict[str, Any]:
        """The upstream `results.json` fields for this run, then ours (without `id`/`prompt`)."""
        program = self.program or Program(gen_prompt="")
        d = self.to_dict()
        for name in ("request", "program"):
            del d[name]
        return {"gen_prompt": program.gen_prompt,
                "reference_images": [r.to_dict() for r in program.references],
                "messages": d.pop("messages"), "termination": d.pop("termination"), "rounds": d.pop("rounds"),
                "error": d.pop("error"), **d, "duration_s": round(self.duration_s, 3)}

    # -- what training reads ----------------------------------------------------------------
    def reward_program(self, repaired: bool = False) -> Program | None:
        """The program rewards are computed on: as the policy wrote it, unless `repaired`."""
        if repaired:
            return self.program
        return self.written_program if self.written_program is not None else self.program

    def completions(self) -> list[list[int] | None]:
        """The sampled token ids of each assistant message, in order (None where unknown)."""
        by_index = {t.message_index: t.completion_ids for t in self.turns if t.message_index is not None}
        return [by_index.get(i) for i, m in enumerate(self.messages) if m.get("role") == "assistant"]

    def token_turns(self, encode: Callable[[list[dict[str, Any]], Sequence[list[int] | None]], list[int]]
                    | None = None) -> list[TokenTurn]:
        """Each turn with known completion ids as (prompt ids, completion ids, log-probs).

        A turn's prompt ids are the recorded ones, or `encode(messages before the reply,
        completions so far)`, the policy's own rendering (`Policy.encode`). Raises ValueError
        when a turn has no recorded prompt ids and no `encode` is given.
        """
        completions = self.completions()
        out = []
        for turn in self.turns:
            if not turn.completion_ids or turn.message_index is None:
                continue
            prompt = turn.prompt_ids
            if prompt is None:
                if encode is None:
                    raise ValueError(f"round {turn.round}: no prompt ids recorded; pass the policy's encode")
                before = self.messages[:turn.message_index]
                n_before = sum(1 for m in before if m.get("role") == "assistant")
                prompt = encode(before, completions[:n_before])
            completion = list(turn.completion_ids) + list(turn.stop_ids or [])
            logprobs = turn.logprobs if turn.logprobs and len(turn.logprobs) == len(completion) else None
            out.append(TokenTurn(turn.round, list(prompt), completion, logprobs, turn.logprob_source))
        return out

    def token_sequence(self, encode: Callable[..., list[int]] | None = None
                       ) -> tuple[list[int], list[int], list[float]]:
        """The whole run as one token sequence: (ids, mask, log-probs).

        mask[i] is 1 where the policy wrote token i; logprobs[i] is its sampled log-prob (NaN where
        unknown or not written by the policy). Needs every turn's prompt to start with the previous
        turn's prompt and completion, which holds when a policy sends its replies back as the tokens
        it sampled; otherwise raises ValueError, and a trainer scores turn by turn (`token_turns`).
        """
        turns = self.token_turns(encode)
        if not turns:
            return [], [], []
        ids: list[int] = []
        mask: list[int] = []
        logprobs: list[float] = []
        for turn in turns:
            if turn.prompt_ids[:len(ids)] != ids:
                raise ValueError(f"round {turn.round}: the prompt does not extend the previous turn's tokens")
            new = turn.prompt_ids[len(ids):]
            ids += new + turn.completion_ids
            mask += [0] * len(new) + [1] * len(turn.completion_ids)
            logprobs += [math.nan] * len(new) + (list(turn.logprobs) if turn.logprobs
                                                 else [math.nan] * len(turn.completion_ids))
        return ids, mask, logprobs

    # -- exports ----------------------------------------------------------------------------
    def to_sft_record(self) -> dict[str, Any]:
        """The chat record used for SFT: every message, plus the image files the run retrieved.

        Images are listed in IMG id order, so `images[k]` is the k-th image the policy was
        shown an id for; records whose images were not downloaded list only those on disk.
        """
        images = [ref.local_path for _, ref in sorted(self.images.items()) if ref.local_path]
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in self.messages],
                "images": images}

    @property
    def ok(self) -> bool:
        """True when the run ended with a program a generator can render."""
        return self.termination == ANSWER and self.program is not None and bool(self.program.gen_prompt.strip())


def _known(cls: type, d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__} must be an object, got {type(d).__name__}")
    return {k: v for k, v in d.items() if k in cls.__dataclass_fields__}


def result_row(row_id: str, request: str | None, traj: Trajectory | None = None,
               data: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    """The result row of one request: input fields pass through, then upstream's fields (id, prompt,
    gen_prompt, reference_images, messages, termination, rounds, error), then the rest of the
    trajectory. Without a trajectory it is the row of a run that could not start (`error` says why).
    """
    data = data or {}
    if traj is None:
        prompt = request if request is not None else data.get("prompt") or data.get("question")
        return {**data, "id": row_id, "prompt": prompt, "gen_prompt": "", "reference_images": [],
                "messages": [], "termination": ERROR.value, "rounds": 0, "error": error,
                "schema_version": SCHEMA_VERSION}
    return {**data, "id": row_id, "prompt": request, **traj.to_result()}
