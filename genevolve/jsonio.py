"""JSON in and out: crash-safe writes (atomic replace for whole files, flushed appends for JSON
lines), strict output, and the one lenient reader of JSON inside model replies.

Everything written is strict JSON that any parser reads (JavaScript's JSON.parse, jq): text from
models and servers can hold lone surrogates ('\\ud800' decoded from a JSON escape) and numbers can be
NaN, neither of which strict JSON or UTF-8 allows. `dumps` writes the fast way and, only when that
fails, cleans the object (a lone surrogate becomes U+FFFD, NaN and infinities become null).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

from .secrets import scrub

_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD, so that it encodes as UTF-8."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def clean_json(obj: Any) -> Any:
    """A copy of `obj` that strict JSON can hold: clean strings (keys too), null for NaN/infinity."""
    if isinstance(obj, str):
        return clean_text(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {clean_text(str(k)) if isinstance(k, str) else k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def dumps(obj: Any, *, indent: int | None = None, default: Any = None) -> str:
    """Strict JSON text of `obj`, cleaned (see `clean_json`) only when it has to be, with every
    configured secret and credential-shaped string taken out (`secrets.scrub`): records carry
    server errors, and servers echo keys. `default` as for json.dumps."""
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False, default=default)
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        if default is not None:           # what `default` turns objects into may need cleaning too
            obj = json.loads(json.dumps(obj, ensure_ascii=False, default=default))
        text = json.dumps(clean_json(obj), ensure_ascii=False, indent=indent, allow_nan=False)
    return scrub(text)


@lru_cache(maxsize=1)
def _new_file_mode() -> int:
    # The mode a new file gets under this process's umask (mkstemp's files are 0600 whatever it is).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` so that `path` holds either its old content or all of the new, never a part.

    The file keeps the mode it had, or gets the one the umask gives a new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = _new_file_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """`indent=None` writes compactly with the C encoder, several times faster on large arrays."""
    atomic_write_text(path, dumps(obj, indent=indent) + "\n")


class JsonlAppender:
    """Appends one JSON object per line and hands it to the OS before returning.

    A flushed line survives the process being killed (even with SIGKILL): the kernel holds it.
    `sync()` also forces it to the disk, which costs milliseconds and would stall an event loop
    if done for every item, so callers sync now and then and on close.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _mend_torn_tail(self.path)
        # Unbuffered: each line goes to the OS in one write call, so a kill leaves whole lines.
        self._f = open(self.path, "ab", buffering=0)

    def append(self, obj: Any) -> None:
        self._f.write((dumps(obj) + "\n").encode("utf-8"))

    def sync(self) -> None:
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _mend_torn_tail(path: Path) -> None:
    """A file that does not end with a newline was cut mid-append (a kill, a full disk): the next
    record would be glued to its last line. A last line that is whole JSON only lost its newline and
    gets it back; anything else is cut off (readers skip it anyway)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        start = size
        while start > 0:                      # back to the last newline, a block at a time
            step = min(start, 1 << 16)
            f.seek(start - step)
            block = f.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                start = start - step + cut + 1
                break
            start -= step
        f.seek(start)
        tail = f.read()
        try:
            json.loads(tail.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            f.truncate(start)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")


def jsonl_lines(text: str) -> list[str]:
    """The lines of JSON-lines text. Only "\n" ends a record: `str.splitlines()` also breaks at
    U+2028, U+2029 and U+0085, which JSON strings may hold unescaped (and do here: records are
    written with ensure_ascii=False, and search results carry such characters)."""
    return text.split("\n")


def read_jsonl_tolerant(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Rows of a results file we wrote ourselves; a torn last line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as f:
        for raw in f:
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(row, dict):
                yield row


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------
# Reading a JSON object out of a model's reply: the one lenient reader of the project. The
# protocol parser tries strict JSON first and falls back to it; the judges use it directly.

_FENCE_RE = re.compile(r"```(?:json|JSON|javascript|js)?\s*\n?(.*?)```", re.DOTALL)
_BARE_WORDS = {"True": "true", "False": "false", "None": "null"}


MAX_JSON_DEPTH = 32          # deeper than any record we read; deeper input is refused, not recursed into
_MAX_OBJECT_STARTS = 64      # braces tried as the start of the object before giving up (bounds the work)


def loads_strict(text: str) -> Any:
    """json.loads that refuses what strict parsers refuse (NaN, Infinity) and nesting deeper than
    MAX_JSON_DEPTH, raising ValueError (json.JSONDecodeError is one) instead of RecursionError.
    Strings come back encodable (a lone surrogate escape becomes U+FFFD)."""
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep") from None
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise ValueError(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep")
    return clean_json(obj)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def json_depth(obj: Any) -> int:
    """How deeply lists and objects nest in `obj` (a scalar is 0), without recursion."""
    depth, level = 0, [obj]
    while level:
        level = [v for o in level if isinstance(o, (dict, list)) for v in (o.values() if isinstance(o, dict) else o)]
        depth += 1
        if depth > MAX_JSON_DEPTH + 1:
            break
    return depth - 1 if depth else 0


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in a model reply, forgiving the usual slips.

    Accepts a code fence or prose around the object, trailing commas, single-quoted strings,
    unquoted keys and Python's True/False/None. Raises ValueError when no object can be read (a
    truncated reply, for instance): the caller retries rather than guessing.
    """
    candidates = [m.group(1) for m in _FENCE_RE.finditer(text)] + [text]
    problem = "no JSON object"
    for chunk in candidates:
        starts = [i for i, c in enumerate(chunk) if c == "{"][:_MAX_OBJECT_STARTS]
        for start in starts:
            obj_text = _balanced_object(chunk, start)
            if obj_text is None:
                continue                   # never closes (a truncated reply); try later braces
            try:
                obj = loads_strict(_repair(obj_text))
            except ValueError as exc:
                if "nested" in str(exc):
                    problem = str(exc)
                continue
            if isinstance(obj, dict):
                return obj
    raise ValueError(f"{problem} in the reply: {_clip(text)}")


