"""Resumable batch stages: read input rows, run items concurrently, keep every finished item.

Every stage (agent runs, renders, judging) writes the same way:
- each finished item is appended to `<out>/<name>.jsonl` and flushed to disk at once;
- `<out>/<name>.json` (an array) is rewritten atomically now and then and at the end;
- a rerun reads the JSONL back (a torn last line from a kill is dropped), skips the ids that are
  done and runs the rest, so no item is lost and none appears twice.

Every record carries `id` and `error` (None, or what went wrong with this item in this stage).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

from tqdm import tqdm

from ..jsonio import JsonlAppender, atomic_write_json, clean_text, jsonl_lines, read_jsonl_tolerant, write_jsonl_atomic
from ..limits import MAX_REQUEST_CHARS


class InputError(ValueError):
    """The input file cannot be used as a whole (unreadable, not JSON, duplicate ids)."""


class StageError(RuntimeError):
    """A stage could not start: its input file, policy, generator or judge cannot be used. The
    message says which and why; the command prints it and exits 2."""


@dataclass
class Row:
    id: str
    line: int            # 1-based line (JSONL) or array position (JSON) in the input file
    data: dict[str, Any]


@dataclass
class InputProblem:
    """One row that cannot run; it becomes an error record so the batch says what happened."""

    id: str
    line: int
    message: str
    duplicate_of: str | None = None     # set when the row repeats an earlier row's id


def read_rows(path: str | Path, *, duplicates: str = "error") -> tuple[list[Row], list[InputProblem]]:
    """Read a .jsonl file (one object per line) or a .json array of objects.

    A row's id is its `id`, else its `prompt_id` (WISE prompt files), else `item_<position>`. Rows
    that are not JSON objects become problems with the id `line_<line>`. Results are keyed by id, so
    a repeated id either makes the file unusable (`duplicates="error"`, for inputs a person wrote) or
    keeps the first row and reports each repeat as a problem whose id is `<id>#<line>`
    (`duplicates="keep_first"`, for results files that are judged as found). An id the reader makes
    up never equals an id the file gives: when it would, it gets a suffix (`line_2~2`), so that a
    problem's record can never mark a real row as done.
    """
    if duplicates not in ("error", "keep_first"):
        raise ValueError(f"duplicates must be 'error' or 'keep_first', not {duplicates!r}")
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the input file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: the file is not UTF-8 text") from None

    entries: list[tuple[int, Any, str | None]] = []      # (line, parsed object, parse error)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("results") or data.get("items"), list):
            data = data.get("results") or data.get("items")
        if not isinstance(data, list):
            raise InputError(f"{path}: a .json input must hold an array of objects")
        entries = [(i, obj, None) for i, obj in enumerate(data, 1)]
    else:
        for lineno, line in enumerate(jsonl_lines(text), 1):
            if not line.strip():
                continue
            try:
                entries.append((lineno, json.loads(line), None))
            except json.JSONDecodeError as exc:
                entries.append((lineno, None, f"not valid JSON ({exc.msg} at column {exc.colno})"))

    rows: list[Row] = []
    problems: list[InputProblem] = []
    seen: dict[str, int] = {}
    where = "line" if path.suffix.lower() != ".json" else "item"
    taken = {given for _, obj, _ in entries if (given := _given_id(obj)) is not None}

    def made_up(base: str) -> str:
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}~{n}"
        taken.add(name)
        return name

    for lineno, obj, error in entries:
        if error is None and not isinstance(obj, dict):
            error = f"expected a JSON object, got {type(obj).__name__}"
        if error is not None:
            problems.append(InputProblem(id=made_up(f"line_{lineno}"), line=lineno,
                                         message=f"{path}:{lineno}: {error}"))
            continue
        row_id = _given_id(obj)
        row_id = made_up(f"item_{lineno:06d}") if row_id is None else row_id
        if row_id in seen and duplicates == "keep_first":
            problems.append(InputProblem(id=made_up(f"{row_id}#{lineno}"), line=lineno,
                                         message=f"{path}:{lineno}: duplicate id '{row_id}' (first at {where} "
                                                 f"{seen[row_id]}); only the first row is used",
                                         duplicate_of=row_id))
            continue
        if row_id in seen:
            raise InputError(f"{path}: duplicate id '{row_id}' at {where} {seen[row_id]} and {where} {lineno}; "
                             "ids must be unique because results are matched by id")
        seen[row_id] = lineno
        rows.append(Row(id=row_id, line=lineno, data=obj))
    return rows, problems


def read_input(path: str | Path, say: Callable[[str], None], **options: Any) -> tuple[list[Row], list[InputProblem]]:
    """`read_rows` for a stage's input file: a file that cannot be used at all is a StageError (the
    command's one line), and each row that cannot run is said and returned as a problem."""
    try:
        rows, problems = read_rows(path, **options)
    except InputError as exc:
        raise StageError(str(exc)) from None
    for p in problems:
        say(p.message)
    return rows, problems


