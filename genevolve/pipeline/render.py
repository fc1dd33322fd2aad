"""The render stage: every program of an agent results file through one generator backend.

Input rows are agent results (ours or upstream's results.json: id, prompt, gen_prompt,
reference_images with local_path, ...). Each output record is the input row plus:

    id, error          None, or why this row has no image
    output_path        the PNG (also under `image_path`, the name upstream's rendered rows use)
    image_path
    success            True when the image was rendered now or on an earlier run
    image_status       "ok" | "error: ..." | "skipped: no program" (kept for older readers)
    render             the generator's metadata (backend, model, seed, timings, decisions)

A rerun keeps rendered rows whose image is still on disk, retries failed ones, and never re-renders
a row that has no program.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from pathlib import Path
from typing import Any, Callable

from ..limits import MAX_GEN_PROMPT_CHARS, MAX_RENDER_REFERENCES
from ..settings import Settings
from .batch import InputProblem, ResultStore, Row, StageError, prepare_dir, read_input, run_items

OK = "ok"
NO_PROGRAM = "skipped: no program"


def image_name(item_id: str) -> str:
    """A safe file name for an id; ids that had to be changed get a short hash so two cannot collide."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id).strip(".") or "item"
    if safe != item_id:
        safe = f"{safe[:80]}-{hashlib.sha1(item_id.encode('utf-8')).hexdigest()[:8]}"
    return f"{safe}.png"


