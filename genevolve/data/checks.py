"""Checks and audit of teacher trajectories, before anything becomes training data.

Programmatic checks (each a small named function returning a reason or None, so a mode can drop or
add one): the tool loop is complete, the references resolve to files, ordinals fit the references
and no ids or URLs leaked into gen_prompt, the skills the recipe needs were loaded and their rules
show in the program, the hidden facts were found by a search before the answer and the program is
grounded, and the program states the request's constraints.

The audit scores the paper's six dimensions (1-5): prompt suitability, reference grounding, process
quality, skill integration, final-prompt faithfulness, supervised value. `offline_audit` derives them
from the checks and the record; `EndpointAuditor` asks any OpenAI-compatible judge with our own
rubric. An item is kept when every check passes and the audit clears `min_mean` with no dimension
under `min_each`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from ..program import check_gen_prompt
from .grounding import program_grounding
from .taxonomy import Recipe
from .writers import check_request

AUDIT_DIMENSIONS = ("prompt_suitability", "reference_grounding", "process_quality", "skill_integration",
                    "final_prompt_faithfulness", "supervised_value")
MIN_MEAN, MIN_EACH = 3.5, 2.0
# What shows that a skill's rule was applied in gen_prompt.
SKILL_EVIDENCE: dict[str, Callable[[Recipe, str], bool]] = {
    "text_rendering": lambda r, g: all(f'"{t}"' in g for t in r.texts),
    "quantity_counting": lambda r, g: bool(r.count) and re.search(rf"\b{r.count}\b", g) is not None,
    "spatial_layout": lambda r, g: all(w in g.lower() for w in (r.relation or {}) if w in ("left", "right"))
    and (("above" not in (r.relation or {})) or ("top" in g.lower() and "bottom" in g.lower())),
    "attribute_binding": lambda r, g: all((s.colour or "") in g.lower() for s in r.subjects),
    "anatomy_body_coherence": lambda r, g: re.search(r"anatom|arms|legs|fingers|joints|pose", g, re.I) is not None,
    "aesthetic_drawing": lambda r, g: r.lighting is None or re.search(
        r"sunset|night|moon|neon|dramatic|moody|soft|diffused|warm|cold|wintry|light", g, re.I) is not None,
    "creative_drawing": lambda r, g: r.style is None or r.style.split()[0] in g.lower()
    or re.search(r"watercolou?r|oil|cartoon|sketch|pencil|pop-art|screen print|sepia|noir|black-and-white", g, re.I)
    is not None,
    "physical_material_consistency": lambda r, g: r.material is None or r.material.split()[-1] in g.lower(),
}


def _actions(traj: Any) -> list[str]:
    return [getattr(t, "action", "") for t in traj.turns]


def _program(traj: Any) -> Any:
    return getattr(traj, "written_program", None) or traj.program


def check_loop(recipe: Recipe, traj: Any, notes: dict[str, Any]) -> str | None:
    if traj.termination != "answer" or _program(traj) is None:
        return f"incomplete tool loop (termination {traj.termination or 'none'})"
    if any(a in ("format_error", "budget_exceeded", "tool_call_after_final") for a in _actions(traj)):
        return "protocol slips in the loop: " + ", ".join(a for a in _actions(traj) if a not in ("tool_call", "answer"))
    if any(not c.observation for c in traj.tool_calls):
        return "a tool call has no observation"
    return None


def check_references(recipe: Recipe, traj: Any, notes: dict[str, Any]) -> str | None:
    program = _program(traj)
    if not program.references:
        return "the program has no reference image"
    missing = [r.img_id for r in program.references
               if not (r.local_path and Path(r.local_path).is_file()) and not r.url]
    return f"references do not resolve to files: {missing}" if missing else None


def check_program_text(recipe: Recipe, traj: Any, notes: dict[str, Any]) -> str | None:
    program = _program(traj)
    issues = check_gen_prompt(program.gen_prompt, len(program.references))
    return "gen_prompt problems: " + "; ".join(issues) if issues else None


def check_skills(recipe: Recipe, traj: Any, notes: dict[str, Any]) -> str | None:
    loaded = {c.arguments.get("skill_name") for c in traj.tool_calls if c.name == "query_knowledge"}
    inline = notes.get("inline_skills", False)
    missing = [s for s in recipe.skills if s not in loaded] if not inline else []
    g = _program(traj).gen_prompt
    unused = [s for s in recipe.skills if not SKILL_EVIDENCE[s](recipe, g)]
    problems = ([f"skills not loaded: {missing}"] if missing else []) + ([f"skills not applied: {unused}"] if unused else [])
    return "; ".join(problems) or None


def check_grounding(recipe: Recipe, traj: Any, notes: dict[str, Any]) -> str | None:
    if recipe.hidden:
        answer_round = next((t.round for t in traj.turns if getattr(t, "action", "") == "answer"), 10 ** 6)
        names = [recipe.hidden.answer, *recipe.hidden.aliases]
        found = any(c.name == "search" and c.round < answer_round and any(
            n and re.search(rf"\b{re.escape(n)}\b", c.observation, re.IGNORECASE) for n in names)
            for c in traj.tool_calls)
        if not found:
            return f"no search observation names the hidden answer {recipe.hidden.answer!r}"
    program = _program(traj)
    grounding = program_grounding({"recipe": recipe.to_dict()}, program.to_dict(),
                                  {k: v.to_dict() for k, v in traj.images.items()})
    if not grounding["grounded"]:
        lost = [s["noun"] for s in grounding["subjects"] if not s["found"]]
        names = [t for t in grounding["names"]["required"] if t not in grounding["names"]["present"]]
        return f"not grounded: no reference for {lost}" + (f", names missing {names}" if names else "")
    return None


def check_constraints(recipe: Recipe, traj: Any, notes: dict[str, Any]) -> str | None:
    g = _program(traj).gen_prompt
    missing = [f"text {t!r}" for t in recipe.texts if t not in g]
    if recipe.count and not re.search(rf"\b{recipe.count}\b", g):
        missing.append(f"count {recipe.count}")
    for s in recipe.subjects:
        if s.position and s.position not in g.lower():
            missing.append(f"position {s.position}")
    return "program misses " + ", ".join(missing) if missing else None


CHECKS: dict[str, Callable[[Recipe, Any, dict[str, Any]], str | None]] = {
    "complete_loop": check_loop, "references_resolve": check_references, "program_text": check_program_text,
    "skills": check_skills, "grounded": check_grounding, "constraints": check_constraints,
}


def run_checks(recipe: Recipe, traj: Any, notes: dict[str, Any] | None = None,
               names: tuple[str, ...] | None = None) -> dict[str, str | None]:
    """Name -> reason it failed (None: passed). Later checks are skipped once the loop is incomplete."""
    notes = notes or {}
    out: dict[str, str | None] = {}
    for name, check in CHECKS.items():
        if names is not None and name not in names:
            continue
        if name != "complete_loop" and out.get("complete_loop"):
            out[name] = "skipped: incomplete loop"
            continue
        out[name] = check(recipe, traj, notes)
    return out


# ----------------------------------------------------------------------------- the audit

def offline_audit(recipe: Recipe, request: str, traj: Any, checks: dict[str, str | None],
                  notes: dict[str, Any] | None = None) -> dict[str, float]:
    """The six dimensions from what the checks and the record show (1 worst, 5 best)."""
    notes = notes or {}
    failed = {k for k, v in checks.items() if v}
    actions = _actions(traj)
    calls = traj.tool_calls
    repeats = sum(1 for c in calls if getattr(c, "repeat", False))
    errors = sum(1 for c in calls if c.error)
    mistakes = len(notes.get("mistakes", []))
    scores = {
        "prompt_suitability": 5.0 if not check_request(request, recipe) else 2.0,
        "reference_grounding": 1.0 if "grounded" in failed or "references_resolve" in failed else 5.0,
        "process_quality": max(1.0, 5.0 - repeats - errors - 0.5 * sum(a != "tool_call" and a != "answer"
                                                                     for a in actions)
                               - (1.0 if "complete_loop" in failed else 0.0) - 0.5 * mistakes),
        "skill_integration": 5.0 if "skills" not in failed else (3.0 if recipe.skills else 5.0),
        "final_prompt_faithfulness": 5.0 - 2.0 * ("constraints" in failed) - 2.0 * ("program_text" in failed),
        "supervised_value": min(5.0, 3.0 + (1.0 if recipe.hidden else 0.0) + (0.5 if recipe.skills else 0.0)
                                + (0.5 if mistakes else 0.0)),
    }
    if "complete_loop" in failed:
        scores = {k: min(v, 1.0) for k, v in scores.items()}
    return {k: round(max(1.0, v), 2) for k, v in scores.items()}


def audit_passes(scores: dict[str, float], min_mean: float = MIN_MEAN, min_each: float = MIN_EACH) -> str | None:
    values = [float(scores[d]) for d in AUDIT_DIMENSIONS]
    if min(values) < min_each:
        low = [d for d in AUDIT_DIMENSIONS if float(scores[d]) < min_each]
        return f"audit: {', '.join(low)} under {min_each}"
    if sum(values) / len(values) < min_mean:
        return f"audit: mean {sum(values) / len(values):.2f} under {min_mean}"
    return None


AUDIT_SYSTEM = """You audit one training trajectory of an image-generation agent. The agent reads a \
request, calls tools (search for facts, image_search for reference images, query_knowledge for \
generation skills) and ends with a program: a generation prompt plus reference images named by ordinal.
Score six dimensions from 1 (unusable) to 5 (exemplary):
- prompt_suitability: the request is natural, checkable in a picture, and needs the tools it got;
- reference_grounding: the chosen references show what the request needs (judge by their titles);
- process_quality: each call has a purpose, failures are noticed and corrected, nothing is repeated;
- skill_integration: the skills the request needs were consulted and their rules show in the prompt;
- final_prompt_faithfulness: the prompt states every constraint and fact, and nothing false;
- supervised_value: how much a student learns from imitating this trajectory.
Reply with one JSON object with those six keys (numbers) and a short "rationale"."""


def compact_trajectory(traj: Any, limit: int = 400) -> str:
    """The trajectory as the auditor reads it: thoughts, calls, observation heads, the answer."""
    lines = []
    for m in traj.messages[1:]:
        text = m["content"]
        if m["role"] == "user" and text.startswith("<tool_response>"):
            text = text[:limit] + (" …" if len(text) > limit else "")
        lines.append(f"[{m['role']}] {text}")
    return "\n".join(lines)


class EndpointAuditor:
    """The six-dimension audit by a judge model behind any OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, model: str, api_key: str = "", *, attempts: int = 3,
                 rpm: float | None = None, timeout_s: float = 300.0, retries: int = 4):
        from ..judges.vlm_client import Endpoint, VLMClient

        self.name = f"endpoint:{model}"
        self.attempts = attempts
        self.client = VLMClient(Endpoint(base_url.rstrip("/"), model, api_key), timeout_s=timeout_s,
                                max_tokens=1024, rpm=rpm, retries=retries, backoff_s=0.2)

    @staticmethod
    def parse(reply: str) -> dict[str, float]:
        from ..jsonio import extract_json

        obj = extract_json(reply)
        out = {}
        for d in AUDIT_DIMENSIONS:
            try:
                value = float(obj[d])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"the audit reply lacks a number for {d!r}") from None
            if not 1.0 <= value <= 5.0:
                raise ValueError(f"{d} = {value} is outside 1-5")
            out[d] = value
        return out

    async def audit(self, recipe: Recipe, request: str, traj: Any) -> dict[str, float]:
        from ..judges.vlm_client import ask_until_valid

        brief = {"category": recipe.category, "hidden_answer": recipe.hidden.answer if recipe.hidden else None,
                 "required_texts": recipe.texts, "count": recipe.count, "relation": recipe.relation,
                 "skills_expected": recipe.skills}
        messages = [{"role": "system", "content": AUDIT_SYSTEM},
                    {"role": "user", "content": f"Recipe facts: {json.dumps(brief, ensure_ascii=False)}\n\n"
                                                f"Request: {request}\n\nTrajectory:\n{compact_trajectory(traj)}"}]
        scores, _ = await ask_until_valid(self.client, messages, self.parse, self.attempts)
        return scores

    async def aclose(self) -> None:
        await self.client.aclose()
