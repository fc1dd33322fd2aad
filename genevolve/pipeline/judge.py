"""The judge stage: score rendered results against ground-truth images and summarise KScore.

Input rows are render-stage records (ours: output_path/image_path, success, error; upstream's
rendered rows: image_path, success) with the bench fields gt_image, eval_type, category, difficulty.
Output, in the stage's folder: results_eval.jsonl (the journal) and results_eval.json, one record per
id with `id` and `error`, plus summary.json and summary.csv. A rerun keeps judged items and retries
the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..settings import Settings
from .batch import InputError, InputProblem, ResultStore, Row, StageError, read_rows, request_text, run_items

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_results(path: str | Path) -> tuple[list[Row], list[InputProblem], list[dict[str, Any]]]:
    """(rows, input problems, duplicate rows). A repeated id does not stop the run: the first row
    with that id is judged and each repeat is reported in the summary."""
    rows, problems = read_rows(path, duplicates="keep_first")
    duplicates = [{"id": p.duplicate_of, "line": p.line, "error": p.message} for p in problems if p.duplicate_of]
    return rows, [p for p in problems if not p.duplicate_of], duplicates


def generated_image_path(data: dict[str, Any], results_dir: Path) -> Path | None:
    """The rendered image of a row, None when the render stage made none."""
    status = data.get("image_status")
    if data.get("success") is False or (isinstance(status, str) and status != "ok"):
        return None
    value = data.get("output_path") or data.get("image_path") or data.get("generated_image")
    if not value:
        return None
    p = Path(value)
    if p.is_absolute() or p.exists():
        return p
    return results_dir / p


def gt_image_path(item_id: str, data: dict[str, Any], gt_root: Path) -> Path | None:
    value = data.get("gt_image")
    if isinstance(value, str) and value:
        p = Path(value)
        return p if p.is_absolute() else gt_root / p
    for suffix in IMAGE_SUFFIXES:        # rows without gt_image: look for <id>.<ext>
        p = gt_root / f"{item_id}{suffix}"
        if p.is_file():
            return p
    return None


async def judge_rows(judge: Any, rows: list[Row], problems: list[InputProblem], gt_root: str | Path,
                     out_dir: str | Path, *, results_dir: str | Path, source: str = "input",
                     duplicates: list[dict[str, Any]] = (), parallel: int = 4, retry_errors: bool = True,
                     progress: bool = True) -> dict[str, Any]:
    """Judge every row not yet judged in `out_dir`; write and return the summary. Relative image
    paths in the rows are read from `results_dir`. The judge stays open: whoever built it closes it."""
    from ..judges.aggregate import evaluation_record, summarize, write_summary
    from ..judges.kscore import missing_images

    gt_root, out_dir, results_dir = Path(gt_root), Path(out_dir), Path(results_dir)
    info = judge.info()
    store = ResultStore(out_dir, "results_eval", retry=(lambda r: bool(r.get("error"))) if retry_errors else None)
    for stale in out_dir.glob(".summary.*.tmp"):
        stale.unlink(missing_ok=True)

    def failed(item_id: str, data: dict[str, Any], error: str, **paths: Any) -> dict[str, Any]:
        # a failure record still names the judge that would have scored it
        return {**evaluation_record(item_id, data, None, error=error), "judge": info, **paths}

    order = [p.id for p in problems] + [r.id for r in rows]
    try:
        _check_same_judge(store, info)
        for p in problems:
            if not store.done(p.id):
                store.add(failed(p.id, {}, p.message))

        async def work(row: Row) -> dict[str, Any]:
            data = row.data
            generated = generated_image_path(data, results_dir)
            gt = gt_image_path(row.id, data, gt_root)
            paths = {"generated_image": str(generated) if generated else None, "gt_image": str(gt) if gt else None}
            try:
                request = request_text(row, source=source)
            except ValueError as exc:
                return failed(row.id, data, str(exc), **paths)
            if generated is None:
                why = data.get("error") or data.get("image_status") or "the row has no output_path (was it rendered?)"
                return failed(row.id, data, f"no generated image: {why}", **paths)
            problem = missing_images(generated=generated, GT=gt)
            if problem:
                return failed(row.id, data, problem, **paths)
            program = {"gen_prompt": data.get("gen_prompt", ""), "reference_images": data.get("reference_images") or []}
            result = await judge.score(request=request, generated_image=generated, gt_image=gt, program=program,
                                       meta=data)
            return {**evaluation_record(row.id, data, result), **paths}

        counts = await run_items(
            rows, work, store, parallel=parallel, desc="judge", progress=progress,
            on_error=lambda row, exc: failed(row.id, row.data, f"judge crashed: {type(exc).__name__}: {exc}"))
    finally:
        store.close(order=order)
    records = [store.records[i] for i in order if i in store.records]
    summary = summarize(records, judge_info=info, duplicates=list(duplicates))
    summary["counts"] = counts
    write_summary(summary, out_dir)
    return summary


async def judge_batch(judge: Any, results_path: str | Path, gt_root: str | Path, out_dir: str | Path, *,
                      parallel: int = 4, retry_errors: bool = True, progress: bool = True) -> dict[str, Any]:
    """Judge every row of the results file `results_path` (see `judge_rows`)."""
    results_path = Path(results_path)
    rows, problems, duplicates = load_results(results_path)
    return await judge_rows(judge, rows, problems, gt_root, out_dir, results_dir=results_path.parent,
                            source=str(results_path), duplicates=duplicates, parallel=parallel,
                            retry_errors=retry_errors, progress=progress)


def _check_same_judge(store: ResultStore, info: dict[str, str]) -> None:
    """Refuse to mix judgements of different judges in one output folder."""
    keys = ("judge", "model", "rubric_version")
    for record in store.records.values():
        seen = record.get("judge")
        if isinstance(seen, dict) and any(seen.get(k) != info.get(k) for k in keys):
            raise StageError(f"{store.jsonl_path} holds judgements by {[seen.get(k) for k in keys]}, not "
                             f"{[info.get(k) for k in keys]}; use another --output-dir to judge again")


def build_stage_judge(settings: Settings) -> Any:
    """The settings' judge, or StageError saying why it cannot be built."""
    from ..config import ConfigError
    from ..judges.base import JudgeError
    from ..settings import build_judge

    try:
        return build_judge(settings)
    except ConfigError:
        raise
    except (JudgeError, ValueError, ImportError) as exc:
        raise StageError(f"judge: {exc}") from None


async def judge_file(settings: Settings, results: str | Path, gt_root: str | Path, out_dir: str | Path | None = None, *,
                     parallel: int = 4, retry_errors: bool = True, progress: bool = True,
                     say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """`genevolve judge`: the settings' judge over a results file (or its folder)."""
    results = Path(results)
    if results.is_dir():
        results = results / "results.json"
    if not results.is_file():
        raise StageError(f"--results {results}: no such file")
    if not Path(gt_root).is_dir():
        raise StageError(f"--gt-root {gt_root}: no such folder")
    judge = build_stage_judge(settings)
    try:
        summary = await judge_batch(judge, results, gt_root, Path(out_dir) if out_dir else results.parent,
                                    parallel=parallel, retry_errors=retry_errors, progress=progress)
    except InputError as exc:
        raise StageError(str(exc)) from None
    finally:
        await judge.aclose()
    for dup in summary["duplicates"]:
        say(dup["error"])
    summary["output_dir"] = str(Path(out_dir) if out_dir else results.parent)
    return summary
