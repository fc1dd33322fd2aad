"""The agent loop: the policy thinks, calls one tool per turn, and ends with a program.

Budgets follow the released runtime: 10 tool calls and 11 rounds, the last round preceded by a
message that forbids tools and asks for the answer. A policy may ask for a smaller tool budget (a
small local model affords fewer calls). A returned answer (one that is unusable as written goes
back to the policy once, with the reason) adds a round, so the budget of a policy that never
answers is the protocol's exactly. Before each policy call the agent tells the policy what the
turn may do (`TurnContext`); the trajectory records what the policy wrote, token for token when
the policy knows its tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import protocol
from .answer import AnswerRules, resolve_answer
from .jsonio import clean_json, clean_text
from .limits import MAX_OBSERVATION_CHARS
from .policies.base import (ANSWER_ONLY, ANY, IMAGE_SEARCH_ONLY, TOOLS_ONLY, Policy, PolicyError, Sampling,
                            TurnContext, require_tokens)
from .program import unusable_issues
from .tools.base import Tool, ToolArgumentError, ToolContext, ToolResult
from .released import FALLBACK_SYSTEM_NOTE, load_released_assets, parse_released_turn
from .trajectory import ANSWER, ERROR, MAX_ROUNDS, NO_ANSWER, Action, Answer, Termination, ToolCall, Trajectory, Turn

# Observations longer than MAX_OBSERVATION_CHARS (genevolve/limits.py) are cut before they reach the
# policy (the record keeps the cut too). The released runtime cuts nothing; this only keeps a hostile
# backend from filling memory.
RELEASED_OBSERVATION_CHARS = 1_000_000

# Called as the run advances, for live progress views: ("turn", trajectory, Turn) after each policy
# reply is parsed, ("tool_call", trajectory, ToolCall) after each tool call finishes.
ProgressHook = Callable[[str, Trajectory, Any], None]


@dataclass(frozen=True)
class ProtocolMode:
    """How the runtime treats what the policy writes.

    default: replies are read leniently, answers are repaired where the intent is clear (named steps
    in `answer.REPAIRS`) and an answer still unusable goes back to the policy once.
    strict: the same reading, but nothing is repaired or returned, so the record shows the policy's
    own output (evaluations that must not flatter a policy).
    released: the loop of the released GenEvolve runtime, which its checkpoint was trained with: the
    answer wins over a tool call, JSON is read strictly, replies are stored stripped, a tool call in
    the final round still runs, there is no tool budget beyond the rounds, repeated ids are kept,
    nothing is repaired, observations use its layouts, and its texts are read from the user's copy
    (`released.load_released_assets`).
    """

    name: str
    repairs: tuple[str, ...]
    answer_retries: int
    released: bool = False


PROTOCOL_MODES = {
    "default": ProtocolMode("default", AnswerRules().repairs, 1),
    "strict": ProtocolMode("strict", (), 0),
    "released": ProtocolMode("released", (), 0, released=True),
}


@dataclass
class AgentConfig:
    # None: the policy's own budget (a small local model affords fewer calls), else the protocol's.
    max_tool_calls: int | None = None
    # None: the tool calls and one for the answer; each returned answer adds one.
    max_rounds: int | None = None
    max_references: int = protocol.MAX_REFERENCES
    sampling: Sampling = field(default_factory=Sampling)
    tool_timeout_s: float = 120.0
    protocol: str = "default"               # a key of PROTOCOL_MODES
    # Times an answer whose program is unusable as written (an ordinal past its references, an
    # IMG id or URL in gen_prompt, an empty gen_prompt) goes back to the policy with the reason.
    # None: the protocol mode's.
    answer_retries: int | None = None
    repairs: tuple[str, ...] | None = None  # repair steps to run; None: the protocol mode's
    # A policy must call image_search before it may answer (enforced by constrained policies).
    require_image_search: bool = True
    # --protocol released: a copy of the upstream repository to read its texts from (None: ours).
    released_assets: str | None = None

    def mode(self) -> ProtocolMode:
        if self.protocol not in PROTOCOL_MODES:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_MODES)}, not {self.protocol!r}")
        return PROTOCOL_MODES[self.protocol]


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
        self.mode = mode = self.config.mode()
        self.answer_retries = mode.answer_retries if self.config.answer_retries is None else self.config.answer_retries
        self.answer_rules = AnswerRules(max_references=self.config.max_references,
                                        repairs=mode.repairs if self.config.repairs is None else
                                        tuple(self.config.repairs),
                                        drop_duplicates=not mode.released, accept_bare_ids=not mode.released)
        self.assets = load_released_assets(self.config.released_assets) if mode.released else None
        self.max_tool_calls = (self.config.max_tool_calls or getattr(policy, "tool_call_budget", None)
                               or protocol.MAX_TOOL_CALLS)
        self.max_rounds = self.config.max_rounds or self.max_tool_calls + 1
        # A constrained policy may cap argument lists and counts; the prompt shows what it admits.
        schemas = policy.set_tools([t.schema() for t in tools], max_tool_calls=self.max_tool_calls)
        self.system_prompt = protocol.build_system_prompt(
            schemas, max_tool_calls=self.max_tool_calls, max_references=self.config.max_references,
            inline_skills=getattr(policy, "inline_skills", False))
        self.final_step_message = protocol.FINAL_STEP_MESSAGE
        if self.assets is not None:
            self.system_prompt = self.assets.system_prompt or self.system_prompt + FALLBACK_SYSTEM_NOTE
            self.final_step_message = self.assets.final_step_message

    # -- public API ---------------------------------------------------------------------------
    async def run(self, request: str, guide: str | None = None) -> Trajectory:
        """One request to a trajectory. `guide` is per-request system-prompt text (a decision
        guide) placed after the prompt's cacheable prefix."""
        traj = Trajectory(request=request, policy=getattr(self.policy, "name", None), started_at=time.time(),
                          protocol=self.config.protocol, guide=guide or None)
        ctx = ToolContext(request=request,
                          observation_chars=getattr(self.policy, "observation_chars", None) or MAX_OBSERVATION_CHARS)
        if self.assets is not None:     # the released runtime shows observations whole
            ctx.layout, ctx.skill_texts = "released", self.assets.skill_texts
            ctx.observation_chars = RELEASED_OBSERVATION_CHARS
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

    def run_sync(self, request: str, guide: str | None = None) -> Trajectory:
        return asyncio.run(self.run(request, guide))

    async def aclose(self) -> None:
        for tool in self.tools.values():
            await tool.aclose()
        await self.policy.aclose()

    # -- the loop -----------------------------------------------------------------------------
    async def _loop(self, traj: Trajectory, ctx: ToolContext) -> None:
        released = self.mode.released
        if not traj.request.strip():
            raise ValueError("the request is empty")
        traj.messages = [{"role": "system", "content": protocol.with_guide(self.system_prompt, traj.guide)},
                         {"role": "user", "content": traj.request}]
        cache: dict[str, ToolResult] | None = None if released else {}
        retries_left = self.answer_retries
        max_rounds = self.max_rounds            # grows by one for each returned answer
        rnd = 0
        while rnd < max_rounds:
            rnd += 1
            traj.rounds = rnd
            final = rnd == max_rounds
            if final:
                traj.messages.append({"role": "user", "content": self.final_step_message})
            turn_ctx = self._turn_context(traj, ctx, final)
            turn = await self._policy_turn(traj, rnd, turn_ctx)
            reply = traj.messages[-1]["content"]
            parsed = parse_released_turn(reply) if released else protocol.parse_turn(reply)
            turn.note = "; ".join(parsed.notes) or None

            if parsed.kind == "answer":
                turn.action = Action.ANSWER
                traj.answer = Answer(raw=parsed.raw or "", parsed=parsed.answer, round=rnd)
                resolved = resolve_answer(parsed.answer, ctx.images.references, self.answer_rules)
                traj.written_program, traj.program, traj.program_issues = \
                    resolved.written, resolved.program, resolved.issues
                unusable = unusable_issues(resolved.issues)
                if unusable and retries_left > 0 and not final:
                    retries_left -= 1
                    max_rounds += 1
                    turn.action = Action.ANSWER_RETURNED
                    self._report("turn", traj, turn)
                    traj.messages.append({"role": "user",
                                          "content": protocol.answer_returned([str(i) for i in unusable])})
                    continue
                self._report("turn", traj, turn)
                traj.termination = ANSWER
                return
            if parsed.kind == "error":
                turn.action = Action.FORMAT_ERROR
                self._report("turn", traj, turn)
                if released and final:       # the released runtime ends here rather than after the loop
                    traj.termination, traj.error = NO_ANSWER, "no_answer_in_final_round"
                    return
                traj.messages.append({"role": "user", "content": self.assets.format_error_message if released
                                      else protocol.format_error(parsed.error or "")})
                continue
            if final and not released:
                turn.action = Action.TOOL_CALL_AFTER_FINAL   # tools were forbidden; nothing is run
                self._report("turn", traj, turn)
                break
            if not released and len(traj.tool_calls) >= self.max_tool_calls:
                turn.action = Action.BUDGET_EXCEEDED
                self._report("turn", traj, turn)
                msg = protocol.BUDGET_EXHAUSTED_MESSAGE.format(n=len(traj.tool_calls))
                traj.messages.append({"role": "user", "content": protocol.tool_response(msg)})
                continue
            turn.action = Action.TOOL_CALL_AFTER_FINAL if final else Action.TOOL_CALL
            self._report("turn", traj, turn)
            call = await self._call_tool(rnd, parsed.tool_name or "", parsed.arguments, ctx, cache)
            traj.tool_calls.append(call)
            traj.messages.append({"role": "user", "content": protocol.tool_response(call.observation)})
            self._report("tool_call", traj, call)
        if released:
            traj.termination = Termination.MAX_ROUNDS_REACHED
        else:
            traj.termination, traj.error = MAX_ROUNDS, "no answer within the round budget"

    def _turn_context(self, traj: Trajectory, ctx: ToolContext, final: bool) -> TurnContext:
        """What the next turn may do, from the run's state (never from message text)."""
        made = len(traj.tool_calls)
        searched_images = any(c.name == "image_search" for c in traj.tool_calls)
        if self.mode.released:       # rounds are its only budget, and it asks for nothing before answering
            return TurnContext(mode=ANSWER_ONLY if final else ANY, final=final,
                               image_ids=tuple(sorted(ctx.images.references)),
                               completions=tuple(traj.completions()))
        if final or made >= self.max_tool_calls:
            mode = ANSWER_ONLY
        elif searched_images or not self.config.require_image_search:
            mode = ANY
        else:        # the protocol asks for an image search before the answer
            mode = IMAGE_SEARCH_ONLY if made >= self.max_tool_calls - 1 else TOOLS_ONLY
        skills = frozenset(c.arguments.get("skill_name") for c in traj.tool_calls
                           if c.name == "query_knowledge" and c.error is None
                           and isinstance(c.arguments.get("skill_name"), str))
        return TurnContext(mode=mode, final=final, image_ids=tuple(sorted(ctx.images.references)),
                           loaded_skills=skills, tool_calls_left=max(self.max_tool_calls - made, 0),
                           completions=tuple(traj.completions()))

    async def _policy_turn(self, traj: Trajectory, rnd: int, turn_ctx: TurnContext) -> Turn:
        """One policy call; appends the reply to the messages and returns its Turn."""
        sampling = self.config.sampling
        started = time.perf_counter()
        reply = await self.policy.chat(traj.messages, sampling, turn_ctx)
        reply.text = clean_text(reply.text)      # a lone surrogate from a server must not reach the records
        if self.mode.released:
            reply.text = reply.text.strip()     # the released runtime stores replies stripped
        require_tokens(reply, sampling, f"policy {getattr(self.policy, 'name', '')}".strip())
        turn = Turn(round=rnd, action="", mode=turn_ctx.mode, final=turn_ctx.final,
                    message_index=len(traj.messages), completion_ids=reply.completion_ids,
                    stop_ids=reply.stop_ids,
                    prompt_ids=reply.prompt_ids if sampling.logprobs else None,
                    logprobs=reply.logprobs, logprob_source=reply.logprob_source if reply.logprobs else None,
                    finish_reason=reply.finish_reason, sampling=sampling.to_dict(),
                    prompt_tokens=reply.prompt_tokens, cached_tokens=reply.cached_tokens,
                    completion_tokens=reply.completion_tokens, latency_s=round(time.perf_counter() - started, 4))
        traj.turns.append(turn)
        traj.messages.append({"role": "assistant", "content": reply.text})
        return turn

    def _report(self, event: str, traj: Trajectory, obj: Any) -> None:
        if self.progress:
            self.progress(event, traj, obj)

    async def _call_tool(self, rnd: int, name: str, arguments: Any, ctx: ToolContext,
                         cache: dict[str, ToolResult] | None) -> ToolCall:
        """Run one tool call. `cache` answers an identical repeated call (None: every call runs)."""
        call = ToolCall(round=rnd, name=name, arguments=arguments if isinstance(arguments, dict) else
                        {"_raw": arguments}, started_at=time.time())
        t0 = time.perf_counter()
        released = ctx.layout == "released"
        tool = self.tools.get(name)
        if tool is None:
            call.error = f"unknown tool '{name}'"
            call.observation = (f"Unknown tool: {name}" if released else
                                f"Error: there is no tool named '{name}'. Tools: {', '.join(self.tools)}.")
            return call
        key = name + json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str)
        if cache is not None and key in cache:
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
            if released and result.error is not None:
                result.text = f"[tool error] {name}: {result.error}"
            if cache is not None and result.error is None:
                cache[key] = result
            call.observation = result.text
        text = call.observation
        if len(text) > ctx.observation_chars:
            text = text[:ctx.observation_chars] + f"\n…[cut: {len(call.observation)} characters in all]"
        call.observation, call.data = clean_text(text), clean_json(result.data)
        call.error = clean_text(result.error) if result.error else None
        call.duration_s = round(time.perf_counter() - t0, 4)
        return call
