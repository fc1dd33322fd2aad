"""The records the viewer shows, indexed so that a large run opens fast.

A *source* is one listing of items: a run (the results files of `run`, `render`, `judge` or
`bench`, joined by id), a data file (bench rows, SFT records, a pool), a training run's rollouts,
or one `generate` result. Sources are indexed without reading whole records: each line is decoded
against a small schema (msgspec skips every other field at C speed, so a 5,000-item run of 100 MB
indexes in a fraction of a second) and the byte offset of the line is kept; the item page then
reads just that line. A results journal that grows while a batch runs is read from where the
index left off; one that is rewritten (compacted) is indexed again.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgspec

DIMENSIONS = ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics")


# -- the small schema each line is decoded against ----------------------------------------------
class _Named(msgspec.Struct):
    name: Any = None


class _Ref(msgspec.Struct):
    img_id: Any = None


class _Msg(msgspec.Struct):
    role: Any = None


class _Turn(msgspec.Struct):
    prompt_tokens: Any = None
    completion_tokens: Any = None


class _Meta(msgspec.Struct):
    track: Any = None


class _Program(msgspec.Struct):
    reference_images: list[_Ref] | None = None


class Lite(msgspec.Struct):
    id: Any = None
    prompt: Any = None
    question: Any = None
    request: Any = None
    termination: Any = None
    rounds: Any = None
    error: Any = None
    duration_s: Any = None
    policy: Any = None
    tool_calls: list[_Named] | None = None
    reference_images: list[_Ref] | None = None
    program: _Program | None = None
    program_issues: list[Any] | None = None
    messages: list[_Msg] | None = None
    turns: list[_Turn] | None = None
    category: Any = None
    eval_type: Any = None
    difficulty: Any = None
    meta: _Meta | None = None
    image_status: Any = None
    output_path: Any = None
    gt_image: Any = None
    scores: dict[str, Any] | None = None
    overall: Any = None
    text_accuracy_na: Any = None
    reward: Any = None


class _Id(msgspec.Struct):
    id: Any = None


_LITE = msgspec.json.Decoder(Lite)
_ID = msgspec.json.Decoder(_Id)
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])


def lite_record(line: bytes | memoryview) -> Lite | dict[str, Any] | None:
    """The table fields of one record (a `Lite`), or None when the line is not a JSON object."""
    try:
        return _LITE.decode(line)
    except msgspec.ValidationError:          # odd field types: read it all, keep what fits
        try:
            obj = json.loads(bytes(line))
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None
    except msgspec.DecodeError:
        return None


def _id_of(line: bytes) -> str | None:
    try:
        value = _ID.decode(line).id
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return None if value in (None, "") else str(value)


def _get(obj: Any, key: str) -> Any:
    """A field of a full record (dict) or of its lite form (msgspec struct)."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None) if isinstance(obj, msgspec.Struct) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def issue_kind(issue: Any) -> str:
    """`{"kind": ...}` (schema 2) or "kind: detail" (schema 1) -> kind."""
    if isinstance(issue, dict):
        return str(issue.get("kind") or "issue")
    return str(issue).split(": ", 1)[0].strip()[:60]


def summarise(d: Lite | dict[str, Any], stage: str) -> dict[str, Any]:
    """The fields the run table shows, from a lite (or full) record; absent ones are left out."""
    s: dict[str, Any] = {}
    if stage == "eval":
        scores = _get(d, "scores") if isinstance(_get(d, "scores"), dict) else {}
        for dim in DIMENSIONS:
            if _num(scores.get(dim)) is not None:
                s[dim] = _num(scores[dim])
        s["overall"] = _num(_get(d, "overall"))
        s["judge_failed"] = bool(_get(d, "error")) or s["overall"] is None
        if _get(d, "error"):
            s["judge_error"] = str(_get(d, "error"))
        return s
    request = next((_get(d, k) for k in ("prompt", "question", "request") if isinstance(_get(d, k), str)), None)
    if request is not None:
        s["request"] = request
    for key in ("termination", "category", "eval_type", "difficulty", "image_status", "policy"):
        if _get(d, key) is not None:
            s[key] = str(_get(d, key))
    if _get(d, "error"):
        s["error"] = str(_get(d, "error"))
    if _num(_get(d, "rounds")) is not None:
        s["rounds"] = int(_get(d, "rounds"))
    if _num(_get(d, "duration_s")) is not None:
        s["seconds"] = _num(_get(d, "duration_s"))
    calls = _get(d, "tool_calls")
    if isinstance(calls, list):
        s["n_tools"] = len(calls)
        s["tools"] = " ".join(str(_get(c, "name")) for c in calls if _get(c, "name") is not None)
    refs = _get(d, "reference_images")
    if refs is None:
        refs = _get(_get(d, "program"), "reference_images")
    if isinstance(refs, list):
        s["n_refs"] = len(refs)
    if isinstance(_get(d, "program_issues"), list):
        s["issues"] = sorted({issue_kind(i) for i in _get(d, "program_issues")})
    if isinstance(_get(d, "messages"), list):
        s["n_messages"] = len(_get(d, "messages"))
    if isinstance(_get(d, "turns"), list):
        tokens = [_num(_get(t, "completion_tokens")) for t in _get(d, "turns")]
        if any(t is not None for t in tokens):
            s["tokens"] = int(sum(t for t in tokens if t is not None))
    track = _get(_get(d, "meta"), "track")
    if track is not None:
        s["track"] = str(track)
    reward = _get(d, "reward")
    if isinstance(reward, dict):
        reward = reward.get("total", reward.get("reward"))
    if _num(reward) is not None:
        s["reward"] = _num(reward)
    if _get(d, "gt_image"):
        s["has_gt"] = True
    return s


