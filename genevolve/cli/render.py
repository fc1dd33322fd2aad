"""`genevolve render`: render every program of an agent results file with a generator backend."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from .common import add_backend_args, build_generator, fail

OK = "ok"
NO_PROGRAM = "skipped: no program"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render the programs of a results file (results.json / .jsonl)",
                       description="Reads the agent's results (a results.json array or results.jsonl), renders "
                                   "each row's program (gen_prompt + reference_images) with --backend, saves "
                                   "DIR/images/{id}.png, appends each finished row to DIR/results.jsonl and "
                                   "rewrites DIR/results.json atomically: the input fields plus output_path and "
                                   "image_status ('ok', 'error: ...' or 'skipped: no program'). A rerun skips "
                                   "rows already rendered and retries the failed ones. Exit status 1 when any "
                                   "render failed.")
    p.add_argument("--input", required=True, help="results.json or results.jsonl from `genevolve run`")
    p.add_argument("--output-dir", required=True, help="where images/ and results.json(l) go")
    p.add_argument("--parallel", type=int, default=None,
                   help="renders at once (default and upper bound: what the backend allows)")
    p.add_argument("--seed", type=int, default=None, help="render seed (default: the backend's, 0 as in the paper)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_backend_args(p, default="offline")
    p.set_defaults(func=main)


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


def needs_render(record: dict[str, Any]) -> bool:
    """Stored records a rerun must redo: failed renders, and 'ok' ones whose image has gone."""
    status = record.get("image_status") or ""
    if status == OK:
        return not (record.get("output_path") and Path(record["output_path"]).is_file())
    return not status.startswith("skipped")


async def render_rows(generator, rows, problems, out_dir: Path, input_dir: Path, *, parallel: int,
                      seed: int | None, progress: bool) -> dict[str, Any]:
    from ..generators.base import GeneratorError
    from ..jsonio import atomic_write_bytes
    from ..pipeline.batch import ResultStore, Row, run_items
    from ..program import Program

    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out_dir, "results", retry=needs_render)
    try:
        for p in problems:
            if not store.done(p.id):
                store.add({"id": p.id, "output_path": None, "image_status": f"error: {p.message}"})

        async def work(row: Row) -> dict[str, Any]:
            record: dict[str, Any] = {**row.data, "id": row.id, "output_path": None}
            data = resolve_references(row.data, input_dir)
            try:
                program = Program.from_dict(data)
            except (TypeError, ValueError, AttributeError) as exc:
                return {**record, "image_status": f"error: input line {row.line}: bad reference_images ({exc})"}
            if not program.gen_prompt.strip():
                return {**record, "image_status": NO_PROGRAM}
            try:
                result = await generator.render(program, seed=seed)
            except GeneratorError as exc:
                return {**record, "image_status": f"error: {exc}"}
            path = images_dir / image_name(row.id)
            buf = io.BytesIO()
            result.image.save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
            return {**record, "output_path": str(path), "image_status": OK, "render": result.metadata}

        def on_error(row: Row, exc: BaseException) -> dict[str, Any]:
            return {**row.data, "id": row.id, "output_path": None,
                    "image_status": f"error: {type(exc).__name__}: {exc}"}

        t0 = time.perf_counter()
        counts = await run_items(rows, work, store, parallel=parallel, desc=f"render ({generator.name})",
                                 on_error=on_error, progress=progress)
        seconds = time.perf_counter() - t0
    finally:
        store.close(order=[p.id for p in problems] + [r.id for r in rows])
        await generator.aclose()
    statuses = [str(r.get("image_status") or "") for r in store.records.values()]
    return {"output_dir": str(out_dir), "backend": generator.name, "total": len(statuses),
            "rendered_now": counts["ran"], "already_done": counts["skipped"],
            "ok": statuses.count(OK), "errors": sum(s.startswith("error") for s in statuses),
            "skipped_no_program": statuses.count(NO_PROGRAM), "parallel": parallel, "seconds": round(seconds, 3)}


def main(args: argparse.Namespace) -> int:
    from ..generators.base import GeneratorError
    from ..pipeline.batch import InputError, read_rows

    if args.parallel is not None and args.parallel < 1:
        return fail("--parallel must be at least 1")
    try:
        rows, problems = read_rows(args.input)
    except InputError as exc:
        return fail(str(exc))
    for p in problems:
        print(f"genevolve: {p.message}", file=sys.stderr)
    try:
        generator = build_generator(args)
    except (GeneratorError, ValueError, TypeError) as exc:
        return fail(f"backend: {exc}")
    limit = max(1, int(generator.max_concurrency))
    parallel = args.parallel or limit
    if parallel > limit:
        print(f"genevolve: --parallel {parallel} is over what {generator.name} allows; using {limit}",
              file=sys.stderr)
        parallel = limit
    summary = asyncio.run(render_rows(generator, rows, problems, Path(args.output_dir),
                                      Path(args.input).resolve().parent, parallel=parallel, seed=args.seed,
                                      progress=not args.quiet))
    print(json.dumps(summary))
    return 1 if summary["errors"] else 0
