"""Speed of the embedded policy on this machine: load, prefill, decode, a constrained turn,
and the prefill the on-disk prefix cache saves. Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_local_policy.py [--threads N] [--turns 3]

Each phase runs in a fresh process so that load time and the disk cache are measured cold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REQUESTS = ["A travel poster of the tallest building in Dubai at sunset.",
            "The flag of Peru waving on a pole, photo.",
            "A birthday card that reads 'Happy 7th, Mia!' with seven candles."]


def phase(kv_dir: str, prefix_cache: bool, threads: int | None, turns: int) -> dict:
    from genevolve.policies.base import Sampling
    from genevolve.policies.local import LocalGGUFPolicy
    from genevolve.protocol import build_system_prompt, parse_turn
    from genevolve.tools import ImageSearchTool, KnowledgeTool, SearchTool

    schemas = [t.schema() for t in (SearchTool(None), ImageSearchTool(None), KnowledgeTool())]
    system = build_system_prompt(schemas)
    policy = LocalGGUFPolicy(n_ctx=8192, n_threads=threads, prefix_cache=prefix_cache,
                             tool_schemas=schemas, kv_dir=kv_dir)
    policy.load()
    out = {"load_s": policy.stats["load_s"], "turns": []}
    for request in REQUESTS[:turns]:
        started = time.perf_counter()
        reply = policy.chat_blocking([{"role": "system", "content": system},
                                      {"role": "user", "content": request}],
                                     Sampling(temperature=0.6, top_p=0.9, max_tokens=400, seed=1))
        t = reply.raw["timings"]
        out["turns"].append({
            "wall_s": round(time.perf_counter() - started, 2), "prompt_tokens": reply.prompt_tokens,
            "evaluated": t.get("prompt_n"), "cached": reply.cached_tokens,
            "prompt_tok_s": round(t.get("prompt_per_second", 0), 1), "completion_tokens": reply.completion_tokens,
            "decode_tok_s": round(t.get("predicted_per_second", 0), 1), "action": parse_turn(reply.text).kind})
    out["prefix"] = {k: policy.stats.get(k) for k in ("prefix_source", "prefix_tokens", "prefix_s")}
    policy.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--phase", choices=["none", "disk"], help=argparse.SUPPRESS)
    ap.add_argument("--kv-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.kv_dir, args.phase == "disk", args.threads, args.turns)))
        return
    print(f"cpus={os.cpu_count()} load average={os.getloadavg()}")
    with tempfile.TemporaryDirectory() as kv_dir:
        results = {}
        # no disk cache; then a first process that fills it; then a fresh process that restores it
        for name, mode in (("no_disk_cache", "none"), ("fills_disk_cache", "disk"), ("restores_from_disk", "disk")):
            cmd = [sys.executable, __file__, "--phase", mode, "--kv-dir", kv_dir, "--turns", str(args.turns)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(name, json.dumps(results[name], indent=1))
        cold, warm = results["no_disk_cache"]["turns"][0], results["restores_from_disk"]["turns"][0]
        print(f"\nfirst-turn prompt tokens evaluated: {cold['evaluated']} without the disk cache, "
              f"{warm['evaluated']} with it ({cold['wall_s']} s vs {warm['wall_s']} s wall)")
        print(f"prefix restore from disk: {results['restores_from_disk']['prefix']['prefix_s']} s "
              f"for {results['restores_from_disk']['prefix']['prefix_tokens']} tokens")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