def resolve_references(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative reference paths that do not exist from the working directory are tried from `base`
    (the input file's folder), so a results folder can be moved as a whole."""
    refs = data.get("reference_images")
    if not isinstance(refs, list):
        return data
    fixed = []
    for ref in refs:
        if isinstance(ref, dict) and isinstance(ref.get("local_path"), str):
            path = Path(ref["local_path"])
            if not path.is_absolute() and not path.exists() and (base / path).exists():
                ref = {**ref, "local_path": str(base / path)}
        fixed.append(ref)
    return {**data, "reference_images": fixed}


def oversized_program(row: Row) -> str | None:
    """Why a row's program is over the caps (genevolve/limits.py), None when it is within them: rows
    read from files may hold anything, and the renderer's time and memory grow with both."""
    refs = row.data.get("reference_images") or row.data.get("references") or []
    if isinstance(refs, list) and len(refs) > MAX_RENDER_REFERENCES:
        return (f"input line {row.line}: reference_images has {len(refs):,} entries, over the limit of "
                f"{MAX_RENDER_REFERENCES} (genevolve.limits.MAX_RENDER_REFERENCES)")
    gen_prompt = row.data.get("gen_prompt")
    if isinstance(gen_prompt, str) and len(gen_prompt) > MAX_GEN_PROMPT_CHARS:
        return (f"input line {row.line}: gen_prompt has {len(gen_prompt):,} characters, over the limit of "
                f"{MAX_GEN_PROMPT_CHARS:,} (genevolve.limits.MAX_GEN_PROMPT_CHARS)")
    return None


def render_record(data: dict[str, Any], item_id: str, status: str, *, path: Path | None = None,
                  metadata: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    """One record of the render stage (see the module docstring)."""
    record = {k: v for k, v in data.items() if k != "render"}
    record.update(id=item_id, output_path=str(path) if path else None, image_path=str(path) if path else None,
                  success=status == OK, image_status=status, error=error)
    if metadata is not None:
        record["render"] = metadata
    return record


def failed_record(data: dict[str, Any], item_id: str, error: str) -> dict[str, Any]:
    return render_record(data, item_id, f"error: {error}", error=error)


def record_status(record: dict[str, Any]) -> str:
    """image_status, also for records of older versions (the WISE renderer kept only error/output_path)."""
    status = record.get("image_status")
    if status is None:
        status = OK if not record.get("error") and record.get("output_path") else f"error: {record.get('error')}"
    return str(status)


def needs_render(record: dict[str, Any]) -> bool:
    """Stored records a rerun must redo: failed renders, and 'ok' ones whose image has gone."""
    status = record_status(record)
    if status == OK:
        return not (record.get("output_path") and Path(record["output_path"]).is_file())
    return not status.startswith("skipped")


async def save_render(generator: Any, program: Any, path: Path, *, seed: int | None = None) -> dict[str, Any]:
    """Render `program` and write the PNG atomically; the generator's metadata. Raises GeneratorError."""
    from ..jsonio import atomic_write_bytes

    result = await generator.render(program, seed=seed)
    buf = io.BytesIO()
    result.image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return result.metadata


async def render_rows(generator: Any, rows: list[Row], problems: list[InputProblem], out_dir: str | Path,
                      input_dir: str | Path, *, parallel: int = 1, seed: int | None = None, progress: bool = True,
                      name: str = "results", images_dir: str | Path | None = None,
                      image_name: Callable[[str], str] = image_name) -> dict[str, Any]:
    """Render every row not yet done in `out_dir`; the stage's summary (counts by outcome).

    Records go to `out_dir/<name>.jsonl|json`, images to `images_dir` (default `out_dir/images`).
    The generator stays open: whoever built it closes it.
    """
    from ..generators.base import GeneratorError
    from ..program import Program

    out_dir, input_dir = Path(out_dir), Path(input_dir)
    store = ResultStore(out_dir, name, retry=needs_render)
    try:
        images = prepare_dir(Path(images_dir) if images_dir else out_dir / "images", "images folder")
        for stale in images.glob(".*.tmp"):            # a kill while an image was being written
            stale.unlink(missing_ok=True)
        for p in problems:
            if not store.done(p.id):
                store.add(failed_record({}, p.id, p.message))

        async def work(row: Row) -> dict[str, Any]:
            too_big = oversized_program(row)
            if too_big:
                return failed_record(row.data, row.id, too_big)
            data = resolve_references(row.data, input_dir)
            try:
                program = Program.from_dict(data)
            except (TypeError, ValueError, AttributeError) as exc:
                return failed_record(row.data, row.id, f"input line {row.line}: bad reference_images ({exc})")
            if not program.gen_prompt.strip():
                why = row.data.get("error") or f"the agent ended with {row.data.get('termination') or 'no answer'}"
                return render_record(row.data, row.id, NO_PROGRAM, error=f"no program to render: {why}")
            path = images / image_name(row.id)
            try:
                metadata = await save_render(generator, program, path, seed=seed)
            except GeneratorError as exc:
                return failed_record(row.data, row.id, str(exc))
            return render_record(row.data, row.id, OK, path=path, metadata=metadata)

        t0 = time.perf_counter()
        counts = await run_items(rows, work, store, parallel=parallel, desc=f"render ({generator.name})",
                                 progress=progress,
                                 on_error=lambda row, exc: failed_record(row.data, row.id,
                                                                         f"{type(exc).__name__}: {exc}"))
        seconds = time.perf_counter() - t0
    finally:
        store.close(order=[p.id for p in problems] + [r.id for r in rows])
    statuses = [record_status(r) for r in store.records.values()]
    return {"output_dir": str(out_dir), "backend": generator.name, "total": len(statuses),
            "rendered_now": counts["ran"], "already_done": counts["skipped"],
            "ok": statuses.count(OK), "errors": sum(s.startswith("error") for s in statuses),
            "skipped_no_program": statuses.count(NO_PROGRAM), "parallel": parallel, "seconds": round(seconds, 3)}


def backend_parallel(generator: Any, wanted: int | None) -> int:
    """Renders at once: what was asked, never more than the backend allows (its default)."""
    limit = max(1, int(getattr(generator, "max_concurrency", 1)))
    return min(wanted or limit, limit)


async def render_file(settings: Settings, input_path: str | Path, out_dir: str | Path, *, parallel: int | None = None,
                      seed: int | None = None, progress: bool = True,
                      say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """`genevolve render`: the generator of `settings` over every row of a results file."""
    from ..generators.base import GeneratorError
    from ..settings import build_generator

    rows, problems = read_input(input_path, say)
    try:
        generator = build_generator(settings)
    except (GeneratorError, ValueError, TypeError) as exc:
        raise StageError(f"backend: {exc}") from None
    try:
        used = backend_parallel(generator, parallel)
        if parallel and used < parallel:
            say(f"--parallel {parallel} is over what {generator.name} allows; using {used}")
        return await render_rows(generator, rows, problems, out_dir, Path(input_path).resolve().parent,
                                 parallel=used, seed=seed, progress=progress)
    finally:
        await generator.aclose()
