"""VED experience: the best-versus-worst pairs of a step, what each trajectory did, and the
decision-guide bundle a summariser makes of a pair.

A pair is the best and the worst rollout of one GRPO group, kept when their rewards differ by at
least `min_gap`; at most `max_pairs` a step, widest gaps first. A bundle fills five slots with
short imperative rules about actions (which tool, when, what to check, how to pick references,
how to write the prompt), never the request's subjects; where the two rollouts behaved alike on a
slot, its rule starts with "Standard:" and restates what the better one did. `validate_bundle` is
the one check both summarisers pass (train/summarizers.py), and `render_guide` is the text the
privileged teacher reads in the system prompt's guide slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..program import ordinals_in

# The five slots, in the order the teacher reads them: (key, heading).
SLOTS: tuple[tuple[str, str], ...] = (
    ("search_strategy", "Search strategy"),
    ("knowledge_activation", "Knowledge activation"),
    ("reference_selection", "Reference selection"),
    ("prompt_construction", "Prompt construction"),
    ("failure_avoidance", "Failure avoidance"),
)
SLOT_KEYS = tuple(k for k, _ in SLOTS)
STANDARD = "Standard:"
MIN_RULE_WORDS, MAX_RULE_WORDS = 5, 32
MAX_FOCUS_WORDS = 20

# Words a rule may use although they are capitalised in requests (tool and protocol vocabulary).
_ALLOWED = {"i", "a", "an", "the", "img", "standard", "use", "make", "draw", "show", "create", "generate",
            "render", "design", "paint", "picture", "image", "photo", "it", "this", "that", "for", "in", "on",
            "with", "and", "of", "to", "at", "by", "one", "two", "three"}
_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»]{1,80})[\"“”«»]")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
# Verbs a rule may open with after its optional "Standard:" (a cheap test of the imperative mood:
# a rule that opens with "The", "I", "It" or "This" describes instead of instructing).
_NOT_IMPERATIVE = {"the", "i", "it", "this", "that", "these", "those", "we", "you", "they", "he", "she", "a",
                   "an", "there", "best", "worst", "better", "worse", "trajectory", "attempt"}


# ----------------------------------------------------------------------------- pairs

@dataclass
class Pair:
    """The best and worst rollout of one group (indices into the step's rollouts)."""

    group: int
    best: int
    worst: int
    best_reward: float
    worst_reward: float

    @property
    def gap(self) -> float:
        return self.best_reward - self.worst_reward


@dataclass
class PairSelection:
    pairs: list[Pair] = field(default_factory=list)
    groups: int = 0
    below_gap: int = 0           # groups whose best and worst differ by less than min_gap
    protocol_failures: int = 0   # groups left out because the worst was a protocol failure
    over_cap: int = 0            # qualifying pairs past max_pairs


def reward_detail(reward: Any) -> dict[str, Any]:
    """A rollout's reward record as a dict (train.rewards.Reward, a dict, or a bare number)."""
    if hasattr(reward, "to_dict"):
        return reward.to_dict()
    if isinstance(reward, dict):
        return reward
    return {"reward": reward}


def select_pairs(groups: Iterable[int], rewards: list[Any], *, min_gap: float = 0.20, max_pairs: int = 8,
                 exclude_protocol_failures: bool = True) -> PairSelection:
    """Best and worst of each group by reward (None: a judge failure, left out); pairs with a gap
    of at least `min_gap`, widest first, at most `max_pairs`. Ties go to the earlier rollout."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = PairSelection(groups=len(members))
    kept = []
    for g, idx in members.items():
        scored = [(i, reward_detail(rewards[i]).get("reward")) for i in idx]
        scored = [(i, float(r)) for i, r in scored if r is not None]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda t: (t[1], -t[0]))
        worst = min(scored, key=lambda t: (t[1], t[0]))
        if best[0] == worst[0] or best[1] - worst[1] < min_gap - 1e-12:
            out.below_gap += 1
            continue
        if exclude_protocol_failures and reward_detail(rewards[worst[0]]).get("failure"):
            out.protocol_failures += 1
            continue
        kept.append(Pair(g, best[0], worst[0], best[1], worst[1]))
    kept.sort(key=lambda p: (-p.gap, p.group))
    out.pairs, out.over_cap = kept[:max_pairs], max(0, len(kept) - max_pairs)
    return out


# ----------------------------------------------------------------------------- what a rollout did

NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
RELATION_WORDS = ("left", "right", "above", "below", "behind", "in front", "beside", "between", "top", "bottom")


@dataclass
class Profile:
    """The recorded actions of one trajectory and its judges' diagnostics, with nothing of the
    request's content in it: what the offline summariser compares."""

    reward: float | None
    failure: str | None
    answered: bool
    searches: int
    image_searches: int
    distinct_image_queries: int
    skills: list[str]
    repeats: int
    tool_errors: int
    searched_first: bool              # a text search came before the first image search
    format_errors: int
    budget_errors: int                # calls past the budget or in the final round
    returned_answers: int             # answers the runtime sent back as unusable
    references: int
    ordinals: bool                    # gen_prompt binds references by ordinal
    prompt_words: int
    quotes: bool
    count_words: bool
    relation_words: bool
    issues: list[str]
    checks: dict[str, tuple[int, int]]    # check kind -> (passed, total), from the text judge
    dims: dict[str, float]                # image judge dimensions

    def check_ok(self, kind: str) -> bool | None:
        passed, total = self.checks.get(kind, (0, 0))
        return None if total == 0 else passed == total


def parse_checks(rationale: str | None) -> dict[str, tuple[int, int]]:
    """The offline program judge's "kind:name ok; kind:name missing" list, counted by kind."""
    out: dict[str, tuple[int, int]] = {}
    for part in (rationale or "").split("; "):
        name, _, status = part.strip().rpartition(" ")
        if status not in ("ok", "missing") or ":" not in name:
            continue
        kind = name.split(":", 1)[0]
        passed, total = out.get(kind, (0, 0))
        out[kind] = (passed + (status == "ok"), total + 1)
    return out


def profile(traj: Any, reward: Any) -> Profile:
    detail = reward_detail(reward)
    calls = list(traj.tool_calls)
    names = [c.name for c in calls]
    first_image = names.index("image_search") if "image_search" in names else None
    image_queries = {str((c.arguments or {}).get("query", "")).strip().lower() for c in calls
                     if c.name == "image_search"}
    actions = [str(t.action) for t in traj.turns]
    program = traj.reward_program()
    prompt = program.gen_prompt if program is not None else ""
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    scores = detail.get("image_scores") or {}
    return Profile(
        reward=detail.get("reward"), failure=detail.get("failure"),
        answered=program is not None and bool(prompt.strip()),
        searches=names.count("search"), image_searches=names.count("image_search"),
        distinct_image_queries=len(image_queries - {""}),
        skills=sorted({str((c.arguments or {}).get("skill_name")) for c in calls if c.name == "query_knowledge"}),
        repeats=sum(1 for c in calls if c.repeat), tool_errors=sum(1 for c in calls if c.error),
        searched_first="search" in names and (first_image is None or names.index("search") < first_image),
        format_errors=actions.count("format_error"),
        budget_errors=actions.count("budget_exceeded") + actions.count("tool_call_after_final"),
        returned_answers=actions.count("answer_returned"),
        references=len(program.references) if program is not None else 0,
        ordinals=bool(ordinals_in(prompt)), prompt_words=len(words), quotes='"' in prompt or "“" in prompt,
        count_words=any(w in NUMBER_WORDS or w.isdigit() for w in words),
        relation_words=any(r in " ".join(words) for r in RELATION_WORDS),
        issues=sorted({i.kind for i in traj.program_issues}),
        checks=parse_checks(detail.get("text_rationale")),
        dims={k: float(v) for k, v in scores.items() if isinstance(v, (int, float))})


# ----------------------------------------------------------------------------- entities

def entity_terms(request: str, meta: dict[str, Any] | None = None, trajectories: Iterable[Any] = ()) -> set[str]:
    """What a rule must not name: quoted text and capitalised words of the request (not at the start
    of a sentence), the subjects a row's recipe or meta names, and the capitalised words of the
    queries and reference titles the rollouts used. Lower-case phrases."""
    terms: set[str] = set()

    def add_text(text: str, sentence_starts: bool) -> None:
        quoted = [q.strip() for q in _QUOTED.findall(text)]
        terms.update(q.lower() for q in quoted if q)
        bare = _QUOTED.sub(" . ", text)
        for sentence in re.split(r"(?<=[.!?:;])\s+|\n+", bare):
            for n, m in enumerate(_WORD.finditer(sentence)):
                w = m.group(0)
                if (n == 0 and sentence_starts) or not w[0].isupper() or w.lower() in _ALLOWED or len(w) < 3:
                    continue
                terms.add(w.lower().strip("'’-"))

    add_text(request, True)
    for traj in trajectories:
        for call in getattr(traj, "tool_calls", []):
            for key in ("query", "queries"):
                value = (call.arguments or {}).get(key)
                for q in value if isinstance(value, list) else [value]:
                    if isinstance(q, str):
                        add_text(q, False)
        for ref in getattr(traj, "images", {}).values():
            # a title capitalises its first word whatever it is; later capitals are names
            add_text(re.sub(r"\s*\([^)]*\)$", "", getattr(ref, "title", "") or ""), True)
    meta = meta or {}
    for text in _meta_names(meta):
        text = text.strip().lower()
        if len(text) >= 3:
            terms.add(text)
    return {t for t in terms if t and t not in _ALLOWED}


def _meta_names(meta: dict[str, Any]) -> list[str]:
    names: list[str] = []
    entity = meta.get("entity")
    if isinstance(entity, str):
        names += entity.split(";")
    elif isinstance(entity, dict):
        names += [v for k, v in entity.items() if k in ("name", "label", "title", "canonical") and isinstance(v, str)]
    names += [t for t in meta.get("required_texts") or [] if isinstance(t, str)]
    recipe = meta.get("recipe")
    if isinstance(recipe, dict):
        for s in recipe.get("subjects") or []:
            if isinstance(s, dict):
                names += [s[k] for k in ("name", "noun", "plural", "visual_query") if isinstance(s.get(k), str)]
        names += [t for t in recipe.get("texts") or [] if isinstance(t, str)]
    return names


def named_entities(text: str, terms: set[str]) -> list[str]:
    """The forbidden terms a text mentions (whole words, case-insensitive)."""
    low = text.lower()
    return sorted(t for t in terms if re.search(rf"(?<![a-z0-9]){re.escape(t)}(?![a-z0-9])", low))


# ----------------------------------------------------------------------------- bundles

def validate_bundle(bundle: Any, *, terms: set[str] = frozenset(), max_rules: int = 3) -> list[str]:
    """Problems of a bundle, each naming its field; empty when the bundle is usable.

    A bundle is {"focus": str, <five slot keys>: [rule, ...]} and nothing else. Each rule is one
    imperative sentence of 5 to 32 words, optionally opened by "Standard:", that names none of
    `terms`; each slot holds 1 to `max_rules` rules.
    """
    if not isinstance(bundle, dict):
        return [f"the bundle must be a JSON object, not {type(bundle).__name__}"]
    problems = []
    expected = {"focus", *SLOT_KEYS}
    extra = sorted(set(bundle) - expected)
    if extra:
        problems.append(f"unknown field(s): {', '.join(extra)}")
    focus = bundle.get("focus")
    if not isinstance(focus, str) or not focus.strip():
        problems.append("focus: must be a non-empty string")
    else:
        if len(focus.split()) > MAX_FOCUS_WORDS:
            problems.append(f"focus: at most {MAX_FOCUS_WORDS} words")
        hits = named_entities(focus, terms)
        if hits:
            problems.append(f"focus: names the request's subject(s) {', '.join(hits)}")
    for key in SLOT_KEYS:
        rules = bundle.get(key)
        if not isinstance(rules, list) or not rules:
            problems.append(f"{key}: must be a non-empty list of rules")
            continue
        if len(rules) > max_rules:
            problems.append(f"{key}: at most {max_rules} rules")
        for n, rule in enumerate(rules):
            where = f"{key}[{n}]"
            if not isinstance(rule, str) or not rule.strip():
                problems.append(f"{where}: must be a non-empty string")
                continue
            body = rule.strip().removeprefix(STANDARD).strip()
            words = body.split()
            if not MIN_RULE_WORDS <= len(words) <= MAX_RULE_WORDS:
                problems.append(f"{where}: {len(words)} words (write {MIN_RULE_WORDS} to {MAX_RULE_WORDS})")
            if words and words[0].lower().strip(",.;:") in _NOT_IMPERATIVE:
                problems.append(f"{where}: start with a verb (an instruction), not '{words[0]}'")
            if "\n" in rule:
                problems.append(f"{where}: one line")
            hits = named_entities(rule, terms)
            if hits:
                problems.append(f"{where}: names the request's subject(s) {', '.join(hits)}")
    return problems


def render_guide(bundle: dict[str, Any]) -> str:
    """The guide text the teacher reads (the agent's guide slot adds the heading above it)."""
    lines = [f"Focus: {bundle['focus'].strip()}"]
    for key, heading in SLOTS:
        lines.append(f"{heading}:")
        lines += [f"- {rule.strip()}" for rule in bundle[key]]
    return "\n".join(lines)


def bundle_schema(max_rules: int = 3) -> dict[str, Any]:
    """The JSON schema of a bundle, for servers that enforce one (strict structured output)."""
    rules = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": max_rules}
    return {"type": "object", "additionalProperties": False, "required": ["focus", *SLOT_KEYS],
            "properties": {"focus": {"type": "string"}, **{k: rules for k in SLOT_KEYS}}}
