"""Summarisers: one best-versus-worst pair to a decision-guide bundle (train/experience.py).

`OfflineSummarizer` needs no model: it compares the two trajectories' recorded actions (tools,
skills, references, the written program, protocol errors) and the judges' diagnostics (the image
judge's four dimensions, the program judge's checks) and writes a rule for each difference from
a fixed set of action rules, or a "Standard:" rule restating what the better run did where the two
agree. It is deterministic, so a resumed run writes the same guides.

`EndpointSummarizer` asks any OpenAI-compatible model (temperature 0, a strict JSON schema in
`response_format`) and validates the reply with `validate_bundle`; a reply that fails goes back
with its problems listed, up to `attempts` times. A pair that never passes gets no bundle (the
trainer counts it) rather than a made-up one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .experience import (SLOT_KEYS, STANDARD, Profile, bundle_schema, entity_terms, profile,
                         reward_detail, validate_bundle)


@dataclass
class Side:
    """One trajectory of a pair with its reward record."""

    trajectory: Any
    reward: Any


@dataclass
class Summary:
    bundle: dict[str, Any] | None
    summarizer: str
    problems: list[str] = field(default_factory=list)
    attempts: int = 1


# ----------------------------------------------------------------------------- offline

DIM_FOCUS = {
    "visual_correctness": "match each subject's true appearance with a verified reference",
    "text_accuracy": "carry every required word into the prompt exactly",
    "faithfulness": "keep every requested element and constraint in the program",
    "aesthetics": "describe a finished, well-composed picture",
}


def _search_rules(b: Profile, w: Profile) -> tuple[list[str], str]:
    rules = []
    if b.searches and not w.searches:
        rules.append("Run one text search to pin down a subject the request only describes, then search for its images.")
    elif w.searches and not b.searches:
        rules.append("Skip text search when the request already names its subjects; go straight to image search.")
    if b.searched_first and w.searches and not w.searched_first:
        rules.append("Resolve the subject with text search first, then query images using the name it returned.")
    if b.image_searches > w.image_searches:
        rules.append("Call image_search once for every distinct subject that needs a reference before answering.")
    elif w.image_searches > b.image_searches and (w.budget_errors or not w.answered):
        rules.append("Stop searching once each subject has one fitting image; extra searches burn the call budget.")
    if w.repeats > b.repeats or w.distinct_image_queries < w.image_searches <= b.image_searches:
        rules.append("Never repeat a query; when results miss, rephrase it with a more distinctive descriptor.")
    if b.searches:
        standard = "resolve a described subject with one text search, then search images using the resolved name."
    elif b.image_searches:
        standard = "search images directly, one query per plainly named subject, without extra text searches."
    else:
        standard = "answer without searching only when no subject needs a visual reference."
    return rules, standard


def _knowledge_rules(b: Profile, w: Profile) -> tuple[list[str], str]:
    rules = []
    for skill in [s for s in b.skills if s not in w.skills][:2]:
        rules.append(f"Load the {skill} skill with query_knowledge before answering and apply its rules in the prompt.")
    if not b.skills and w.skills:
        rules.append("Skip query_knowledge when the request needs no special skill; spend that call on evidence.")
    elif b.skills and set(w.skills) - set(b.skills):
        rules.append("Load only the skills the request calls for; unrelated skill guidance adds nothing to the program.")
    if b.check_ok("text") and w.check_ok("text") is False and "text_rendering" not in b.skills:
        rules.append("Apply text-rendering rules whenever the picture must show words: exact spelling, placement and style.")
    if b.check_ok("count") and w.check_ok("count") is False and "quantity_counting" not in b.skills:
        rules.append("Apply counting rules whenever a number of objects is asked: state it and keep each object distinct.")
    if b.skills:
        standard = f"load {' and '.join(b.skills)} with query_knowledge before answering and follow its rules."
    else:
        standard = "rely on the built-in skill rules and call query_knowledge only for an unfamiliar requirement."
    return rules, standard


def _reference_rules(b: Profile, w: Profile) -> tuple[list[str], str]:
    rules = []
    b_ground, w_ground = b.check_ok("entity"), w.check_ok("entity")
    if w.answered and not w.references and b.references:
        rules.append("Attach at least one found image as a reference; without one the subject's look is guessed.")
    if b_ground and w_ground is False:
        rules.append("Choose the result whose title names the requested subject; reject look-alikes and loosely related pictures.")
    if "too_many_references" in str(w.failure or "") or "references_truncated" in w.issues:
        rules.append("Attach at most two references, one per distinct subject, listed in image-id order.")
    elif b.references < w.references and b_ground is not False:
        rules.append("Drop references that show no required subject; every extra image pulls the picture off target.")
    elif b.references > w.references and w.references:
        rules.append("Give each distinct subject its own reference so that none is drawn from memory alone.")
    if not rules and b.references and b.dims.get("visual_correctness", 0) > w.dims.get("visual_correctness", 1):
        rules.append("Check that each chosen reference shows the exact subject before answering; near matches fail identity checks.")
    if {"unknown_img_id", "duplicate_img_id"} & set(w.issues) and not {"unknown_img_id", "duplicate_img_id"} & set(b.issues):
        rules.append("Cite only image ids that a search returned, each once, exactly as they were listed.")
    n = b.references
    standard = (f"attach {n} reference{'s' if n != 1 else ''}, one per distinct subject, each checked against its subject."
                if n else "answer without references only when no subject depends on a found image.")
    return rules, standard


def _prompt_rules(b: Profile, w: Profile) -> tuple[list[str], str]:
    rules = []
    if b.check_ok("text") and w.check_ok("text") is False or (b.quotes and not w.quotes and w.check_ok("text") is False):
        rules.append("Copy every required word into the prompt exactly, inside double quotes, and say where it appears.")
    if b.check_ok("name") and w.check_ok("name") is False:
        rules.append("Write the resolved proper name of each hidden subject into the prompt, not only a generic description.")
    if b.check_ok("count") and w.check_ok("count") is False:
        rules.append("State the exact number of objects in the prompt and keep each one separate and visible.")
    if b.check_ok("relation") and w.check_ok("relation") is False:
        rules.append("Spell out where each object sits with explicit left, right, above or below wording.")
    if b.ordinals and not w.ordinals and w.references:
        rules.append("Bind each reference by ordinal, as in the first reference image, and say what to copy from it.")
    if w.answered and w.prompt_words < 8 <= b.prompt_words:
        rules.append("Write one or two full sentences stating subject, setting and every binding constraint of the request.")
    parts = ["name each subject"]
    if b.ordinals:
        parts.append("bind references by ordinal")
    if b.quotes:
        parts.append("quote required words")
    if b.count_words:
        parts.append("state counts")
    if b.relation_words:
        parts.append("state positions")
    standard = f"write one or two sentences that {', '.join(parts[:-1]) + ' and ' + parts[-1] if len(parts) > 1 else parts[0]}."
    return rules, standard


def _failure_rules(b: Profile, w: Profile) -> tuple[list[str], str]:
    rules = []
    if not w.answered and b.answered:
        rules.append("Answer before the round budget runs out; stop searching once every subject has a fitting reference.")
    if w.format_errors > b.format_errors:
        rules.append("Write exactly one tool call or one answer per turn inside the protocol tags, never bare text.")
    if w.budget_errors > b.budget_errors:
        rules.append("Count tool calls against the budget and answer in the final round instead of calling a tool.")
    bad = {"img_id_in_gen_prompt", "url_in_gen_prompt", "ordinal_out_of_range"}
    if bad & set(w.issues) and not bad & set(b.issues):
        rules.append("Keep image ids and links out of the prompt text; refer to references only by ordinal.")
    if w.returned_answers > b.returned_answers and not rules:
        rules.append("Check the answer JSON against the protocol before sending it so the runtime never returns it.")
    if "render_failed" in str(w.failure or "") or "empty_gen_prompt" in str(w.failure or ""):
        rules.append("Never leave the prompt empty; every answer needs a renderable description of the whole picture.")
    gaps = sorted(((b.dims.get(d, 0) - w.dims.get(d, 0), d) for d in DIM_FOCUS if d in b.dims and d in w.dims),
                  reverse=True)
    if gaps and gaps[0][0] > 0:
        dim = gaps[0][1]
        if dim == "faithfulness":
            rules.append("Keep every element the request asks for in the prompt; do not drop secondary objects or attributes.")
        elif dim == "aesthetics":
            rules.append("Describe lighting, framing and composition briefly so the picture reads as finished work.")
    standard = "re-read the request before answering and confirm each required element appears in the program."
    return rules, standard


SLOT_RULES = {"search_strategy": _search_rules, "knowledge_activation": _knowledge_rules,
              "reference_selection": _reference_rules, "prompt_construction": _prompt_rules,
              "failure_avoidance": _failure_rules}


class OfflineSummarizer:
    """Rules from the differences between two trajectories' recorded actions and diagnostics."""

    name = "offline"

    def __init__(self, max_rules: int = 3):
        self.max_rules = max_rules

    def bundle(self, best: Side, worst: Side) -> dict[str, Any]:
        b, w = profile(best.trajectory, best.reward), profile(worst.trajectory, worst.reward)
        bundle: dict[str, Any] = {}
        differing = []
        for key in SLOT_KEYS:
            rules, standard = SLOT_RULES[key](b, w)
            unique = list(dict.fromkeys(rules))[:self.max_rules]
            if unique:
                differing.append(key)
            bundle[key] = unique or [f"{STANDARD} {standard[0].upper()}{standard[1:]}"]
        bundle = {"focus": self._focus(b, w, differing), **bundle}
        return bundle

    @staticmethod
    def _focus(b: Profile, w: Profile, differing: list[str]) -> str:
        if not w.answered and b.answered:
            return "finish with a valid answer inside the budget"
        gaps = sorted(((b.dims.get(d, 0) - w.dims.get(d, 0), d) for d in DIM_FOCUS if d in b.dims and d in w.dims),
                      reverse=True)
        if gaps and gaps[0][0] > 0:
            return DIM_FOCUS[gaps[0][1]]
        if differing:
            return "improve " + " and ".join(k.replace("_", " ") for k in differing[:2])
        return "repeat the better run's plan step by step"

    async def summarise(self, request: str, best: Side, worst: Side, meta: dict[str, Any] | None = None) -> Summary:
        bundle = self.bundle(best, worst)
        terms = entity_terms(request, meta, [best.trajectory, worst.trajectory])
        problems = validate_bundle(bundle, terms=terms, max_rules=self.max_rules)
        return Summary(bundle if not problems else None, self.name, problems, attempts=1)

    async def aclose(self) -> None:
        pass


