"""A scripted expert teacher: it knows each request's recipe and works the tools like a careful agent.

The expert is told, per request, the recipe the request was written from (`add(request, recipe)`):
what the request hides, which subjects need references, which skills apply. It never answers from
that knowledge alone. Each turn it reads the conversation (the real observations of the real tools),
decides the next step and writes it in the protocol's format:

1. resolve what the request hides with `search`, and only go on once an observation names the answer;
2. load the skills the request needs with `query_knowledge` and say which rule it will apply;
3. find one reference per subject with `image_search`, picking the result whose title shows it;
4. answer with a program composed from what the observations said: the resolved names, the chosen
   ids in sorted order, ordinals that match that order, and every constraint of the request.

For variety its thinking is drawn from several phrasings, and with probability `mistake_rate` it makes
one recoverable mistake first: it image-searches the clue itself (what a weak policy does), or
searches with a query too vague to settle anything, or asks the image search for a generic word. The
next turn notices from the observation that it did not help and corrects course. `notes(request)`
reports which assistant turns were such mistakes, so SFT can mask them from the loss.

The expert is deterministic: the request text seeds every choice, so a rerun writes the same turns.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from ..protocol import FINAL_STEP_MESSAGE, parse_turn
from .base import Policy, PolicyError, PolicyReply, Sampling

_RESULT_TITLE = re.compile(r"^\d+\. (.+)$", re.MULTILINE)
_IMAGE_LINE = re.compile(r"^\[(IMG_\d{3,})\] (.+)$", re.MULTILINE)
_KIND = re.compile(r"\s*\((?:emoji|photo|drawing|graphic|flat, \d+ px|[^)]*photo)\)$")

SKILL_NEEDS = {"text_rendering": "an exact text", "quantity_counting": "an exact count",
               "spatial_layout": "a fixed arrangement", "attribute_binding": "colours bound to the right objects",
               "anatomy_body_coherence": "a believable body and pose", "aesthetic_drawing": "a particular lighting",
               "creative_drawing": "a particular artistic style",
               "physical_material_consistency": "a convincing material"}
SKILL_RULE = {"text_rendering": "quote the text exactly and ask for bold, legible letters in a set place",
              "quantity_counting": "state the exact number and say no more and no fewer",
              "spatial_layout": "give every subject an explicit position",
              "attribute_binding": "tie each colour to its own object and position",
              "anatomy_body_coherence": "spell out the limb count and a plausible posture",
              "aesthetic_drawing": "name the light source and mood explicitly",
              "creative_drawing": "name the medium and keep the subject recognisable",
              "physical_material_consistency": "name the material and how it reflects light"}


def _clean_title(title: str) -> str:
    return _KIND.sub("", title).strip()


class ExpertPolicy(Policy):
    """See the module docstring. Works with `chat(messages, sampling)` and `chat(messages, sampling, turn)`."""

    name = "expert"

    def __init__(self, recipes: dict[str, Any] | None = None, *, mistake_rate: float = 0.3,
                 tool_call_budget: int | None = None, inline_skills: bool = False,
                 observation_chars: int | None = None, seed: int = 0):
        if not 0.0 <= float(mistake_rate) <= 1.0:
            raise ValueError(f"mistake_rate must be between 0 and 1, got {mistake_rate}")
        self.mistake_rate = float(mistake_rate)
        self.tool_call_budget = int(tool_call_budget) if tool_call_budget else None
        self.inline_skills = bool(inline_skills)
        self.observation_chars = int(observation_chars) if observation_chars else None
        self.seed = seed
        self.plans: dict[str, Any] = {}
        self._notes: dict[str, dict[str, Any]] = {}
        self._budget = self.tool_call_budget or 10
        for request, recipe in (recipes or {}).items():
            self.add(request, recipe)

    # -- the privileged side channel -----------------------------------------------------------
    def add(self, request: str, recipe: Any) -> None:
        """Tell the expert which recipe `request` was written from (a Recipe or its dict)."""
        from ..data.taxonomy import Recipe

        self.plans[_key(request)] = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)

    def notes(self, request: str) -> dict[str, Any]:
        """What the expert did on purpose: {"mistakes": [indices of assistant messages], "kinds": [...]}."""
        return self._notes.get(_key(request), {"mistakes": [], "kinds": []})

    def set_tools(self, schemas: list[dict[str, Any]], max_tool_calls: int | None = None) -> list[dict[str, Any]]:
        self._budget = max_tool_calls or self._budget
        self._tools = {s["name"] for s in schemas}
        return schemas

    # -- one turn ------------------------------------------------------------------------------
    async def chat(self, messages: list[dict[str, Any]], sampling: Sampling, turn: Any = None) -> PolicyReply:
        request = next((m["content"] for m in messages if m["role"] == "user"), "")
        recipe = self.plans.get(_key(request))
        if recipe is None:
            raise PolicyError("the expert policy has no recipe for this request (call ExpertPolicy.add first)")
        state = _State.read(messages, recipe, self._mistake_call(recipe, request))
        state.request = request
        n_assistant = sum(1 for m in messages if m["role"] == "assistant")
        rng = random.Random(f"{self.seed}:{_key(request)}:{n_assistant}")
        plan_rng = random.Random(f"{self.seed}:{_key(request)}")
        calls_left = getattr(turn, "tool_calls_left", None)
        if calls_left is None:
            calls_left = self._budget - state.n_calls
        must_answer = (bool(getattr(turn, "final", False)) or getattr(turn, "mode", "any") == "answer_only"
                       or (messages[-1]["role"] == "user" and messages[-1]["content"] == FINAL_STEP_MESSAGE)
                       or calls_left <= 0)
        text, mistake = self._next(recipe, state, rng, plan_rng, calls_left, must_answer)
        # The planned mistake is always the first call; it counts as one only if it did not help.
        planned = self._planned_mistake(recipe, random.Random(f"{self.seed}:{_key(request)}"))
        if mistake or (planned and state.calls and state.calls[0]["mistake"] and not state.calls[0]["helpful"]):
            self._notes[_key(request)] = {"mistakes": [0], "kinds": [planned]}
        elif state.calls and state.calls[0]["mistake"]:        # it found what was needed after all
            self._notes.pop(_key(request), None)
        return PolicyReply(text=text, completion_tokens=len(text.split()), finish_reason="stop")

    def _next(self, recipe: Any, st: "_State", rng: random.Random, plan_rng: random.Random, calls_left: int,
              must_answer: bool) -> tuple[str, str | None]:
        hidden = recipe.hidden
        needed = self._calls_needed(recipe, st)
        if must_answer or needed == 0:
            return self._answer(recipe, st, rng), None
        lead = st.reflection(rng)
        # one recoverable mistake, planned once per request, when the budget leaves room to correct it
        mistake = self._planned_mistake(recipe, plan_rng)
        if mistake and st.n_calls == 0 and calls_left > needed:
            return self._mistake(mistake, recipe, rng, st.request), mistake
        if hidden and not st.resolved:
            query, think = None, ""
            if hidden.query.lower() not in st.search_queries:
                query = hidden.query
                think = rng.choice([
                    f"The request describes {hidden.clue} without naming it, so I must find out what that is before "
                    "looking for any picture.",
                    f"I should pin down what '{hidden.clue}' refers to first; a text search will settle it.",
                    f"Before choosing images I need the name behind {hidden.clue}."])
            elif self._second_query(recipe).lower() not in st.search_queries and calls_left > needed - 1:
                query = self._second_query(recipe)
                think = rng.choice([f"That did not name it. I suspect {hidden.answer}; a search will confirm it.",
                                    f"No result settles it yet. Maybe it is {hidden.answer}; let me check."])
            if query:
                return _tool_call(_join(lead, think), "search", {"queries": [query]}), None
        if not self.inline_skills and "query_knowledge" in getattr(self, "_tools", {"query_knowledge"}):
            for skill in recipe.skills:
                if skill not in st.skills and calls_left > self._image_calls_needed(recipe, st):
                    think = rng.choice([f"The request needs {SKILL_NEEDS[skill]}; I will load the {skill} guidance.",
                                        f"{SKILL_NEEDS[skill].capitalize()} is part of the request, so the "
                                        f"{skill} skill applies."])
                    return _tool_call(_join(lead, think), "query_knowledge", {"skill_name": skill}), None
        for subject in recipe.subjects:
            if st.match(subject) is None and st.image_attempts(subject) < 2:
                query = subject.visual_query if st.image_attempts(subject) == 0 else self._second_image_query(subject)
                think = rng.choice([f"Now I need a reference that shows the {subject.noun}.",
                                    f"Next, a picture of the {subject.noun} to work from.",
                                    f"I will look for an image of the {subject.noun}."])
                return _tool_call(_join(lead, think), "image_search", {"query": query}), None
        return self._answer(recipe, st, rng), None

    def _planned_mistake(self, recipe: Any, rng: random.Random) -> str | None:
        if rng.random() >= self.mistake_rate:
            return None
        if recipe.hidden:
            return rng.choice(["clue_image_search", "vague_search"])
        return "needless_search"

    def _mistake_call(self, recipe: Any, request: str) -> tuple[str, dict[str, Any]] | None:
        """The (tool, arguments) of the planned mistake, if one is planned for this request."""
        kind = self._planned_mistake(recipe, random.Random(f"{self.seed}:{_key(request)}"))
        h = recipe.hidden
        if kind == "clue_image_search":
            return "image_search", {"query": _strip_article(h.query if recipe.task_family == "symbol_of_hidden"
                                                            else h.clue)}
        if kind == "vague_search":
            words = [w for w in re.findall(r"[A-Za-z]+", h.clue) if len(w) > 3][-2:]
            return "search", {"queries": [" ".join(words) or "famous"]}
        if kind == "needless_search":
            return "search", {"queries": [f"what does a {recipe.subjects[0].noun} look like"]}
        return None

    def _mistake(self, kind: str, recipe: Any, rng: random.Random, request: str) -> str:
        tool, args = self._mistake_call(recipe, request)
        if kind == "clue_image_search":
            think = rng.choice([f"Let me look for pictures of {_strip_article(recipe.hidden.clue)} directly.",
                                "I will start with an image search on the description itself."])
        elif kind == "vague_search":
            think = rng.choice(["A quick search should tell me what this is.", "Let me search for it quickly."])
        else:
            think = rng.choice([f"Let me first read up on what a {recipe.subjects[0].noun} looks like.",
                                f"A text search on the {recipe.subjects[0].noun} first."])
        return _tool_call(think, tool, args)

    def _second_query(self, recipe: Any) -> str:
        h = recipe.hidden
        if h.source and h.source.lower() not in h.query.lower():
            return f"{h.query} {re.sub(r' [(].*$', '', h.source)}" if recipe.task_family != "depict_hidden" \
                else f"{h.query} {h.answer}"
        return f"{h.answer} {h.query}"

    @staticmethod
    def _second_image_query(subject: Any) -> str:
        return _clean_title(subject.titles[0]) if subject.titles else f"{subject.noun} picture"

    def _image_calls_needed(self, recipe: Any, st: "_State") -> int:
        return sum(1 for s in recipe.subjects if st.match(s) is None and st.image_attempts(s) < 2)

    def _calls_needed(self, recipe: Any, st: "_State") -> int:
        n = self._image_calls_needed(recipe, st)
        if recipe.hidden and not st.resolved and st.searches < 2:
            n += 1
        if not self.inline_skills:
            n += sum(1 for s in recipe.skills if s not in st.skills)
        return n

    # -- the answer ----------------------------------------------------------------------------
    def _answer(self, recipe: Any, st: "_State", rng: random.Random) -> str:
        from ..data.recipes import LIGHTING, STYLES

        chosen = [(s, st.match(s)) for s in recipe.subjects]
        found = sorted({img for _, img in chosen if img})
        position = {img: i for i, img in enumerate(found)}
        ordinal = ["first", "second"]
        parts = []
        for i, (s, img) in enumerate(chosen):
            name = s.noun
            if s.colour and s.colour not in name:
                name = f"{s.colour} {name}"
            count = recipe.count if i == 0 and recipe.count else None
            ref = f" from the {ordinal[position[img]]} reference image" if img in position else ""
            if count:
                plural = s.plural if not s.colour or s.colour in s.plural else f"{s.colour} {s.plural}"
                phrase = f"exactly {count} {plural}{ref}, no more and no fewer" if "quantity_counting" in \
                    recipe.skills else f"{count} {plural}{ref}"
            else:
                phrase = f"the {name}{ref}"
            if s.position:
                phrase += {"left": " on the left", "right": " on the right", "top": " at the top",
                           "bottom": " at the bottom"}[s.position]
            elif len(recipe.subjects) == 1 and not count:
                phrase += rng.choice([", centered", " in the middle", ", centred"])
            parts.append(phrase)
        body = " and ".join(parts) if len(parts) == 2 else parts[0]
        body = body[0].upper() + body[1:]
        extras = []
        if recipe.texts:
            text = recipe.texts[0]
            style = ", in bold legible capitals" if "text_rendering" in recipe.skills and rng.random() < 0.5 else ""
            extras.append({"title": f'with the title "{text}" at the top{style}',
                           "caption": f'with the caption "{text}" at the bottom{style}',
                           "sign": f'with a sign that reads "{text}"{style}'}[recipe.text_slot or "caption"])
        if recipe.pose:
            extras.append(rng.choice(["with exactly two arms and two legs in a natural pose",
                                      "with correct anatomy and natural joints"]))
        if recipe.material:
            extras.append(f"made of {recipe.material}, with the texture and reflections of that material")
        if recipe.lighting:
            extras.append(LIGHTING[recipe.lighting])
        if recipe.style:
            extras.append(STYLES[recipe.style])
        gen_prompt = body + (", " + ", ".join(extras) if extras else "") + "."
        if recipe.hidden and recipe.task_family == "depict_hidden" and st.resolved \
                and recipe.hidden.answer.lower() not in gen_prompt.lower():
            gen_prompt += f" The subject is the {recipe.hidden.answer}."
        refs = [{"img_id": img, "note": _note(s)} for img in found for s, m in chosen if m == img][:2]
        think = self._answer_think(recipe, st, rng, found)
        answer = {"gen_prompt": gen_prompt, "reference_images": refs}
        return f"<think>{think}</think>\n<answer>{json.dumps(answer, ensure_ascii=False)}</answer>"

    def _answer_think(self, recipe: Any, st: "_State", rng: random.Random, found: list[str]) -> str:
        lead = st.reflection(rng)
        bits = []
        if recipe.hidden and st.resolved:
            bits.append(f"the request is about {recipe.hidden.answer}")
        if found:
            bits.append("the references are " + " and ".join(found) + " in id order")
        if recipe.skills and not self.inline_skills:
            bits.append("following the skills I " + " and ".join(SKILL_RULE[s] for s in recipe.skills[:2]))
        summary = (rng.choice(["I have what I need: ", "Everything is in place: ", "Ready to answer: "])
                   + ", ".join(bits) + ".") if bits else "I will answer with what I have."
        return _join(lead, summary)


class _State:
    """What the conversation so far shows: calls made, what they found."""

    def __init__(self, recipe: Any, mistake_call: tuple[str, dict[str, Any]] | None = None):
        self.recipe = recipe
        self.request = ""
        self.mistake_call = mistake_call
        self.calls: list[dict[str, Any]] = []            # {tool, mistake, helpful} per call, in order
        self.n_calls = 0
        self.searches = 0
        self.search_queries: set[str] = set()
        self.resolved = False
        self.resolved_at = 0                              # the call (1-based) whose observation settled it
        self.resolving_text = ""
        self.skills: set[str] = set()
        self.images: list[tuple[str, str]] = []          # (img id, title) in order found
        self.image_queries: list[str] = []
        self.last: tuple[str, Any, str] | None = None    # (tool, arguments, observation) of the latest call

    @classmethod
    def read(cls, messages: list[dict[str, Any]], recipe: Any,
             mistake_call: tuple[str, dict[str, Any]] | None = None) -> "_State":
        st = cls(recipe, mistake_call)
        pending: tuple[str, Any] | None = None
        for m in messages[2:]:
            if m["role"] == "assistant":
                parsed = parse_turn(m["content"])
                pending = (parsed.tool_name, parsed.arguments) if parsed.kind == "tool_call" else None
            elif m["role"] == "user" and pending:
                obs = re.sub(r"^<tool_response>\n?|\n?</tool_response>$", "", m["content"].strip())
                st.observe(pending[0], pending[1] or {}, obs)
                pending = None
        return st

    def observe(self, tool: str, args: dict[str, Any], obs: str) -> None:
        before = (self.resolved, sum(self.match(s) is not None for s in self.recipe.subjects), len(self.skills))
        self._observe(tool, args, obs)
        after = (self.resolved, sum(self.match(s) is not None for s in self.recipe.subjects), len(self.skills))
        self.calls.append({"tool": tool, "helpful": after != before,
                           "mistake": not self.calls and (tool, args) == tuple(self.mistake_call or ())})

    def _observe(self, tool: str, args: dict[str, Any], obs: str) -> None:
        self.n_calls += 1
        self.last = (tool, args, obs)
        hidden = self.recipe.hidden
        if tool == "search":
            self.searches += 1
            self.search_queries.update(str(q).lower() for q in (args.get("queries") or []))
            if hidden and not self.resolved:
                for name in [hidden.answer, *hidden.aliases]:
                    if name and re.search(rf"\b{re.escape(name)}\b", obs, re.IGNORECASE):
                        self.resolved, self.resolved_at = True, self.n_calls
                        self.resolving_text = _sentence_with(obs, name)
                        break
        elif tool == "image_search":
            self.image_queries.append(str(args.get("query", "")))
            self.images += [(i, t) for i, t in _IMAGE_LINE.findall(obs) if i not in dict(self.images)]
        elif tool == "query_knowledge" and "Skill Guidance" in obs:
            self.skills.add(str(args.get("skill_name")))

    def match(self, subject: Any) -> str | None:
        """The first found image whose title shows `subject`."""
        wanted = {t.lower() for t in subject.titles}
        for img, title in self.images:
            if title.lower() in wanted:
                return img
        if not wanted:                      # no privileged titles (a web backend): match by name
            for img, title in self.images:
                if subject.noun.lower() in title.lower():
                    return img
        return None

    def image_attempts(self, subject: Any) -> int:
        queries = {subject.visual_query.lower()} | {_clean_title(t).lower() for t in subject.titles[:1]}
        return sum(1 for q in self.image_queries if q.lower() in queries)

    def reflection(self, rng: random.Random) -> str:
        """One sentence on what the latest observation showed, so each step explains itself."""
        if not self.last:
            return ""
        tool, args, obs = self.last
        hidden = self.recipe.hidden
        if tool == "search":
            if hidden and self.resolved_at == self.n_calls:       # this search settled it
                said = self.resolving_text or hidden.answer + "."
                return rng.choice([f"The search says: \"{said}\" So the answer is {hidden.answer}.",
                                   f"Found it: {said} That means {hidden.answer}."])
            titles = _RESULT_TITLE.findall(obs)[:3]
            return (f"The results ({', '.join(titles)}) do not settle it." if titles
                    else "The search found nothing useful.")
        if tool == "image_search":
            hits = _IMAGE_LINE.findall(obs)
            good = [(i, t) for i, t in hits if any(self.match(s) == i for s in self.recipe.subjects)]
            if good:
                i, t = good[0]
                return rng.choice([f"{i} ({_clean_title(t)}) is what I need.", f"{i}, '{_clean_title(t)}', fits."])
            shown = ", ".join(_clean_title(t) for _, t in hits[:3])
            if hidden and not self.resolved:
                return (f"These images ({shown}) only match the words of the description, not the subject it "
                        "points to; I have to find out what it is first." if shown else
                        "No images came back; I have to find out what the description points to first.")
            return f"These images ({shown}) are not quite it." if shown else "No images came back."
        if tool == "query_knowledge":
            skill = str(args.get("skill_name"))
            return f"The {skill} guidance says to {SKILL_RULE.get(skill, 'follow its rules')}."
        return ""


def _key(request: str) -> str:
    return " ".join(request.split())


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p).strip()


def _strip_article(text: str) -> str:
    return re.sub(r"^(?:the|a|an)\s+", "", text.strip(), flags=re.IGNORECASE)


def _sentence_with(text: str, name: str) -> str:
    lines = [ln.strip() for ln in text.splitlines()]
    snippets = [ln for ln in lines if ln and not re.match(r"^(?:\d+\. |Source:|---)", ln)]
    for line in snippets + lines:
        if re.search(rf"\b{re.escape(name)}\b", line, re.IGNORECASE) and not line.startswith(("Source:", "---")):
            sentences = re.split(r"(?<=[.!?])\s+", re.sub(r"^\d+\.\s+", "", line))
            hit = next((s for s in sentences if re.search(rf"\b{re.escape(name)}\b", s, re.IGNORECASE)), line)
            return hit[:160].rstrip(" …") + ("" if hit.endswith(".") else ".")
    return ""


def _note(subject: Any) -> str:
    return f"the {subject.noun}" if not subject.colour or subject.colour in subject.noun else \
        f"the {subject.colour} {subject.noun}"


def _tool_call(think: str, name: str, arguments: dict[str, Any]) -> str:
    call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<think>{think}</think>\n<tool_call>{call}</tool_call>"
