"""WISE with the agent: `run` is the agent and render stages over WISE prompts (images land as
`images/{prompt_id}.png`); `score` judges such a folder of images under one WISE protocol.

    OUT/results.json(l)      agent results (ids are prompt_ids)
    OUT/renders.json(l)      render records (the render stage's schema)
    OUT/images/{id}.png
    OUT/wise_<protocol>.json(l), scores_<protocol>.jsonl, wise_<protocol>_summary.json   (score)

Both resume: a rerun skips finished items and retries failed ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..settings import Settings
from .batch import ResultStore, Row, StageError, read_rows, run_items
from .generate import run_agents
from .render import backend_parallel, render_rows


def _prompts(files: list[str | Path], limit: int | None = None, *, sample: int | None = None, seed: int = 0,
             say: Callable[[str], None] = lambda m: None) -> list[Any]:
    """The prompts of `files` (files or WISE data folders): all, the first `limit` by prompt_id, or
    a `sample` of that size stratified by category."""
    from ..judges.wise import load_prompts, sample_prompts

    try:
        prompts = load_prompts(files, say)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    if sample is not None:
        prompts = sample_prompts(prompts, max(0, sample), seed)
    return prompts[:max(0, limit)] if limit is not None else prompts


async def run_wise(settings: Settings, prompt_files: list[str | Path], out_dir: str | Path, *, parallel: int = 1,
                   limit: int | None = None, sample: int | None = None, seed: int = 0, progress: bool = True,
                   say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Agent then renderer for every WISE prompt (or the first `limit` by prompt_id, or a `sample`
    stratified by category, drawn with `seed`); the stages' counts."""
    from ..generators.base import GeneratorError
    from ..settings import build_generator

    prompts = _prompts(prompt_files, limit, sample=sample, seed=seed, say=say)
    rows = [Row(id=str(p.prompt_id), line=p.prompt_id, data=p.to_row()) for p in prompts]
    out = Path(out_dir)
    try:
        generator = build_generator(settings)
    except (GeneratorError, ValueError, TypeError, OSError) as exc:
        raise StageError(f"backend: {exc}") from None
    try:
        agent_counts = await run_agents(settings, rows, [], out, parallel=parallel, progress=progress)
        wanted = {r.id for r in rows}
        results, problems = read_rows(out / "results.json")
        render_counts = await render_rows(generator, [r for r in results if r.id in wanted], problems, out, out,
                                          parallel=backend_parallel(generator, None), progress=progress,
                                          name="renders", images_dir=out / "images")
    finally:
        await generator.aclose()
    return {"output_dir": str(out), "images": str(out / "images"), "agent": agent_counts, "render": render_counts}


async def score_images(judge: Any, prompts: list[Any], images_dir: str | Path, out_dir: str | Path, *,
                       parallel: int = 4, retry_errors: bool = True, progress: bool = True) -> dict[str, Any]:
    """Score `images_dir/{prompt_id}.png` for every prompt; write, in `out_dir`: wise_<protocol>.jsonl/.json
    (every record, the resume journal), scores_<protocol>.jsonl (scored rows only, in the WISE score-file
    layout) and wise_<protocol>_summary.json. Returns the summary. The judge stays open."""
    from ..jsonio import atomic_write_json, write_jsonl_atomic
    from ..judges.wise import item_score, score_row, summarize_wise

    name, images_dir, out_dir = judge.protocol.name, Path(images_dir), Path(out_dir)
    store = ResultStore(out_dir, f"wise_{name}", retry=(lambda r: bool(r.get("error"))) if retry_errors else None)
    by_id = {str(p.prompt_id): p for p in prompts}
    rows = [Row(id=str(p.prompt_id), line=i, data={}) for i, p in enumerate(prompts, 1)]
    order = [r.id for r in rows]
    try:
        for rec in store.records.values():
            if rec.get("judge", {}).get("model") not in (None, judge.endpoint.model):
                raise StageError(f"{store.jsonl_path} holds scores by judge model {rec['judge']['model']!r}, "
                                 f"not {judge.endpoint.model!r}; use another --output-dir")

        async def work(row: Row) -> dict[str, Any]:
            return await judge.score(by_id[row.id], images_dir / f"{row.id}.png")

        def on_error(row: Row, exc: BaseException) -> dict[str, Any]:
            return {"id": row.id, "prompt_id": int(row.id), "error": f"judge crashed: {type(exc).__name__}: {exc}"}

        await run_items(rows, work, store, parallel=parallel, desc=f"wise-{name}", on_error=on_error,
                        progress=progress)
    finally:
        store.close(order=order)
    records = [store.records[i] for i in order if i in store.records]
    write_jsonl_atomic(out_dir / f"scores_{name}.jsonl",
                       [score_row(r, judge.protocol) for r in records if item_score(r, judge.protocol) is not None])
    summary = summarize_wise(records, judge.protocol, judge.info())
    atomic_write_json(out_dir / f"wise_{name}_summary.json", summary)
    return summary


async def score_wise(settings: Settings, protocol: str, prompt_files: list[str | Path], images_dir: str | Path,
                     out_dir: str | Path | None = None, *, parallel: int = 4, retry_errors: bool = True,
                     progress: bool = True, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """`genevolve wise score`: the settings' judge endpoint over a folder of {prompt_id}.png."""
    from ..config import ConfigError
    from ..judges.base import JudgeError
    from ..judges.wise import PROTOCOLS, WiseJudge, range_mismatches
    from ..settings import endpoint_options

    images = Path(images_dir)
    if not images.is_dir():
        raise StageError(f"--images {images}: no such folder")
    prompts = _prompts(prompt_files, say=say)
    mismatched = range_mismatches(prompts, PROTOCOLS[protocol])
    if mismatched:
        other = "legacy" if protocol == "verified" else "verified"
        say(f"warning: {len(mismatched)} prompt(s) (e.g. prompt_id {mismatched[0]}) carry a Category that "
            f"disagrees with the {protocol} id ranges; are these the {other} prompt files?")
    try:
        judge = WiseJudge(protocol, **endpoint_options(settings))
    except ConfigError:
        raise
    except (JudgeError, ValueError) as exc:
        raise StageError(str(exc)) from None
    out = Path(out_dir) if out_dir else images.parent
    try:
        summary = await score_images(judge, prompts, images, out, parallel=parallel, retry_errors=retry_errors,
                                     progress=progress)
    finally:
        await judge.aclose()
    return {**summary, "output_dir": str(out)}