ID_FIELDS = ("id", "prompt_id")
REQUEST_FIELDS = ("prompt", "question", "Prompt")   # ours, GenEvolve-Bench's, WISE's


def _given_id(obj: Any) -> str | None:
    """The id a row gives itself: `id`, else `prompt_id` (WISE prompt files); None when neither."""
    if not isinstance(obj, dict):
        return None
    for field in ID_FIELDS:
        value = obj.get(field)
        if value is not None and value != "":
            return str(value)
    return None


def request_text(row: Row, source: str = "input") -> str:
    """The request of an agent row: `prompt`, `question` (GenEvolve-Bench) or `Prompt` (WISE), at
    most MAX_REQUEST_CHARS characters (a longer one is this row's error, naming the field)."""
    where = f"{source} line {row.line} (id {row.id})"
    for field in REQUEST_FIELDS:
        value = row.data.get(field)
        if isinstance(value, str) and value.strip():
            if len(value) > MAX_REQUEST_CHARS:
                raise ValueError(f"{where}: field '{field}' has {len(value):,} characters, over the limit of "
                                 f"{MAX_REQUEST_CHARS:,} (genevolve.limits.MAX_REQUEST_CHARS)")
            return clean_text(value)        # a lone surrogate (a "\ud800" escape) cannot be sent
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    raise ValueError(f"{where}: no 'prompt' or 'question' field with text (nor WISE's 'Prompt')")


