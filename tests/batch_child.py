"""Runs one batch stage in a separate process, so a test can kill it with SIGKILL at a known point.

    batch_child.py STOP EVENT agent OUT INPUT BASE_URL IMAGE_DIR PARALLEL   the agent stage over test tools
    batch_child.py STOP EVENT cli ARG...                                     `genevolve ARG...`

STOP says where the process freezes: "-" (never), "add:DIR:K" (right after the K-th item is journaled
by the stage whose output folder is named DIR) or "json:DIR:K" (half way through the K-th rewrite of
that stage's results array: part of the new array is in the temporary file, the old array is still in
place). At that point the child writes the file EVENT and waits; the test kills it with SIGKILL. The
kill point is an event the child reports, not a guess about timing.
"""

import asyncio
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from genevolve.pipeline import batch  # noqa: E402

stop, event_path, mode, *rest = sys.argv[1:]


def freeze() -> None:
    Path(event_path).write_text("frozen\n")
    threading.Event().wait()          # until SIGKILL


if stop != "-":
    kind, folder, nth = stop.split(":")
    nth = int(nth)
    calls = {"n": 0}

    def matches(path: Path) -> bool:
        return path.parent.name == folder

    if kind == "add":
        original_add = batch.ResultStore.add

        def add(self, record):
            original_add(self, record)
            if matches(self.jsonl_path):
                calls["n"] += 1
                if calls["n"] == nth:
                    freeze()
        batch.ResultStore.add = add
    elif kind == "json":
        original_write = batch.atomic_write_json

        def atomic_write_json(path, obj, *, indent=2):
            path = Path(path)
            if matches(path) and path.suffix == ".json" and not path.name.startswith("summary"):
                calls["n"] += 1
                if calls["n"] == nth:
                    data = (json.dumps(obj, ensure_ascii=False, indent=indent) + "\n").encode()
                    fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                    os.write(fd, data[:len(data) // 2])
                    os.fsync(fd)
                    freeze()
            original_write(path, obj, indent=indent)
        batch.atomic_write_json = atomic_write_json
    else:
        raise SystemExit(f"unknown STOP {stop!r}")

if mode == "agent":
    from conftest import FolderImageBackend, ListSearchBackend  # noqa: E402
    from genevolve.agent import Agent  # noqa: E402
    from genevolve.pipeline.agent_runs import run_agent_batch  # noqa: E402
    from genevolve.policies.openai_compat import OpenAICompatPolicy  # noqa: E402
    from genevolve.tools import default_tools  # noqa: E402

    out_dir, input_path, base_url, image_dir, parallel = rest
    rows, problems = batch.read_rows(input_path)
    agent = Agent(OpenAICompatPolicy(base_url, "m"),
                  default_tools(ListSearchBackend([]), FolderImageBackend(Path(image_dir))))
    print(asyncio.run(run_agent_batch(agent, rows, problems, out_dir, parallel=int(parallel), progress=False)))
elif mode == "cli":
    from genevolve.cli import main  # noqa: E402

    sys.exit(main(rest))
else:
    raise SystemExit(f"unknown mode {mode!r}")
