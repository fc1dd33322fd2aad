"""Request → image wall time of the fully offline stack on this machine.

Embedded policy (the pinned Qwen2.5-Coder-1.5B GGUF), offline search, offline image library and the
offline renderer, over ten fixed requests of different kinds. Prints per request: wall time,
rounds, tool calls, tokens prefilled and generated per turn, whether the run ended with a valid
program (an answer with a non-empty gen_prompt and none of the issues that make it unusable as
written: ordinals past the reference list, IMG ids or URLs in gen_prompt), and the summary: median / max wall time (target median <= 30 s) and the
fraction of valid programs (target >= 95%).

Run: .venv/bin/python -u benchmarks/offline_latency.py [--out runs/offline_latency.jsonl]
     [--passes 3]                           (the ten requests that many times; medians per pass and overall)
     [--temperature 0.6]                    (default: the agent's default sampling)
     [--policy-opt tool_call_budget=1 ...]   (the local policy's budget, as `genevolve generate` takes it)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from genevolve.agent import Agent, AgentConfig
from genevolve.cli.common import parse_options
from genevolve.generators import make_generator
from genevolve.program import unusable_issues
from genevolve.policies import make_policy
from genevolve.policies.base import Sampling
from genevolve.tools import default_tools, make_image_search_backend, make_search_backend

REQUESTS = [
    "A poster with the flag of the country whose capital is Canberra and the words 'G'DAY MATE' at the top",
    "The flag of the country whose capital is Lima, waving over a mountain valley",
    "Three red apples in a row on a white table",
    "A cat sitting to the left of a dog, cartoon style",
    "A street sign that says 'MAIN ST' under a night sky",
    "The tallest iron tower in Paris at sunset, watercolor",
    "Two pandas eating bamboo, photo",
    "A birthday card with a cake and the words 'HAPPY 30TH'",
    "The national flag of Japan next to the national flag of Brazil",
    "A rocket launching into a blue sky, vintage poster",
]

def valid(traj) -> bool:
    """Repairs the runtime made are fine; unusable-program issues are not."""
    return traj.ok and not unusable_issues(traj.program_issues)


async def main(out: str | None, policy_options: dict, passes: int, temperature: float | None) -> None:
    t_load = time.perf_counter()
    policy = make_policy("local", **policy_options)
    config = AgentConfig(sampling=Sampling() if temperature is None else Sampling(temperature=temperature))
    agent = Agent(policy, default_tools(make_search_backend("offline"), make_image_search_backend("offline")),
                  config)
    renderer = make_generator("offline")
    # Warm the indexes, the model and its system-prompt prefix so that the first request is not
    # charged for loading them.
    await agent.warm()
    await agent.tools["search"].backend.search("warm up", 1)
    await agent.tools["image_search"].backend.search_images("warm up", 1)
    print(f"setup (model load, indexes): {time.perf_counter() - t_load:.1f}s; budget: "
          + ", ".join(f"{k}={getattr(policy, k)}" for k in policy.DEFAULT_BUDGET)
          + f"; temperature {config.sampling.temperature}")

    rows = []
    # Rows are appended as they come, so an interrupted run keeps what it measured.
    out_file = open(out, "w", encoding="utf-8") if out else None
    for pass_no, request in ((p, r) for p in range(1, passes + 1) for r in REQUESTS):
        t0 = time.perf_counter()
        traj = await agent.run(request)
        if traj.ok:
            await renderer.render(traj.program)
        wall = time.perf_counter() - t0
        prefill = [(t.prompt_tokens or 0) - (t.cached_tokens or 0) for t in traj.turns]
        generated = [t.completion_tokens or 0 for t in traj.turns]
        row = {"pass": pass_no, "request": request, "wall_s": round(wall, 2), "rounds": traj.rounds,
               "tools": [c.name for c in traj.tool_calls],
               "calls": [f"{c.name}({json.dumps(c.arguments, ensure_ascii=False)})" for c in traj.tool_calls],
               "prefilled_per_turn": prefill,
               "generated_per_turn": generated, "valid": valid(traj), "termination": traj.termination,
               "gen_prompt": traj.program.gen_prompt if traj.program else None,
               "references": [r.title for r in traj.program.references] if traj.program else [],
               "issues": [str(i) for i in traj.program_issues]}
        rows.append(row)
        if out_file:
            out_file.write(json.dumps(row, ensure_ascii=False) + "\n")
            out_file.flush()
        print(f"{wall:6.1f}s  valid={row['valid']!s:5}  rounds={traj.rounds:2}  "
              f"prefill/turn={prefill}  gen/turn={generated}  {request[:60]}")
        print(f"        calls={row['calls']} refs={row['references']}")
        print(f"        gen_prompt={str(row['gen_prompt'])[:150]}")
    await agent.aclose()
    if out_file:
        out_file.close()
    walls = [r["wall_s"] for r in rows]
    if passes > 1:
        print("\nper pass: " + "; ".join(
            f"median {statistics.median(w):.1f}s, max {max(w):.1f}s, valid {sum(v)}/{len(v)}"
            for p in range(1, passes + 1)
            for w, v in [([r["wall_s"] for r in rows if r["pass"] == p], [r["valid"] for r in rows if r["pass"] == p])]))
    all_prefill = [p for r in rows for p in r["prefilled_per_turn"]]
    all_gen = [g for r in rows for g in r["generated_per_turn"]]
    print(f"\nmedian {statistics.median(walls):.1f}s  max {max(walls):.1f}s  (target median <= 30 s)")
    print(f"tokens per turn: prefilled median {statistics.median(all_prefill):.0f} "
          f"(max {max(all_prefill)}), generated median {statistics.median(all_gen):.0f} (max {max(all_gen)})")
    n_valid = sum(r["valid"] for r in rows)
    print(f"valid programs: {n_valid}/{len(rows)} = {n_valid / len(rows):.0%}  (target >= 95%); "
          f"with at least one reference: {sum(bool(r['references']) for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="also write the per-request rows as JSONL")
    ap.add_argument("--policy-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="local policy budget option, e.g. tool_call_budget=1 (repeatable)")
    ap.add_argument("--passes", type=int, default=1, help="run the ten requests this many times")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature of the policy")
    args = ap.parse_args()
    asyncio.run(main(args.out, parse_options(args.policy_opt, "--policy-opt"), args.passes, args.temperature))
