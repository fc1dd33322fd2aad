"""Export: the final data files, as JSON lines and as a Hugging Face DatasetDict.

    export/sft/train.jsonl, eval.jsonl        SFT records: messages, images, loss_mask, meta
    export/pool/train.jsonl, val.jsonl        self-evolution pool: request + GT image + recipe metadata
    export/pool/images/<id>.png
    export/bench/test.jsonl, images/<id>.png  held-out benchmark rows (GenEvolve-Bench format)
    export/hf/                                the same splits as a DatasetDict (`datasets.load_from_disk`)
    export/MANIFEST.json                      counts, decontamination result, what each field means

SFT record: {"id", "messages", "images", "loss_mask", "meta", optional "completion_ids"}. `loss_mask`
has one 0/1 per message: 1 on the assistant turns to learn from, 0 on system, user and tool text and
on the teacher's deliberate mistakes (the conversation keeps them as context, so the student learns
to notice and correct, not to make them). `completion_ids` (one list or null per assistant message)
is present when the teacher recorded its tokens (our local policy as teacher).

Pool and bench rows: {"id", "question", "gt_image" (relative to the split's folder), "eval_type",
"category", "difficulty", "meta": {track, recipe, entity, prompt_hash, required_texts, count,
relation, primary_skills, hidden, gt_program, gt_renditions}}. The offline judge reads
`required_texts`, `count` and `relation`; `genevolve.data.grounding.program_grounding` reads `recipe`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..jsonio import atomic_write_json, write_jsonl_atomic
from .splits import BENCH, POOL_TRAIN, POOL_VAL, SFT_EVAL, SFT_TRAIN, verify_decontamination
from .taxonomy import Recipe

FILES = {SFT_TRAIN: ("sft", "train"), SFT_EVAL: ("sft", "eval"), POOL_TRAIN: ("pool", "train"),
         POOL_VAL: ("pool", "val"), BENCH: ("bench", "test")}


def sft_record(rid: str, teacher: dict[str, Any], recipe: Recipe, request: dict[str, Any],
               checks: dict[str, Any] | None) -> dict[str, Any]:
    from ..trajectory import Trajectory

    traj = Trajectory.from_dict(teacher["trajectory"])
    notes = teacher.get("notes") or {}
    mistakes = set(notes.get("mistakes", []))
    messages, loss_mask, k = [], [], 0
    for m in traj.messages:
        messages.append({"role": m["role"], "content": m["content"]})
        if m["role"] == "assistant":
            loss_mask.append(0 if k in mistakes else 1)
            k += 1
        else:
            loss_mask.append(0)
    record = {"id": rid, "messages": messages,
              "images": [ref.local_path for _, ref in sorted(traj.images.items()) if ref.local_path],
              "loss_mask": loss_mask,
              "meta": {"track": recipe.track, "category": recipe.category, "difficulty": recipe.difficulty,
                       "recipe_id": rid, "entity_keys": recipe.entity_keys, "prompt_hash": request["prompt_hash"],
                       "teacher": teacher.get("teacher"), "mistakes": notes.get("kinds", []),
                       "skills": recipe.skills, "audit": (checks or {}).get("audit")}}
    ids = _completion_ids(traj)
    if ids is not None:
        record["completion_ids"] = ids
    return record


def _completion_ids(traj: Any) -> list[list[int] | None] | None:
    """Token ids per assistant message, when the teacher recorded them for every turn."""
    by_message = {getattr(t, "message_index", None): getattr(t, "completion_ids", None) for t in traj.turns}
    out = [by_message.get(i) for i, m in enumerate(traj.messages) if m["role"] == "assistant"]
    return out if out and all(x is not None for x in out) else None


def bench_row(rid: str, recipe: Recipe, request: dict[str, Any], gt: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "question": request["request"], "gt_image": gt["gt_image"], "eval_type": recipe.track,
            "category": recipe.category, "difficulty": recipe.difficulty,
            "meta": {"track": recipe.track, "recipe": recipe.to_dict(),
                     "entity": {"keys": recipe.entity_keys, "names": recipe.entity_names},
                     "prompt_hash": request["prompt_hash"], "required_texts": list(recipe.texts),
                     **({"count": recipe.count} if recipe.count else {}),
                     **({"relation": recipe.relation} if recipe.relation else {}),
                     "primary_skills": recipe.skills, "secondary": recipe.secondary,
                     "hidden": recipe.hidden.answer if recipe.hidden else None,
                     "gt_program": portable_program(gt["gt_program"]),
                     "gt_renditions": [{"library_id": u["library_id"], "rendition": u["rendition"]}
                                       for u in gt["renditions"]]}}


def portable_program(program: dict[str, Any]) -> dict[str, Any]:
    """A program without machine-specific paths: each reference keeps its id, title and file name."""
    return {"gen_prompt": program.get("gen_prompt", ""),
            "reference_images": [{"img_id": r.get("img_id"), "title": r.get("title"),
                                  "file": Path(r["local_path"]).name if r.get("local_path") else None}
                                 for r in program.get("reference_images") or []]}


def _place(src: Path, dst: Path) -> None:
    """Put the GT image into the split's folder: a hard link when possible, else a copy."""
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def stage_export(out: Path, *, hf: bool = True) -> dict[str, Any]:
    from ..pipeline.data import kept, load, recipe_of

    out = Path(out)
    recipes, requests = kept(out, "recipes"), kept(out, "requests")
    splits = kept(out, "splits")
    teacher, checks, gts = load(out, "teacher"), load(out, "checks"), load(out, "gt")
    files: dict[str, list[dict[str, Any]]] = {s: [] for s in FILES}
    dropped: dict[str, str] = {}
    for rid, sp in splits.items():
        recipe = recipe_of(recipes[rid], f"recipes:{rid}")
        split = sp["split"]
        if split in (SFT_TRAIN, SFT_EVAL):
            files[split].append(sft_record(rid, teacher[rid], recipe, requests[rid], checks.get(rid)))
            continue
        gt = gts.get(rid)
        if not gt or gt.get("error"):
            dropped[rid] = (gt or {}).get("error") or "no GT image"
            continue
        kind, _ = FILES[split]
        _place(out / "gt" / gt["gt_image"], out / "export" / kind / gt["gt_image"])
        files[split].append(bench_row(rid, recipe, requests[rid], gt))
    for split, rows in files.items():
        kind, name = FILES[split]
        write_jsonl_atomic(out / "export" / kind / f"{name}.jsonl", sorted(rows, key=lambda r: r["id"]))
    final = [{"id": r["id"], "split": s, "category": splits[r["id"]]["category"],
              "entity_keys": splits[r["id"]]["entity_keys"], "prompt_hash": splits[r["id"]]["prompt_hash"]}
             for s, rows in files.items() for r in rows]
    problems = verify_decontamination(final)
    counts = {s: len(rows) for s, rows in files.items()}
    manifest = {"counts": counts, "decontamination": problems or "clean: no benchmark row shares a prompt hash or "
                "an entity key within its category with any SFT or pool row",
                "dropped_without_gt": len(dropped), "bench_categories": sorted({r["category"] for r in files[BENCH]}),
                "files": {s: "/".join(FILES[s]) + ".jsonl" for s in FILES}}
    if hf:
        manifest["hf"] = export_hf(out / "export", files)
    atomic_write_json(out / "export" / "MANIFEST.json", manifest)
    return {**counts, "dropped_without_gt": len(dropped), "decontaminated": not problems}


def export_hf(export_dir: Path, files: dict[str, list[dict[str, Any]]]) -> str:
    """The splits as a DatasetDict saved under export/hf; `meta` is stored as a JSON string because
    its shape differs between rows. Returns where it went, or why it was skipped."""
    import json

    try:
        import datasets
        from datasets import Dataset, DatasetDict
    except ImportError:
        return "skipped: the 'datasets' package is not installed (pip install 'genevolve[data]')"
    dd = {}
    for split, rows in files.items():
        if not rows:
            continue
        flat = [{**r, "meta": json.dumps(r.get("meta", {}), ensure_ascii=False)} for r in rows]
        if split in (SFT_TRAIN, SFT_EVAL):
            flat = [{**r, "completion_ids": r.get("completion_ids")} for r in flat]
        dd[split] = Dataset.from_list(flat)
    target = export_dir / "hf"
    if target.exists():
        shutil.rmtree(target)
    quiet = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()            # one bar per split and shard would flood the build's log
    try:
        DatasetDict(dd).save_to_disk(str(target))
    finally:
        if quiet:
            datasets.enable_progress_bars()
    return str(target)
