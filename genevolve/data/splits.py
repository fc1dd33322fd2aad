"""Splits: SFT, self-evolution pool and held-out benchmark, decontaminated by entity and prompt hash.

Within each category, rows that share an entity key (the hidden entity, or the drawn subject, or the
pair of subjects) are joined into groups with union-find, so every group lands in one split whole.
Groups are ordered by a hash of their keys (fixed, independent of row order) and moved to the
benchmark until it holds `bench_share` of the category's rows; categories whose ground truth the
configured generator cannot show (`gt_categories`) stay out of the pool and the benchmark. Of the
rest, `pool_share` of the GT-capable rows (by a hash of the id) form the self-evolution pool, the
others the SFT set; small slices become the SFT eval set and the pool's internal validation set.

`verify_decontamination` is the acceptance check: no benchmark row shares a prompt hash, nor an
entity key within its category, with any SFT or pool row.
"""

from __future__ import annotations

import hashlib
from typing import Any

SFT_TRAIN, SFT_EVAL, POOL_TRAIN, POOL_VAL, BENCH = "sft_train", "sft_eval", "pool_train", "pool_val", "bench"
SPLITS = (SFT_TRAIN, SFT_EVAL, POOL_TRAIN, POOL_VAL, BENCH)
TRAINING = (SFT_TRAIN, SFT_EVAL, POOL_TRAIN, POOL_VAL)


def _h(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def _groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in rows:
        keys = r["entity_keys"] or [r["id"]]
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(find((r["entity_keys"] or [r["id"]])[0]), []).append(r)
    return list(out.values())


def assign_splits(rows: list[dict[str, Any]], *, gt_categories: set[str], bench_share: float = 0.12,
                  pool_share: float = 0.35, sft_eval_share: float = 0.03, pool_val_share: float = 0.05,
                  sft: bool = True, seed: int = 0) -> dict[str, str]:
    """id -> split for rows {"id", "category", "entity_keys"}. With `sft=False` (no teacher data) every
    non-benchmark row of a GT-capable category goes to the pool, and the others are left out."""
    out: dict[str, str] = {}
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    for category, cat_rows in sorted(by_cat.items()):
        bench_ids: set[str] = set()
        if category in gt_categories and bench_share > 0:
            groups = sorted(_groups(cat_rows), key=lambda g: _h(f"{seed}:{category}:" + "|".join(
                sorted({k for r in g for k in r["entity_keys"]}))))
            target = max(1, round(bench_share * len(cat_rows)))
            for g in groups:
                if len(bench_ids) >= target:
                    break
                if len(bench_ids) + len(g) > 2 * target:
                    continue                # one huge group would swallow the category
                bench_ids.update(r["id"] for r in g)
            if not bench_ids and len(groups) > 1:        # every group is big: hold out the smallest
                bench_ids.update(r["id"] for r in min(groups, key=len))
        for r in cat_rows:
            if r["id"] in bench_ids:
                out[r["id"]] = BENCH
            elif category in gt_categories and (not sft or _h(f"{seed}:pool:{r['id']}") < pool_share):
                out[r["id"]] = POOL_VAL if _h(f"{seed}:val:{r['id']}") < pool_val_share else POOL_TRAIN
            elif sft:
                out[r["id"]] = SFT_EVAL if _h(f"{seed}:eval:{r['id']}") < sft_eval_share else SFT_TRAIN
    return out


def verify_decontamination(rows: list[dict[str, Any]]) -> list[str]:
    """Problems (empty when clean) for rows {"id", "split", "category", "entity_keys", "prompt_hash"}."""
    train = [r for r in rows if r["split"] in TRAINING]
    bench = [r for r in rows if r["split"] == BENCH]
    hashes = {r["prompt_hash"]: r["id"] for r in train}
    keys = {(r["category"], k): r["id"] for r in train for k in r["entity_keys"]}
    problems = []
    for r in bench:
        if r["prompt_hash"] in hashes:
            problems.append(f"{r['id']}: prompt hash also in training row {hashes[r['prompt_hash']]}")
        for k in r["entity_keys"]:
            if (r["category"], k) in keys:
                problems.append(f"{r['id']}: entity {k} of {r['category']} also in training row {keys[(r['category'], k)]}")
    return problems
