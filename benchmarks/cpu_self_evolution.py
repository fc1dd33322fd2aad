"""Self-evolution on this CPU (issue 14): untuned -> SFT -> GRPO, each evaluated with the embedded runtime.

    python benchmarks/cpu_self_evolution.py --data DATA_DIR --offline-bench BENCH_DIR --out OUT
    python benchmarks/cpu_self_evolution.py --toy --out /tmp/toy          # a few rows, a couple of steps
    python benchmarks/cpu_self_evolution.py --sweep --data DATA_DIR --out OUT   # the CPU preset's lr x K

DATA_DIR is the data pipeline's build (`<DATA_DIR>/export/{sft/train.jsonl, pool/train.jsonl,
bench/test.jsonl}` with GT images); BENCH_DIR the offline benchmark (`test.jsonl`, from
`genevolve.data.offline_bench.build_benchmark`). A real registry model (SmolLM2-135M by default) is
trained with SFT (on the student's own system prompt) then GRPO, within the training budget
(`--sft-minutes` + `--grpo-minutes`, 120 in all by default; evaluation is timed apart). Each stage is
exported to GGUF (q8_0) and evaluated by the embedded llama.cpp policy on the held-out rows and on
the offline benchmark's test split: valid-program rate, program-level grounding of the hidden
entity (against the recipe, no pixels), KScore by dimension with the offline renderer and offline
judge (invalid programs count 0), tool and skill calls, seconds per request, each with a 95%
bootstrap interval. The untuned 1.5B default runs on a fixed random subset (`--big-rows`).

Everything is resumable: training resumes from its checkpoints, evaluation skips rows already in
`OUT/eval/<stage>/<split>.jsonl`. The report is OUT/REPORT.json and OUT/REPORT.md; the script
prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genevolve.jsonio import atomic_write_json  # noqa: E402

DIMENSIONS = ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics")


# ----------------------------------------------------------------------------- data

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def with_abs_gt(rows: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    return [{**r, "gt_image": str(folder / r["gt_image"])} if r.get("gt_image") else r for r in rows]


def locate_data(data: Path) -> dict[str, Path]:
    export = data / "export" if (data / "export").is_dir() else data
    return {"sft": export / "sft" / "train.jsonl", "pool": export / "pool" / "train.jsonl",
            "pool_val": export / "pool" / "val.jsonl", "heldout": export / "bench" / "test.jsonl"}


def build_toy_data(out: Path, n: int) -> Path:
    """A small data-pipeline build (expert teacher, offline world), for the toy run."""
    from genevolve.pipeline.data import build
    target = out / "toy_data"
    if not (target / "export" / "MANIFEST.json").exists():
        build(target, n=n, hf=False, calibration_pairs=0)
    return target


def subset(rows: list[dict[str, Any]], n: int | None, seed: str) -> list[dict[str, Any]]:
    """A fixed random subset (the same rows for every stage)."""
    if n is None or n >= len(rows):
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in picked]


# ----------------------------------------------------------------------------- training

def train_stages(args: argparse.Namespace, paths: dict[str, Path], out: Path) -> dict[str, Any]:
    from genevolve.train.base_models import resolve_model
    from genevolve.train.config import GRPOConfig, SFTConfig
    from genevolve.train.grpo import GRPOTrainer
    from genevolve.train.rollouts import load_rows
    from genevolve.train.sft import train_sft

    stages: dict[str, Any] = {"untuned": {"model_dir": str(resolve_model(args.model)), "train_s": 0.0}}
    if "sft" in args.stages or "grpo" in args.stages:
        t0 = time.perf_counter()
        sft = SFTConfig.build("cpu", model=args.model, output_dir=str(out / "runs" / "sft"), data=str(paths["sft"]),
                              max_steps=args.sft_steps, time_limit_minutes=args.sft_minutes, threads=args.threads,
                              system_prompt="student", policy_options=args.policy_options, seed=args.seed,
                              **({"batch_size": 2, "save_steps": 1} if args.toy else {}))
        model_dir = out / "runs" / "sft" / "model"
        result = train_sft(sft) if not (model_dir / "genevolve_policy.json").exists() else {"reused": True}
        stages["sft"] = {"model_dir": str(model_dir), "train_s": round(time.perf_counter() - t0, 1), **result}
    if "grpo" in args.stages:
        t0 = time.perf_counter()
        pool = load_rows(paths["pool"]) if paths["pool"].exists() and read_jsonl(paths["pool"]) else []
        if not pool:
            raise SystemExit(f"{paths['pool']}: no pool rows for GRPO")
        cfg = GRPOConfig.build("cpu", model=stages["sft"]["model_dir"], output_dir=str(out / "runs" / "grpo"),
                               steps=args.grpo_steps, time_limit_minutes=args.grpo_minutes, threads=args.threads,
                               learning_rate=args.grpo_lr, group_size=args.group_size,
                               requests_per_step=args.requests_per_step, policy_options=args.policy_options,
                               seed=args.seed, save_every=max(1, args.grpo_steps // 5))
        model_dir = out / "runs" / "grpo" / "model"
        records = GRPOTrainer(cfg, rows=pool).train() if not (model_dir / "genevolve_policy.json").exists() else []
        stages["grpo"] = {"model_dir": str(model_dir), "train_s": round(time.perf_counter() - t0, 1),
                          "steps_run": len(records),
                          "reward_first": records[0]["reward_mean"] if records else None,
                          "reward_last": records[-1]["reward_mean"] if records else None}
    return stages


# ----------------------------------------------------------------------------- evaluation

def grounding_of(row: dict[str, Any], program: dict[str, Any] | None, images: dict[str, Any]) -> bool | None:
    meta = row.get("meta") or {}
    if isinstance(meta.get("recipe"), dict):
        from genevolve.data.grounding import program_grounding
        return bool(program_grounding(meta, program, images)["grounded"])
    from genevolve.train.rewards import program_checks
    checks = [ok for name, ok, _ in program_checks(meta, program or {}) if name.startswith("entity:")]
    return all(checks) if checks else None


async def evaluate(policy: Any, rows: list[dict[str, Any]], out_file: Path) -> None:
    """One record per row appended to `out_file` (rows already there are skipped)."""
    from genevolve.agent import Agent, AgentConfig
    from genevolve.generators.offline import OfflineRenderer
    from genevolve.judges.offline import OfflineJudge
    from genevolve.policies.base import Sampling
    from genevolve.tools import default_tools, make_image_search_backend, make_search_backend

    done = {r["id"] for r in read_jsonl(out_file)}
    todo = [r for r in rows if r["id"] not in done]
    if not todo:
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tools = default_tools(make_search_backend("offline"), make_image_search_backend("offline"))
    renderer, judge = OfflineRenderer(long_side=512), OfflineJudge()
    images_dir = out_file.with_suffix("")
    try:
        for row in todo:
            seed = int(hashlib.sha256(row["id"].encode()).hexdigest()[:8], 16)     # same row, same draws
            agent = Agent(policy, tools, AgentConfig(sampling=Sampling(seed=seed)))
            traj = await agent.run(row["question"])
            program = traj.program.to_dict() if traj.program else None
            images = {k: v.to_dict() for k, v in traj.images.items()}
            record: dict[str, Any] = {
                "id": row["id"], "category": row.get("category"), "eval_type": row.get("eval_type"),
                "valid": bool(traj.ok), "grounded": grounding_of(row, program, images),
                "termination": str(traj.termination), "rounds": traj.rounds, "seconds": round(traj.duration_s, 3),
                "tool_calls": [c.name for c in traj.tool_calls],
                "skills": [c.arguments.get("skill_name") for c in traj.tool_calls if c.name == "query_knowledge"],
                "program": program, "scores": None,
                "text_required": bool((row.get("meta") or {}).get("required_texts"))}
            if traj.ok and traj.program is not None:
                image = images_dir / f"{row['id']}.png"
                image.parent.mkdir(parents=True, exist_ok=True)
                renderer.render_sync(traj.program).image.save(image)
                result = await judge.score(request=row["question"], generated_image=image,
                                           gt_image=row["gt_image"], program=program, meta=row.get("meta"))
                if result.ok:
                    record["scores"], record["text_required"] = result.scores, not result.text_accuracy_na
            with open(out_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
    finally:
        for tool in tools:
            await tool.aclose()


def _kscore(records: list[dict[str, Any]]) -> dict[str, float]:
    """KScore from dimension means; rows without a judged image count 0 (text mean over text-required)."""
    means = {}
    for d in DIMENSIONS:
        pool = [r for r in records if d != "text_accuracy" or r["text_required"]]
        means[d] = sum((r["scores"] or {}).get(d, 0.0) for r in pool) / len(pool) if pool else 0.5
    from genevolve.judges.aggregate import kscore_from_means
    return {"kscore": kscore_from_means(means), **means}


def summarize(records: list[dict[str, Any]], resamples: int = 1000) -> dict[str, Any]:
    """Figures with 95% bootstrap intervals (rows resampled with replacement, seeded)."""
    def figures(rs: list[dict[str, Any]]) -> dict[str, float]:
        n = len(rs)
        grounded = [r["grounded"] for r in rs if r["grounded"] is not None]
        return {"valid_rate": sum(r["valid"] for r in rs) / n,
                "grounded_rate": sum(grounded) / len(grounded) if grounded else math.nan,
                **_kscore(rs),
                "tool_calls": sum(len(r["tool_calls"]) for r in rs) / n,
                "skill_calls": sum(len(r["skills"]) for r in rs) / n,
                "seconds": sum(r["seconds"] for r in rs) / n}
    if not records:
        return {"n": 0}
    point = figures(records)
    rng = random.Random(0)
    draws = [figures([records[rng.randrange(len(records))] for _ in records]) for _ in range(resamples)]
    out: dict[str, Any] = {"n": len(records)}
    for key, value in point.items():
        values = sorted(d[key] for d in draws if not math.isnan(d[key]))
        lo, hi = (values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]) if values else (None, None)
        out[key] = {"value": value, "ci95": [lo, hi]}
    tools: dict[str, int] = {}
    for r in records:
        for name in r["tool_calls"]:
            tools[name] = tools.get(name, 0) + 1
    out["tool_calls_by_name"] = {k: v / len(records) for k, v in sorted(tools.items())}
    return out


def export_stage(model_dir: str, out: Path) -> Path:
    from genevolve.train.export import export_gguf
    target = out / "gguf" / f"{Path(model_dir).parent.name if Path(model_dir).name == 'model' else Path(model_dir).name}-q8_0.gguf"
    return target if target.exists() else export_gguf(model_dir, target, outtype="q8_0")


def eval_stages(args: argparse.Namespace, stages: dict[str, Any], splits: dict[str, list[dict[str, Any]]],
                out: Path) -> dict[str, Any]:
    from genevolve.policies.local import LocalGGUFPolicy
    results: dict[str, Any] = {}
    todo = [s for s in ("untuned", "sft", "grpo") if s in stages and s in args.stages]
    for stage in todo:
        t0 = time.perf_counter()
        gguf = export_stage(stages[stage]["model_dir"], out)
        policy = LocalGGUFPolicy(model_path=gguf, n_threads=args.threads, **(args.policy_options or {}))
        try:
            for split, rows in splits.items():
                asyncio.run(evaluate(policy, rows, out / "eval" / stage / f"{split}.jsonl"))
        finally:
            policy.close()
        results[stage] = {"eval_s": round(time.perf_counter() - t0, 1), "gguf": str(gguf),
                          **{split: summarize(read_jsonl(out / "eval" / stage / f"{split}.jsonl"))
                             for split in splits}}
    if "big" in args.stages:
        t0 = time.perf_counter()
        policy = LocalGGUFPolicy(n_threads=args.threads)          # the untuned 1.5B default, its own budget
        try:
            for split, rows in splits.items():
                asyncio.run(evaluate(policy, subset(rows, args.big_rows, f"big:{split}"),
                                     out / "eval" / "big" / f"{split}.jsonl"))
        finally:
            policy.close()
        results["big"] = {"eval_s": round(time.perf_counter() - t0, 1),
                          **{split: summarize(read_jsonl(out / "eval" / "big" / f"{split}.jsonl")) for split in splits}}
    return results


# ----------------------------------------------------------------------------- sweep

def sweep(args: argparse.Namespace, paths: dict[str, Path], out: Path) -> dict[str, Any]:
    """Short GRPO runs from the SFT checkpoint over learning rate x group size; the reward trend of each."""
    from genevolve.train.config import GRPOConfig
    from genevolve.train.grpo import GRPOTrainer
    from genevolve.train.rollouts import load_rows
    start = args.sweep_from or str(out / "runs" / "sft" / "model")
    pool = load_rows(paths["pool"])
    table = []
    for lr in args.sweep_lr:
        for k in args.sweep_k:
            run = out / "sweep" / f"lr{lr:g}_k{k}"
            cfg = GRPOConfig.build("cpu", model=start, output_dir=str(run), steps=args.sweep_steps, learning_rate=lr,
                                   group_size=k, requests_per_step=args.requests_per_step, threads=args.threads,
                                   policy_options=args.policy_options, seed=args.seed, save_every=args.sweep_steps)
            t0 = time.perf_counter()
            GRPOTrainer(cfg, rows=pool).train()
            recs = read_jsonl(run / "metrics.jsonl")
            half = len(recs) // 2             # first half of the run against the second
            mean = lambda rs, key: sum(r[key] for r in rs) / len(rs) if rs else None  # noqa: E731
            early, late = mean(recs[:half], "reward_mean"), mean(recs[half:], "reward_mean")
            table.append({"lr": lr, "group_size": k, "steps": len(recs), "reward_early": early, "reward_late": late,
                          "gain": late - early if early is not None and late is not None else None,
                          "seconds_per_step": (time.perf_counter() - t0) / max(len(recs), 1),
                          "answer_rate_late": mean(recs[half:], "answer_rate")})
            print(json.dumps(table[-1]))
    atomic_write_json(out / "sweep" / "SWEEP.json", table)
    return {"sweep": table}


# ----------------------------------------------------------------------------- report

def report_md(report: dict[str, Any]) -> str:
    lines = ["# CPU self-evolution", "", f"model: {report['model']}", ""]
    for name, st in report["training"].items():
        lines.append(f"- {name}: training {st.get('train_s', 0):.0f} s")
    keys = ("valid_rate", "grounded_rate", "kscore", *DIMENSIONS, "tool_calls", "skill_calls", "seconds")
    for split in report["splits"]:
        lines += ["", f"## {split} ({report['splits'][split]} rows)", "",
                  "| stage | n | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 2)]
        for stage, res in report["evaluation"].items():
            s = res.get(split) or {}
            cells = []
            for k in keys:
                v = s.get(k)
                cells.append("-" if not v else f"{v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
                             if v["ci95"][0] is not None else f"{v['value']:.3f}")
            lines.append(f"| {stage} | {s.get('n', 0)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="data pipeline build dir (with export/)")
    p.add_argument("--offline-bench", type=Path, help="offline benchmark dir (test.jsonl)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--stages", default=None, help="comma list of untuned,sft,grpo,big (default all; --toy: no big)")
    p.add_argument("--sft-steps", type=int, default=60)
    p.add_argument("--sft-minutes", type=float, default=40.0)
    p.add_argument("--grpo-steps", type=int, default=40)
    p.add_argument("--grpo-minutes", type=float, default=80.0)
    p.add_argument("--grpo-lr", type=float, default=None, help="default: the CPU preset's")
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--requests-per-step", type=int, default=None)
    p.add_argument("--eval-rows", type=int, default=None, help="held-out rows evaluated (default all)")
    p.add_argument("--bench-rows", type=int, default=None, help="offline benchmark test rows (default all)")
    p.add_argument("--big-rows", type=int, default=100, help="rows per split for the untuned 1.5B")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="budget of the small policy in training and evaluation, e.g. tool_call_budget=4")
    p.add_argument("--toy", action="store_true", help="a few rows and steps, end to end")
    p.add_argument("--sweep", action="store_true", help="run the lr x group-size sweep instead")
    p.add_argument("--sweep-lr", type=float, nargs="+", default=[3e-6, 1e-5, 3e-5])
    p.add_argument("--sweep-k", type=int, nargs="+", default=[4, 6])
    p.add_argument("--sweep-steps", type=int, default=8)
    p.add_argument("--sweep-from", default=None, help="checkpoint to start the sweep runs from (default OUT's SFT)")
    args = p.parse_args()
    from genevolve.cli.common import parse_options
    args.policy_options = parse_options(args.policy_opt, "--policy-opt") or {"tool_call_budget": 4}
    default_stages = "untuned,sft,grpo" if args.toy else "untuned,sft,grpo,big"
    args.stages = [s.strip() for s in (args.stages or default_stages).split(",") if s.strip()]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    import torch
    torch.set_num_threads(args.threads)
    if args.toy:
        args.data = args.data or build_toy_data(out, n=60)
        args.sft_steps, args.grpo_steps, args.sft_minutes, args.grpo_minutes = 2, 2, 10.0, 15.0
        args.eval_rows, args.bench_rows, args.big_rows = args.eval_rows or 3, args.bench_rows or 2, 2
        args.group_size, args.requests_per_step = args.group_size or 2, args.requests_per_step or 1
    if args.data is None:
        raise SystemExit("--data is required (or --toy)")
    paths = locate_data(args.data)
    if args.sweep:
        print(json.dumps(sweep(args, paths, out)))
        return
    splits = {"heldout": subset(with_abs_gt(read_jsonl(paths["heldout"]), paths["heldout"].parent),
                                args.eval_rows, "heldout")}
    if args.offline_bench or args.toy:
        bench_dir = args.offline_bench or out / "toy_offline_bench"
        if not (bench_dir / "test.jsonl").exists():
            from genevolve.data.offline_bench import build_benchmark
            build_benchmark(bench_dir, per_category=1 if args.toy else None)
        splits["offline_bench"] = subset(with_abs_gt(read_jsonl(bench_dir / "test.jsonl"), bench_dir),
                                         args.bench_rows, "offline_bench")
    t0 = time.perf_counter()
    stages = train_stages(args, paths, out)
    train_s = time.perf_counter() - t0
    evaluation = eval_stages(args, stages, splits, out)
    report = {"model": args.model, "training": stages, "training_s": round(train_s, 1),
              "splits": {k: len(v) for k, v in splits.items()}, "evaluation": evaluation,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    atomic_write_json(out / "REPORT.json", report)
    (out / "REPORT.md").write_text(report_md(report), encoding="utf-8")
    print(report_md(report))


if __name__ == "__main__":
    main()