# ----------------------------------------------------------------------------- any chat model

SUMMARIZER_SYSTEM = """You study two attempts by an image-generation agent at the same request. The agent \
can call `search` (text facts), `image_search` (pictures it may attach as references) and \
`query_knowledge` (one of eight drawing skills), then answers with a generation prompt and at most two \
reference images. The better attempt earned a higher reward from judges who compared the rendered \
picture with a ground-truth image and checked the program.

Write a decision guide that would steer a later attempt at a similar request toward the better \
behaviour. Fill five slots with one to {max_rules} rules each:
- search_strategy: when to search text, what to look up or verify, when to stop searching;
- knowledge_activation: which skills to load, skip, or apply;
- reference_selection: which images to attach or reject, de-duplication, ordinal binding;
- prompt_construction: how to write the generation prompt;
- failure_avoidance: the mistakes that cost the worse attempt its reward.
Plus "focus": one short phrase naming the main lesson.

Every rule is one imperative sentence of 8 to 25 words about an action (start with a verb). Base each \
rule on a real difference between the attempts. Where both attempts behaved alike in a slot, write one \
rule that starts with "Standard:" and states what the better attempt did. Never name the request's \
subjects, people, places, brands, titles or quoted words: the guide must also fit other requests of \
the same kind. Reply with the JSON object only."""


