"""The data pipeline's stages, each a resumable batch over JSON lines (pipeline/batch.py).

    recipes -> requests -> teacher -> checks -> splits -> gt -> export   (+ calibrate, report)

Every stage reads the previous stages' `<out>/<stage>/results.jsonl`, writes its own one record per id
with `error` null (kept) or the reason the item was dropped, appends and flushes each record as it
finishes, and skips finished ids on a rerun, so an interrupted stage resumes without losing or
repeating anything. `build` runs them all and times each stage.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

from ..data.taxonomy import CATEGORIES, KA_SHARE, Recipe, RecipeError
from ..jsonio import atomic_write_json, read_jsonl_tolerant, write_jsonl_atomic
from .batch import ResultStore, Row, StageError, read_rows, run_items

STAGES = ("recipes", "requests", "teacher", "checks", "splits", "gt", "export", "calibrate", "report")


def load(out: Path, stage: str) -> dict[str, dict[str, Any]]:
    """id -> record of a finished stage (the journal; a torn last line is skipped)."""
    return {str(r["id"]): r for r in read_jsonl_tolerant(Path(out) / stage / "results.jsonl") if "id" in r}


def kept(out: Path, stage: str) -> dict[str, dict[str, Any]]:
    path = Path(out) / stage / "results.jsonl"
    if not path.exists():
        raise StageError(f"{path} does not exist: run the '{stage}' stage first")
    return {k: v for k, v in load(out, stage).items() if not v.get("error")}


def _rows(records: dict[str, dict[str, Any]]) -> list[Row]:
    return [Row(id=k, line=i, data=v) for i, (k, v) in enumerate(records.items(), 1)]


def recipe_of(record: dict[str, Any], where: str) -> Recipe:
    return Recipe.from_dict(record.get("recipe", record), where)


# ----------------------------------------------------------------------------- recipes

def stage_recipes(out: Path, *, n: int, seed: int = 0, categories: list[str] | None = None,
                  ka_share: float = KA_SHARE, per_category: int | None = None, world: Any = None,
                  library_dir: str | None = None, search_index_dir: str | None = None) -> dict[str, Any]:
    from ..data.recipes import sample_recipes
    from ..data.world import OfflineWorld

    params = {"n": n, "seed": seed, "categories": categories, "ka_share": ka_share, "per_category": per_category}
    done = _read_json(Path(out) / "recipes" / "params.json")
    if world is None and done and done.get("params") == params:
        finished = load(out, "recipes")
        if all(i in finished for i in done["ids"]):        # a rerun: nothing to draw, no world to load
            return {"in": n, "kept": len(done["ids"]), "resumed": True}
    world = world or OfflineWorld.load(library_dir=library_dir, search_index_dir=search_index_dir)
    recipes = sample_recipes(world, n, seed=seed, categories=categories, ka_share=ka_share, per_category=per_category)
    counts = world.counts()
    atomic_write_json(Path(out) / "world.json", {**counts, "samples": {
        c: sorted(e.name for e in es)[:12] for c, es in world.by_category().items()}})
    store = ResultStore(Path(out) / "recipes", json_every_s=3600)
    try:
        for r in recipes:
            if not store.done(r.id):
                store.add({"id": r.id, "category": r.category, "recipe": r.to_dict(), "error": None})
    finally:
        store.close(order=[r.id for r in recipes])
    atomic_write_json(Path(out) / "recipes" / "params.json", {"params": params, "ids": [r.id for r in recipes]})
    return {"in": n, "kept": len(recipes), "entities": counts["entities"]}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def import_recipes(out: Path, path: str | Path) -> dict[str, Any]:
    """Recipes from a file (one recipe, or {"id", "recipe"}, per line); bad ones become error records."""
    rows, problems = read_rows(path)
    store = ResultStore(Path(out) / "recipes", json_every_s=3600)
    kept_n = 0
    try:
        for p in problems:
            store.add({"id": p.id, "error": p.message})
        for row in rows:
            if store.done(row.id):
                continue
            try:
                recipe = recipe_of(row.data, f"{path}:{row.line}")
            except RecipeError as exc:
                store.add({"id": row.id, "error": str(exc)})
                continue
            store.add({"id": row.id, "category": recipe.category, "recipe": recipe.to_dict(), "error": None})
            kept_n += 1
    finally:
        store.close()
    return {"in": len(rows) + len(problems), "kept": kept_n}


# ----------------------------------------------------------------------------- requests

async def stage_requests(out: Path, *, writer: Any = None, attempts: int = 3, parallel: int = 1,
                         progress: bool = False) -> dict[str, Any]:
    from ..data.writers import NearDuplicates, OfflineWriter, check_request, prompt_hash

    writer = writer or OfflineWriter()
    recipes = kept(out, "recipes")
    store = ResultStore(Path(out) / "requests", json_every_s=3600)
    near = NearDuplicates()
    hashes: dict[str, str] = {}
    for rec in store.records.values():                 # a resumed run dedups against what it kept
        if not rec.get("error"):
            near.add(rec["id"], rec["request"])
            hashes[rec["prompt_hash"]] = rec["id"]
    lock = asyncio.Lock()

    async def write_once(recipe: Recipe, attempt: int) -> tuple[str, list[str]]:
        if isinstance(writer, OfflineWriter):
            text = writer.write(recipe, attempt)
            return text, check_request(text, recipe)
        return await writer.write(recipe)

    async def work(row: Row) -> dict[str, Any]:
        try:
            recipe = recipe_of(row.data, f"recipes:{row.id}")
        except RecipeError as exc:
            return {"id": row.id, "error": str(exc)}
        tries = attempts if isinstance(writer, OfflineWriter) else 1
        reason = "no attempt"
        for attempt in range(tries):
            text, problems = await write_once(recipe, attempt)
            if problems:
                reason = "writer: " + "; ".join(problems)
                continue
            async with lock:
                h = prompt_hash(text)
                if h in hashes:
                    reason = f"duplicate prompt of {hashes[h]}"
                    continue
                dup, sim = near.find(text)
                if dup:
                    reason = f"near-duplicate of {dup} (similarity {sim:.2f})"
                    continue
                near.add(row.id, text)
                hashes[h] = row.id
            return {"id": row.id, "category": recipe.category, "request": text, "prompt_hash": h,
                    "writer": writer.name, "attempts": attempt + 1, "error": None}
        return {"id": row.id, "category": recipe.category, "error": reason}

    try:
        counts = await run_items(_rows(recipes), work, store, parallel=parallel, desc="requests", progress=progress)
    finally:
        store.close(order=list(recipes))
    return counts


# ----------------------------------------------------------------------------- teacher

def offline_tools(library_dir: str | None = None, search_index_dir: str | None = None) -> list[Any]:
    from ..tools import default_tools, make_image_search_backend, make_search_backend

    return default_tools(make_search_backend("offline", index_dir=search_index_dir, semantic=False),
                         make_image_search_backend("offline", library_dir=library_dir, include_user=False))


async def stage_teacher(out: Path, *, teacher: str = "expert", teacher_options: dict[str, Any] | None = None,
                        policy: Any = None, tools: list[Any] | None = None, agent_config: Any = None,
                        parallel: int = 4, progress: bool = False) -> dict[str, Any]:
    """Teacher trajectories through the real agent runtime. `teacher` is "expert" or any policy name of
    `genevolve.policies.make_policy`; `policy` passes a ready policy object instead."""
    from ..agent import Agent, AgentConfig
    from ..policies.expert import ExpertPolicy

    recipes, requests = kept(out, "recipes"), kept(out, "requests")
    if policy is None:
        if teacher == "expert":
            policy = ExpertPolicy(**(teacher_options or {}))
        else:
            from ..policies import make_policy
            policy = make_policy(teacher, **(teacher_options or {}))
    if isinstance(policy, ExpertPolicy):
        for rid, rec in requests.items():
            policy.add(rec["request"], recipe_of(recipes[rid], f"recipes:{rid}"))
    agent = Agent(policy, tools if tools is not None else offline_tools(), agent_config or AgentConfig())
    store = ResultStore(Path(out) / "teacher", json_every_s=3600,
                        retry=lambda r: str(r.get("error") or "").startswith("teacher error"))

    async def work(row: Row) -> dict[str, Any]:
        request = row.data["request"]
        traj = await agent.run(request)
        notes = policy.notes(request) if isinstance(policy, ExpertPolicy) else {}
        notes = {**notes, "inline_skills": bool(getattr(policy, "inline_skills", False))}
        error = None
        if traj.termination == "error":
            error = f"teacher error: {traj.error}"
        elif traj.termination != "answer":
            error = f"teacher gave no answer ({traj.termination})"
        return {"id": row.id, "category": row.data.get("category"), "request": request,
                "teacher": getattr(policy, "name", teacher), "notes": notes, "trajectory": traj.to_dict(),
                "error": error}

    try:
        await agent.warm()
        counts = await run_items(_rows(requests), work, store, parallel=parallel, desc="teacher", progress=progress,
                                 on_error=lambda row, exc: {"id": row.id, "category": row.data.get("category"),
                                                            "error": f"teacher error: {type(exc).__name__}: {exc}"})
    finally:
        store.close(order=list(requests))
        await agent.aclose()
    return counts


# ----------------------------------------------------------------------------- checks

async def stage_checks(out: Path, *, auditor: Any = None, min_mean: float | None = None,
                       min_each: float | None = None, parallel: int = 4, progress: bool = False) -> dict[str, Any]:
    from ..trajectory import Trajectory
    from ..data.checks import MIN_EACH, MIN_MEAN, audit_passes, offline_audit, run_checks

    recipes, teacher = kept(out, "recipes"), kept(out, "teacher")
    store = ResultStore(Path(out) / "checks", json_every_s=3600)

    async def work(row: Row) -> dict[str, Any]:
        rec = row.data
        recipe = recipe_of(recipes[row.id], f"recipes:{row.id}")
        try:
            traj = Trajectory.from_dict(rec["trajectory"])
        except (ValueError, TypeError, KeyError) as exc:
            return {"id": row.id, "category": recipe.category, "error": f"unreadable trajectory: {exc}"}
        checks = run_checks(recipe, traj, rec.get("notes"))
        if auditor is None:
            scores, who = offline_audit(recipe, rec["request"], traj, checks, rec.get("notes")), "offline"
        else:
            scores, who = await auditor.audit(recipe, rec["request"], traj), auditor.name
        reasons = [f"{k}: {v}" for k, v in checks.items() if v and not v.startswith("skipped")]
        verdict = audit_passes(scores, min_mean if min_mean is not None else MIN_MEAN,
                               min_each if min_each is not None else MIN_EACH)
        reasons += [verdict] if verdict else []
        return {"id": row.id, "category": recipe.category, "checks": checks, "audit": scores, "auditor": who,
                "error": "; ".join(reasons) or None}

    try:
        counts = await run_items(_rows(teacher), work, store, parallel=parallel, desc="checks", progress=progress,
                                 on_error=lambda row, exc: {"id": row.id, "category": row.data.get("category"),
                                                            "error": f"audit failed: {type(exc).__name__}: {exc}"})
    finally:
        store.close(order=list(teacher))
    return counts


# ----------------------------------------------------------------------------- splits

def gt_capable(offline: bool = True) -> set[str]:
    return {c for c, cat in CATEGORIES.items() if cat.offline_gt or not offline}


def stage_splits(out: Path, *, source: str = "checks", offline: bool = True, seed: int = 0,
                 **shares: float) -> dict[str, Any]:
    """Assign every kept row of `source` ("checks", or "requests" when there is no teacher stage)."""
    from ..data.splits import SPLITS, assign_splits, verify_decontamination

    recipes, requests = kept(out, "recipes"), kept(out, "requests")
    rows = []
    for rid in kept(out, source):
        recipe = recipe_of(recipes[rid], f"recipes:{rid}")
        rows.append({"id": rid, "category": recipe.category, "entity_keys": recipe.entity_keys,
                     "prompt_hash": requests[rid]["prompt_hash"]})
    assignment = assign_splits(rows, gt_categories=gt_capable(offline), sft=source != "requests", seed=seed, **shares)
    records = []
    for r in rows:
        split = assignment.get(r["id"])
        records.append({**r, "split": split, "error": None if split else "no split: its category has no GT here "
                                                                          "and there is no SFT data"})
    problems = verify_decontamination([r for r in records if r["split"]])
    if problems:
        raise StageError("decontamination failed: " + "; ".join(problems[:5]))
    d = Path(out) / "splits"
    write_jsonl_atomic(d / "results.jsonl", records)
    atomic_write_json(d / "results.json", records)
    return {"in": len(rows), **{s: sum(r["split"] == s for r in records) for s in SPLITS}}


# ----------------------------------------------------------------------------- ground truth

async def stage_gt(out: Path, *, generator: Any = None, long_side: int = 512, library: Any = None,
                   parallel: int = 2, progress: bool = False) -> dict[str, Any]:
    from ..generators.offline import OfflineRenderer
    from ..tools.image_library import ImageLibrary
    from ..data.ground_truth import gt_program, library_id_of, render_to, visual_filter
    from ..data.splits import BENCH, POOL_TRAIN, POOL_VAL

    recipes, teacher = kept(out, "recipes"), load(out, "teacher")
    todo = {k: v for k, v in kept(out, "splits").items() if v["split"] in (POOL_TRAIN, POOL_VAL, BENCH)}
    generator = generator or OfflineRenderer(long_side=long_side)
    library = library or ImageLibrary(include_user=False)
    gt_dir = Path(out) / "gt"
    store = ResultStore(gt_dir, json_every_s=3600)

    async def work(row: Row) -> dict[str, Any]:
        recipe = recipe_of(recipes[row.id], f"recipes:{row.id}")
        program = ((teacher.get(row.id) or {}).get("trajectory") or {}).get("program") or {}
        avoid = {library_id_of(r.get("local_path")) for r in program.get("reference_images") or []}
        gt, used = gt_program(recipe, library, gt_dir / "assets", avoid)
        target = gt_dir / "images" / f"{row.id}.png"
        metadata = await render_to(generator, gt, target, seed=recipe.seed % 997)
        problem = visual_filter(recipe, metadata)
        return {"id": row.id, "category": recipe.category, "split": row.data["split"],
                "gt_image": f"images/{row.id}.png", "renditions": used, "gt_program": gt.to_dict(),
                "error": f"visual filter: {problem}" if problem else None}

    try:
        counts = await run_items(_rows(todo), work, store, parallel=parallel, desc="gt", progress=progress,
                                 on_error=lambda row, exc: {"id": row.id, "split": row.data["split"],
                                                            "error": f"gt: {type(exc).__name__}: {exc}"})
    finally:
        store.close(order=list(todo))
    return counts


# ----------------------------------------------------------------------------- build

def build(out: str | Path, *, n: int, seed: int = 0, categories: list[str] | None = None,
          teacher: str | None = "expert", teacher_options: dict[str, Any] | None = None,
          teacher_policy: Any = None, agent_config: Any = None, writer: Any = None,
          auditor: Any = None, generator: Any = None, long_side: int = 512, parallel: int = 4,
          calibration_pairs: int = 32, hf: bool = True, progress: bool = False,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every stage in order; returns the report. `teacher` is "expert", a policy name (or any name with
    `teacher_policy` given), or None to skip teacher and checks: rows then go straight from requests to
    the pool and the benchmark, as the offline benchmark builder does."""
    from ..data.export import stage_export
    from ..data.report import stage_calibrate, stage_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        if log:
            log(f"{name}: {json.dumps(result, default=str)[:300]} ({timings[name]} s)")
        return result

    timed("recipes", lambda: stage_recipes(out, n=n, seed=seed, categories=categories))
    timed("requests", lambda: asyncio.run(stage_requests(out, writer=writer, progress=progress)))
    if teacher:
        timed("teacher", lambda: asyncio.run(stage_teacher(out, teacher=teacher, teacher_options=teacher_options,
                                                           policy=teacher_policy, agent_config=agent_config,
                                                           parallel=parallel,
                                                           progress=progress)))
        timed("checks", lambda: asyncio.run(stage_checks(out, auditor=auditor, progress=progress)))
    timed("splits", lambda: stage_splits(out, source="checks" if teacher else "requests", seed=seed,
                                         offline=generator is None))
    timed("gt", lambda: asyncio.run(stage_gt(out, generator=generator, long_side=long_side, progress=progress)))
    timed("export", lambda: stage_export(out, hf=hf))
    if teacher and calibration_pairs:
        timed("calibrate", lambda: asyncio.run(stage_calibrate(out, pairs=calibration_pairs, seed=seed)))
    previous = {}
    path = out / "timings.json"
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
    atomic_write_json(path, {**previous, **timings, "total": round(sum(timings.values()), 2), "n": n})
    return timed("report", lambda: stage_report(out))
