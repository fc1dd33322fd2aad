"""Program-level grounding: did a program get hold of what its request hides? Judged against the recipe.

A program is grounded when every subject the recipe says must be drawn has a reference that shows it
(the chosen image is one of the subject's renditions, known by library id or by title), and every name
the request hides but the picture must show (a city on a sign, a person's name as a title) is written
in gen_prompt. No pixels are looked at: this is the cheap, exact check a trainer can run on every
rollout to tell "found the hidden subject" from "drew something plausible".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .taxonomy import NAME_OF_HIDDEN, Recipe


def _recipe_of(meta: dict[str, Any]) -> Recipe:
    meta = meta.get("meta", meta) if isinstance(meta.get("meta"), dict) else meta
    recipe = meta.get("recipe", meta)
    return recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe, "meta.recipe")


def _kind_free(title: str) -> str:
    return re.sub(r"\s*\([^)]*\)$", "", title or "").strip().lower()


def reference_identity(ref: dict[str, Any], images: dict[str, Any] | None = None) -> tuple[str, str]:
    """(library id, title) of a program reference, filled in from the trajectory's found images."""
    found = (images or {}).get(ref.get("img_id") or "", {}) or {}
    if not isinstance(found, dict):
        found = getattr(found, "__dict__", {})
    path = ref.get("local_path") or found.get("local_path") or ""
    title = ref.get("title") or found.get("title") or ""
    return (Path(path).stem if path else ""), title


def program_grounding(meta: dict[str, Any], program: dict[str, Any] | None,
                      images: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"grounded": bool, "subjects": [...], "names": {...}, "score": share of requirements met}.

    `meta`: a pool/bench row's meta (or the row itself, or a recipe dict); `program`: {"gen_prompt",
    "reference_images"}; `images`: the trajectory's IMG id -> found image, used when the program's
    references carry only ids.
    """
    recipe = _recipe_of(meta)
    program = program or {}
    refs = [r if isinstance(r, dict) else {"img_id": r} for r in program.get("reference_images") or []]
    chosen = [reference_identity(r, images) for r in refs]
    subjects = []
    for s in recipe.subjects:
        titles = {_kind_free(t) for t in s.titles}
        hit = next((i for i, (lib_id, title) in enumerate(chosen)
                    if lib_id in s.renditions or (title and _kind_free(title) in titles)), None)
        subjects.append({"key": s.key, "noun": s.noun, "found": hit is not None,
                         "img_id": refs[hit].get("img_id") if hit is not None else None})
    gen_prompt = str(program.get("gen_prompt") or "")
    required = list(recipe.texts) if recipe.task_family == NAME_OF_HIDDEN else []
    present = [t for t in required if t.lower() in gen_prompt.lower()]
    met = sum(s["found"] for s in subjects) + len(present)
    total = len(subjects) + len(required)
    return {"grounded": met == total, "score": round(met / total, 4) if total else 1.0,
            "subjects": subjects, "names": {"required": required, "present": present},
            "hidden": recipe.hidden.answer if recipe.hidden else None}