def side_brief(side: Side, label: str) -> dict[str, Any]:
    """What the summariser model is shown of one trajectory."""
    traj, detail = side.trajectory, reward_detail(side.reward)
    program = traj.reward_program()
    return {"attempt": label, "reward": detail.get("reward"), "image_reward": detail.get("r_img"),
            "program_reward": detail.get("r_text"), "failure": detail.get("failure"),
            "image_judge": detail.get("image_scores"), "program_judge": detail.get("text_rationale"),
            "actions": [{"tool": c.name, "arguments": c.arguments, "error": c.error, "repeat": c.repeat}
                        for c in traj.tool_calls],
            "protocol_events": [str(t.action) for t in traj.turns if str(t.action) not in ("tool_call", "answer")],
            "answer": program.to_dict() if program is not None else None,
            "termination": str(traj.termination)}


class EndpointSummarizer:
    """A bundle from any OpenAI-compatible chat model, schema-checked and retried with feedback."""

    def __init__(self, base_url: str, model: str = "default", api_key: str = "", *, attempts: int = 3,
                 timeout_s: float = 90.0, max_tokens: int = 2048, max_rules: int = 3, retries: int = 3):
        from ..chat_client import ChatClient
        from ..httpretry import RetryPolicy

        self.name = f"endpoint:{model}"
        self.model, self.attempts, self.max_tokens, self.max_rules = model, max(1, attempts), max_tokens, max_rules
        self.client = ChatClient(base_url, api_key, label="summariser", timeout_s=timeout_s,
                                 retry=RetryPolicy(attempts=retries))

    async def summarise(self, request: str, best: Side, worst: Side, meta: dict[str, Any] | None = None) -> Summary:
        from ..chat_client import ChatError, chat_choice
        from ..jsonio import extract_json

        terms = entity_terms(request, meta, [best.trajectory, worst.trajectory])
        brief = {"request": request, "better": side_brief(best, "better"), "worse": side_brief(worst, "worse")}
        messages = [{"role": "system", "content": SUMMARIZER_SYSTEM.replace("{max_rules}", str(self.max_rules))},
                    {"role": "user", "content": json.dumps(brief, ensure_ascii=False, default=str)}]
        problems = ["no attempt"]
        for attempt in range(1, self.attempts + 1):
            body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens,
                    "response_format": {"type": "json_schema", "json_schema": {
                        "name": "decision_guide", "strict": True, "schema": bundle_schema(self.max_rules)}}}
            try:
                reply = await self.client.chat(body)
            except ChatError as exc:
                return Summary(None, self.name, [str(exc)], attempt)
            text = chat_choice(reply)["message"].get("content") or ""
            try:
                bundle: Any = json.loads(text)
            except ValueError:
                try:
                    bundle = extract_json(text)
                except ValueError:
                    bundle = None
            problems = (validate_bundle(bundle, terms=terms, max_rules=self.max_rules) if bundle is not None
                        else ["the reply is not a JSON object"])
            if not problems:
                return Summary(bundle, self.name, [], attempt)
            messages = messages + [{"role": "assistant", "content": text},
                                   {"role": "user", "content": "Fix these problems and reply with the whole JSON "
                                                               "object again: " + "; ".join(problems)}]
        return Summary(None, self.name, problems, self.attempts)

    async def aclose(self) -> None:
        await self.client.aclose()


def make_summarizer(kind: str, *, base_url: str | None = None, model: str = "default", api_key: str = "",
                    attempts: int = 3, timeout_s: float = 90.0, max_rules: int = 3) -> Any:
    """"offline" or "endpoint" (needs `base_url`)."""
    if kind == "offline":
        return OfflineSummarizer(max_rules=max_rules)
    if kind == "endpoint":
        if not base_url:
            raise ValueError("the endpoint summariser needs a base URL (ved_summarizer_url)")
        return EndpointSummarizer(base_url, model, api_key, attempts=attempts, timeout_s=timeout_s,
                                  max_rules=max_rules)
    raise ValueError(f"ved_summarizer must be offline or endpoint, not {kind!r}")
