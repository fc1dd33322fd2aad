"""Recipes: a seeded, balanced draw of structured generation tasks bound to offline-world entities.

`sample_recipes(world, n, seed)` spreads `n` recipes over the tracks (60% Knowledge-Anchored, as in
the paper) and evenly over each track's categories, cycles through each category's entities in a
seeded order so that every entity is used before any is used twice, and varies the secondary
requirements (a caption, a count, a companion subject, lighting, style) and the difficulty. The same
world, n and seed give the same recipes.

`gt_gen_prompt(recipe)` writes the ground-truth program's prompt in the renderer's vocabulary.
"""

from __future__ import annotations

import random
from typing import Any

from .taxonomy import (CATEGORIES, DEPICT_HIDDEN, KA, KA_SHARE, NAME_OF_HIDDEN, NAMED_SUBJECT, QA,
                       SYMBOL_OF_HIDDEN, Hidden, Recipe, RecipeError, Subject, skills_for)
from .world import Entity, OfflineWorld

NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
LIGHTING = {"sunset": "at sunset, in warm golden-hour light", "night": "at night, lit by moonlight",
            "neon": "under neon light", "dramatic": "with dramatic, moody lighting",
            "soft": "in soft, diffused light", "warm": "in warm light", "cold": "in cold, wintry light"}
STYLES = {"watercolor": "as a watercolor painting", "oil painting": "as an oil painting",
          "cartoon": "as a cartoon", "sketch": "as a pencil sketch", "poster": "as a pop-art screen print",
          "vintage": "as a vintage sepia photograph", "noir": "in black-and-white noir"}
MATERIALS = ["polished gold", "brushed steel", "clear glass", "carved wood", "white marble", "weathered bronze",
             "knitted wool", "translucent ice", "glazed ceramic", "folded paper"]
SIGN_TEXTS = ["OPEN LATE", "FRESH TODAY", "GRAND OPENING", "HALF PRICE", "WELCOME BACK", "HAPPY HOLIDAYS",
              "NO PARKING", "CAFE ORBIT", "BOOK SWAP", "SCIENCE WEEK", "STAY CURIOUS", "GARDEN CLUB",
              "NIGHT MARKET", "STAFF ONLY", "FARM STAND", "MAKER LAB", "LATE SHOW", "BAKE SALE", "JAZZ TONIGHT",
              "ZERO WASTE", "TEAM GREEN", "SUMMER CAMP", "PET CORNER", "LOST AND FOUND", "EXIT HERE",
              "VINYL SHOP", "TIDE TOURS", "FIRST PLACE", "CLEAN BEACH", "ART WALK", "QUIET ZONE", "OPEN STUDIO",
              "FREE REFILLS", "MOON LANDING", "HELLO SPRING", "WINTER FAIR", "BIKE REPAIR", "TEA HOUSE",
              "KIDS CORNER", "SOLD OUT", "NEW ARRIVALS", "PLANT SALE", "STAR PARTY", "ROBOT RACE",
              "HOME GAME", "FIELD TRIP", "OPEN MIC", "GOOD LUCK", "BEST IN SHOW", "TRAIL HEAD"]
CAPTIONS = ["WELCOME", "HELLO WORLD", "BON VOYAGE", "TEAM SPIRIT", "NATIONAL DAY", "SEE YOU SOON", "UNITY",
            "HOME SWEET HOME", "GO TEAM", "PEACE", "VISIT US", "FRIENDS FOREVER", "DISCOVER", "EXPLORE MORE",
            "WILD AND FREE", "MADE WITH CARE", "SINCE 1920", "OUR PLANET", "FIELD NOTES", "LEARN MORE"]
ANATOMY = ["with exactly two arms and two legs", "with five fingers on each visible hand",
           "with natural joints and proportions", "with a balanced, physically plausible posture"]
PLACES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
ORDINALS = ["first", "second"]

