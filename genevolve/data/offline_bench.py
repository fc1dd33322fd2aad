"""The offline benchmark: GenEvolve-Bench-style rows generated from the offline world, with GT images.

Every row is built from facts and images that ship with the offline tools, so an agent can answer
it with no network: the country facts behind the offline text search (countryinfo) and the labelled
image library (Noto Color Emoji, including every national flag). Rows come in the published format
(`id, question, gt_image, eval_type, category, difficulty`) plus `split` and a `meta` block with
what the offline judge checks: the entity, the exact texts, the expected count, the required
relation, and the ground-truth program (gen_prompt + library image ids) that drew the GT image.

Two tracks, as in the paper:
- Knowledge-Anchored: the request hides its subject behind a fact ("the flag of the country whose
  capital is Canberra", "the largest living land animal"), so the agent must search text first;
  hard rows add a count, a caption or a second hidden subject.
- Quality-Anchored: named subjects with an exact quoted text, an exact count, a left/right or
  above/below arrangement, or colour variants bound to positions.

Everything is deterministic: the same library gives the same rows and the same pixels. The held-out
split is fixed by a hash of the row id: a quarter of each category is `test`.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..jsonio import atomic_write_bytes, atomic_write_json, write_jsonl_atomic

BENCH_VERSION = 1
KA, QA = "Knowledge-Anchored", "Quality-Anchored"
TEST_SHARE = 4                   # one row in four is held out
MIN_POPULATION = 250_000         # smaller places are mostly dependencies that fly another flag


@dataclass(frozen=True)
class Subject:
    emoji: str                   # code points of the library entry, e.g. "1f418"
    noun: str
    plural: str
    clue: str                    # the subject described without its name

    @property
    def library_id(self) -> str:
        return f"emoji-{self.emoji}"


# Subjects whose identity a fact gives away; clues are our own wording of well-known facts.
HIDDEN_SUBJECTS = [
    Subject("1f418", "elephant", "elephants", "the largest living land animal"),
    Subject("1f992", "giraffe", "giraffes", "the tallest living animal, the one with a very long neck"),
    Subject("1f993", "zebra", "zebras", "the African wild horse famous for its black-and-white stripes"),
    Subject("1f42a", "camel", "camels", "the one-humped desert animal called the ship of the desert"),
    Subject("1f98f", "rhinoceros", "rhinoceroses", "the large grey herbivore with a horn on its nose"),
    Subject("1f99b", "hippopotamus", "hippopotamuses", "the African mammal whose Greek name means river horse"),
    Subject("1f427", "penguin", "penguins", "the flightless seabird of Antarctica that walks upright"),
    Subject("1f428", "koala", "koalas", "the eucalyptus-eating Australian marsupial often wrongly called a bear"),
    Subject("1f43c", "panda", "pandas", "the black-and-white bear of China that lives on bamboo"),
    Subject("1f419", "octopus", "octopuses", "the eight-armed sea animal with three hearts"),
    Subject("1f988", "shark", "sharks", "the fish whose great white species starred in the film Jaws"),
    Subject("1f42c", "dolphin", "dolphins", "the playful marine mammal that hunts by echolocation"),
    Subject("1f422", "turtle", "turtles", "the reptile that carries its shell as its home"),
    Subject("1f40a", "crocodile", "crocodiles", "the large reptile of the Nile with powerful jaws"),
    Subject("1f987", "bat", "bats", "the only mammal capable of true flight"),
    Subject("1f989", "owl", "owls", "the nocturnal bird of prey that can turn its head about 270 degrees"),
    Subject("1f99a", "peacock", "peacocks", "the national bird of India, whose male fans out eye-spotted feathers"),
    Subject("1f9a9", "flamingo", "flamingos", "the pink wading bird that often stands on one leg"),
    Subject("1f985", "eagle", "eagles", "the bird of prey on the Great Seal of the United States"),
    Subject("1f98d", "gorilla", "gorillas", "the largest living primate"),
    Subject("1f998", "kangaroo", "kangaroos", "the hopping marsupial on Australia's coat of arms"),
    Subject("1f9a5", "sloth", "sloths", "the slow tree-dwelling mammal of South America that hangs upside down"),
    Subject("1f41d", "bee", "bees", "the insect that makes honey"),
    Subject("1f98b", "butterfly", "butterflies", "the winged insect that emerges from a chrysalis"),
    Subject("1f95d", "kiwi fruit", "kiwi fruits", "the fuzzy brown fruit named after New Zealand's national bird"),
    Subject("1f34d", "pineapple", "pineapples", "the tropical fruit with a spiky crown of leaves"),
    Subject("1f965", "coconut", "coconuts", "the hard brown palm fruit whose water people drink"),
    Subject("1f951", "avocado", "avocados", "the green fruit that is the main ingredient of guacamole"),
    Subject("1f363", "sushi", "sushi pieces", "the Japanese dish of vinegared rice topped with raw fish"),
    Subject("1f355", "pizza slice", "pizza slices", "a slice of the flat baked dish from Naples topped with tomato"),
    Subject("1f32e", "taco", "tacos", "the folded Mexican tortilla filled with meat"),
    Subject("1f950", "croissant", "croissants", "the crescent-shaped buttery French pastry"),
    Subject("1f968", "pretzel", "pretzels", "the knot-shaped baked bread popular in Bavaria"),
    Subject("1f96f", "bagel", "bagels", "the ring-shaped bread roll that is boiled before it is baked"),
    Subject("1f5fd", "Statue of Liberty", "statues", "the copper statue France gave to the United States, in New York Harbor"),
    Subject("1f5fc", "Tokyo Tower", "towers", "the red-and-white lattice tower in Japan's capital modelled on the Eiffel Tower"),
    Subject("1f5fb", "Mount Fuji", "mountains", "the highest mountain of Japan, a snow-capped volcano"),
    Subject("1f5ff", "moai", "moai statues", "the giant stone head statues of Easter Island"),
    Subject("1fa90", "ringed planet", "ringed planets", "the sixth planet from the Sun, famous for its rings"),
    Subject("1f52d", "telescope", "telescopes", "the instrument Galileo turned to the night sky in 1609"),
    Subject("1f52c", "microscope", "microscopes", "the instrument with which van Leeuwenhoek first saw bacteria"),
    Subject("1f3bb", "violin", "violins", "the smallest, highest-pitched bowed string instrument of the orchestra"),
    Subject("1f3b7", "saxophone", "saxophones", "the reed instrument invented by Adolphe Sax"),
    Subject("1fa95", "banjo", "banjos", "the string instrument with a drum-like round body, central to bluegrass"),
    Subject("1f9ed", "compass", "compasses", "the navigation instrument whose magnetised needle points north"),
    Subject("2693", "anchor", "anchors", "the heavy hooked object a ship drops to the seabed to stay in place"),
]

# Named subjects for the quality track.
NAMED_SUBJECTS = [
    Subject("1f34e", "apple", "apples", ""), Subject("2b50", "star", "stars", ""),
    Subject("1f388", "balloon", "balloons", ""), Subject("1f33b", "sunflower", "sunflowers", ""),
    Subject("1f339", "rose", "roses", ""), Subject("1f335", "cactus", "cacti", ""),
    Subject("1f344", "mushroom", "mushrooms", ""), Subject("1f36a", "cookie", "cookies", ""),
    Subject("1f369", "doughnut", "doughnuts", ""), Subject("1f9c1", "cupcake", "cupcakes", ""),
    Subject("1f353", "strawberry", "strawberries", ""), Subject("1f34b", "lemon", "lemons", ""),
    Subject("1f349", "watermelon slice", "watermelon slices", ""), Subject("1f955", "carrot", "carrots", ""),
    Subject("1f3c0", "basketball", "basketballs", ""), Subject("26bd", "soccer ball", "soccer balls", ""),
    Subject("1f3b2", "die", "dice", ""), Subject("1f511", "key", "keys", ""),
    Subject("1f4a1", "light bulb", "light bulbs", ""), Subject("1f514", "bell", "bells", ""),
    Subject("1f451", "crown", "crowns", ""), Subject("1f392", "backpack", "backpacks", ""),
    Subject("1f916", "robot", "robots", ""), Subject("1f383", "jack-o'-lantern", "jack-o'-lanterns", ""),
    Subject("1f384", "Christmas tree", "Christmas trees", ""), Subject("1f680", "rocket", "rockets", ""),
    Subject("1f3b8", "guitar", "guitars", ""), Subject("1f381", "gift box", "gift boxes", ""),
    Subject("1f431", "cat face", "cat faces", ""), Subject("1f436", "dog face", "dog faces", ""),
]

# Colour variants of one kind of object, for attribute binding.
COLOUR_VARIANTS = {
    "apple": [("red", "1f34e"), ("green", "1f34f")],
    "book": [("red", "1f4d5"), ("green", "1f4d7"), ("blue", "1f4d8"), ("orange", "1f4d9")],
    "heart": [("red", "2764"), ("blue", "1f499"), ("green", "1f49a"), ("yellow", "1f49b"), ("purple", "1f49c"),
              ("orange", "1f9e1")],
    "circle": [("red", "1f534"), ("blue", "1f535"), ("green", "1f7e2"), ("yellow", "1f7e1")],
    "square": [("red", "1f7e5"), ("blue", "1f7e6"), ("green", "1f7e9"), ("yellow", "1f7e8")],
}

SIGN_TEXTS = ["OPEN 24 HOURS", "FRESH BREAD DAILY", "GRAND OPENING", "SALE 50% OFF", "WELCOME HOME",
              "HAPPY BIRTHDAY", "NO PARKING", "CAFE LUNA", "BOOK CLUB", "SCIENCE FAIR 2026", "STAY CURIOUS",
              "GARDEN PARTY", "MOON MARKET", "KEEP OUT", "FARM STAND", "ROBOT LAB", "NIGHT OWLS", "BAKE SALE",
              "JAZZ NIGHT", "ZERO WASTE", "TEAM BLUE", "SUMMER CAMP", "PET SHOP", "LOST AND FOUND",
              "EXIT ONLY", "RECORD STORE", "TIDE POOL TOURS", "FIRST PRIZE", "OCEAN CLEANUP", "MAKER SPACE"]
CAPTIONS = ["WELCOME", "HELLO WORLD", "BON VOYAGE", "TEAM SPIRIT", "NATIONAL DAY", "SEE YOU SOON",
            "UNITY", "HOME SWEET HOME", "GO TEAM", "PEACE", "VISIT US", "FRIENDS FOREVER"]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
SKILLS = {"text": "text_rendering", "count": "quantity_counting", "layout": "spatial_layout",
          "binding": "attribute_binding"}


@dataclass
class BenchItem:
    """One benchmark row and the ground-truth program that draws its GT image."""

    row: dict[str, Any]
    gen_prompt: str
    library_ids: list[str]


def assign_splits(rows: list[dict[str, Any]]) -> None:
    """Hold out a quarter of every category: the rows whose id hashes lowest within it are `test`.

    Stratified by category so each split sees every kind of row; the hash makes the choice fixed
    and independent of row order."""
    by_category: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    for group in by_category.values():
        ranked = sorted(group, key=lambda r: hashlib.sha256(r["id"].encode("utf-8")).hexdigest())
        held_out = round(len(group) / TEST_SHARE)
        for n, row in enumerate(ranked):
            row["split"] = "test" if n < held_out else "train"


def country_flags(library_ids: set[str]) -> list[dict[str, str]]:
    """Countries (and large territories) with a capital and a flag in the library, sorted by name.

    Only capitals and domains that belong to exactly one country are kept, so each clue names one
    country."""
    from countryinfo import CountryInfo

    seen, countries = set(), []
    for info in CountryInfo.all().values():
        code = (info.get("ISO") or {}).get("alpha2")
        capital = info.get("capital")
        if not code or code in seen or not isinstance(capital, str) or not capital.strip():
            continue
        if (info.get("population") or 0) < MIN_POPULATION:     # small dependencies share flags
            continue
        seen.add(code)
        flag = "emoji-" + "-".join(f"{0x1F1E6 + ord(ch) - ord('A'):x}" for ch in code.upper())
        if flag in library_ids:
            tld = (info.get("tld") or [""])[0]
            countries.append({"name": info["name"], "code": code, "capital": capital.strip(), "tld": tld,
                              "library_id": flag})
    for key in ("capital", "tld"):
        counts: dict[str, int] = {}
        for c in countries:
            counts[c[key]] = counts.get(c[key], 0) + 1
        for c in countries:
            if counts[c[key]] > 1:
                c[key] = ""
    return sorted((c for c in countries if c["capital"]), key=lambda c: c["name"])


def make_items(library_ids: set[str]) -> list[BenchItem]:
    """All rows, in a fixed order; ids are unique and stable for a given library."""
    rng = random.Random(f"genevolve-offline-bench-{BENCH_VERSION}")
    items: list[BenchItem] = []
    countries = country_flags(library_ids)
    hidden = [s for s in HIDDEN_SUBJECTS if s.library_id in library_ids]
    named = [s for s in NAMED_SUBJECTS if s.library_id in library_ids]

    def add(category: str, eval_type: str, difficulty: str, question: str, gen_prompt: str,
            refs: list[str], entity: str, skills: list[str], **meta: Any) -> None:
        item_id = f"offline_{category}_{sum(1 for i in items if i.row['category'] == category) + 1:03d}"
        meta = {"entity": entity, "required_texts": meta.pop("texts", []), **meta,
                "primary_skills": skills,
                "gt_program": {"gen_prompt": gen_prompt,
                               "reference_images": [{"img_id": f"IMG_{i:03d}", "library_id": r}
                                                    for i, r in enumerate(refs, 1)]}}
        row = {"id": item_id, "question": question, "gt_image": f"images/{item_id}.png", "eval_type": eval_type,
               "category": category, "difficulty": difficulty, "split": "", "meta": meta}
        items.append(BenchItem(row, gen_prompt, refs))

    # Knowledge-anchored flags: the country is named only through its capital (or its web domain).
    picked = rng.sample(countries, min(90, len(countries)))
    for n, c in enumerate(picked):
        if n < 55:
            add("flag_by_capital", KA, "medium",
                f"Show the national flag of the country whose capital city is {c['capital']}, centered on a "
                "plain backdrop.",
                "The flag from the first reference image, centered.", [c["library_id"]], c["name"], [])
        elif c["tld"]:
            caption = rng.choice(CAPTIONS)
            add("flag_by_domain", KA, "hard",
                f"Make a small poster with the flag of the country whose internet domain is {c['tld']}, "
                f"centered, and the caption \"{caption}\" written at the bottom.",
                f"The flag from the first reference image, centered, with the caption \"{caption}\" at the bottom.",
                [c["library_id"]], c["name"], [SKILLS["text"]], texts=[caption])
        else:
            caption = rng.choice(CAPTIONS)
            add("flag_by_capital", KA, "hard",
                f"Make a small poster with the flag of the country whose capital is {c['capital']}, centered, "
                f"and the caption \"{caption}\" written at the bottom.",
                f"The flag from the first reference image, centered, with the caption \"{caption}\" at the bottom.",
                [c["library_id"]], c["name"], [SKILLS["text"]], texts=[caption])

    # Knowledge-anchored subjects described by a fact.
    for s in hidden:
        add("hidden_subject", KA, "medium",
            f"Draw {s.clue}, alone in the middle of a plain backdrop.",
            f"The {s.noun} from the first reference image, centered.", [s.library_id], s.noun, [])
    for s in rng.sample(hidden, min(20, len(hidden))):
        n = rng.randint(2, 6)
        add("hidden_subject_count", KA, "hard",
            f"Show exactly {n} copies of {s.clue}, neatly arranged on a plain backdrop.",
            f"{n} {s.plural} from the first reference image.", [s.library_id], s.noun, [SKILLS["count"]],
            count=n)
    pairs = list(zip(rng.sample(hidden, len(hidden)), rng.sample(hidden, len(hidden))))
    for a, b in [p for p in pairs if p[0] != p[1]][:16]:
        add("hidden_subject_layout", KA, "hard",
            f"Put {a.clue} on the left and {b.clue} on the right, side by side.",
            f"The {a.noun} from the first reference image on the left and the {b.noun} from the second "
            "reference image on the right.", [a.library_id, b.library_id], f"{a.noun}; {b.noun}",
            [SKILLS["layout"]], relation={"left": a.noun, "right": b.noun})

    # Quality-anchored: exact text.
    for n, text in enumerate(SIGN_TEXTS):
        s = named[n % len(named)]
        where, slot = ("title", "at the top") if n % 2 else ("caption", "at the bottom")
        hard = len(text.split()) >= 3 or any(ch.isdigit() for ch in text)
        add("grounded_text_layout", QA, "hard" if hard else "medium",
            f"A simple poster of a {s.noun}, centered, with the {where} \"{text}\" {slot}, spelled exactly.",
            f"The {s.noun} from the first reference image, centered, with the {where} \"{text}\" {slot}.",
            [s.library_id], s.noun, [SKILLS["text"]], texts=[text])
    # Quality-anchored: exact counts.
    for n, s in enumerate(rng.sample(named, len(named))[:28]):
        k = 2 + n % 8
        add("grounded_quantity_scene", QA, "hard" if k >= 6 else "medium",
            f"Exactly {k} ({NUMBER_WORDS[k]}) {s.plural}, evenly arranged on a plain backdrop, no more and no less.",
            f"{k} {s.plural} from the first reference image.", [s.library_id], s.noun, [SKILLS["count"]], count=k)
    # Quality-anchored: spatial relations.
    shuffled = rng.sample(named, len(named))
    for n in range(24):
        a, b = shuffled[n % len(shuffled)], shuffled[(n + 7) % len(shuffled)]
        if n % 3 == 2:
            add("spatial_relation", QA, "hard",
                f"A {a.noun} directly above a {b.noun}, stacked vertically on a plain backdrop.",
                f"The {a.noun} from the first reference image at the top and the {b.noun} from the second "
                "reference image at the bottom.", [a.library_id, b.library_id], f"{a.noun}; {b.noun}",
                [SKILLS["layout"]], relation={"above": a.noun, "below": b.noun})
        else:
            add("spatial_relation", QA, "medium",
                f"A {a.noun} on the left and a {b.noun} on the right, side by side on a plain backdrop.",
                f"The {a.noun} from the first reference image on the left and the {b.noun} from the second "
                "reference image on the right.", [a.library_id, b.library_id], f"{a.noun}; {b.noun}",
                [SKILLS["layout"]], relation={"left": a.noun, "right": b.noun})
    # Quality-anchored: colours bound to positions.
    combos = [(kind, x, y) for kind, variants in sorted(COLOUR_VARIANTS.items())
              for x in variants for y in variants if x != y]
    for kind, (c1, e1), (c2, e2) in rng.sample(combos, 22):
        ids = [f"emoji-{e1}", f"emoji-{e2}"]
        if not all(i in library_ids for i in ids):
            continue
        add("attribute_binding", QA, "medium" if kind in ("apple", "book") else "hard",
            f"A {c1} {kind} on the left and a {c2} {kind} on the right; keep each colour on its own {kind}.",
            f"The {c1} {kind} from the first reference image on the left and the {c2} {kind} from the second "
            "reference image on the right.", ids, f"{c1} {kind}; {c2} {kind}", [SKILLS["binding"], SKILLS["layout"]],
            relation={"left": f"{c1} {kind}", "right": f"{c2} {kind}"})
    assign_splits([i.row for i in items])
    return items


def build_benchmark(output_dir: str | Path, *, long_side: int = 768, library: Any = None,
                    per_category: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write `train.jsonl`, `test.jsonl`, `all.jsonl` and `images/<id>.png` under `output_dir`.

    `per_category` keeps only the first N rows of each category (a quick smoke build). Every GT
    image is rendered and checked; an existing file is only rewritten when its bytes differ.
    Returns counts for the report."""
    from ..generators.offline import OfflineRenderer
    from ..program import Program, Reference
    from ..tools.image_library import ImageLibrary

    out = Path(output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    library = library or ImageLibrary(include_user=False)
    entries = {e.id: e for e in library.entries()}
    items = make_items(set(entries))
    if per_category is not None:
        seen: dict[str, int] = {}
        subset = []
        for item in items:
            seen[item.row["category"]] = seen.get(item.row["category"], 0) + 1
            if seen[item.row["category"]] <= per_category:
                subset.append(item)
        items = subset
    renderer = OfflineRenderer(long_side=long_side)
    for n, item in enumerate(items, 1):
        target = out / item.row["gt_image"]
        refs = [Reference(img_id=f"IMG_{i:03d}", local_path=str(library.path_of(entries[r])),
                          title=entries[r].title) for i, r in enumerate(item.library_ids, 1)]
        result = renderer.render_sync(Program(item.gen_prompt, refs))
        check_render(item, result.metadata)
        buffer = io.BytesIO()
        result.image.save(buffer, format="PNG")
        if not target.exists() or target.read_bytes() != buffer.getvalue():
            atomic_write_bytes(target, buffer.getvalue())
        if progress:
            progress(n, len(items))
    rows = [i.row for i in items]
    write_jsonl_atomic(out / "all.jsonl", rows)
    for split in ("train", "test"):
        write_jsonl_atomic(out / f"{split}.jsonl", [r for r in rows if r["split"] == split])
    counts = {"rows": len(rows), "test": sum(r["split"] == "test" for r in rows),
              "train": sum(r["split"] == "train" for r in rows),
              "by_eval_type": _tally(rows, "eval_type"), "by_category": _tally(rows, "category"),
              "by_difficulty": _tally(rows, "difficulty")}
    atomic_write_json(out / "BENCH.json", {"version": BENCH_VERSION, "long_side": long_side, **counts})
    return counts


def check_render(item: BenchItem, metadata: dict[str, Any]) -> None:
    """The GT render must show what the row promises: the right number of copies, every text."""
    placed = [p for p in metadata.get("placed", []) if p.get("role") == "subject"]
    boxes = sum(len(p["boxes"]) for p in placed)
    meta = item.row["meta"]
    expected = meta.get("count") or len(item.library_ids)
    problems = []
    if boxes != expected:
        problems.append(f"{boxes} subject boxes drawn, {expected} expected")
    drawn = {p["what"] for p in metadata.get("placed", []) if p.get("role") == "text"}
    for text in meta["required_texts"]:
        if f"text '{text}'" not in drawn:
            problems.append(f"text {text!r} not drawn")
    if problems:
        raise RuntimeError(f"{item.row['id']}: the ground-truth render is wrong ({'; '.join(problems)}); "
                           f"gen_prompt: {item.gen_prompt!r}")


def _tally(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r[key]] = out.get(r[key], 0) + 1
    return dict(sorted(out.items()))


def rows_digest(rows: list[dict[str, Any]]) -> str:
    """A fingerprint of the rows, to check that two builds agree."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode("utf-8")).hexdigest()
