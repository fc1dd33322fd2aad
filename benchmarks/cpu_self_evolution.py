"""Self-evolution on this CPU (issues 14, 15): untuned -> SFT -> GRPO and GRPO+VED, each evaluated with the embedded runtime.

    python benchmarks/cpu_self_evolution.py --data DATA_DIR --offline-bench BENCH_DIR --out OUT
    python benchmarks/cpu_self_evolution.py --toy --out /tmp/toy          # a few rows, a couple of steps
    python benchmarks/cpu_self_evolution.py --sweep --data DATA_DIR --out OUT   # the CPU preset's lr x K

DATA_DIR is the data pipeline's build (`<DATA_DIR>/export/{sft/train.jsonl, pool/train.jsonl,
bench/test.jsonl}` with GT images); BENCH_DIR the offline benchmark (`test.jsonl`, from
`genevolve.data.offline_bench.build_benchmark`). A real registry model (SmolLM2-135M by default) is
trained with SFT (on the student's own system prompt) then GRPO, within the training budget
(`--sft-minutes` + `--grpo-minutes`, 120 in all by default; evaluation is timed apart). GRPO+VED
starts from the same SFT checkpoint with the same pool, seeds, steps and minutes, and adds Visual
Experience Distillation (offline summariser, MiniLM-keyed memory, the privileged teacher's SDL term);
before its evaluation the script prints what a VED step costs against a plain GRPO step on the same
batch (`ved_step_cost`: the update with and without the teacher pass, and the whole step; measured
on `--ved-cost-batches` batches, kept in OUT/VED_STEP_COST.json, `--no-ved-cost` skips it). Each stage is
exported to GGUF (q8_0) and evaluated by the embedded llama.cpp policy on the held-out rows and on
the offline benchmark's test split: valid-program rate, program-level grounding of the hidden
entity (against the recipe, no pixels), KScore by dimension with the offline renderer and offline
judge (invalid programs count 0), tool and skill calls, seconds per request, each with a 95%
bootstrap interval, overall and by track (Knowledge- / Quality-Anchored); then each stage against
the one before it (and the untuned model) as a paired difference on the same rows, with a paired
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

from genevolve.jsonio import JsonlAppender, atomic_write_json, jsonl_lines, read_jsonl_tolerant  # noqa: E402

DIMENSIONS = ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics")
# The small policy's budget in training and evaluation (its turns are short; 4 calls leave room to
# search, look up a skill and fetch references). --policy-opt overrides it.
SMALL_POLICY_BUDGET = {"tool_call_budget": 4}


# ----------------------------------------------------------------------------- data

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """An input file, strictly (this script's own evaluation records, which a kill may have cut
    mid-line, are read with jsonio.read_jsonl_tolerant)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in jsonl_lines(path.read_text(encoding="utf-8")) if line.strip()]


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
    from genevolve.train.config import SFTConfig
    from genevolve.train.grpo import GRPOTrainer
    from genevolve.train.metrics import read_metrics
    from genevolve.train.rollouts import load_rows
    from genevolve.train.sft import train_sft

    stages: dict[str, Any] = {"untuned": {"model_dir": str(resolve_model(args.model)), "train_s": 0.0}}
    if {"sft", "grpo", "grpo_ved"} & set(args.stages):
        t0 = time.perf_counter()
        sft = SFTConfig.build("cpu", model=args.model, output_dir=str(out / "runs" / "sft"), data=str(paths["sft"]),
                              max_steps=args.sft_steps, time_limit_minutes=args.sft_minutes, threads=args.threads,
                              system_prompt="student", policy_options=args.policy_options, seed=args.seed,
                              learning_rate=args.sft_lr,
                              **({"batch_size": 2, "per_device_batch": 2, "save_steps": 1} if args.toy else {}))
        model_dir = out / "runs" / "sft" / "model"
        result = train_sft(sft) if not (model_dir / "genevolve_policy.json").exists() else {"reused": True}
        stages["sft"] = {"model_dir": str(model_dir), "train_s": round(time.perf_counter() - t0, 1), **result}
    rl = [s for s in ("grpo", "grpo_ved") if s in args.stages]
    if rl:
        pool = load_rows(paths["pool"]) if paths["pool"].exists() and read_jsonl(paths["pool"]) else []
        if not pool:
            raise SystemExit(f"{paths['pool']}: no pool rows for GRPO")
    for stage in rl:                  # the same start, pool, seeds, steps and minutes; VED is the difference
        cfg = grpo_config(args, stages["sft"]["model_dir"], out / "runs" / stage, ved=stage == "grpo_ved")
        model_dir = out / "runs" / stage / "model"
        if not (model_dir / "genevolve_policy.json").exists():
            GRPOTrainer(cfg, rows=pool, ved_api_key=args.ved_api_key).train()
        # From the run's own metrics, so a run trained (or resumed) by an earlier invocation that
        # stopped before writing TRAINING.json reports the same figures.
        records = read_metrics(out / "runs" / stage / "metrics.jsonl")
        stages[stage] = {"model_dir": str(model_dir), "steps_run": len(records),
                         "train_s": round(sum(r.get("seconds_step", 0.0) for r in records), 1),
                         "reward_first": records[0]["reward_mean"] if records else None,
                         "reward_last": records[-1]["reward_mean"] if records else None}
        if stage == "grpo_ved":
            stages[stage]["ved"] = ved_summary(records)
    return stages


