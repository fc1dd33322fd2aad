"""`genevolve judge`: score rendered results against ground-truth images and summarise KScore.

Input is a results file of the render stage (upstream `results.json` rows: id, prompt or question,
output_path, gen_prompt, reference_images, error, plus bench fields gt_image, eval_type, category,
difficulty). Output, in --output-dir: results_eval.jsonl (the journal, one line per judged item),
results_eval.json, summary.json and summary.csv. A rerun keeps judged items and retries the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .common import fail

JUDGES = {
    "kscore": "genevolve.judges.kscore:KScoreJudge",
    "offline": "genevolve.judges.offline:OfflineJudge",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge", help="score rendered results with a judge; write results_eval.json and summary",
                       description="Judge every rendered item of a results file against its ground-truth "
                                   "image and report KScore, overall and by eval_type, category and difficulty. "
                                   "Resumable: a rerun keeps judged items and retries failed ones.")
    p.add_argument("--results", required=True, help="results.json/.jsonl of the render stage (or its folder)")
    p.add_argument("--gt-root", required=True, help="folder that rows' gt_image paths are relative to")
    p.add_argument("--judge", choices=sorted(JUDGES), default="kscore", help="kscore (a VLM endpoint) or "
                   "offline (no model service; a proxy)")
    add_judge_endpoint_args(p)
    p.add_argument("--output-dir", default=None, help="where results_eval/summary go (default: next to --results)")
    p.add_argument("--parallel", type=int, default=4, help="items judged concurrently (default 4)")
    p.add_argument("--no-retry-errors", action="store_true", help="on a rerun, keep items that ended in error")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def add_judge_endpoint_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judge endpoint (OpenAI-compatible chat with images)")
    g.add_argument("--base-url", default=None, help="e.g. https://generativelanguage.googleapis.com/v1beta/openai "
                   "(env GENEVOLVE_JUDGE_BASE_URL, then OPENAI_BASE_URL)")
    g.add_argument("--model", default=None, help="judge model, e.g. gemini-3.1-pro-preview (env GENEVOLVE_JUDGE_MODEL)")
    g.add_argument("--api-key", default=None, help="API key (prefer env GENEVOLVE_JUDGE_API_KEY or OPENAI_API_KEY)")
    g.add_argument("--rpm", type=float, default=None, help="at most this many judge requests per minute")
    g.add_argument("--max-attempts", type=int, default=4,
                   help="asks per item when the judge's reply is unreadable or out of range (default 4)")
    g.add_argument("--max-side", type=int, default=4096, help="images are re-encoded with this long side at most")


def make_judge(kind: str, args: argparse.Namespace):
    """The judge `kind`, built from the endpoint flags (model-free judges take no options)."""
    from ..generators import load_class

    if kind not in JUDGES:
        raise ValueError(f"unknown judge '{kind}' (choose from {', '.join(JUDGES)})")
    cls = load_class(JUDGES[kind])
    if kind == "offline":
        return cls()
    return cls(args.base_url, args.model, args.api_key, rpm=args.rpm, max_attempts=args.max_attempts,
               max_side=args.max_side)


# ---------------------------------------------------------------------------------------------
# Reading the results file

def load_results(path: Path):
    """(rows, input problems, duplicate rows). A repeated id does not stop the run: the first row
    with that id is judged and each repeat is reported in the summary."""
    from ..pipeline.batch import read_rows

    rows, problems = read_rows(path, duplicates="keep_first")
    duplicates = [{"id": p.duplicate_of, "line": p.line, "error": p.message} for p in problems if p.duplicate_of]
    return rows, [p for p in problems if not p.duplicate_of], duplicates


def generated_image_path(data: dict[str, Any], results_dir: Path) -> Path | None:
    value = data.get("output_path") or data.get("generated_image") or data.get("image_path")
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


# ---------------------------------------------------------------------------------------------
# Judging a batch (also used by `genevolve bench`)

async def judge_batch(judge: Any, results_path: str | Path, gt_root: str | Path, out_dir: str | Path, *,
                      parallel: int = 4, retry_errors: bool = True, progress: bool = True) -> dict[str, Any]:
    """Judge every row of `results_path` not yet judged in `out_dir`; write the summary; return it."""
    from ..judges.aggregate import evaluation_record, summarize, write_summary
    from ..judges.kscore import missing_images
    from ..pipeline.batch import ResultStore, Row, request_text, run_items

    results_path, gt_root, out_dir = Path(results_path), Path(gt_root), Path(out_dir)
    rows, problems, duplicates = load_results(results_path)
    info = judge.info()
    store = ResultStore(out_dir, "results_eval",
                        retry=(lambda r: bool(r.get("error"))) if retry_errors else None)
    def failed(item_id: str, data: dict[str, Any], error: str, **paths: Any) -> dict[str, Any]:
        # a failure record still names the judge that would have scored it
        return {**evaluation_record(item_id, data, None, error=error), "judge": info, **paths}

    try:
        _check_same_judge(store, info)
        for p in problems:
            if not store.done(p.id):
                store.add(failed(p.id, {}, p.message))

        async def work(row: Row) -> dict[str, Any]:
            data = row.data
            generated = generated_image_path(data, results_path.parent)
            gt = gt_image_path(row.id, data, gt_root)
            paths = {"generated_image": str(generated) if generated else None, "gt_image": str(gt) if gt else None}
            try:
                request = request_text(row, source=str(results_path))
            except ValueError as exc:
                return failed(row.id, data, str(exc), **paths)
            if generated is None:
                why = data.get("error") or "the row has no output_path (was it rendered?)"
                return failed(row.id, data, f"no generated image: {why}", **paths)
            problem = missing_images(generated=generated, GT=gt)
            if problem:
                return failed(row.id, data, problem, **paths)
            program = {"gen_prompt": data.get("gen_prompt", ""),
                       "reference_images": data.get("reference_images") or []}
            result = await judge.score(request=request, generated_image=generated, gt_image=gt,
                                       program=program, meta=data)
            return {**evaluation_record(row.id, data, result), **paths}

        counts = await run_items(
            rows, work, store, parallel=parallel, desc="judge", progress=progress,
            on_error=lambda row, exc: failed(row.id, row.data, f"judge crashed: {type(exc).__name__}: {exc}"))
    finally:
        order = [p.id for p in problems] + [r.id for r in rows]
        store.close(order=order)
    records = [store.records[i] for i in order if i in store.records]
    summary = summarize(records, judge_info=info, duplicates=duplicates)
    summary["counts"] = counts
    write_summary(summary, out_dir)
    return summary


def _check_same_judge(store: Any, info: dict[str, str]) -> None:
    """Refuse to mix judgements of different judges in one output folder."""
    keys = ("judge", "model", "rubric_version")
    for record in store.records.values():
        seen = record.get("judge")
        if isinstance(seen, dict) and any(seen.get(k) != info.get(k) for k in keys):
            raise ValueError(f"{store.jsonl_path} holds judgements by {[seen.get(k) for k in keys]}, not "
                             f"{[info.get(k) for k in keys]}; use another --output-dir to judge again")


def main(args: argparse.Namespace) -> int:
    from ..judges.aggregate import format_table
    from ..judges.base import JudgeError
    from ..pipeline.batch import InputError

    results = Path(args.results)
    if results.is_dir():
        results = results / "results.json"
    if not results.is_file():
        return fail(f"--results {results}: no such file")
    if not Path(args.gt_root).is_dir():
        return fail(f"--gt-root {args.gt_root}: no such folder")
    if args.parallel < 1:
        return fail("--parallel must be at least 1")
    out_dir = Path(args.output_dir) if args.output_dir else results.parent
    try:
        judge = make_judge(args.judge, args)
    except (JudgeError, ValueError, ImportError) as exc:
        return fail(str(exc))

    async def go() -> dict[str, Any]:
        try:
            return await judge_batch(judge, results, args.gt_root, out_dir, parallel=args.parallel,
                                     retry_errors=not args.no_retry_errors, progress=not args.quiet)
        finally:
            await judge.aclose()

    try:
        summary = asyncio.run(go())
    except (InputError, ValueError, json.JSONDecodeError) as exc:
        return fail(str(exc))
    print(format_table(summary))
    for dup in summary["duplicates"]:
        print(f"genevolve: {dup['error']}", file=sys.stderr)
    kscore = None if summary["kscore"] is None else round(summary["kscore"], 4)
    print(json.dumps({"output_dir": str(out_dir), "kscore": kscore, "n_items": summary["n_items"],
                      "n_failed": summary["n_failed"], "n_duplicate_rows": summary["n_duplicate_rows"]}))
    return 0
