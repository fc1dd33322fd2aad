"""The agent runtime's own cost, and batch throughput against a slow policy server.

1. CPU per turn: a scripted policy (no network) drives the real agent loop with the real protocol
   parsing, tools and records; process CPU time / number of turns. Target: <= 2 ms.
2. Throughput of `genevolve run` (the real command, in a subprocess) against a loopback
   OpenAI-compatible server that waits 200 ms before every reply, at --parallel 1, 8 and 64.
   Ideal: parallel x (1 / 0.2 s) turns per second. Target: within 10% of ideal.

Run: .venv/bin/python benchmarks/agent_overhead.py
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakes.openai_chat import FakeChatServer, answer, tool_call  # noqa: E402
from genevolve.agent import Agent  # noqa: E402
from genevolve.policies.scripted import ScriptedPolicy  # noqa: E402
from genevolve.tools import KnowledgeTool, SearchTool  # noqa: E402
from genevolve.tools.base import SearchBackend, SearchHit  # noqa: E402

DELAY_S = 0.2
TURNS_PER_ITEM = 3   # two tool calls and an answer


class InstantSearch(SearchBackend):
    name = "instant"

    async def search(self, query: str, top_k: int) -> list[SearchHit]:
        return [SearchHit(f"Result {i} for {query}", f"https://example.org/{i}", "A short snippet. " * 8)
                for i in range(top_k)]


# Two skill look-ups: the batch measurement should time the runtime, not a search backend.
SCRIPT = [tool_call("query_knowledge", {"skill_name": "spatial_layout"}),
          tool_call("query_knowledge", {"skill_name": "text_rendering"}),
          answer("A poster with the flag of Australia and the words 'G'DAY MATE' at the top", [])]


def cpu_per_turn(runs: int = 300) -> float:
    script = [tool_call("search", {"queries": ["capital of Australia", "flag of Australia"]})] + SCRIPT[1:]
    agent = Agent(ScriptedPolicy(script), [SearchTool(InstantSearch()), KnowledgeTool()])

    async def go() -> int:
        turns = 0
        for i in range(runs):
            traj = await agent.run(f"request {i}")
            turns += len(traj.turns)
            traj.to_result()                   # the record a batch writes is part of the cost
        return turns

    asyncio.run(go())                          # warm up imports and caches
    t0 = time.process_time()
    turns = asyncio.run(go())
    return (time.process_time() - t0) / turns * 1000


def server_script(body: dict) -> str:
    n = sum(1 for m in body["messages"] if m["role"] == "assistant")
    return SCRIPT[n]


def throughput(parallel: int, items: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, FakeChatServer(server_script, delay_s=DELAY_S) as server:
        inp = Path(tmp) / "in.jsonl"
        inp.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"request {i}"}) + "\n" for i in range(items)))
        cmd = [str(ROOT / ".venv" / "bin" / "genevolve"), "run", "--input", str(inp), "--output-dir",
               str(Path(tmp) / "out"), "--base-url", server.base_url, "--model", "bench",
               "--parallel", str(parallel), "--quiet"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        counts = json.loads(out.stdout.strip().splitlines()[-1])
        turns = len(server.requests)
        assert turns == items * TURNS_PER_ITEM, (turns, out.stderr[-2000:])
        measured = turns / counts["seconds"]
        ideal = parallel / DELAY_S
        return measured, ideal


def main() -> None:
    ms = cpu_per_turn()
    print(f"CPU per turn (scripted policy, no network): {ms:.3f} ms   target <= 2 ms")
    print(f"{'parallel':>8} {'items':>6} {'turns/s':>9} {'ideal':>7} {'ratio':>6}")
    for parallel in (1, 8, 64):
        items = max(40, parallel * 16)     # enough waves that start-up and the last wave do not dominate
        measured, ideal = throughput(parallel, items)
        print(f"{parallel:>8} {items:>6} {measured:>9.1f} {ideal:>7.1f} {measured / ideal:>6.1%}")
    print("target: ratio >= 90% (the wall time of the batch, from its own timer, excludes process start-up)")


if __name__ == "__main__":
    main()