def remember_training(stages: dict[str, Any], path: Path) -> dict[str, Any]:
    """Training figures survive the run that trained them: an SFT stage reused by a later invocation
    (to evaluate all stages at once) reports the time and loss of the run that trained it (GRPO
    stages read theirs from the run's metrics)."""
    known = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for name, stage in stages.items():
        if stage.get("reused") and name in known:
            stages[name] = {**known[name], "model_dir": stage["model_dir"]}
        else:
            known[name] = stage
    atomic_write_json(path, known)
    return stages


def grpo_config(args: argparse.Namespace, start: str, run_dir: Path, ved: bool, **extra: Any) -> Any:
    from genevolve.train.config import GRPOConfig
    settings: dict[str, Any] = dict(model=start, output_dir=str(run_dir), steps=args.grpo_steps,
                                    time_limit_minutes=args.grpo_minutes, threads=args.threads,
                                    learning_rate=args.grpo_lr, group_size=args.group_size,
                                    requests_per_step=args.requests_per_step, policy_options=args.policy_options,
                                    seed=args.seed, save_every=max(1, args.grpo_steps // 5))
    if ved:
        settings.update(ved=True, ved_embedder=args.ved_embedder, ved_summarizer=args.ved_summarizer,
                        ved_summarizer_url=args.ved_summarizer_url, ved_summarizer_model=args.ved_summarizer_model)
    return GRPOConfig.build("cpu", **{**settings, **extra})


def ved_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """VED over a run: SDL hit rate and loss, pairs and guides, the memory at the end. The hit rate
    is over every step; the loss, mask and guide length only over the steps that had a guide (a
    step without one has nothing to average, and its zeros would dilute the rest)."""
    if not records:
        return {}
    guided = [r for r in records if r.get("sdl_hit_rate", 0) > 0]

    def mean(key: str, over: list[dict[str, Any]] = records) -> float:
        return sum(r.get(key, 0.0) for r in over) / len(over) if over else 0.0

    return {"sdl_hit_rate": mean("sdl_hit_rate"), "guided_steps": len(guided), "sdl_loss": mean("sdl_loss", guided),
            "sdl_mask_fraction": mean("sdl_mask_fraction", guided),
            "ved_pairs": sum(r.get("ved_pairs", 0) for r in records),
            "ved_guides_written": sum(r.get("ved_guides_written", 0) for r in records),
            "ved_guide_tokens": mean("ved_guide_tokens", guided), "memory_size": records[-1].get("ved_memory_size"),
            "evictions": records[-1].get("ved_evictions_total"),
            "seconds_prepare": mean_nested(records, "seconds", "prepare"),
            "seconds_update": mean_nested(records, "seconds", "update"),
            "seconds_step": mean("seconds_step")}


def mean_nested(records: list[dict[str, Any]], outer: str, inner: str) -> float:
    return sum((r.get(outer) or {}).get(inner, 0.0) for r in records) / len(records) if records else 0.0


# ----------------------------------------------------------------------------- VED step cost

def ved_step_cost(args: argparse.Namespace, start: str, pool: list[dict[str, Any]], out: Path,
                  batches: int = 1, repeats: int = 2) -> dict[str, Any]:
    """A VED step against a plain GRPO step on the same batch, for each of `batches` batches (the
    first steps' rows): the batch's rollouts (timed with their scoring), then the update without and
    with VED's prepare (pairs, guides, memory, the teacher's forward pass), alternating `repeats`
    times from the same weights and optimizer state; the fastest of each is kept (load on a shared
    machine only ever adds time). Rewards are then set to k / (K - 1) within each group so that every
    sequence has an advantage (the plain update trains them all) and every group a pair and a guide:
    VED's worst case for extra work. The ratios over all batches are of summed seconds."""
    import asyncio
    import copy

    from genevolve.train.grpo import GRPOTrainer
    from genevolve.train.rewards import Reward

    cfg = grpo_config(args, start, out / "runs" / "ved_cost", ved=True, steps=batches)
    trainer = GRPOTrainer(cfg, rows=pool, ved_api_key=args.ved_api_key)
    trainer._setup()
    term = trainer.loss_terms[0]
    state = (copy.deepcopy(trainer.model.state_dict()), copy.deepcopy(trainer.optimizer.state_dict()),
             copy.deepcopy(trainer.scheduler.state_dict()))

    def timed(batch_of: Any, with_ved: bool) -> tuple[float, float]:
        trainer.model.load_state_dict(state[0])
        trainer.optimizer.load_state_dict(state[1])
        trainer.scheduler.load_state_dict(state[2])
        trainer._base_prefix = None               # computed under the weights just replaced
        batch = batch_of()
        trainer.loss_terms = [term] if with_ved else []
        t0 = time.perf_counter()
        if with_ved:
            term.prepare(trainer, batch)
        t1 = time.perf_counter()
        trainer.update(batch)
        return t1 - t0, time.perf_counter() - t1

    each = []
    for b in range(1, batches + 1):
        seconds: dict[str, float] = {}
        rollouts, _ = asyncio.run(trainer._rollouts_and_rewards(trainer.batch_rows(b), b, seconds))
        rollout_s = seconds.get("rollout", 0.0) + seconds.get("score", 0.0)
        k = max(cfg.group_size - 1, 1)
        synthetic = [Reward(r.k / k, r_img=r.k / k, r_text=r.k / k) for r in rollouts]

        def batch_of() -> Any:
            return trainer.make_batch(rollouts, synthetic)

        plain, ved = [], []
        for _ in range(repeats):
            plain.append(timed(batch_of, False))
            ved.append(timed(batch_of, True))
        stats = term.metrics()
        base = min(u for _, u in plain)
        prepare_s, update_s = min(ved, key=sum)
        sequences = batch_of().sequences
        each.append({"sequences": len(sequences), "written_tokens": sum(sum(s.mask) for s in sequences),
                     "guided_rows": stats.get("sdl_trained_rows"), "guide_tokens": stats.get("ved_guide_tokens"),
                     "plain_update_s": round(base, 3), "ved_prepare_s": round(prepare_s, 3),
                     "ved_update_s": round(update_s, 3), "teacher_s": (stats.get("ved_seconds") or {}).get("teacher"),
                     "update_ratio": round((prepare_s + update_s) / base, 3), "rollout_and_score_s": round(rollout_s, 3),
                     "step_ratio": round((rollout_s + prepare_s + update_s) / (rollout_s + base), 3)})
    trainer.metrics.close()

    def total(key: str) -> float:
        return round(sum(e[key] or 0.0 for e in each), 3)

    plain_s, ved_s, rollout_s = total("plain_update_s"), total("ved_prepare_s") + total("ved_update_s"), \
        total("rollout_and_score_s")
    return {"batches": len(each), "sequences": sum(e["sequences"] for e in each),
            "written_tokens": sum(e["written_tokens"] for e in each),
            "guided_rows": sum(e["guided_rows"] or 0 for e in each),
            "guide_tokens": round(sum(e["guide_tokens"] or 0.0 for e in each) / len(each), 1),
            "plain_update_s": plain_s, "ved_prepare_s": total("ved_prepare_s"), "ved_update_s": total("ved_update_s"),
            "teacher_s": total("teacher_s"), "update_ratio": round(ved_s / plain_s, 3),
            "update_ratio_range": [min(e["update_ratio"] for e in each), max(e["update_ratio"] for e in each)],
            "rollout_and_score_s": rollout_s, "step_ratio": round((rollout_s + ved_s) / (rollout_s + plain_s), 3),
            "per_batch": each, "target": "update_ratio <= 1.4 (one extra forward pass)"}


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

    done = {r["id"] for r in read_jsonl_tolerant(out_file)}
    todo = [r for r in rows if r["id"] not in done]
    if not todo:
        return
    out = JsonlAppender(out_file)         # one write per record; it mends a line torn by a kill
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
            out.append(record)
    finally:
        out.close()
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


def track_of(row: dict[str, Any]) -> str:
    return str((row.get("meta") or {}).get("track") or row.get("eval_type") or "unknown")


def figures(records: list[dict[str, Any]]) -> dict[str, float]:
    """The point figures of a set of evaluation records (grounding over rows that have a hidden entity)."""
    n = len(records)
    grounded = [r["grounded"] for r in records if r["grounded"] is not None]
    return {"valid_rate": sum(r["valid"] for r in records) / n,
            "grounded_rate": sum(grounded) / len(grounded) if grounded else math.nan,
            **_kscore(records),
            "tool_calls": sum(len(r["tool_calls"]) for r in records) / n,
            "skill_calls": sum(len(r["skills"]) for r in records) / n,
            "seconds": sum(r["seconds"] for r in records) / n}


def _interval(values: list[float]) -> list[float | None]:
    values = sorted(v for v in values if not math.isnan(v))
    return [values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]] if values else [None, None]


def summarize(records: list[dict[str, Any]], tracks: dict[str, str] | None = None,
              resamples: int = 1000) -> dict[str, Any]:
    """Figures with 95% bootstrap intervals (rows resampled with replacement, seeded); with
    `tracks` (row id -> track) the same figures for each track under `by_track`."""
    if not records:
        return {"n": 0}
    point = figures(records)
    rng = random.Random(0)
    draws = [figures([records[rng.randrange(len(records))] for _ in records]) for _ in range(resamples)]
    out: dict[str, Any] = {"n": len(records)}
    for key, value in point.items():
        out[key] = {"value": value, "ci95": _interval([d[key] for d in draws])}
    tools: dict[str, int] = {}
    for r in records:
        for name in r["tool_calls"]:
            tools[name] = tools.get(name, 0) + 1
    out["tool_calls_by_name"] = {k: v / len(records) for k, v in sorted(tools.items())}
    if tracks:
        names = sorted({tracks.get(r["id"], "unknown") for r in records})
        out["by_track"] = {t: summarize([r for r in records if tracks.get(r["id"], "unknown") == t], None, resamples)
                           for t in names}
    return out


# Which stage is measured against which: each step of the chain against the one before it, and the
# whole chain against the untuned model.
COMPARISONS = (("sft", "untuned"), ("grpo", "sft"), ("grpo_ved", "grpo"), ("grpo", "untuned"),
               ("grpo_ved", "untuned"), ("sft", "big"), ("grpo", "big"), ("grpo_ved", "big"))
PAIRED_KEYS = ("valid_rate", "grounded_rate", "kscore", "seconds")


def paired_difference(before: list[dict[str, Any]], after: list[dict[str, Any]],
                      resamples: int = 1000) -> dict[str, Any]:
    """`after` minus `before` on the rows both stages evaluated, with a paired 95% bootstrap interval:
    each draw resamples row ids and takes both stages' records of those rows, so how hard a row is
    cancels out (stage-wise intervals overlap long before a paired difference is uncertain)."""
    earlier = {r["id"]: r for r in before}
    pairs = [(earlier[r["id"]], r) for r in after if r["id"] in earlier]
    if not pairs:
        return {"n": 0}

    def diff(ps: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, float]:
        a, b = figures([p[0] for p in ps]), figures([p[1] for p in ps])
        return {k: b[k] - a[k] for k in PAIRED_KEYS}
    point = diff(pairs)
    rng = random.Random(0)
    draws = [diff([pairs[rng.randrange(len(pairs))] for _ in pairs]) for _ in range(resamples)]
    return {"n": len(pairs), **{k: {"value": point[k], "ci95": _interval([d[k] for d in draws])}
                                for k in PAIRED_KEYS}}


def compare_stages(records: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """The paired differences of COMPARISONS whose two stages were both evaluated, per split
    (`records`: stage -> split -> that stage's records of its rows)."""
    splits = {split for by_split in records.values() for split in by_split}
    return {split: {f"{after} - {before}": paired_difference(records[before][split], records[after][split])
                    for after, before in COMPARISONS
                    if records.get(after, {}).get(split) and records.get(before, {}).get(split)}
            for split in sorted(splits)}


def stage_records(out: Path, stage: str, split: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stage's records of exactly these rows. The record file may hold more: an earlier run with
    other subset sizes leaves its rows there, and they must not leak into this run's figures."""
    asked = {r["id"] for r in rows}
    return [r for r in read_jsonl_tolerant(out / "eval" / stage / f"{split}.jsonl") if r["id"] in asked]


def export_stage(model_dir: str, out: Path) -> Path:
    from genevolve.train.export import export_gguf
    target = out / "gguf" / f"{Path(model_dir).parent.name if Path(model_dir).name == 'model' else Path(model_dir).name}-q8_0.gguf"
    return target if target.exists() else export_gguf(model_dir, target, outtype="q8_0")


def eval_stages(args: argparse.Namespace, stages: dict[str, Any], splits: dict[str, list[dict[str, Any]]],
                out: Path) -> tuple[dict[str, Any], dict[str, dict[str, list[dict[str, Any]]]]]:
    """(figures per stage, records per stage and split) of every stage asked for."""
    from genevolve.policies.local import LocalGGUFPolicy
    results: dict[str, Any] = {}
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}
    todo = [s for s in ("untuned", "sft", "grpo", "grpo_ved") if s in stages and s in args.stages]
    tracks = {split: {r["id"]: track_of(r) for r in rows} for split, rows in splits.items()}
    for stage in todo:
        t0 = time.perf_counter()
        gguf = export_stage(stages[stage]["model_dir"], out)
        policy = LocalGGUFPolicy(model_path=gguf, n_threads=args.threads, **(args.policy_options or {}))
        try:
            for split, rows in splits.items():
                asyncio.run(evaluate(policy, rows, out / "eval" / stage / f"{split}.jsonl"))
        finally:
            policy.close()
        records[stage] = {split: stage_records(out, stage, split, rows) for split, rows in splits.items()}
        results[stage] = {"eval_s": round(time.perf_counter() - t0, 1), "gguf": str(gguf),
                          **{split: summarize(records[stage][split], tracks[split]) for split in splits}}
    if "big" in args.stages:
        t0 = time.perf_counter()
        asked = {split: subset(rows, args.big_rows, f"big:{split}") for split, rows in splits.items()}
        policy = LocalGGUFPolicy(n_threads=args.threads)          # the untuned 1.5B default, its own budget
        try:
            for split, rows in asked.items():
                asyncio.run(evaluate(policy, rows, out / "eval" / "big" / f"{split}.jsonl"))
        finally:
            policy.close()
        records["big"] = {split: stage_records(out, "big", split, rows) for split, rows in asked.items()}
        results["big"] = {"eval_s": round(time.perf_counter() - t0, 1),
                          **{split: summarize(records["big"][split], tracks[split]) for split in asked}}
    return results, records


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
        lines.append(f"- {name}: training {st.get('train_s', 0):.0f} s"
                     + (f", {st['steps_run']} steps, reward {st['reward_first']} -> {st['reward_last']}"
                        if st.get("steps_run") else ""))
        if st.get("ved"):
            lines.append("  - VED: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in st["ved"].items()))
    cost = report.get("ved_step_cost")
    if cost:
        spread = (f" (batches {cost['update_ratio_range'][0]}x to {cost['update_ratio_range'][1]}x)"
                  if cost.get("batches", 1) > 1 else "")
        lines += ["", f"## VED step cost (the same batches, {cost.get('batches', 1)})", "",
                  f"update with VED / plain: **{cost['update_ratio']}x**{spread} (plain {cost['plain_update_s']} s; VED prepare "
                  f"{cost['ved_prepare_s']} s + update {cost['ved_update_s']} s; teacher pass {cost['teacher_s']} s), "
                  f"whole step {cost['step_ratio']}x with {cost['rollout_and_score_s']} s of rollouts and scoring; "
                  f"{cost['sequences']} sequences, {cost['written_tokens']} written tokens, "
                  f"{cost['guided_rows']} guided rows, guides of {cost['guide_tokens']} tokens. Target: {cost['target']}."]
    keys = ("valid_rate", "grounded_rate", "kscore", *DIMENSIONS, "tool_calls", "skill_calls", "seconds")
    for split in report["splits"]:
        lines += ["", f"## {split} ({report['splits'][split]} rows)", "",
                  "| stage | n | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 2)]
        for stage, res in report["evaluation"].items():
            s = res.get(split) or {}
            lines.append(f"| {stage} | {s.get('n', 0)} | " + " | ".join(_cell(s.get(k)) for k in keys) + " |")
        track_keys = ("kscore", *DIMENSIONS, "grounded_rate", "valid_rate")
        rows = [(stage, track, t) for stage, res in report["evaluation"].items()
                for track, t in ((res.get(split) or {}).get("by_track") or {}).items()]
        if rows:
            lines += ["", f"by track ({split})", "", "| stage | track | n | " + " | ".join(track_keys) + " |",
                      "|" + " --- |" * (len(track_keys) + 3)]
            for stage, track, t in rows:
                lines.append(f"| {stage} | {track} | {t.get('n', 0)} | " + " | ".join(_cell(t.get(k)) for k in track_keys) + " |")
        paired = (report.get("paired") or {}).get(split) or {}
        if paired:
            lines += ["", f"paired differences ({split}; the same rows, 95% paired bootstrap)", "",
                      "| comparison | n | " + " | ".join(PAIRED_KEYS) + " |", "|" + " --- |" * (len(PAIRED_KEYS) + 2)]
            for name, d in paired.items():
                lines.append(f"| {name} | {d.get('n', 0)} | " + " | ".join(_cell(d.get(k), signed=True) for k in PAIRED_KEYS) + " |")
    return "\n".join(lines) + "\n"


def _cell(v: Any, signed: bool = False) -> str:
    if not v:
        return "-"
    fmt = "+.3f" if signed else ".3f"
    if v["ci95"][0] is None:
        return f"{v['value']:{fmt}}"
    return f"{v['value']:{fmt}} [{v['ci95'][0]:{fmt}}, {v['ci95'][1]:{fmt}}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="data pipeline build dir (with export/)")
    p.add_argument("--offline-bench", type=Path, help="offline benchmark dir (test.jsonl)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--stages", default=None,
                   help="comma list of untuned,sft,grpo,grpo_ved,big (default all; --toy: no big)")
    p.add_argument("--sft-steps", type=int, default=56)
    p.add_argument("--sft-minutes", type=float, default=85.0)
    p.add_argument("--sft-lr", type=float, default=None, help="default: the CPU preset's")
    p.add_argument("--grpo-steps", type=int, default=10)
    p.add_argument("--grpo-minutes", type=float, default=35.0)
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
    p.add_argument("--ved-embedder", default="minilm", help="VED memory keys: minilm | hash | a folder")
    p.add_argument("--ved-summarizer", default="offline", help="offline | endpoint")
    p.add_argument("--ved-summarizer-url", default=None, help="OpenAI-compatible base URL (endpoint summariser; "
                                                               "its key from OPENAI_API_KEY)")
    p.add_argument("--ved-summarizer-model", default="default")
    p.add_argument("--no-ved-cost", action="store_true", help="skip the VED-vs-GRPO step cost measurement")
    p.add_argument("--ved-cost-batches", type=int, default=1, help="batches the VED step cost is measured on")
    p.add_argument("--no-eval", action="store_true", help="train the stages (or reuse them) and stop: evaluate "
                                                              "later with every stage at once")
    p.add_argument("--toy", action="store_true", help="a few rows and steps, end to end")
    p.add_argument("--sweep", action="store_true", help="run the lr x group-size sweep instead")
    p.add_argument("--sweep-lr", type=float, nargs="+", default=[3e-6, 1e-5, 3e-5])
    p.add_argument("--sweep-k", type=int, nargs="+", default=[4, 6])
    p.add_argument("--sweep-steps", type=int, default=8)
    p.add_argument("--sweep-from", default=None, help="checkpoint to start the sweep runs from (default OUT's SFT)")
    args = p.parse_args()
    from genevolve.cli.common import parse_options
    args.policy_options = parse_options(args.policy_opt, "--policy-opt") or dict(SMALL_POLICY_BUDGET)
    default_stages = "untuned,sft,grpo,grpo_ved" if args.toy else "untuned,sft,grpo,grpo_ved,big"
    import os
    args.ved_api_key = os.environ.get("OPENAI_API_KEY", "") if args.ved_summarizer == "endpoint" else ""
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
    stages = remember_training(train_stages(args, paths, out), out / "TRAINING.json")
    train_s = time.perf_counter() - t0
    cost = None
    if "grpo_ved" in args.stages and not args.no_ved_cost:
        cost_file = out / "VED_STEP_COST.json"
        cost = json.loads(cost_file.read_text()) if cost_file.exists() else None
        if cost is None or cost.get("batches", 1) != args.ved_cost_batches:
            from genevolve.train.rollouts import load_rows
            cost = ved_step_cost(args, stages["sft"]["model_dir"], load_rows(paths["pool"]), out,
                                 batches=args.ved_cost_batches)
            atomic_write_json(cost_file, cost)
        print(json.dumps({"ved_step_cost": cost}))
    if args.no_eval:
        print(json.dumps({"training": stages}))
        return
    evaluation, records = eval_stages(args, stages, splits, out)
    report = {"model": args.model, "training": stages, "training_s": round(train_s, 1), "ved_step_cost": cost,
              "splits": {k: len(v) for k, v in splits.items()}, "evaluation": evaluation,
              "paired": compare_stages(records),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                           if k != "ved_api_key"}}
    atomic_write_json(out / "REPORT.json", report)
    (out / "REPORT.md").write_text(report_md(report), encoding="utf-8")
    print(report_md(report))


if __name__ == "__main__":
    main()
