"""Training metrics: one JSON object per step in `metrics.jsonl`, TensorBoard when installed, a PNG.

The JSON lines file is the record (appended and flushed per step, so a crash loses nothing); a
resumed run first drops lines past its checkpoint, so every step appears once. TensorBoard and
the PNG are views of it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..jsonio import dumps, jsonl_lines

# Curves drawn in the PNG, when present.
PLOTTED = ("reward_mean", "answer_rate", "loss", "pg_loss", "kl", "clip_fraction", "sdl_loss", "sdl_hit_rate",
           "ved_memory_size", "lr", "grad_norm", "tool_calls_per_run", "seconds_step")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as 'a/b' keys."""
    out: dict[str, float] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class MetricsLog:
    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:             # TensorBoard is optional (not installed, or broken)
                self._writer = None
        self._clock = (time.monotonic(), 0.0)  # (when training began in this process, seconds before it)

    def start_clock(self) -> None:
        """Training starts now (after any `truncate_after`): the clock goes on from the last kept
        record's `train_seconds`, so a time limit is a budget for the whole run, not per invocation."""
        spent = next((float(r["train_seconds"]) for r in reversed(self.records())
                      if isinstance(r.get("train_seconds"), (int, float))), 0.0)
        self._clock = (time.monotonic(), spent)

    def train_seconds(self) -> float:
        """Training seconds of the run so far, resumed invocations included (records carry it)."""
        return self._clock[1] + time.monotonic() - self._clock[0]

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step` (written before a crash, past the checkpoint)."""
        truncate_jsonl(self.path, step)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            # strict JSON (a NaN loss is written null), as every other record of ours
            f.write(dumps(record, default=str) + "\n")
            f.flush()
        if self._writer is not None:
            for key, value in flatten(record).items():
                if key != "step":
                    self._writer.add_scalar(key, value, int(record.get("step", 0)))
            self._writer.flush()

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def truncate_jsonl(path: str | os.PathLike, step: int) -> None:
    """Keep the lines of a per-step JSON lines file (metrics, guides) whose `step` is at most `step`."""
    path = Path(path)
    if not path.exists():
        return
    kept = [line for line in jsonl_lines(path.read_text(encoding="utf-8"))
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in jsonl_lines(p.read_text(encoding="utf-8")) if line.strip()]


def plot_curves(records: list[dict[str, Any]], out: str | os.PathLike, title: str = "") -> Path | None:
    """A PNG with one small panel per plotted metric; None when matplotlib is missing or nothing to draw."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    flat = [flatten(r) for r in records]
    names = [n for n in PLOTTED if any(n in f for f in flat)]
    if not names:
        return None
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    x_key = "step" if any("step" in f for f in flat) else None
    for ax, name in zip(axes.flat, names):
        pts = [(f.get(x_key, i) if x_key else i, f[name]) for i, f in enumerate(flat) if name in f]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
