"""Finding the records under the folders the viewer was given.

A folder with results files (results.jsonl / results.json, results_eval.jsonl) is a run, joined
with its agent/, render/, eval/ and judge/ folders (the layout of `genevolve bench`, and of
`run` + `render --output-dir RUN/render` + `judge`); a folder with metrics.jsonl, guides.jsonl
or memory.json is a training run, whose rollouts/*.jsonl are listings of their own; any other
.jsonl of rows (bench rows, SFT records, pools) is a data listing; a .json holding a
`trajectory` is a `generate` result. Other folders are searched a few levels down.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import Source, StageFile

STAGE_DIRS = ("agent", "render", "eval", "judge")
TRAIN_FILES = ("metrics.jsonl", "guides.jsonl", "memory.json")
SKIP_DIRS = {"images", "checkpoints", "report", "kv", "__pycache__", "node_modules", ".git", ".venv"}
MAX_DEPTH = 4
MAX_ENTRIES = 20_000          # directory entries looked at in all, so `view ~` cannot walk forever


@dataclass
class TrainingRun:
    key: str
    title: str
    folder: Path
    rollouts: list[str] = field(default_factory=list)       # keys of the rollout sources


@dataclass
class Catalog:
    sources: dict[str, Source] = field(default_factory=dict)
    training: dict[str, TrainingRun] = field(default_factory=dict)
    roots: list[Path] = field(default_factory=list)

    def key_for(self, title: str) -> str:
        base = "".join(c if c.isalnum() or c in "._-" else "-" for c in title).strip("-.") or "source"
        key, n = base[:80], 2
        while key in self.sources or key in self.training:
            key, n = f"{base[:76]}-{n}", n + 1
        return key


def discover(paths: list[str | os.PathLike]) -> Catalog:
    """Every source under the given files and folders."""
    catalog = Catalog()
    budget = [MAX_ENTRIES]
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{given}: no such file or folder")
        root = path.resolve() if path.is_dir() else path.resolve().parent
        catalog.roots.append(root)
        if path.is_file():
            _add_file(catalog, path.resolve(), path.name)
        else:
            _scan(catalog, path.resolve(), path.resolve().name or str(path), 0, budget)
    return catalog


def _results_files(folder: Path) -> list[StageFile]:
    """The results journal (else the array) and the judge journal of one stage folder."""
    out = []
    for name, stage in (("results", "row"), ("results_eval", "eval")):
        for suffix in (".jsonl", ".json"):
            if (folder / f"{name}{suffix}").is_file():
                out.append(StageFile(folder / f"{name}{suffix}", stage))
                break
    return out


def run_files(folder: Path) -> list[StageFile]:
    """The stage files of a run folder: its own and those of its agent/, render/, eval/, judge/
    folders (and render/eval), agent rows before render rows so that the render copy of a field wins."""
    files = _results_files(folder)
    for stage_dir in STAGE_DIRS:
        sub = folder / stage_dir
        if sub.is_dir():
            files += _results_files(sub) + [f for nested in ("eval", "judge") if (sub / nested).is_dir()
                                             for f in _results_files(sub / nested)]
    files.sort(key=lambda f: (f.stage == "eval", "render" in f.path.parent.parts[-2:]))
    return files


def refresh_training(catalog: Catalog, run: TrainingRun) -> None:
    """Add rollout files the trainer has written since the viewer started."""
    rollouts = run.folder / "rollouts"
    known = {catalog.sources[k].files[0].path for k in run.rollouts}
    for path in sorted(rollouts.glob("*.jsonl")) if rollouts.is_dir() else []:
        if path not in known:
            key = catalog.key_for(f"{run.title}/{path.stem}")
            catalog.sources[key] = Source(key, "rollouts", f"{run.title}/rollouts/{path.stem}", rollouts,
                                          [StageFile(path, "row", journal=False)], parent=run.key)
            run.rollouts.append(key)


def _scan(catalog: Catalog, folder: Path, title: str, depth: int, budget: list[int]) -> None:
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return
    budget[0] -= len(children)
    if budget[0] < 0:
        return
    names = {c.name for c in children}
    if names & set(TRAIN_FILES) or ("rollouts" in names and "config.json" in names):
        _add_training(catalog, folder, title)
        return
    files = run_files(folder)
    consumed = {d for d in STAGE_DIRS if any(f.path.parent.is_relative_to(folder / d) for f in files)}
    if files:
        key = catalog.key_for(title)
        catalog.sources[key] = Source(key, "run", title, folder, files,
                                      find_files=lambda: run_files(folder) or files)
    for child in children:
        if child.is_file() and child.suffix in (".jsonl", ".json") and not child.name.startswith("results") \
                and child.name not in TRAIN_FILES:
            _add_file(catalog, child, f"{title}/{child.name}")
    if depth >= MAX_DEPTH:
        return
    for child in children:
        if child.is_dir() and child.name not in consumed and child.name not in SKIP_DIRS \
                and not child.name.startswith("."):
            _scan(catalog, child, f"{title}/{child.name}", depth + 1, budget)


def _add_file(catalog: Catalog, path: Path, title: str) -> None:
    if path.name.startswith("results") and path.suffix in (".jsonl", ".json"):
        stage = "eval" if path.name.startswith("results_eval") else "row"
        key = catalog.key_for(title)
        catalog.sources[key] = Source(key, "run", title, path.parent, [StageFile(path, stage)])
        return
    first = _first_record(path)
    if first is None:
        return
    if isinstance(first.get("trajectory"), dict):             # a `generate` result
        key = catalog.key_for(title)
        catalog.sources[key] = Source(key, "result", title, path.parent, [StageFile(path, "result")])
    elif any(k in first for k in ("messages", "question", "prompt", "request")):
        key = catalog.key_for(title)
        catalog.sources[key] = Source(key, "data", title, path.parent,
                                      [StageFile(path, "data", journal=False)])


def _first_record(path: Path) -> dict[str, Any] | None:
    """The first object of a .jsonl file, or a .json file's object (or first array element)."""
    try:
        if path.suffix == ".jsonl":
            with open(path, "rb") as handle:
                for line in handle:
                    if line.strip():
                        obj = json.loads(line)
                        return obj if isinstance(obj, dict) else None
            return None
        if path.stat().st_size > 64 * 1024 * 1024:
            return None
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if isinstance(obj, list):
        obj = obj[0] if obj else None
    return obj if isinstance(obj, dict) else None


def _add_training(catalog: Catalog, folder: Path, title: str) -> None:
    key = catalog.key_for(title)
    run = catalog.training[key] = TrainingRun(key, title, folder)
    refresh_training(catalog, run)
