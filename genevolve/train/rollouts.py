"""Rollouts: K ordinary agent runs per request, all at once, through one batching policy.

A rollout is `Agent.run(request)`, exactly as at inference (same tools, budgets, parser, answer
rules and grammar), with `Sampling.logprobs` on so that each turn records its prompt ids,
completion ids and log-probs. Each run gets its own seed, derived from (seed, step, request, k),
so a resumed run samples what an uninterrupted one would have.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..agent import Agent, AgentConfig
from ..jsonio import jsonl_lines
from ..policies.base import Sampling


def rollout_seed(seed: int, step: int, request_index: int, k: int) -> int:
    text = f"{seed}:{step}:{request_index}:{k}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:6], "big")


@dataclass
class Rollout:
    row: dict[str, Any]            # the pool row (id, question, gt_image, meta, ...)
    group: int                     # index of its request in the step
    k: int                         # its index in the group
    trajectory: Any                # genevolve.trajectory.Trajectory
    guide: str | None = None


def request_of(row: dict[str, Any]) -> str:
    text = row.get("question") or row.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"row {row.get('id')!r}: no 'question' or 'prompt' text")
    return text


async def collect(policy: Any, tools: list[Any], rows: list[dict[str, Any]], *, group_size: int,
                  sampling: Sampling, agent_config: AgentConfig | None = None, seed: int = 0, step: int = 0,
                  guides: list[str | None] | None = None) -> list[Rollout]:
    """`group_size` runs of each row, concurrently; returned grouped by row, in order."""
    base = agent_config or AgentConfig()
    jobs = []
    for g, row in enumerate(rows):
        request = request_of(row)
        for k in range(group_size):
            cfg = replace(base, sampling=replace(sampling, logprobs=True,
                                                 seed=rollout_seed(seed, step, g, k)))
            agent = Agent(policy, tools, cfg)      # tools are shared and closed by the caller
            guide = guides[g] if guides else None
            jobs.append((g, k, row, guide, agent.run(request, guide)))
    trajectories = await asyncio.gather(*(job[-1] for job in jobs))
    return [Rollout(row=row, group=g, k=k, trajectory=traj, guide=guide)
            for (g, k, row, guide, _), traj in zip(jobs, trajectories)]


def rollout_item_ids(rollouts: list[Rollout]) -> list[str]:
    """The id of each rollout in a step file and in guides.jsonl: the row's id for its first rollout,
    then id#2, id#3, ... (the viewer's numbering of repeated ids, so links match either way)."""
    seen: Counter = Counter()
    out = []
    for r in rollouts:
        base = str(r.row.get("id"))
        seen[base] += 1
        out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return out


def rollout_stats(rollouts: list[Rollout]) -> dict[str, Any]:
    """Answer rate, tool calls by type, skill calls, turns and tokens of a batch of rollouts."""
    n = max(len(rollouts), 1)
    tools: Counter = Counter()
    skills: Counter = Counter()
    terminations: Counter = Counter()
    actions: Counter = Counter()
    completion_tokens = 0
    for r in rollouts:
        t = r.trajectory
        terminations[str(t.termination)] += 1
        for call in t.tool_calls:
            tools[call.name] += 1
            if call.name == "query_knowledge" and isinstance(call.arguments, dict):
                skills[str(call.arguments.get("skill_name"))] += 1
        for turn in t.turns:
            actions[str(turn.action)] += 1
            completion_tokens += len(turn.completion_ids or []) + len(turn.stop_ids or [])
    answered = sum(1 for r in rollouts if r.trajectory.reward_program() is not None)
    return {"answer_rate": answered / n, "tool_calls": dict(tools), "tool_calls_per_run": sum(tools.values()) / n,
            "skill_calls": sum(skills.values()), "skills": dict(skills), "terminations": dict(terminations),
            "actions": dict(actions), "turns_per_run": sum(len(r.trajectory.turns) for r in rollouts) / n,
            "completion_tokens_per_run": completion_tokens / n}


def load_rows(path: str | os.PathLike | None) -> list[dict[str, Any]]:
    """Pool rows from JSON lines; `gt_image` is made absolute against the file's folder."""
    if path is None:
        raise ValueError("no pool given (a JSON lines file of rows with question, gt_image, meta)")
    p = Path(path)
    rows = []
    for n, line in enumerate(jsonl_lines(p.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question") or row.get("prompt"), str):
            raise ValueError(f"{p}:{n}: a row needs a 'question' (or 'prompt') string")
        gt = row.get("gt_image")
        if isinstance(gt, str) and not os.path.isabs(gt):
            row = {**row, "gt_image": str(p.parent / gt)}
        rows.append(row)
    return rows
