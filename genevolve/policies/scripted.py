"""A policy that replays assistant turns written in advance: for tests, benchmarks and demos.

Turns may be plain strings or callables that receive the messages so far (to answer with ids
that depend on what the tools returned). Each request starts again from the first turn.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from .base import Policy, PolicyError, PolicyReply, Sampling, TurnContext

Turn = str | Callable[[list[dict[str, Any]]], str]


class ScriptedPolicy(Policy):
    name = "scripted"

    def __init__(self, turns: Sequence[Turn] | None = None, script_path: str | None = None,
                 delay_s: float = 0.0):
        if script_path:
            try:
                loaded = json.loads(Path(script_path).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise PolicyError(f"script {script_path}: {exc}") from None
            if not isinstance(loaded, list) or not all(isinstance(t, str) for t in loaded):
                raise PolicyError(f"script {script_path}: must be a JSON list of assistant turns (strings)")
            turns = loaded
        if not turns:
            raise PolicyError("a scripted policy needs at least one turn")
        self.turns = list(turns)
        self.delay_s = delay_s

    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling,
                   turn: TurnContext | None = None) -> PolicyReply:
        # The position in the script is the number of assistant turns already in this conversation.
        index = sum(1 for m in messages if m["role"] == "assistant")
        if index >= len(self.turns):
            raise PolicyError(f"the script has {len(self.turns)} turns; turn {index + 1} was asked for")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        turn = self.turns[index]
        text = turn(messages) if callable(turn) else turn
        return PolicyReply(text=text, completion_tokens=len(text.split()), finish_reason="stop")
