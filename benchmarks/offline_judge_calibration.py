"""Calibrate the offline judge on pairs where the right answer is known, and print one table per dimension.

Each pair has a ground-truth image and two candidates drawn by the offline renderer from library
images: a right one and a wrong one. The right candidate is never a copy of the ground truth: it
comes from a different gen_prompt (other placement, size, backdrop colour, an added caption, a
different seed), the way an agent's program differs from the ground-truth program.

    visual_correctness  right reference vs a wrong one of the same family (flag vs another flag,
                        animal vs another animal, red book vs blue book)
    text_accuracy       the required text vs a different phrase, or the same phrase misspelt with
                        at least max(2, 15%) of its letters changed
    faithfulness        the right count vs one more or one fewer; the right left/right or
                        above/below order vs the swapped one (two objects, or one object in two
                        colours)
    aesthetics          a clean render vs the same render degraded (blur, haze, too dark, blown out)

A pair is won when the right candidate gets the higher grade. Grades are on {0, .5, 1}, so ties
happen; the table gives the share with ties counted as half and, stricter, as failures, plus the
ranking by the judge's raw measurement behind the grade.

    .venv/bin/python benchmarks/offline_judge_calibration.py [--pairs 40] [--out DIR] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genevolve.data.world import OfflineWorld  # noqa: E402


@dataclass
class Subject:
    """A named thing drawn from one library image."""

    library_id: str
    noun: str
    plural: str


def world_subjects(ids: set[str]):
    """Flags, hidden things, named things and colour variants of the offline world whose images
    the scene has: (flags, hidden, named, variants by kind)."""
    entities = list(OfflineWorld.load().entities.values())
    flags = [(e.name.lower(), "flag", e.renditions[0]) for e in entities
             if e.kind == "country" and e.renditions and e.renditions[0] in ids]
    hidden = [(e.noun, "thing", e.renditions[0]) for e in entities
              if e.kind == "thing" and e.renditions and e.renditions[0] in ids]
    named = [Subject(e.renditions[0], e.noun, e.plural) for e in OfflineWorld.load().by_category()
             ["grounded_quantity_scene"] if e.renditions and e.renditions[0] in ids]
    variants: dict[str, list[tuple[str, str]]] = {}
    for e in entities:
        if e.kind == "variant" and e.renditions:
            variants.setdefault(e.facts["kind"], []).append((e.facts["colour"], e.renditions[0]))
    return flags, hidden, named, {k: v for k, v in variants.items() if len(v) >= 2}
from genevolve.generators.offline import OfflineRenderer  # noqa: E402
from genevolve.judges.offline import judge_images  # noqa: E402
from genevolve.program import Program, Reference  # noqa: E402
from genevolve.tools.image_library import ImageLibrary  # noqa: E402

# How a candidate's program may differ from the ground-truth program (placement, backdrop, extras).
SINGLE_LAYOUTS = [
    "The {noun} from the first reference image on the left.",
    "The {noun} from the first reference image on the right.",
    "The {noun} from the first reference image in the top-left corner.",
    "The {noun} from the first reference image, centered, on a teal backdrop.",
    "The {noun} from the first reference image, centered, with the caption \"{extra}\" at the bottom.",
    "The {noun} from the first reference image at the bottom, on a purple backdrop.",
    "The first reference image.",
]
EXTRA_CAPTIONS = ["LOOK HERE", "SPECIMEN", "EXHIBIT A", "TODAY"]
TEXT_POOL = ["OPEN 24 HOURS", "FRESH BREAD DAILY", "GRAND OPENING", "WELCOME HOME", "NO PARKING",
             "CAFE LUNA", "BOOK CLUB", "SCIENCE FAIR 2026", "STAY CURIOUS", "GARDEN PARTY", "MOON MARKET",
             "FARM STAND", "ROBOT LAB", "NIGHT OWLS", "BAKE SALE", "JAZZ NIGHT", "SUMMER CAMP",
             "LOST AND FOUND", "RECORD STORE", "FIRST PRIZE", "MAKER SPACE", "TIDE POOL TOURS"]
DEGRADATIONS = ["blur", "haze", "dark", "blown out"]


@dataclass
class Pair:
    dimension: str
    kind: str
    request: str
    meta: dict
    gt: str
    right: str
    wrong: str


class Scene:
    """Renders programs over library images into a working folder."""

    def __init__(self, folder: Path, library: ImageLibrary):
        self.folder, self.library = folder, library
        self.entries = {e.id: e for e in library.entries()}
        self.renderer = OfflineRenderer(long_side=768)
        self.n = 0

    def render(self, gen_prompt: str, ids: list[str], seed: int = 0) -> str:
        refs = [Reference(img_id=f"IMG_{i:03d}", local_path=str(self.library.path_of(self.entries[x])))
                for i, x in enumerate(ids, 1)]
        self.n += 1
        path = self.folder / f"{self.n:04d}.png"
        self.renderer.render_sync(Program(gen_prompt, refs), seed=seed).image.save(path)
        return str(path)


def misspell(text: str, rng: random.Random) -> str:
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    k = max(2, round(0.15 * len(letters)))
    chars = list(text)
    for i in rng.sample(letters, k):
        chars[i] = rng.choice([c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c != chars[i].upper()])
    return "".join(chars)


def degrade(path: str, how: str, out: str) -> str:
    im = Image.open(path).convert("RGB")
    if how == "blur":
        im = im.filter(ImageFilter.GaussianBlur(radius=im.width / 160))
    elif how == "haze":
        im = Image.blend(im, Image.new("RGB", im.size, (200, 200, 200)), 0.7)
    elif how == "dark":
        im = ImageEnhance.Brightness(im).enhance(0.15)
    elif how == "blown out":
        im = ImageEnhance.Brightness(im).enhance(3.0)
    im.save(out)
    return out


def build_pairs(scene: Scene, n: int, rng: random.Random) -> list[Pair]:
    flags, hidden, named, colour_variants = world_subjects(set(scene.entries))
    pairs: list[Pair] = []

    def single(noun: str, ref: str, layout: str, seed: int) -> str:
        return scene.render(layout.format(noun=noun, extra=rng.choice(EXTRA_CAPTIONS)), [ref], seed)

    for i in range(n):                                          # visual: right vs wrong reference
        family = flags if i % 2 == 0 else hidden
        (name, noun, right), (_, _, wrong) = rng.sample(family, 2)
        gt = single(noun, right, "The {noun} from the first reference image, centered.", 0)
        layout = rng.choice(SINGLE_LAYOUTS)
        seed = rng.randint(1, 999)
        pairs.append(Pair("visual_correctness", "flag" if noun == "flag" else "subject", f"The {name}.", {},
                          gt, single(noun, right, layout, seed), single(noun, wrong, layout, seed)))
    for i in range(n // 4):                                     # visual: colour variants
        kind = rng.choice(sorted(colour_variants))
        (_, right), (_, wrong) = rng.sample(colour_variants[kind], 2)
        layout, seed = rng.choice(SINGLE_LAYOUTS), rng.randint(1, 999)
        gt = single(kind, right, "The {noun} from the first reference image, centered.", 0)
        pairs.append(Pair("visual_correctness", "colour variant", f"A {kind}.", {}, gt,
                          single(kind, right, layout, seed), single(kind, wrong, layout, seed)))

    for i in range(n):                                          # text: right vs wrong text
        s = rng.choice(named)
        text = rng.choice(TEXT_POOL)
        other = rng.choice([t for t in TEXT_POOL if t != text]) if i % 2 == 0 else misspell(text, rng)
        where = rng.choice([("title", "at the top"), ("caption", "at the bottom")])
        gt_prompt = f"The {s.noun} from the first reference image, centered, with the {where[0]} \"{text}\" {where[1]}."
        place = rng.choice(["on the left", "on the right", "centered", "at the top"])
        cand = "The {noun} from the first reference image " + place + ", with the caption \"{t}\" at the bottom."
        seed = rng.randint(1, 999)
        request = f"A {s.noun} with the text \"{text}\"."
        pairs.append(Pair("text_accuracy", "different phrase" if i % 2 == 0 else "misspelt", request, {},
                          scene.render(gt_prompt, [s.library_id]),
                          scene.render(cand.format(noun=s.noun, t=text), [s.library_id], seed),
                          scene.render(cand.format(noun=s.noun, t=other), [s.library_id], seed)))

    for i in range(n):                                          # faithfulness: counts and relations
        if i % 3 < 2:
            s = rng.choice(named)
            k = rng.randint(2, 8)
            wrong_k = k + rng.choice([-1, 1]) if k > 2 else k + 1
            tail = rng.choice(["", " on a dark green backdrop", " with the caption \"COUNT THEM\" at the bottom"])
            seed = rng.randint(1, 999)
            pairs.append(Pair("faithfulness", "count", f"Exactly {k} {s.plural}.", {"count": k},
                              scene.render(f"{k} {s.plural} from the first reference image.", [s.library_id]),
                              scene.render(f"{k} {s.plural} from the first reference image{tail}.", [s.library_id], seed),
                              scene.render(f"{wrong_k} {s.plural} from the first reference image{tail}.",
                                           [s.library_id], seed)))
        else:
            if i % 2:                                   # two named things, or one thing in two colours
                a, b = rng.sample(named, 2)
            else:
                kind = rng.choice(sorted(colour_variants))
                a, b = (Subject(e, f"{c} {kind}", "") for c, e in rng.sample(colour_variants[kind], 2))
            vertical = rng.random() < 0.4
            first, second = ("at the top", "at the bottom") if vertical else ("on the left", "on the right")
            relation = {"above": a.noun, "below": b.noun} if vertical else {"left": a.noun, "right": b.noun}
            prompt = "The {x} from the first reference image {p} and the {y} from the second reference image {q}{tail}."
            tail = rng.choice(["", ", on a navy backdrop", ", with the caption \"PAIR\" at the bottom"])
            seed = rng.randint(1, 999)
            gt = scene.render(prompt.format(x=a.noun, y=b.noun, p=first, q=second, tail=""), [a.library_id, b.library_id])
            right = scene.render(prompt.format(x=a.noun, y=b.noun, p=first, q=second, tail=tail),
                                 [a.library_id, b.library_id], seed)
            wrong = scene.render(prompt.format(x=a.noun, y=b.noun, p=second, q=first, tail=tail),
                                 [a.library_id, b.library_id], seed)
            pairs.append(Pair("faithfulness", "relation", f"A {a.noun} and a {b.noun}.", {"relation": relation},
                              gt, right, wrong))

    for i in range(n):                                          # aesthetics: clean vs degraded
        name, noun, ref = rng.choice(flags + hidden)
        gt = single(noun, ref, "The {noun} from the first reference image, centered.", 0)
        right = single(noun, ref, rng.choice(SINGLE_LAYOUTS), rng.randint(1, 999))
        how = DEGRADATIONS[i % len(DEGRADATIONS)]
        pairs.append(Pair("aesthetics", how, f"The {name}.", {}, gt, right,
                          degrade(right, how, right.replace(".png", f"-{how.replace(' ', '_')}.png"))))
    return pairs


def raw_measure(dimension: str, result) -> float:
    """The continuous quantity behind each grade (higher = better), for the ranking column."""
    extra = result.extra
    if dimension == "visual_correctness":
        return extra["visual"]["similarity"]
    if dimension == "text_accuracy":
        return -max(extra["text"]["distance"].values())
    if dimension == "faithfulness":
        checks = extra["checks"]
        return sum(checks.values()) / max(1, len(checks))
    return -len(extra["aesthetics"]["defects"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=40, help="pairs per dimension (default 40)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=None, help="keep the rendered images here (default: a temp folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="offline-judge-calibration-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pairs = build_pairs(Scene(folder, ImageLibrary(include_user=False)), args.pairs, rng)
    t_render = time.perf_counter() - t0

    rows: dict[str, dict[str, float]] = {}
    by_kind: dict[tuple[str, str], list[int]] = {}
    judge_seconds: list[float] = []
    for pair in pairs:
        results = []
        for candidate in (pair.right, pair.wrong):
            t = time.perf_counter()
            results.append(judge_images(pair.request, candidate, pair.gt, pair.meta))
            judge_seconds.append(time.perf_counter() - t)
        right, wrong = (r.scores[pair.dimension] for r in results)
        raw_right, raw_wrong = (raw_measure(pair.dimension, r) for r in results)
        row = rows.setdefault(pair.dimension, {"pairs": 0, "won": 0, "tied": 0, "lost": 0, "raw_won": 0.0})
        row["pairs"] += 1
        outcome = "won" if right > wrong else "tied" if right == wrong else "lost"
        row[outcome] += 1
        row["raw_won"] += 1.0 if raw_right > raw_wrong else 0.5 if raw_right == raw_wrong else 0.0
        tally = by_kind.setdefault((pair.dimension, pair.kind), [0, 0, 0])
        tally[["won", "tied", "lost"].index(outcome)] += 1
        if outcome != "won":
            print(f"  {outcome}: {pair.dimension}/{pair.kind}: right {right} vs wrong {wrong} "
                  f"(raw {raw_right:.3f} vs {raw_wrong:.3f}); {Path(pair.right).name} vs {Path(pair.wrong).name}",
                  file=sys.stderr)

    print(f"offline judge calibration: {len(pairs)} pairs, seed {args.seed}, images in {folder}")
    print(f"{'dimension':<20} {'pairs':>5} {'won':>4} {'tied':>4} {'lost':>4} {'ties=half':>10} "
          f"{'ties=fail':>10} {'raw rank':>9}")
    for dim in ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics"):
        r = rows.get(dim)
        if not r:
            continue
        half = 100 * (r["won"] + 0.5 * r["tied"]) / r["pairs"]
        strict = 100 * r["won"] / r["pairs"]
        print(f"{dim:<20} {r['pairs']:>5} {r['won']:>4} {r['tied']:>4} {r['lost']:>4} {half:>9.1f}% "
              f"{strict:>9.1f}% {100 * r['raw_won'] / r['pairs']:>8.1f}%")
    print("by kind (won/tied/lost): " + "; ".join(f"{d}/{k} {w}/{t}/{l}" for (d, k), (w, t, l) in sorted(by_kind.items())))
    print(f"time: render {t_render:.1f} s; judge {np.mean(judge_seconds):.2f} s per image "
          f"(median {np.median(judge_seconds):.2f} s, {len(judge_seconds)} judgements)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
