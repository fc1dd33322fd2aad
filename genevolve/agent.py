"""The agent loop: policy thinks, calls one tool per turn, ends with a program.

Budgets follow the released runtime (10 tool calls, 11 rounds) unless the policy asks for a smaller
one, plus one round per allowed answer retry; the last round is preceded by a message that forbids
tools and asks for the answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import protocol
from .program import (IMG_ID_MENTION_RE, IMG_ID_RE, Program, Reference, check_gen_prompt, ids_to_ordinals,
                      renumber_ordinals, unusable_issues)
from .policies.base import Policy, PolicyError, Sampling
from .tools.base import Tool, ToolArgumentError, ToolContext, ToolResult
from .trajectory import ANSWER, ERROR, MAX_ROUNDS, ToolCall, Trajectory, Turn

# Observations longer than this are cut before they reach the policy (the record keeps the cut too).
MAX_OBSERVATION_CHARS = 12_000

# Called as the run advances, for live progress views: ("turn", trajectory, Turn) after each policy
# reply is parsed, ("tool_call", trajectory, ToolCall) after each tool call finishes.
ProgressHook = Callable[[str, Trajectory, Any], None]


@dataclass
class AgentConfig:
    # None: the policy's own budget (a small local model affords fewer calls), else the protocol's.
    max_tool_calls: int | None = None
    max_rounds: int | None = None       # None: the tool calls, one for the answer, and answer_retries
    max_references: int = protocol.MAX_REFERENCES
    sampling: Sampling = field(default_factory=Sampling)
    tool_timeout_s: float = 120.0
    # Times an answer whose program is unusable as written (an ordinal past its references, an
    # IMG id or URL in gen_prompt, an empty gen_prompt) goes back to the policy with the reason.
    answer_retries: int = 1


class Agent:
    def __init__(self, policy: Policy, tools: list[Tool], config: AgentConfig | None = None,
                 *, progress: ProgressHook | None = None):
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        self.policy = policy
        self.tools = {t.name: t for t in tools}
        self.config = config or AgentConfig()
        self.progress = progress
        self.max_tool_calls = (self.config.max_tool_calls or getattr(policy, "tool_call_budget", None)
                               or protocol.MAX_TOOL_CALLS)
        self.max_rounds = self.config.max_rounds or self.max_tool_calls + 1 + max(self.config.answer_retries, 0)
        # A constrained policy may cap argument lists and counts; the prompt shows what it admits.
        schemas = policy.set_tools([t.schema() for t in tools], max_tool_calls=self.max_tool_calls)
        self.system_prompt = protocol.build_system_prompt(
            schemas, max_tool_calls=self.max_tool_calls, max_references=self.config.max_references,
            inline_skills=getattr(policy, "inline_skills", False))

    # -- public API ---------------------------------------------------------------------------
    async def run(self, request: str) -> Trajectory:
        traj = Trajectory(request=request, policy=getattr(self.policy, "name", None), started_at=time.time())
        ctx = ToolContext(request=request,
                          observation_chars=getattr(self.policy, "observation_chars", None) or MAX_OBSERVATION_CHARS)
        t0 = time.perf_counter()
        try:
            await self._loop(traj, ctx)
        except PolicyError as exc:
            traj.termination, traj.error = ERROR, f"policy error: {exc}"
        except Exception as exc:            # a bug or a backend crash ends this run, not the batch
            traj.termination, traj.error = ERROR, f"{type(exc).__name__}: {exc}"
        finally:
            traj.images = dict(ctx.images.references)
            traj.duration_s = time.perf_counter() - t0
        return traj

    async def warm(self) -> None:
        """Prepare the policy for this agent's system prompt before the first request."""
        await self.policy.warm(self.system_prompt)

    def run_sync(self, request: str) -> Trajectory:
        return asyncio.run(self.run(request))

    async def aclose(self) -> None:
        for tool in self.tools.values():
            await tool.aclose()
        await self.policy.aclose()

    # -- the loop -----------------------------------------------------------------------------
    async def _loop(self, traj: Trajectory, ctx: ToolContext) -> None:
        cfg, max_rounds = self.config, self.max_rounds
        if not traj.request.strip():
            raise ValueError("the request is empty")
        traj.messages = [{"role": "system", "content": self.system_prompt},
                         {"role": "user", "content": traj.request}]
        cache: dict[str, ToolResult] = {}
        n_calls = 0
        answer_retries = cfg.answer_retries
        for rnd in range(1, max_rounds + 1):
            traj.rounds = rnd
            if rnd == max_rounds:
                traj.messages.append({"role": "user", "content": protocol.FINAL_STEP_MESSAGE})
            started = time.perf_counter()
            reply = await self.policy.chat(traj.messages, cfg.sampling)
            turn = Turn(round=rnd, action="", prompt_tokens=reply.prompt_tokens,
                        cached_tokens=reply.cached_tokens, completion_tokens=reply.completion_tokens,
                        latency_s=round(time.perf_counter() - started, 4), logprobs=reply.logprobs)
            traj.turns.append(turn)
            traj.messages.append({"role": "assistant", "content": reply.text})
            parsed = protocol.parse_turn(reply.text)
            turn.note = "; ".join(parsed.notes) or None
            turn.action = {"answer": "answer", "error": "format_error"}.get(parsed.kind, "tool_call")

            if parsed.kind == "answer":
                self._report("turn", traj, turn)
                traj.program, traj.program_issues = resolve_answer(parsed.answer, ctx, cfg.max_references)
                unusable = unusable_issues(traj.program_issues)
                if unusable and answer_retries > 0 and rnd < max_rounds:
                    answer_retries -= 1
                    turn.action = "answer_returned"
                    traj.messages.append({"role": "user", "content": protocol.answer_returned(unusable)})
                    continue
                traj.termination = ANSWER
                return
            if parsed.kind == "error":
                self._report("turn", traj, turn)
                traj.messages.append({"role": "user", "content": protocol.format_error(parsed.error or "")})
                continue
            if rnd == max_rounds:
                turn.action = "tool_call_after_final"   # tools were forbidden; nothing is run
                self._report("turn", traj, turn)
                break
            if n_calls >= self.max_tool_calls:
                turn.action = "budget_exceeded"
                self._report("turn", traj, turn)
                msg = protocol.BUDGET_EXHAUSTED_MESSAGE.format(n=n_calls)
                traj.messages.append({"role": "user", "content": protocol.tool_response(msg)})
                continue
            self._report("turn", traj, turn)
            n_calls += 1
            call = await self._call_tool(rnd, parsed.tool_name or "", parsed.arguments, ctx, cache)
            traj.tool_calls.append(call)
            traj.messages.append({"role": "user", "content": protocol.tool_response(call.observation)})
            self._report("tool_call", traj, call)
        traj.termination = MAX_ROUNDS
        traj.error = "no answer within the round budget"

    def _report(self, event: str, traj: Trajectory, obj: Any) -> None:
        if self.progress:
            self.progress(event, traj, obj)

    async def _call_tool(self, rnd: int, name: str, arguments: Any, ctx: ToolContext,
                         cache: dict[str, ToolResult]) -> ToolCall:
        call = ToolCall(round=rnd, name=name, arguments=arguments if isinstance(arguments, dict) else
                        {"_raw": arguments}, started_at=time.time())
        t0 = time.perf_counter()
        tool = self.tools.get(name)
        if tool is None:
            call.error = f"unknown tool '{name}'"
            call.observation = f"Error: there is no tool named '{name}'. Tools: {', '.join(self.tools)}."
            return call
        key = name + json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str)
        if key in cache:
            result, call.repeat = cache[key], True
            call.observation = f"{protocol.REPEAT_NOTE}\n{result.text}"
        else:
            try:
                result = await asyncio.wait_for(tool.call(arguments, ctx), self.config.tool_timeout_s)
            except ToolArgumentError as exc:
                result = ToolResult(text=f"Error: invalid arguments for {name}: {exc}", error=str(exc))
            except asyncio.TimeoutError:
                msg = f"{name} timed out after {self.config.tool_timeout_s:.0f} s"
                result = ToolResult(text=f"Error: {msg}.", error=msg)
            except Exception as exc:        # a failing backend is an observation; the run goes on
                result = ToolResult(text=f"Error: {name} failed: {exc}", error=f"{type(exc).__name__}: {exc}")
            if result.error is None:
                cache[key] = result
            call.observation = result.text
        text = call.observation
        if len(text) > ctx.observation_chars:
            text = text[:ctx.observation_chars] + f"\n…[cut: {len(call.observation)} characters in all]"
        call.observation, call.data, call.error = text, result.data, result.error
        call.duration_s = round(time.perf_counter() - t0, 4)
        return call



