"""Requests from recipes: an offline template writer, an LLM writer, and the checks every request passes.

A request must read like something a person would ask: it never names tools or skills, everything it
asks for can be checked in the picture, a Knowledge-Anchored request hides its subject behind the
clue (the answer's name must not appear), and exact texts and counts appear as the recipe has them.
`check_request` says what is wrong; writers retry or the item is dropped with that reason.

Requests are normalised (Unicode NFKC, one space, straight quotes kept) before hashing; the prompt
hash (sha256 of the lower-cased words) is what decontamination compares, and `NearDuplicates` finds
requests whose word 3-grams overlap almost completely (MinHash with banding, then exact Jaccard).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from typing import Any

from .recipes import LIGHTING, NUMBER_WORDS, STYLES
from .taxonomy import DEPICT_HIDDEN, NAME_OF_HIDDEN, SYMBOL_OF_HIDDEN, Recipe

FORBIDDEN = re.compile(r"\b(?:image_search|query_knowledge|search tool|image search|web search|look (?:it|this) up|"
                       r"use the tools?|reference images?|tool calls?|"
                       r"IMG_\d+|gen_prompt|text_rendering|spatial_layout|quantity_counting|attribute_binding|"
                       r"aesthetic_drawing|creative_drawing|anatomy_body_coherence|physical_material_consistency)\b",
                       re.IGNORECASE)
MIN_WORDS, MAX_WORDS = 6, 90
NEAR_DUPLICATE = 0.85


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("“", '"').replace("”", '"').replace("’", "'")
    return " ".join(text.split()).strip()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", normalise(text).lower())


def prompt_hash(text: str) -> str:
    """Equal for requests that differ only in case, spacing and punctuation."""
    return hashlib.sha256(" ".join(_words(text)).encode("utf-8")).hexdigest()[:16]


def check_request(text: str, recipe: Recipe) -> list[str]:
    """Problems that make `text` unusable for `recipe` (empty when it is fine)."""
    problems = []
    words = _words(text)
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        problems.append(f"length: {len(words)} words (want {MIN_WORDS}-{MAX_WORDS})")
    m = FORBIDDEN.search(text)
    if m:
        problems.append(f"names the agent's machinery: {m.group(0)!r}")
    low = " " + " ".join(words) + " "
    if recipe.hidden:
        for name in [recipe.hidden.answer, *recipe.hidden.aliases]:
            if name and f" {' '.join(_words(name))} " in low:
                problems.append(f"gives the hidden answer away: {name!r}")
                break
    if recipe.task_family != NAME_OF_HIDDEN:
        for t in recipe.texts:
            if f'"{t}"' not in normalise(text):
                problems.append(f"the exact text {t!r} is not quoted")
    if recipe.count and not (str(recipe.count) in words or NUMBER_WORDS.get(recipe.count, "#") in words):
        problems.append(f"the count {recipe.count} is not stated")
    for s in recipe.subjects if not recipe.hidden else recipe.subjects[1:]:
        heads = {w[-1] for w in (_words(s.noun), _words(s.plural)) if w}
        if heads and not heads & set(words) and not any(h + "s" in words for h in heads):
            problems.append(f"the subject {s.noun!r} is not named")
    return problems


class NearDuplicates:
    """Finds requests that repeat an earlier one almost word for word."""

    BANDS, ROWS = 12, 3
    PRIME = 4294967311                  # a prime above 2**32: hashes (a*x + b) mod p stay in uint64

    def __init__(self, threshold: float = NEAR_DUPLICATE):
        import numpy as np

        self.threshold = threshold
        self.shingles: dict[str, set[str]] = {}
        self.buckets: dict[tuple[int, tuple[int, ...]], list[str]] = {}
        rng = np.random.default_rng(12345)
        self._a = rng.integers(1, 1 << 32, self.BANDS * self.ROWS, dtype=np.uint64)
        self._b = rng.integers(0, 1 << 32, self.BANDS * self.ROWS, dtype=np.uint64)

    @staticmethod
    def shingle(text: str) -> set[str]:
        w = _words(text)
        return {" ".join(w[i:i + 3]) for i in range(max(1, len(w) - 2))}

    def _signature(self, shingles: set[str]) -> list[int]:
        import numpy as np

        x = np.fromiter((int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "big")
                         for s in shingles), dtype=np.uint64, count=len(shingles))
        return ((self._a[:, None] * x[None, :] + self._b[:, None]) % np.uint64(self.PRIME)).min(axis=1).tolist()

    def find(self, text: str) -> tuple[str | None, float]:
        """(id of the most similar earlier request above the threshold, its similarity)."""
        sh = self.shingle(text)
        sig = self._signature(sh)
        best, score = None, 0.0
        seen: set[str] = set()
        for b in range(self.BANDS):
            for other in self.buckets.get((b, tuple(sig[b * self.ROWS:(b + 1) * self.ROWS])), []):
                if other in seen:
                    continue
                seen.add(other)
                o = self.shingles[other]
                j = len(sh & o) / max(1, len(sh | o))
                if j > score:
                    best, score = other, j
        return (best, score) if score >= self.threshold else (None, score)

    def add(self, item_id: str, text: str) -> None:
        sh = self.shingle(text)
        self.shingles[item_id] = sh
        sig = self._signature(sh)
        for b in range(self.BANDS):
            self.buckets.setdefault((b, tuple(sig[b * self.ROWS:(b + 1) * self.ROWS])), []).append(item_id)


# ----------------------------------------------------------------------------- the offline writer

OPENINGS = ["Draw", "Create an image of", "Make a picture of", "Illustrate", "Show", "I need an illustration of",
            "Generate a picture of", "Design a clean graphic of", "Could you make an image of", "Depict",
            "Put together an image of", "Please draw"]
BACKDROPS = ["on a plain background", "against a simple backdrop", "on a clean, uncluttered background",
             "with nothing else in the frame", ""]
CONTEXTS = ["", "", "", "It is for a school quiz.", "This is for a museum leaflet.", "Keep the composition simple.",
            "It will go on a classroom wall.", "I want to use it in a slide deck.", "Make it easy to recognise.",
            "It is for a trivia night handout."]
TEXT_FORMS = {"title": ['with the title "{t}" across the top', 'topped by the heading "{t}"',
                        'with "{t}" written as a headline above it'],
              "caption": ['with the caption "{t}" along the bottom', 'with "{t}" written underneath',
                          'captioned "{t}" at the bottom'],
              "sign": ['next to a sign that reads "{t}"', 'beside a small signboard saying "{t}"',
                       'with a sign that says "{t}"']}
STYLE_FORMS = {k: [v, v.replace("as a", "in the manner of a", 1) if v.startswith("as a") else v] for k, v in STYLES.items()}


def article(noun: str) -> str:
    """'an' before a vowel, nothing before a plural-looking noun ('hot springs'), else 'a'."""
    if (noun.endswith("s") and not noun.endswith(("ss", "us", "is"))) or noun[:1].isupper():
        return ""                           # plural-looking, or a proper name ("Mount Fuji")
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _count_words(n: int, rng: random.Random) -> str:
    return rng.choice([f"exactly {n} ({NUMBER_WORDS[n]})", f"exactly {NUMBER_WORDS[n]}", f"{NUMBER_WORDS[n]} ({n})"])


class OfflineWriter:
    """Deterministic requests from templates: the recipe's seed picks the wording."""

    name = "offline"

    def write(self, recipe: Recipe, attempt: int = 0) -> str:
        rng = random.Random(f"{recipe.seed}:{attempt}")
        s0 = recipe.subjects[0]
        h = recipe.hidden
        parts: list[str] = []
        if recipe.task_family == DEPICT_HIDDEN:
            what = h.clue
            if recipe.category == "event_sport":
                what = rng.choice(["an emblem of ", "a picture that stands for ", "the typical gear of "]) + what
            if recipe.count:
                of = "the emblem of " if recipe.category == "event_sport" else ""
                what = f"{_count_words(recipe.count, rng)} copies of {of}{h.clue}, evenly spaced"
            parts.append(f"{rng.choice(OPENINGS)} {what}")
        elif recipe.task_family == SYMBOL_OF_HIDDEN:
            lead = rng.choice(["Make a travel card showing the national flag of", "Draw the national flag of",
                               "Create a banner with the flag of", "Show the flag of"])
            parts.append(f"{lead} {h.clue}")
        elif recipe.task_family == NAME_OF_HIDDEN and s0.key.startswith("country:") and h.key.startswith("city:"):
            parts.append(rng.choice([
                f"Picture a street corner in {h.clue}: the national flag of its country on a pole and a street "
                "sign that gives the city's name in capital letters",
                f"Make an image of a street in {h.clue}, with the country's flag flying and a sign showing the "
                "city's name in capital letters",
                f"Create a street scene from {h.clue}: its country's flag and a road sign with the name of the city "
                "in block capitals"]))
        elif recipe.task_family == NAME_OF_HIDDEN:
            if s0.key.startswith("country:"):
                parts.append(rng.choice([
                    f"Design a commemorative card for {h.clue}: the flag of their home country in the middle and "
                    "their full name in capital letters as the title",
                    f"Make a tribute image for {h.clue}, showing their country's national flag with their full name "
                    "in capitals as a heading above it"]))
            else:
                parts.append(f"Make a portrait of {h.clue}, with their full name in capital letters as the title")
        else:
            parts.append(self._named(recipe, rng))
        if len(recipe.subjects) > 1 and recipe.hidden:
            other = recipe.subjects[1]
            o = f"{article(other.noun)} {other.noun}".strip()
            parts[-1] += rng.choice([f" on the left, and {o} on the right", f" on the left side with {o} to its right"])
        if recipe.texts and recipe.task_family != NAME_OF_HIDDEN:
            parts.append(rng.choice(TEXT_FORMS[recipe.text_slot or "caption"]).format(t=recipe.texts[0]))
        if recipe.lighting and recipe.category != "aesthetic_lighting":
            parts.append(LIGHTING[recipe.lighting])
        if recipe.style and recipe.category != "creative_transfer":
            parts.append(rng.choice(STYLE_FORMS[recipe.style]))
        backdrop = rng.choice(BACKDROPS) if len(recipe.subjects) == 1 and not recipe.count else ""
        sentence = ", ".join(p for p in parts + [backdrop] if p).rstrip(",") + "."
        context = rng.choice(CONTEXTS)
        return normalise(f"{sentence} {context}")

    def _named(self, recipe: Recipe, rng: random.Random) -> str:
        s0 = recipe.subjects[0]
        a = article(s0.noun)
        if recipe.category == "grounded_quantity_scene":
            return f"{rng.choice(OPENINGS)} {_count_words(recipe.count, rng)} {s0.plural}, evenly arranged, " \
                   f"no more and no fewer"
        if recipe.category == "spatial_composition":
            s1 = recipe.subjects[1]
            b = article(s1.noun)
            if s0.position == "left":
                return rng.choice([f"{rng.choice(OPENINGS)} {a} {s0.noun} on the left and {b} {s1.noun} on the right",
                                   f"{rng.choice(OPENINGS)} {a} {s0.noun} placed to the left of {b} {s1.noun}"])
            return rng.choice([f"{rng.choice(OPENINGS)} {a} {s0.noun} directly above {b} {s1.noun}",
                               f"{rng.choice(OPENINGS)} {a} {s0.noun} at the top with {b} {s1.noun} below it"])
        if recipe.category == "attribute_binding":
            s1 = recipe.subjects[1]
            kind = s0.noun.split()[-1]
            return (f"{rng.choice(OPENINGS)} {article(s0.noun)} {s0.noun} on the left and {article(s1.noun)} "
                    f"{s1.noun} on the right; keep each colour on its own {kind}")
        if recipe.category == "anatomy_pose":
            return f"{rng.choice(OPENINGS)} {a} {s0.noun}, {rng.choice(ANATOMY_FORMS)}".replace("  ", " ")
        if recipe.category == "material_physics":
            return rng.choice([f"{rng.choice(OPENINGS)} {a} {s0.noun} made entirely of {recipe.material}",
                               f"{rng.choice(OPENINGS)} {a} {s0.noun} sculpted from {recipe.material}, showing how "
                               "that material catches the light"])
        if recipe.category == "aesthetic_lighting":
            return f"{rng.choice(OPENINGS)} {a} {s0.noun} {LIGHTING[recipe.lighting]}"
        if recipe.category == "creative_transfer":
            return f"{rng.choice(OPENINGS)} {a} {s0.noun} {rng.choice(STYLE_FORMS[recipe.style])}"
        return f"{rng.choice(OPENINGS)} {a} {s0.noun}"