# Secondary requirements each category may add, with how often (weights per option).
_SECONDARY = {
    DEPICT_HIDDEN: [([], 4), (["count"], 2), (["text"], 2), (["layout"], 2), (["lighting"], 1), (["style"], 1)],
    SYMBOL_OF_HIDDEN: [([], 3), (["text"], 3), (["lighting"], 1), (["style"], 1)],
    NAME_OF_HIDDEN: [([], 4), (["lighting"], 1), (["style"], 1)],
    NAMED_SUBJECT: [([], 4), (["lighting"], 1), (["style"], 1)],
}


def sample_recipes(world: OfflineWorld, n: int, seed: int = 0, categories: list[str] | None = None,
                   ka_share: float = KA_SHARE, per_category: int | None = None) -> list[Recipe]:
    """`n` recipes, balanced over tracks and categories (or exactly `per_category` of each);
    categories without entities are skipped."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    chosen = list(categories or CATEGORIES)
    unknown = [c for c in chosen if c not in CATEGORIES]
    if unknown:
        raise RecipeError(f"unknown categories {unknown} (known: {', '.join(CATEGORIES)})")
    pools = {c: sorted(es, key=lambda e: e.key) for c, es in world.by_category().items() if c in chosen and es}
    quotas = {c: per_category for c in pools} if per_category else _quotas(pools, n, ka_share)
    named = sorted({e.key: e for c in ("grounded_text_layout",) for e in world.by_category()[c]}.values(),
                   key=lambda e: e.key)
    recipes: list[Recipe] = []
    for category, quota in quotas.items():
        rng = random.Random(f"{seed}:{category}")
        order: list[Entity] = []
        for i in range(quota):
            if not order:                      # every entity once, in a fresh seeded order, then again
                order = rng.sample(pools[category], len(pools[category]))
            entity = order.pop()
            recipe_seed = rng.randrange(1 << 30)
            recipe = build_recipe(category, entity, i, random.Random(recipe_seed), named, pools[category])
            recipe.seed = recipe_seed
            recipes.append(recipe)
    return recipes


def _quotas(pools: dict[str, list[Entity]], n: int, ka_share: float) -> dict[str, int]:
    """Recipes per category: the track shares first, then an even split within each track."""
    tracks = {t: [c for c in pools if CATEGORIES[c].track == t] for t in (KA, QA)}
    n_ka = round(n * ka_share) if tracks[KA] and tracks[QA] else (n if tracks[KA] else 0)
    want = {KA: n_ka, QA: n - n_ka}
    out: dict[str, int] = {}
    for track, cats in tracks.items():
        for i, c in enumerate(cats):
            out[c] = want[track] // len(cats) + (1 if i < want[track] % len(cats) else 0)
    return {c: q for c, q in out.items() if q > 0}


def _subject(e: Entity, **extra: Any) -> Subject:
    return Subject(key=e.key, name=e.name, noun=e.noun, plural=e.plural, renditions=list(e.renditions),
                   visual_query=e.visual_query, titles=list(e.facts.get("titles", [])), **extra)


def _pick(rng: random.Random, options: list[tuple[Any, int]]) -> Any:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


def build_recipe(category: str, entity: Entity, index: int, rng: random.Random, named: list[Entity],
                 peers: list[Entity]) -> Recipe:
    cat = CATEGORIES[category]
    rid = f"{category}_{index + 1:05d}"
    if cat.track == KA:
        return _ka_recipe(rid, category, entity, rng, named)
    return _qa_recipe(rid, category, entity, rng, named, peers)


def _ka_recipe(rid: str, category: str, e: Entity, rng: random.Random, named: list[Entity]) -> Recipe:
    clue = e.clues[rng.randrange(len(e.clues))]
    family = {"landmark": SYMBOL_OF_HIDDEN, "city": NAME_OF_HIDDEN, "person": NAME_OF_HIDDEN}.get(e.kind, DEPICT_HIDDEN)
    answer = e.facts.get("country") if family == SYMBOL_OF_HIDDEN else e.name
    aliases = [answer] if family == SYMBOL_OF_HIDDEN else list(e.aliases)
    hidden = Hidden(key=e.key, answer=answer, clue=clue["clue"], query=clue["query"], source=clue["source"],
                    fact=str(clue["fact"]), aliases=aliases)
    subjects = [_subject(e)]
    if e.kind in ("landmark", "city") or (e.kind == "person" and not e.facts.get("portrait")):
        code = e.facts["country_code"]            # what is drawn is that country's flag
        subjects[0].key, subjects[0].name = f"country:{code}", e.facts["country"]
    secondary = list(_pick(rng, _SECONDARY[family]))
    recipe = Recipe(id=rid, track=KA, category=category, task_family=family, missing_evidence=[],
                    visual_anchor=f"what the {e.noun} looks like", dominant="identity", secondary=secondary,
                    difficulty="medium", subjects=subjects, hidden=hidden, needs_text_search=True)
    if family == DEPICT_HIDDEN:
        recipe.missing_evidence = ["which subject the description points to"]
    elif family == SYMBOL_OF_HIDDEN:
        recipe.missing_evidence = [f"which country {e.name} is in"]
        recipe.visual_anchor = "the design of that country's flag"
    elif e.kind == "city":
        recipe.missing_evidence = ["the city's name"] + (["which country is described"] if clue.get("hops", 1) > 1 else [])
        recipe.visual_anchor = f"the design of the {e.noun}"
        recipe.texts, recipe.text_slot = [e.facts["text"]], "sign"
    else:
        recipe.missing_evidence = ["who the description points to", "their nationality"]
        recipe.visual_anchor = "their portrait" if e.facts.get("portrait") else "the design of their country's flag"
        recipe.texts, recipe.text_slot = [e.facts["text"]], "title"
    _add_secondary(recipe, rng, named)
    hard = bool(recipe.secondary) or clue.get("hops", 1) > 1 or clue.get("rank", 1) > 1
    recipe.difficulty = "hard" if hard else "medium"
    recipe.skills = skills_for(["text"] * bool(recipe.texts) + recipe.secondary)
    return recipe


def _qa_recipe(rid: str, category: str, e: Entity, rng: random.Random, named: list[Entity],
               peers: list[Entity]) -> Recipe:
    cat = CATEGORIES[category]
    subjects = [_subject(e)]
    recipe = Recipe(id=rid, track=QA, category=category, task_family=NAMED_SUBJECT,
                    missing_evidence=["what the subject looks like"], visual_anchor=f"what a {e.noun} looks like",
                    dominant=cat.dominant, secondary=[], difficulty="medium", subjects=subjects)
    d = cat.dominant
    if d == "text":
        recipe.texts, recipe.text_slot = [rng.choice(SIGN_TEXTS)], rng.choice(["title", "caption", "sign"])
    elif d == "count":
        recipe.count = rng.randint(2, 9)
        subjects[0].count = recipe.count
    elif d == "layout":
        other = _other(rng, named, e)
        a, b = ("left", "right") if rng.random() < 0.65 else ("top", "bottom")
        subjects[0].position = a
        subjects.append(_subject(other, position=b))
        recipe.relation = {"left" if a == "left" else "above": e.noun, "right" if b == "right" else "below": other.noun}
    elif d == "binding":
        other = rng.choice([p for p in peers if p.facts["kind"] == e.facts["kind"] and p.key != e.key] or [e])
        subjects[0].position, subjects[0].colour = "left", e.facts["colour"]
        subjects.append(_subject(other, position="right", colour=other.facts["colour"]))
        recipe.relation = {"left": e.noun, "right": other.noun}
        recipe.secondary = ["layout"]
    elif d == "anatomy":
        recipe.pose = e.facts["pose"]
    elif d == "material":
        recipe.material = rng.choice(MATERIALS)
    elif d == "lighting":
        recipe.lighting = rng.choice(sorted(LIGHTING))
    elif d == "style":
        recipe.style = rng.choice(sorted(STYLES))
    extra = list(_pick(rng, _SECONDARY[NAMED_SUBJECT]))
    if d in ("lighting", "style") or (extra and extra[0] in ("lighting", "style") and d == "binding"):
        extra = []
    recipe.secondary += extra
    _add_secondary(recipe, rng, named, only=extra)
    n_constraints = (len(recipe.secondary) + ((recipe.count or 0) >= 6)
                     + (bool(recipe.texts) and len(recipe.texts[0].split()) >= 3))
    recipe.difficulty = "hard" if n_constraints or d in ("binding", "anatomy") else "medium"
    recipe.skills = skills_for([d] + recipe.secondary)
    return recipe


def _other(rng: random.Random, named: list[Entity], e: Entity) -> Entity:
    for _ in range(20):
        other = rng.choice(named)
        if other.key != e.key and other.noun != e.noun:
            return other
    return named[0] if named[0].key != e.key else named[-1]


def _add_secondary(recipe: Recipe, rng: random.Random, named: list[Entity], only: list[str] | None = None) -> None:
    for req in (recipe.secondary if only is None else only):
        if req == "count" and recipe.count is None:
            recipe.count = rng.randint(2, 5)
            recipe.subjects[0].count = recipe.count
        elif req == "text" and not recipe.texts:
            recipe.texts, recipe.text_slot = [rng.choice(CAPTIONS)], rng.choice(["caption", "title"])
        elif req == "layout" and len(recipe.subjects) == 1:
            other = _other(rng, named, Entity(recipe.subjects[0].key, "", "", recipe.subjects[0].noun, "", [], ""))
            recipe.subjects[0].position = "left"
            recipe.subjects.append(_subject(other, position="right"))
            recipe.relation = {"left": recipe.subjects[0].noun, "right": other.noun}
        elif req == "lighting" and recipe.lighting is None:
            recipe.lighting = rng.choice(sorted(LIGHTING))
        elif req == "style" and recipe.style is None:
            recipe.style = rng.choice(sorted(STYLES))


# ----------------------------------------------------------------------------- GT program text

def subject_phrase(s: Subject, index: int, count: int | None = None) -> str:
    """How a program names a subject and binds it to its reference: 'the elephant from the first
    reference image', '3 elephants from the first reference image'."""
    ref = f"the {ORDINALS[index]} reference image"
    noun = s.noun if s.colour is None or s.colour in s.noun else f"{s.colour} {s.noun}"
    if count and count > 1:
        plural = s.plural if s.colour is None or s.colour in s.plural else f"{s.colour} {s.plural}"
        return f"{count} {plural} from {ref}"
    return f"the {noun} from {ref}"


def text_phrase(recipe: Recipe) -> str:
    text = recipe.texts[0]
    return {"title": f'with the title "{text}" at the top', "caption": f'with the caption "{text}" at the bottom',
            "sign": f'with a sign that reads "{text}"'}[recipe.text_slot or "caption"]


def gt_gen_prompt(recipe: Recipe) -> str:
    """The program prompt that draws this recipe's ground truth, in words the offline renderer reads."""
    parts = []
    for i, s in enumerate(recipe.subjects):
        phrase = subject_phrase(s, i, recipe.count if i == 0 else None)
        if s.position:
            phrase += f" {PLACES[s.position]}"
        elif len(recipe.subjects) == 1 and not recipe.count:
            phrase += ", centered"
        parts.append(phrase)
    text = (", and ".join(parts) if len(parts) > 1 else parts[0])
    text = text[0].upper() + text[1:]
    extras = []
    if recipe.texts:
        extras.append(text_phrase(recipe))
    if recipe.lighting:
        extras.append(LIGHTING[recipe.lighting])
    if recipe.style:
        extras.append(STYLES[recipe.style])
    if recipe.material:
        extras.append(f"made of {recipe.material}")
    return text + ("," if extras else "") + (" " + ", ".join(extras) if extras else "") + "."