def _reference(img_id: str, ctx: ToolContext, note: str = "") -> Reference:
    found = ctx.images.references[img_id]
    return Reference(img_id=img_id, note=note, local_path=found.local_path, url=found.url,
                     title=found.title, page_url=found.page_url)


def resolve_answer(answer: dict[str, Any] | None, ctx: ToolContext, max_references: int
                   ) -> tuple[Program, list[str]]:
    """Turn the policy's answer JSON into a Program, recording every repair as an issue.

    Unknown or repeated ids are dropped, the rest sorted by id and capped at `max_references`;
    a found image that gen_prompt names by id joins the list when it fits; ids of references in
    gen_prompt become ordinals, and ordinals past the list are renumbered when they pair up with
    references nothing names.
    """
    answer = answer or {}
    issues: list[str] = []
    gen_prompt = answer.get("gen_prompt")
    if not isinstance(gen_prompt, str):
        issues.append(f"gen_prompt is not a string ({type(gen_prompt).__name__})")
        gen_prompt = "" if gen_prompt is None else json.dumps(gen_prompt, ensure_ascii=False)
    raw_refs = answer.get("reference_images", [])
    if not isinstance(raw_refs, list):
        issues.append("reference_images is not a list")
        raw_refs = []
    chosen: dict[str, Reference] = {}
    order: list[str] = []
    for item in raw_refs:
        if isinstance(item, str):           # a bare id instead of {"img_id": …}
            item = {"img_id": item}
        img_id = item.get("img_id") if isinstance(item, dict) else None
        if not isinstance(img_id, str) or not IMG_ID_RE.fullmatch(img_id.strip()):
            issues.append(f"malformed reference entry dropped: {item!r}"[:200])
            continue
        img_id = img_id.strip()
        if img_id not in ctx.images.references:
            issues.append(f"unknown_img_id: {img_id} dropped")
            continue
        if img_id in chosen:
            issues.append(f"duplicate_img_id: {img_id} dropped")
            continue
        note = item.get("note") if isinstance(item.get("note"), str) else ""
        chosen[img_id] = _reference(img_id, ctx, note)
        order.append(img_id)
    ordered = sorted(order)
    if ordered != order:
        issues.append(f"references_reordered: {order} -> {ordered}")
    if len(ordered) > max_references:
        issues.append(f"references_truncated: kept {ordered[:max_references]}, dropped {ordered[max_references:]}")
        ordered = ordered[:max_references]
    # An image the searches found but the list left out, named by id in gen_prompt ("the words from
    # IMG-002"): the policy meant to use it. It joins the list when there is room and it sorts
    # after every chosen id, so that no ordinal already in gen_prompt changes its meaning.
    for mention in IMG_ID_MENTION_RE.finditer(gen_prompt):
        img_id = f"IMG_{mention.group(1)}"
        if img_id in ctx.images.references and img_id not in chosen and len(ordered) < max_references \
                and all(img_id > i for i in ordered):
            chosen[img_id] = _reference(img_id, ctx)
            ordered.append(img_id)
            issues.append(f"reference_added: {img_id} named in gen_prompt")
    gen_prompt, replaced = ids_to_ordinals(gen_prompt.strip(), ordered)
    issues.extend(replaced)
    gen_prompt, renumbered = renumber_ordinals(gen_prompt, len(ordered))
    issues.extend(renumbered)
    program = Program(gen_prompt=gen_prompt, references=[chosen[i] for i in ordered])
    issues.extend(check_gen_prompt(program.gen_prompt, len(program.references)))
    return program, issues