def _balanced_object(text: str, start: int) -> str | None:
    """text[start:end] where the '{' at `start` closes, skipping braces inside strings."""
    depth, quote, i = 0, None, start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            # an apostrophe inside a bare word ("don't") is not a string start
            if c == "'" and i > 0 and text[i - 1].isalnum():
                pass
            else:
                quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
        i += 1
    return None


def _repair(obj: str) -> str:
    """Rewrite single quotes to double quotes, Python literals to JSON, quote bare keys, and drop
    trailing commas."""
    out: list[str] = []
    quote, i = None, 0
    while i < len(obj):
        c = obj[i]
        if quote:
            if c == "\\" and i + 1 < len(obj):
                nxt = obj[i + 1]
                out.append("'" if (quote == "'" and nxt == "'") else c + nxt)
                i += 2
                continue
            if c == quote:
                out.append('"')
                quote = None
            elif c == '"':                 # a double quote inside a single-quoted string
                out.append('\\"')
            elif c == "\n":
                out.append("\\n")
            else:
                out.append(c)
        elif c in "\"'":
            quote = c
            out.append('"')
        elif c in "}]":
            while out and out[-1].isspace():
                out.pop()
            if out and out[-1] == ",":
                out.pop()
            out.append(c)
        elif c.isalpha():
            j = i
            while j < len(obj) and (obj[j].isalnum() or obj[j] == "_"):
                j += 1
            word = obj[i:j]
            k = j
            while k < len(obj) and obj[k].isspace():
                k += 1
            if k < len(obj) and obj[k] == ":":      # an unquoted key
                out.append(f'"{word}"')
            else:
                out.append(_BARE_WORDS.get(word, word))
            i = j
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "…"


