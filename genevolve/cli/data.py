"""`genevolve data`: the data pipeline, one subcommand per stage plus `build` for all of them.

    genevolve data build --offline --n 3000 --output-dir D       every stage, offline
    genevolve data recipes --n N --output-dir D [--input RECIPES]  (then requests, teacher, checks,
    genevolve data requests --output-dir D [--writer-base-url ...] splits, gt, export, calibrate, report)
    genevolve data world                                         entity counts of the offline world
    genevolve data load-published --input DIR --output-dir D     read the published GenEvolve data

Every stage resumes from what D already holds. Secrets come from the environment only:
GENEVOLVE_WRITER_API_KEY / GENEVOLVE_JUDGE_API_KEY, else OPENAI_API_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from .common import add_backend_args, add_policy_args, fail

ACTIONS = ("build", "world", "recipes", "requests", "teacher", "checks", "splits", "gt", "export", "calibrate",
           "report", "load-published")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build training and benchmark data (recipes to splits)",
                       description="The data pipeline: recipes -> requests -> teacher trajectories -> checks and "
                                   "audit -> splits -> ground truth -> export, with a yield report. "
                                   "`build` runs every stage; each stage also runs alone and resumes.")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("--output-dir", help="the build folder (every stage reads and writes here)")
    p.add_argument("--input", help="recipes: a recipes file to import instead of sampling; "
                                   "load-published: the published data folder")
    p.add_argument("--offline", action="store_true",
                   help="build: offline writer, expert teacher, offline audit and renderer (also the default)")
    p.add_argument("--n", type=int, default=None, help="recipes to draw (recipes, build)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the recipe draw, the teacher and the splits")
    p.add_argument("--categories", default=None, help="comma-separated category ids (default: all sixteen)")
    p.add_argument("--parallel", type=int, default=4, help="items at once in the batch stages")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("requests")
    g.add_argument("--writer-base-url", default=None, help="write requests with this OpenAI-compatible model "
                                                          "(default: the offline template writer)")
    g.add_argument("--writer-model", default=None)
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher", choices=["expert", "policy"], default="expert",
                   help="expert: the scripted expert (default); policy: the policy chosen by the policy flags")
    g.add_argument("--mistake-rate", type=float, default=0.3, help="expert: share of runs with one recoverable mistake")
    g.add_argument("--tool-call-budget", type=int, default=None, help="expert: tool calls per request")
    g.add_argument("--inline-skills", action="store_true",
                   help="expert: the skills' rules are in the system prompt (the embedded policy's lean prompt)")
    add_policy_args(p)
    g = p.add_argument_group("checks")
    g.add_argument("--audit-base-url", default=None, help="audit with this OpenAI-compatible judge (default: offline)")
    g.add_argument("--audit-model", default=None)
    g.add_argument("--min-mean", type=float, default=None, help="audit mean needed to keep an item (default 3.5)")
    g.add_argument("--min-each", type=float, default=None, help="lowest audit dimension allowed (default 2)")
    g = p.add_argument_group("splits, ground truth, export")
    g.add_argument("--bench-share", type=float, default=0.12)
    g.add_argument("--pool-share", type=float, default=0.35)
    g.add_argument("--no-teacher", action="store_true", help="splits: rows come straight from requests")
    g.add_argument("--long-side", type=int, default=512, help="long side of GT images (offline renderer)")
    g.add_argument("--no-hf", action="store_true", help="export: skip the Hugging Face DatasetDict")
    g.add_argument("--pairs", type=int, default=32, help="calibrate/build: cross-rendition pairs to judge")
    add_backend_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.action == "world":
        from ..data.world import OfflineWorld
        print(json.dumps(OfflineWorld.load().counts(), indent=2))
        return 0
    if not args.output_dir:
        return fail(f"data {args.action}: --output-dir is required")
    out = Path(args.output_dir)
    progress = not args.quiet
    from ..pipeline.batch import StageError
    try:
        result = run_action(args, out, progress)
    except (StageError, ValueError, FileNotFoundError) as exc:
        return fail(f"data {args.action}: {exc}")
    print(json.dumps(result, default=str) if args.action != "report" else
          (out / "REPORT.md").read_text(encoding="utf-8"))
    return 0


def _categories(args: argparse.Namespace) -> list[str] | None:
    return [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None


def _writer(args: argparse.Namespace) -> Any:
    if not args.writer_base_url:
        return None
    if not args.writer_model:
        raise ValueError("--writer-model is required with --writer-base-url")
    from ..data.writers import LLMWriter
    key = os.environ.get("GENEVOLVE_WRITER_API_KEY") or os.environ.get("OPENAI_API_KEY") or ""
    return LLMWriter(args.writer_base_url, args.writer_model, key)


def _auditor(args: argparse.Namespace) -> Any:
    if not args.audit_base_url:
        return None
    if not args.audit_model:
        raise ValueError("--audit-model is required with --audit-base-url")
    from ..data.checks import EndpointAuditor
    key = os.environ.get("GENEVOLVE_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or ""
    return EndpointAuditor(args.audit_base_url, args.audit_model, key)


def _expert_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"mistake_rate": args.mistake_rate, "tool_call_budget": args.tool_call_budget,
            "inline_skills": args.inline_skills, "seed": args.data_seed}


def _generator(args: argparse.Namespace) -> Any:
    backend = getattr(args, "generator.backend", None)
    if not backend or backend == "offline":
        return None
    from .common import build_generator
    return build_generator(args)


def _closing(obj: Any, coro_fn: Any) -> Any:
    """Run `coro_fn()` and close `obj` (a writer or auditor with an HTTP client) in the same loop."""
    async def go() -> Any:
        try:
            return await coro_fn()
        finally:
            if obj is not None:
                await obj.aclose()
    return asyncio.run(go())


def run_action(args: argparse.Namespace, out: Path, progress: bool) -> Any:
    from ..pipeline import data as stages
    from ..data.export import stage_export
    from ..data.report import stage_calibrate, stage_report

    a = args.action
    if a == "build":
        if not args.n or args.n < 1:
            raise ValueError("--n must be at least 1")
        policy, config = _policy(args) if args.teacher == "policy" else (None, None)
        return stages.build(out, n=args.n, seed=args.data_seed, categories=_categories(args),
                            teacher=args.teacher, teacher_options=_expert_options(args) if policy is None else None,
                            teacher_policy=policy, agent_config=config,
                            writer=_writer(args), auditor=_auditor(args), generator=_generator(args),
                            long_side=args.long_side, parallel=args.parallel, calibration_pairs=args.pairs,
                            hf=not args.no_hf, progress=progress,
                            log=lambda m: print(f"genevolve data: {m}", file=sys.stderr))["table"]
    if a == "recipes":
        if args.input:
            return stages.import_recipes(out, args.input)
        if not args.n or args.n < 1:
            raise ValueError("--n must be at least 1 (or pass --input RECIPES)")
        return stages.stage_recipes(out, n=args.n, seed=args.data_seed, categories=_categories(args))
    if a == "requests":
        writer = _writer(args)
        return _closing(writer, lambda: stages.stage_requests(out, writer=writer, parallel=args.parallel,
                                                               progress=progress))
    if a == "teacher":
        policy, config = _policy(args) if args.teacher == "policy" else (None, None)
        return asyncio.run(stages.stage_teacher(out, teacher="expert", teacher_options=_expert_options(args),
                                                policy=policy, agent_config=config, parallel=args.parallel,
                                                progress=progress))
    if a == "checks":
        auditor = _auditor(args)
        return _closing(auditor, lambda: stages.stage_checks(out, auditor=auditor, min_mean=args.min_mean,
                                                              min_each=args.min_each, parallel=args.parallel,
                                                              progress=progress))
    if a == "splits":
        return stages.stage_splits(out, source="requests" if args.no_teacher else "checks", seed=args.data_seed,
                                   offline=_generator(args) is None, bench_share=args.bench_share,
                                   pool_share=args.pool_share)
    if a == "gt":
        return asyncio.run(stages.stage_gt(out, generator=_generator(args), long_side=args.long_side,
                                           progress=progress))
    if a == "export":
        return stage_export(out, hf=not args.no_hf)
    if a == "calibrate":
        return asyncio.run(stage_calibrate(out, pairs=args.pairs, seed=args.data_seed, long_side=args.long_side))
    if a == "report":
        return stage_report(out)
    if a == "load-published":
        if not args.input:
            raise ValueError("--input DIR (the published data folder) is required")
        from ..data.published import load_published, write_published
        return write_published(load_published(args.input), out)
    raise ValueError(f"unknown action {a}")


def _policy(args: argparse.Namespace) -> tuple[Any, Any]:
    """The teacher policy the policy flags choose, and the agent settings to run it with."""
    from .. import settings
    from .common import command_settings
    s = command_settings(args)
    return settings.build_policy(s), settings.build_agent_config(s)
