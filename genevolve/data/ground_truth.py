"""Ground-truth images that the candidate's own renderer cannot reproduce from the candidate's assets.

Offline, the agent's program is drawn by the offline compositor from library images. If the GT were
drawn the same way from the same images, the offline judge would largely measure agreement with the
compositor. So a GT is drawn from another rendition of each subject: for a subject with several
library images (flat flag and emoji flag, cat emoji and tabby photo, a pose in other genders and skin
tones) it uses one that is neither the usual first image-search hit nor what the teacher picked
("alternate"); a subject with a single image is re-staged: turned by a few degrees and rescaled into
a new asset file that no search returns ("restaged"). The backdrop also varies with the recipe's seed.

`visual_filter` is the paper's GT filter made exact for the offline renderer: the render must show
the expected number of subjects and every required text. `cross_rendition_pairs` measures how often
the offline judge ranks the right program above a wrong one when the GT is another rendition.
"""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path
from typing import Any

from ..jsonio import atomic_write_bytes
from ..program import Program, Reference
from .recipes import gt_gen_prompt
from .taxonomy import Recipe

ALTERNATE, RESTAGED = "alternate", "restaged"


def library_id_of(path: str | None) -> str:
    return Path(path).stem if path else ""


def choose_renditions(recipe: Recipe, avoid: set[str]) -> list[tuple[str, str]]:
    """(library id, alternate|restaged) per subject: another rendition than the usual hit and `avoid`."""
    out = []
    for s in recipe.subjects:
        usual = s.renditions[0] if s.renditions else ""
        others = [r for r in s.renditions[1:] if r not in avoid and r != usual]
        out.append((others[0], ALTERNATE) if others else (usual, RESTAGED))
    return out


def restage(source: Path, target: Path, rng: random.Random) -> Path:
    """A turned, rescaled copy of an image: the same subject, a picture no search returns."""
    from PIL import Image

    with Image.open(source) as im:
        im = im.convert("RGBA")
        angle = rng.choice([-1, 1]) * rng.uniform(6.0, 12.0)
        turned = im.rotate(angle, resample=Image.BICUBIC, expand=True)
        canvas = Image.new("RGBA", turned.size, (255, 255, 255, 255))
        canvas.alpha_composite(turned)
        scale = rng.uniform(0.85, 1.0)
        canvas = canvas.resize((max(8, round(canvas.width * scale)), max(8, round(canvas.height * scale))),
                               Image.LANCZOS).convert("RGB")
        buffer = io.BytesIO()
        canvas.save(buffer, format="PNG")
    atomic_write_bytes(target, buffer.getvalue())
    return target


def gt_program(recipe: Recipe, library: Any, assets_dir: Path, avoid: set[str]) -> tuple[Program, list[dict[str, Any]]]:
    """The GT program and, per subject, which image it uses and how it was made."""
    entries = {e.id: e for e in library.entries()}
    refs, used = [], []
    rng = random.Random(f"gt:{recipe.id}:{recipe.seed}")
    for i, (lib_id, how) in enumerate(choose_renditions(recipe, avoid), 1):
        entry = entries.get(lib_id)
        if entry is None:
            raise FileNotFoundError(f"library image {lib_id!r} of {recipe.subjects[i - 1].noun!r} is not in the library")
        path = Path(library.path_of(entry))
        if not path.is_file():
            raise FileNotFoundError(f"library image {lib_id!r} is missing on disk ({path})")
        if how == RESTAGED:
            path = restage(path, assets_dir / f"{recipe.id}_{i}.png", rng)
        refs.append(Reference(img_id=f"IMG_{i:03d}", local_path=str(path), title=entry.title))
        used.append({"library_id": lib_id, "rendition": how, "path": str(path)})
    return Program(gt_gen_prompt(recipe), refs), used


def visual_filter(recipe: Recipe, metadata: dict[str, Any]) -> str | None:
    """Why an offline render does not show what the row promises (None when it does)."""
    placed = metadata.get("placed")
    if placed is None:                 # another generator: no layout record to check
        return None
    boxes = sum(len(p.get("boxes", [])) for p in placed if p.get("role") == "subject")
    expected = (recipe.count or 1) + max(0, len(recipe.subjects) - 1)
    problems = []
    if boxes != expected:
        problems.append(f"{boxes} subject boxes drawn, {expected} expected")
    drawn = {p.get("what") for p in placed if p.get("role") == "text"}
    problems += [f"text {t!r} not drawn" for t in recipe.texts if f"text {t!r}" not in drawn]
    return "; ".join(problems) or None