ANATOMY_FORMS = ["with exactly two arms and two legs, anatomically correct", "with natural joints and proportions",
                 "with five fingers on each visible hand and a plausible posture",
                 "with a balanced, physically plausible pose"]


# ----------------------------------------------------------------------------- the LLM writer

WRITER_SYSTEM = """You turn a structured recipe into one natural request that a person might give an \
image-generation assistant. Write only the request, in one or two sentences.
Rules:
- Never mention tools, searches, skills, references or how the assistant should work.
- Everything you ask for must be visible in a picture.
- When the recipe gives a clue for a hidden subject, describe the subject only through that clue; \
never write its name.
- Keep every exact text in double quotes, spelled exactly as given, and state every count as given."""


def recipe_brief(recipe: Recipe) -> dict[str, Any]:
    """What the writer may see: the clue, never the hidden answer."""
    brief: dict[str, Any] = {"category": recipe.category, "track": recipe.track}
    if recipe.hidden:
        brief["hidden_subject_clue"] = recipe.hidden.clue
        brief["task"] = {DEPICT_HIDDEN: "draw the subject the clue describes",
                         SYMBOL_OF_HIDDEN: "show the national flag of the country the clue describes",
                         NAME_OF_HIDDEN: "show the flag of the place (or of the person's country) and write the "
                                         "name the clue hides in capital letters"}[recipe.task_family]
        others = recipe.subjects[1:]
    else:
        others = recipe.subjects
    brief["subjects"] = [{"noun": s.noun, **({"position": s.position} if s.position else {}),
                          **({"colour": s.colour} if s.colour else {})} for s in others]
    for name in ("count", "lighting", "style", "material", "pose"):
        if getattr(recipe, name):
            brief[name] = getattr(recipe, name)
    if recipe.texts and recipe.task_family != NAME_OF_HIDDEN:
        brief["exact_text"], brief["text_position"] = recipe.texts[0], recipe.text_slot
    return brief