# -- files and sources ---------------------------------------------------------------------------
@dataclass
class StageFile:
    """One file of a source and how far it has been indexed."""

    path: Path
    stage: str                   # "row" (agent or render results) | "eval" | "data"
    journal: bool = True         # a later line with the same id replaces the earlier one
    stat: tuple = ()
    parsed_to: int = 0           # bytes of a JSONL file already indexed


@dataclass
class Entry:
    id: str
    parts: dict[int, dict[str, Any]] = field(default_factory=dict)      # file number -> summary
    where: dict[int, int] = field(default_factory=dict)                 # file number -> offset / index
    first: dict[int, int] = field(default_factory=dict)                 # ... where it was first seen
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> tuple[int, int]:
        """Where the item first appears in the source's first file that has it (input order)."""
        number = min(self.first)
        return number, self.first[number]

    def merge(self) -> None:
        merged: dict[str, Any] = {"id": self.id}
        for number in sorted(self.parts):
            merged.update(self.parts[number])
        self.summary = merged


class Source:
    """One listing of items, indexed on first use and refreshed when its files change."""

    def __init__(self, key: str, kind: str, title: str, folder: Path, files: list[StageFile],
                 parent: str | None = None, find_files: Callable[[], list[StageFile]] | None = None):
        self.key, self.kind, self.title, self.folder = key, kind, title, folder
        self.files = files
        self.find_files = find_files  # looks for stage files again (a render stage that starts later)
        self.parent = parent          # the training run that holds these rollouts
        self.items: dict[str, Entry] = {}
        self._sorted: list[Entry] | None = None
        self._lock = threading.Lock()
        self._stamp = ""

    @property
    def stamp(self) -> str:
        """Changes whenever any of the source's files changes (for live refresh)."""
        self.refresh()
        return self._stamp

    def entries(self) -> list[Entry]:
        self.refresh()
        with self._lock:
            if self._sorted is None:
                self._sorted = sorted(self.items.values(), key=lambda e: e.order)
            return self._sorted

    def get(self, item_id: str) -> Entry | None:
        self.refresh()
        return self.items.get(item_id)

    def refresh(self) -> None:
        with self._lock:
            if self.find_files is not None:
                found = self.find_files()
                if [f.path for f in found] != [f.path for f in self.files]:
                    self.files, self.items, self._stamp = found, {}, ""
            stats = [_stat(f.path) for f in self.files]
            if all(st == f.stat for st, f in zip(stats, self.files)) and self._stamp:
                return
            grew = all(_grew(f, st) for f, st in zip(self.files, stats))
            if not grew:                      # a file was rewritten: start over
                self.items = {}
                for f in self.files:
                    f.parsed_to, f.stat = 0, ()
            touched: set[str] = set()
            self._sorted = None
            for number in self._index_order():
                f, st = self.files[number], stats[number]
                if st != f.stat:
                    self._index_file(number, f, touched)
                    f.stat = st
            for item_id in touched:
                self.items[item_id].merge()
            self._stamp = "-".join(f"{s[1]}.{s[2]}" for s in stats)

    def _index_order(self) -> list[int]:
        """Later row files first: a render row holds every field of the agent row, so an agent row
        that the render stage already has needs only its id read."""
        rows = [n for n, f in enumerate(self.files) if f.stage == "row"]
        return rows[::-1] + [n for n, f in enumerate(self.files) if f.stage != "row"]

    def _index_file(self, number: int, f: StageFile, touched: set[str]) -> None:
        if not f.path.is_file():
            return
        if f.stage == "result":                  # one `generate` record: one item named by the file
            record = read_record(f.path, 0, whole=True)
            if isinstance(record, dict):
                inner = record.get("trajectory") if isinstance(record.get("trajectory"), dict) else {}
                self._add(number, f, {**inner, **record, "id": f.path.stem}, 0, touched)
            return
        if f.path.suffix != ".jsonl":
            for index, raw in enumerate(read_json_items(f.path)):
                self._add(number, f, lite_record(raw), index, touched)
            return
        later_rows = {n for n in range(number + 1, len(self.files)) if self.files[n].stage == "row"}
        with open(f.path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size <= f.parsed_to:
                return
            # mapped, not read: one copy of a 100 MB journal costs more than decoding it
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                pos = f.parsed_to
                while (end := mm.find(b"\n", pos)) >= 0:   # a line still being written waits for its newline
                    line = mm[pos:end]
                    if line.strip():
                        entry = self.items.get(_id_of(line)) if later_rows else None
                        if entry is not None and later_rows & entry.parts.keys():
                            entry.where[number] = pos    # covered by the later stage's row
                            entry.first.setdefault(number, pos)
                        else:
                            self._add(number, f, lite_record(line), pos, touched)
                    pos = end + 1
                f.parsed_to = pos

    def _add(self, number: int, f: StageFile, d: Lite | dict[str, Any] | None, locator: int,
             touched: set[str]) -> None:
        if d is None:
            return
        item_id = _get(d, "id")
        item_id = f"item_{len(self.items) + 1:06d}" if item_id in (None, "") else str(item_id)
        if not f.journal and item_id in self.items and number in self.items[item_id].where:
            k = 2                                 # K rollouts of one prompt: id, id#2, id#3, ...
            while f"{item_id}#{k}" in self.items:
                k += 1
            item_id = f"{item_id}#{k}"
        entry = self.items.get(item_id)
        if entry is None:
            entry = self.items[item_id] = Entry(item_id)
        entry.parts[number] = summarise(d, f.stage)
        entry.where[number] = locator
        entry.first.setdefault(number, locator)
        touched.add(item_id)

    def load(self, item_id: str) -> "Loaded":
        """The full records of one item by stage ("row", "eval", "data", "result"); a render row
        (a superset of the agent's) is laid over the agent row of the same id."""
        loaded = Loaded()
        entry = self.get(item_id)
        if entry is None:
            return loaded
        for number in sorted(entry.where):
            f = self.files[number]
            record = read_record(f.path, entry.where[number], whole=f.stage == "result")
            if isinstance(record, dict):
                loaded.records[f.stage] = {**loaded.records.get(f.stage, {}), **record}
                loaded.files[f.stage] = f.path
        return loaded


@dataclass
class Loaded:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def main(self) -> dict[str, Any]:
        """The record that holds the trajectory (or the data row)."""
        for stage in ("result", "row", "data"):
            if stage in self.records:
                return self.records[stage]
        return {}


def _stat(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _grew(f: StageFile, st: tuple) -> bool:
    """True when the file is the one indexed before, only appended to (or unchanged)."""
    if not f.stat:
        return True
    if not st or f.path.suffix != ".jsonl":
        return st == f.stat
    return st[0] == f.stat[0] and st[1] >= f.parsed_to


def read_json_items(path: Path) -> list[msgspec.Raw]:
    """The elements of a .json array (or of its "results"/"items" member), undecoded."""
    data = path.read_bytes()
    try:
        return _RAW_LIST.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    try:
        obj = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
    except (msgspec.ValidationError, msgspec.DecodeError):
        return []
    for key in ("results", "items"):
        if key in obj:
            try:
                return _RAW_LIST.decode(obj[key])
            except (msgspec.ValidationError, msgspec.DecodeError):
                return []
    return []


def read_record(path: Path, locator: int, whole: bool = False) -> Any:
    try:
        if path.suffix == ".jsonl":
            with open(path, "rb") as handle:
                handle.seek(locator)
                return json.loads(handle.readline())
        if whole:                                  # a file that is one record (a `generate` result)
            return json.loads(path.read_bytes())
        items = read_json_items(path)
        return json.loads(bytes(items[locator])) if locator < len(items) else None
    except (OSError, ValueError):
        return None


def read_jsonl_all(path: Path) -> list[dict[str, Any]]:
    """Every whole JSON object line of a small file (metrics, guides); others are skipped."""
    rows = []
    try:
        with open(path, "rb") as handle:
            for line in handle:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    rows.append(obj)
    except OSError:
        pass
    return rows
