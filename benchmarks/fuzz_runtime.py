"""Hostile replies through `genevolve run`: tried / passed / failed per class of hostile input.

Runs the real command in a child process against the loopback hostile server of
tests/fakes/hostile.py (the same as tests/test_fuzz_runtime.py, with counts instead of asserts), with
an API key in the child's environment that the server also echoes. Per class it prints the hostile
replies sent, the items tried, the items that passed (one record in the journal and one in the
array, strict JSON, no key, no crash) and failed, and how the passing items ended.

    .venv/bin/python benchmarks/fuzz_runtime.py [--items-per-class 20] [--parallel 48] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakes.hostile import CLASSES, HostileServer, check_outputs, item_request  # noqa: E402

SECRET = "fuzzkey-7c1e9a44b2d04f0c-not-shaped-like-any-key"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items-per-class", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="fuzz-runtime-") as tmp:
        tmp = Path(tmp)
        rows = [{"id": f"{name}-{i}", "prompt": item_request(i, name)}
                for name in CLASSES for i in range(args.items_per_class)]
        (tmp / "fuzz.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / "empty.toml").write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GENEVOLVE_", "OPENAI_", "SERPER_"))}
        env.update(OPENAI_API_KEY=SECRET, GENEVOLVE_CONFIG=str(tmp / "empty.toml"), PYTHONPATH=str(ROOT))
        out = tmp / "out"
        t0 = time.perf_counter()
        with HostileServer(SECRET, hostile_turns=(3, 7), seed=args.seed) as server:
            done = subprocess.run(
                [sys.executable, "-c", "import sys; from genevolve.cli import main; sys.exit(main(sys.argv[1:]))",
                 "run", "--input", str(tmp / "fuzz.jsonl"), "--output-dir", str(out), "--base-url", server.base_url,
                 "--model", "fuzz", "--parallel", str(args.parallel), "--timeout", "30", "--attempts", "3",
                 "--quiet"], capture_output=True, text=True, env=env, timeout=1800)
            sent, requests = dict(server.sent), server.request_count
        seconds = time.perf_counter() - t0
        ids = [r["id"] for r in rows]
        problems, verdict = check_outputs(out, ids, [SECRET], done.stderr)
        endings: dict[str, Counter] = {name: Counter() for name in CLASSES}
        for rec in json.loads((out / "results.json").read_text()):
            name = str(rec["id"]).rsplit("-", 1)[0]
            if name in endings:
                ending = rec.get("termination") or "?"
                if ending == "error" and "policy error" in str(rec.get("error")):
                    ending = "policy error"
                endings[name][ending] += 1

    print(f"genevolve run: exit {done.returncode}, {len(ids)} items, {requests} requests, "
          f"{sum(sent.values())} hostile replies, {seconds:.1f} s, --parallel {args.parallel}")
    print(f"{'class':24s} {'replies':>7s} {'tried':>5s} {'passed':>6s} {'failed':>6s}  endings")
    total = Counter()
    for name in CLASSES:
        mine = [i for i in ids if i.rsplit("-", 1)[0] == name]
        failed = [i for i in mine if verdict[i]]
        total.update(replies=sent.get(name, 0), tried=len(mine), passed=len(mine) - len(failed), failed=len(failed))
        ends = ", ".join(f"{k} {v}" for k, v in endings[name].most_common())
        print(f"{name:24s} {sent.get(name, 0):7d} {len(mine):5d} {len(mine) - len(failed):6d} {len(failed):6d}  {ends}")
        for i in failed[:3]:
            print(f"    {i}: {verdict[i]}")
    print(f"{'all':24s} {total['replies']:7d} {total['tried']:5d} {total['passed']:6d} {total['failed']:6d}")
    print("whole-run checks:", "; ".join(problems) if problems else
          "exit 0, strict JSON, no key in any file or on stderr" if done.returncode == 0 else "exit status not 0")
    if done.returncode != 0:
        print(done.stderr[-2000:])
    return 0 if done.returncode == 0 and not problems and not total["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