async def render_to(generator: Any, program: Program, target: Path, seed: int) -> dict[str, Any]:
    result = await generator.render(program, seed=seed)
    buffer = io.BytesIO()
    result.image.convert("RGB").save(buffer, format="PNG")
    atomic_write_bytes(target, buffer.getvalue())
    return dict(getattr(result, "metadata", {}) or {})


def swap_first_reference(program: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    refs = list(program.get("reference_images") or [])
    return {**program, "reference_images": [ref] + refs[1:]}


async def cross_rendition_pairs(items: list[dict[str, Any]], *, judge: Any, generator: Any, work_dir: Path,
                                pairs: int, seed: int = 0) -> dict[str, Any]:
    """Offline-judge ranking accuracy on pairs (right program, wrong program) against two kinds of GT.

    `items`: {"id", "category", "request", "meta", "program" (teacher program dict with local paths),
    "gt_image" (cross-rendition GT path), "same_gt_program" (the GT prompt over the teacher's own
    images)}. The wrong program is the right one with its first reference swapped for the first
    reference of another item of the same category showing a different subject. Ties count half.
    """
    rng = random.Random(seed)
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_cat.setdefault(it["category"], []).append(it)
    chosen: list[tuple[dict[str, Any], dict[str, Any]]] = []
    cats = sorted(c for c, its in by_cat.items() if len({i["subject_key"] for i in its}) > 1)
    while len(chosen) < pairs and cats:
        for c in list(cats):
            its = by_cat[c]
            it = its.pop(rng.randrange(len(its)))
            rivals = [o for o in by_cat[c] if o["subject_key"] != it["subject_key"]]
            if rivals:
                chosen.append((it, rng.choice(rivals)))
            if len({i["subject_key"] for i in by_cat[c]}) < 2:
                cats.remove(c)
            if len(chosen) >= pairs:
                break
    work_dir.mkdir(parents=True, exist_ok=True)
    rows, tally = [], {"cross": [], "same": []}
    for it, rival in chosen:
        right = Program.from_dict(it["program"])
        wrong = Program.from_dict(swap_first_reference(it["program"], rival["program"]["reference_images"][0]))
        programs = {"right": right, "wrong": wrong, "same_gt": Program.from_dict(it["same_gt_program"])}
        paths = {name: work_dir / f"{it['id']}_{name}.png" for name in programs}
        await asyncio.gather(*(render_to(generator, programs[n], paths[n], seed=0) for n in programs))
        gts = {"cross": Path(it["gt_image"]), "same": paths["same_gt"]}
        keys = [(g, c) for g in gts for c in ("right", "wrong")]
        results = await asyncio.gather(*(judge.score(request=it["request"], generated_image=paths[c], gt_image=gts[g],
                                                     program=None, meta=it["meta"]) for g, c in keys))
        scores = {f"{g}_{c}": (res.overall if res.ok else None) for (g, c), res in zip(keys, results)}
        for gt_name in gts:
            r, w = scores[f"{gt_name}_right"], scores[f"{gt_name}_wrong"]
            if r is not None and w is not None:
                tally[gt_name].append(1.0 if r > w else 0.5 if r == w else 0.0)
        rows.append({"id": it["id"], "category": it["category"], "rival": rival["id"], **scores})
    out = {"pairs": len(rows), "rows": rows}
    for name, values in tally.items():
        out[f"{name}_accuracy"] = round(sum(values) / len(values), 4) if values else None
        out[f"{name}_ties"] = sum(1 for v in values if v == 0.5)
    by: dict[str, list[float]] = {}
    for row in rows:
        r, w = row.get("cross_right"), row.get("cross_wrong")
        if r is not None and w is not None:
            by.setdefault(row["category"], []).append(1.0 if r > w else 0.5 if r == w else 0.0)
    out["cross_accuracy_by_category"] = {c: round(sum(v) / len(v), 3) for c, v in sorted(by.items())}
    return out
