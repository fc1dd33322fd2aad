"""Read the published GenEvolve data into this project's records.

The release ships three datasets (upstream README): GenEvolve-Data-SFT (train + eval; records of
`messages` and `images`, image paths such as `images/traj_00213/IMG_001.jpg`), GenEvolve-Data-RL
(train + eval; `id, question, gt_image, eval_type, category, difficulty, prompt_pool_index, meta,
extra_info`, GT paths such as `images/case_00512.jpg`) and GenEvolve-Bench (test, the same row format).
They come as JSON lines or as Parquet (`data/train-00000-of-00001.parquet`), each dataset in its own
folder with its images beside it, or all three under one folder.

`load_published(root)` walks `root`, reads every .jsonl/.json/.parquet file outside `images/`, tells
the kind by the fields (`messages` -> SFT; `question` + `gt_image` -> pool, or benchmark when the file
or folder says bench/test), the split by the file name, and returns our SFT records and pool/bench rows
with the paths resolved against the dataset folder. Rows it cannot use, and images that are missing,
are listed as problems naming the file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..jsonio import jsonl_lines
from .writers import prompt_hash

_SPLIT_RE = re.compile(r"^(train|eval|validation|val|test|dev)(?:[-_.]|$)", re.IGNORECASE)


@dataclass
class Published:
    sft: dict[str, list[dict[str, Any]]] = field(default_factory=dict)     # split -> SFT records
    pool: dict[str, list[dict[str, Any]]] = field(default_factory=dict)    # split -> RL rows
    bench: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # split -> benchmark rows
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        return {kind: {s: len(rows) for s, rows in getattr(self, kind).items()} for kind in ("sft", "pool", "bench")}


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in (".jsonl", ".json", ".parquet") \
                and "images" not in path.relative_to(root).parts and not path.name.startswith("."):
            yield path


def _rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line, object, error) for each row of a file."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            yield 0, None, "reading Parquet needs pyarrow (pip install 'genevolve[data]')"
            return
        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield i, row, None
        return
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield exc.lineno, None, f"not valid JSON ({exc.msg})"
            return
        for i, row in enumerate(data if isinstance(data, list) else [data], 1):
            yield i, row, None
        return
    for i, line in enumerate(jsonl_lines(text), 1):
        if line.strip():
            try:
                yield i, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield i, None, f"not valid JSON ({exc.msg})"


def _dataset_root(path: Path, root: Path) -> Path:
    """The folder a file's relative image paths start from: the nearest ancestor with an images/ folder."""
    for parent in [path.parent, *path.parent.parents]:
        if (parent / "images").is_dir():
            return parent
        if parent == root:
            break
    return path.parent.parent if path.parent.name == "data" else path.parent


def _split_of(path: Path) -> str:
    m = _SPLIT_RE.match(path.stem)
    name = (m.group(1) if m else path.stem).lower()
    return {"validation": "eval", "val": "eval", "dev": "eval"}.get(name, name)


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def load_published(root: str | Path) -> Published:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    out = Published()
    for path in _files(root):
        base, split = _dataset_root(path, root), _split_of(path)
        where = str(path.relative_to(root))
        is_bench = "bench" in where.lower() or split == "test"
        for line, row, error in _rows(path):
            if error or not isinstance(row, dict):
                out.problems.append(f"{where}:{line}: {error or 'expected a JSON object'}")
                continue
            if isinstance(row.get("messages"), list):
                rec = _sft(row, base, where, line, out.problems)
                out.sft.setdefault(split, []).append(rec)
            elif isinstance(row.get("question"), str) and row.get("gt_image"):
                rec = _row(row, base, where, line, out.problems)
                (out.bench if is_bench else out.pool).setdefault(split, []).append(rec)
            else:
                out.problems.append(f"{where}:{line}: neither an SFT record (messages) nor a pool/bench row "
                                    "(question + gt_image)")
    return out


def _sft(row: dict[str, Any], base: Path, where: str, line: int, problems: list[str]) -> dict[str, Any]:
    messages = [{"role": m.get("role"), "content": m.get("content")} for m in row["messages"] if isinstance(m, dict)]
    images = []
    for rel in row.get("images") or []:
        path = base / rel
        if not path.is_file():
            problems.append(f"{where}:{line}: image {rel} is missing")
        images.append(str(path))
    loss_mask = [1 if m["role"] == "assistant" else 0 for m in messages]
    meta = _maybe_json(row.get("meta")) or {}
    return {"id": str(row.get("id") or f"{Path(where).stem}_{line:06d}"), "messages": messages, "images": images,
            "loss_mask": loss_mask, "meta": {**(meta if isinstance(meta, dict) else {"meta": meta}),
                                             "source": "published", "file": where}}


def _row(row: dict[str, Any], base: Path, where: str, line: int, problems: list[str]) -> dict[str, Any]:
    gt = str(row["gt_image"])
    if not (base / gt).is_file():
        problems.append(f"{where}:{line}: GT image {gt} is missing")
    meta = _maybe_json(row.get("meta")) or {}
    meta = meta if isinstance(meta, dict) else {"meta": meta}
    for key in ("prompt_pool_index", "extra_info"):
        if key in row:
            meta[key] = _maybe_json(row[key])
    return {"id": str(row.get("id") or f"{Path(where).stem}_{line:06d}"), "question": row["question"],
            "gt_image": gt, "eval_type": row.get("eval_type"), "category": row.get("category"),
            "difficulty": row.get("difficulty"),
            "meta": {**meta, "prompt_hash": prompt_hash(row["question"]), "source": "published", "file": where,
                     "gt_root": str(base)}}


def write_published(pub: Published, out_dir: str | Path) -> dict[str, Any]:
    """Write the loaded records in this project's export layout (sft/, pool/, bench/ with <split>.jsonl).

    A GT path stays relative to its split folder when all rows of a kind share one dataset folder
    (an `images` link to that folder's images is made); otherwise it becomes absolute."""
    import os

    from ..jsonio import atomic_write_json, write_jsonl_atomic

    out = Path(out_dir)
    for kind in ("sft", "pool", "bench"):
        groups = getattr(pub, kind)
        roots = {r["meta"].get("gt_root") for rows in groups.values() for r in rows if kind != "sft"}
        link = None
        if len(roots) == 1 and None not in roots:
            link = out / kind / "images"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(Path(next(iter(roots))) / "images", link, target_is_directory=True)
        for split, rows in groups.items():
            if kind != "sft" and link is None:
                rows = [{**r, "gt_image": str(Path(r["meta"]["gt_root"]) / r["gt_image"])} for r in rows]
            write_jsonl_atomic(out / kind / f"{split}.jsonl", rows)
    atomic_write_json(out / "MANIFEST.json", {"counts": pub.counts(), "problems": pub.problems[:200],
                                              "n_problems": len(pub.problems), "source": "published"})
    return {"counts": pub.counts(), "problems": len(pub.problems)}
