"""The acceptance test of hardening: over a thousand generated hostile replies through `genevolve run`.

One run of the real command (a child process, so its exit status and stderr are its own) against the
loopback hostile server of tests/fakes/hostile.py: lone surrogates (as JSON escapes and raw bytes),
NUL bytes, deep nesting, NaN and Infinity, huge strings, thousands of references, unknown tools,
broken tags, random bytes, HTTP faults and odd reply shapes, with an API key in the environment that
the server also echoes. The run must exit 0 with exactly one record per item, every output must be
strict JSON, and the key must appear nowhere. benchmarks/fuzz_runtime.py runs the same with counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.hostile import CLASSES, HostileServer, check_outputs, item_request

HERE = Path(__file__).parent
SECRET = "fuzzkey-7c1e9a44b2d04f0c-not-shaped-like-any-key"
ITEMS_PER_CLASS = 20


def run_fuzz(tmp_path: Path, items_per_class: int, parallel: int = 48, seed: int = 0):
    rows = [{"id": f"{name}-{i}", "prompt": item_request(i, name)}
            for name in CLASSES for i in range(items_per_class)]
    inp = tmp_path / "fuzz.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENEVOLVE_", "OPENAI_", "SERPER_"))}
    env.update(OPENAI_API_KEY=SECRET, GENEVOLVE_CONFIG=str(cfg), PYTHONPATH=str(HERE.parent))
    with HostileServer(SECRET, hostile_turns=(3, 7), seed=seed) as server:
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from genevolve.cli import main; sys.exit(main(sys.argv[1:]))",
             "run", "--input", str(inp), "--output-dir", str(out), "--base-url", server.base_url, "--model", "fuzz",
             "--parallel", str(parallel), "--timeout", "30", "--attempts", "3", "--quiet"],
            capture_output=True, text=True, env=env, timeout=600)
        sent = dict(server.sent)
    return done, out, [r["id"] for r in rows], sent


@pytest.mark.slow
def test_a_thousand_hostile_replies_through_genevolve_run(tmp_path):
    done, out, ids, sent = run_fuzz(tmp_path, ITEMS_PER_CLASS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum(sent.values()) >= 1_000 and set(sent) == set(CLASSES), sent
    problems, verdict = check_outputs(out, ids, [SECRET], done.stderr)
    assert problems == []
    assert {i: why for i, why in verdict.items() if why} == {}
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["total"] == len(ids) and summary["failed"] < len(ids)