class ResultStore:
    """Finished items of one stage, on disk as JSONL (the journal) and JSON (the array).

    `retry(record)` says whether a stored record should run again (e.g. it ended in an error);
    such records are dropped from the journal when the store opens, so the rerun replaces them.
    """

    def __init__(self, out_dir: str | Path, name: str = "results",
                 retry: Callable[[dict[str, Any]], bool] | None = None, json_every_s: float = 5.0):
        self.out_dir = prepare_dir(out_dir)
        self.jsonl_path = self.out_dir / f"{name}.jsonl"
        self.json_path = self.out_dir / f"{name}.json"
        try:
            self._open(retry)
        except OSError as exc:
            raise StageError(f"cannot keep results in {self.out_dir}: {os_reason(exc)}") from None
        self.json_every_s = json_every_s
        self._last_json = 0.0

    def _open(self, retry: Callable[[dict[str, Any]], bool] | None) -> None:
        for path in (self.jsonl_path, self.json_path):
            if path.is_dir():
                raise StageError(f"cannot keep results in {self.out_dir}: {path} is a folder, not a file")
        # Fail now, not after the first item: the journal may be appendable in a folder where the
        # atomic rewrites of the array (a new file beside it) cannot be made.
        probe = self.out_dir / f".{self.json_path.name}.probe.tmp"
        try:
            probe.write_bytes(b"")
        except OSError as exc:
            exc.filename = None             # the folder is what cannot be written, not this name
            raise
        probe.unlink()
        self._remove_stale_temporaries()
        self.records: dict[str, dict[str, Any]] = {}
        kept_lines = 0
        for rec in read_jsonl_tolerant(self.jsonl_path):
            kept_lines += 1
            if "id" in rec:
                self.records[str(rec["id"])] = rec
        if retry:
            self.records = {k: v for k, v in self.records.items() if not retry(v)}
        if self.jsonl_path.exists() and kept_lines != len(self.records):
            write_jsonl_atomic(self.jsonl_path, self.records.values())   # compact: one line per id
        self._journal = JsonlAppender(self.jsonl_path)                   # (it mends a torn last line)

    def _remove_stale_temporaries(self) -> None:
        """A kill during an atomic rewrite leaves its temporary file behind (the old file is intact);
        one stage owns its folder, so any such file of ours is stale when the stage opens."""
        for target in (self.json_path, self.jsonl_path):
            for stale in self.out_dir.glob(f".{target.name}.*.tmp"):
                stale.unlink(missing_ok=True)

    def done(self, item_id: str) -> bool:
        return item_id in self.records

    def add(self, record: dict[str, Any]) -> None:
        try:
            self._journal.append(record)
        except OSError as exc:          # the disk filled up, the folder went away, ...
            raise StageError(f"cannot append to {self.jsonl_path}: {os_reason(exc)}") from None
        self.records[str(record["id"])] = record
        if time.monotonic() - self._last_json >= self.json_every_s:
            self.write_json(final=False)

    def write_json(self, order: Iterable[str] | None = None, final: bool = True) -> None:
        """Rewrite the array. Writes during a run are compact (cheap on the event loop); the final
        one is indented for people to read."""
        records = self.records
        if order is not None:
            rank = {item_id: i for i, item_id in enumerate(order)}
            records = dict(sorted(records.items(), key=lambda kv: rank.get(kv[0], len(rank))))
        try:
            self._journal.sync()
            atomic_write_json(self.json_path, list(records.values()), indent=2 if final else None)
        except OSError as exc:
            raise StageError(f"cannot write {self.json_path}: {os_reason(exc)}") from None
        self._last_json = time.monotonic()

    def close(self, order: Iterable[str] | None = None) -> None:
        try:
            self.write_json(order)
        finally:
            try:
                self._journal.close()
            except OSError:
                pass            # write_json has said what is wrong with the folder


def prepare_dir(path: str | Path, what: str = "output folder") -> Path:
    """`path` as a folder that exists (made if need be), or StageError saying why it cannot be."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(20, "it is a file, not a folder", str(path))
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StageError(f"cannot use {path} as the {what}: {os_reason(exc, path)}") from None
    return path


def os_reason(exc: OSError, named: str | Path | None = None) -> str:
    """An OSError in words, naming the file it is about (unless that is `named`, already said)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, NotADirectoryError) and exc.strerror == "Not a directory":
        reason = "a part of the path is a file, not a folder"
    shown = exc.filename and str(exc.filename) != str(named)
    return f"{reason} ({exc.filename})" if shown else reason


Worker = Callable[[Row], Awaitable[dict[str, Any]]]


async def run_items(rows: list[Row], worker: Worker, store: ResultStore, *, parallel: int = 1,
                    desc: str = "items", on_error: Callable[[Row, BaseException], dict[str, Any]] | None = None,
                    progress: bool = True) -> dict[str, int]:
    """Run `worker` on every row the store has not done yet, `parallel` at a time.

    A worker that raises produces `on_error(row, exc)` as that item's record; the batch goes on.
    Returns counts: total, skipped (already done), ran, errors.
    """
    todo = [r for r in rows if not store.done(r.id)]
    counts = {"total": len(rows), "skipped": len(rows) - len(todo), "ran": 0, "errors": 0}
    if not todo:
        return counts
    sem = asyncio.Semaphore(max(1, parallel))
    bar = tqdm(total=len(todo), desc=desc, unit="item", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)

    async def one(row: Row) -> None:
        async with sem:
            try:
                record = await worker(row)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if on_error is None:
                    record = {**row.data, "id": row.id, "error": f"{type(exc).__name__}: {exc}"}
                else:
                    record = on_error(row, exc)
            if record.get("error"):
                counts["errors"] += 1
            record.setdefault("id", row.id)
            store.add(record)
            counts["ran"] += 1
            bar.update(1)

    try:
        await asyncio.gather(*(one(r) for r in todo))
    finally:
        bar.close()
    return counts
