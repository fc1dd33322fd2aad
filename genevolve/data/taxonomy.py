"""The recipe taxonomy: two tracks, sixteen categories, and the dimensions a recipe is made of.

The paper writes its requests from structured recipes (paper-notes §3): a task family, the external
evidence the request leaves out, the visual anchor a reference must supply, a dominant generation
requirement with secondary ones, and a difficulty. Categories carry the ids the published data uses
where they are known (`architecture_landmark`, `public_figure_longtail`, `grounded_text_layout`,
`grounded_quantity_scene`) and ids of the same shape for the rest.

`Recipe` is the record every later stage reads; `Recipe.from_dict` checks it and names the field that
is wrong, so a hand-edited recipes file fails with a clear message instead of deep inside a stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

KA, QA = "Knowledge-Anchored", "Quality-Anchored"
TRACKS = (KA, QA)
KA_SHARE = 0.6                   # the paper's pool is 60% Knowledge-Anchored
DIFFICULTIES = ("easy", "medium", "hard")

# Requirements a recipe can stress, and the skill that covers each one.
REQUIREMENTS = {
    "identity": None,            # get the right subject: resolved by search, shown by a reference
    "text": "text_rendering",
    "count": "quantity_counting",
    "layout": "spatial_layout",
    "binding": "attribute_binding",
    "anatomy": "anatomy_body_coherence",
    "material": "physical_material_consistency",
    "lighting": "aesthetic_drawing",
    "style": "creative_drawing",
}

# Task families: how the request relates to what must be drawn.
DEPICT_HIDDEN = "depict_hidden"          # a described subject, drawn itself
SYMBOL_OF_HIDDEN = "symbol_of_hidden"    # a described or named thing points to a country; draw its flag
NAME_OF_HIDDEN = "name_of_hidden"        # a described person or city: draw a symbol and write the name
NAMED_SUBJECT = "named_subject"          # the subject is named; the challenge is how it is drawn
TASK_FAMILIES = (DEPICT_HIDDEN, SYMBOL_OF_HIDDEN, NAME_OF_HIDDEN, NAMED_SUBJECT)


@dataclass(frozen=True)
class Category:
    id: str
    track: str
    title: str
    dominant: str                        # the requirement the category stresses
    offline_gt: bool = True              # can the offline world draw and check a ground truth for it?
    offline_gt_why: str = ""             # when it cannot, why not


CATEGORIES: dict[str, Category] = {c.id: c for c in [
    Category("architecture_landmark", KA, "landmarks and architecture", "identity"),
    Category("city_street", KA, "city streets", "identity"),
    Category("event_sport", KA, "events and sports", "identity"),
    Category("cultural_artifact", KA, "artifacts", "identity"),
    Category("commercial_product", KA, "products", "identity"),
    Category("public_figure_longtail", KA, "public figures", "identity"),
    Category("science_nature", KA, "science", "identity"),
    Category("vehicle_transport", KA, "vehicles", "identity"),
    Category("grounded_text_layout", QA, "text and layout", "text"),
    Category("spatial_composition", QA, "spatial composition", "layout"),
    Category("grounded_quantity_scene", QA, "counting", "count"),
    Category("anatomy_pose", QA, "anatomy and pose", "anatomy"),
    Category("attribute_binding", QA, "attributes", "binding"),
    Category("material_physics", QA, "materials", "material", offline_gt=False,
             offline_gt_why="the offline renderer has no material model (glass, metal, wood look the same) and "
                            "the offline judge cannot see materials, so a ground truth would not show the "
                            "requirement; its recipes still teach the skill in SFT data"),
    Category("aesthetic_lighting", QA, "aesthetics and lighting", "lighting"),
    Category("creative_transfer", QA, "creative transfer", "style"),
]}


class RecipeError(ValueError):
    """A recipe record that cannot be used; the message names the field."""


@dataclass
class Subject:
    """One thing the picture must show, with what the privileged teacher knows about it."""

    key: str                             # entity key, e.g. "country:IT", "wiki:Elephant"
    name: str                            # its name, e.g. "Italy", "Elephant"
    noun: str                            # how a prompt calls it, e.g. "flag of Italy", "elephant"
    plural: str
    renditions: list[str]                # library ids that show it, the usual search hit first
    visual_query: str                    # what an image search for it would type
    titles: list[str] = field(default_factory=list)   # library titles of the renditions (privileged)
    count: int = 1
    position: str | None = None          # left | right | top | bottom | center
    colour: str | None = None


@dataclass
class Hidden:
    """What a Knowledge-Anchored request leaves out and how a search recovers it."""

    key: str                             # entity key of the hidden thing
    answer: str                          # its name, e.g. "Italy", "Isaac Newton"
    clue: str                            # how the request describes it, e.g. "the country where the Colosseum stands"
    query: str                           # a search query that finds it in the offline corpus
    source: str                          # the corpus document the fact comes from
    fact: str                            # the sentence of that document that states it
    aliases: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    id: str
    track: str
    category: str
    task_family: str
    missing_evidence: list[str]          # what the request leaves out
    visual_anchor: str                   # what the references must supply
    dominant: str                        # one of REQUIREMENTS
    secondary: list[str]
    difficulty: str
    subjects: list[Subject]
    hidden: Hidden | None = None
    texts: list[str] = field(default_factory=list)   # exact strings the image must show
    text_slot: str | None = None         # title | caption | sign
    count: int | None = None
    relation: dict[str, str] | None = None           # {"left": noun, "right": noun} or {"above": .., "below": ..}
    lighting: str | None = None
    style: str | None = None
    material: str | None = None
    pose: str | None = None              # anatomy: what the body does
    backdrop: str = "plain"
    skills: list[str] = field(default_factory=list)
    needs_text_search: bool = False
    seed: int = 0

    @property
    def entity_keys(self) -> list[str]:
        """The entities this recipe is about, for decontamination: the hidden one and what it points to
        (Knowledge-Anchored: "wiki:Colosseum" and "country:IT"), else the drawn subjects (a pair counts
        as one item: the benchmark item is the combination)."""
        if self.hidden:
            return list(dict.fromkeys([self.hidden.key, self.subjects[0].key]))
        keys = [s.key + (f"#{s.colour}" if s.colour else "") for s in self.subjects]
        return ["+".join(sorted(keys))] if len(keys) > 1 else keys

    @property
    def entity_names(self) -> list[str]:
        return [self.hidden.answer] if self.hidden else [s.name for s in self.subjects]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["entity_keys"] = self.entity_keys
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "recipe") -> "Recipe":
        if not isinstance(d, dict):
            raise RecipeError(f"{where}: a recipe must be a JSON object, got {type(d).__name__}")
        for name in ("id", "track", "category", "task_family", "dominant", "difficulty", "subjects"):
            if name not in d:
                raise RecipeError(f"{where}: field '{name}' is missing")
        if d["category"] not in CATEGORIES:
            raise RecipeError(f"{where}: field 'category': unknown category {d['category']!r} "
                              f"(known: {', '.join(CATEGORIES)})")
        if d["track"] != CATEGORIES[d["category"]].track:
            raise RecipeError(f"{where}: field 'track': {d['track']!r} does not match category {d['category']!r}")
        if d["task_family"] not in TASK_FAMILIES:
            raise RecipeError(f"{where}: field 'task_family': unknown {d['task_family']!r}")
        if d["dominant"] not in REQUIREMENTS:
            raise RecipeError(f"{where}: field 'dominant': unknown requirement {d['dominant']!r}")
        if d["difficulty"] not in DIFFICULTIES:
            raise RecipeError(f"{where}: field 'difficulty': must be one of {DIFFICULTIES}")
        if not isinstance(d["subjects"], list) or not d["subjects"]:
            raise RecipeError(f"{where}: field 'subjects' must be a non-empty list")
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in d.items() if k in known}
        try:
            values["subjects"] = [Subject(**s) for s in d["subjects"]]
            values["hidden"] = Hidden(**d["hidden"]) if d.get("hidden") else None
            return cls(**values)
        except TypeError as exc:
            raise RecipeError(f"{where}: {exc}") from None


def skills_for(requirements: list[str]) -> list[str]:
    """The skills that cover these requirements, in a fixed order, without repeats."""
    out = []
    for r in requirements:
        skill = REQUIREMENTS.get(r)
        if skill and skill not in out:
            out.append(skill)
    return out


def category_table() -> list[dict[str, Any]]:
    """The taxonomy as rows, for reports."""
    return [asdict(c) for c in CATEGORIES.values()]