class LLMWriter:
    """Requests written by a model behind any OpenAI-compatible chat endpoint."""

    def __init__(self, base_url: str, model: str, api_key: str = "", *, attempts: int = 2,
                 timeout_s: float = 120.0, rpm: float | None = None, retries: int = 4):
        from ..judges.vlm_client import Endpoint, VLMClient

        self.name = f"llm:{model}"
        self.attempts = max(1, attempts)
        self.client = VLMClient(Endpoint(base_url.rstrip("/"), model, api_key), timeout_s=timeout_s,
                                max_tokens=400, rpm=rpm, retries=retries, backoff_s=0.2)

    async def write(self, recipe: Recipe) -> tuple[str, list[str]]:
        """(request, problems of the last attempt); problems are empty when the request is usable."""
        messages = [{"role": "system", "content": WRITER_SYSTEM},
                    {"role": "user", "content": json.dumps(recipe_brief(recipe), ensure_ascii=False)}]
        text, problems = "", ["no attempt"]
        for _ in range(self.attempts):
            reply = await self.client.chat(messages)
            text = normalise(reply.strip().strip('`').removeprefix("Request:").strip())
            problems = check_request(text, recipe)
            if not problems:
                return text, []
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": "Please fix: " + "; ".join(problems)}]
        return text, problems

    async def aclose(self) -> None:
        await self.client.aclose()
