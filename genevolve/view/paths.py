"""Which files the viewer may read: images inside the folders it was started on, nothing else.

The browser never sends a path. It names a source, an item id and an image slot ("output", "gt",
"IMG_003"); the server looks the path up in that item's record and serves it only when the real
path (symlinks followed) lies inside one of the allowed folders and the file is an image. Records
store paths relative to wherever the batch ran, so a relative path is tried from the current
folder, from the record file's folder and each folder above it, and from every allowed folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import unquote, urlparse

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"})

OK = "ok"
MISSING = "missing"            # no such file anywhere the path could mean
OUTSIDE = "outside"            # the file exists, but outside the folders the viewer was given
NOT_IMAGE = "not an image"     # a name without an image suffix (never read)
NO_PATH = "no path"            # the record names no file


@dataclass(frozen=True)
class Located:
    path: Path | None          # set only when status is OK
    status: str
    name: str                  # what the record said, for the placeholder


class Roots:
    """The folders (real paths) whose images may be served."""

    def __init__(self, folders: Iterable[str | os.PathLike]):
        self.folders: list[Path] = []
        for folder in folders:
            real = Path(os.path.realpath(folder))
            if real not in self.folders:
                self.folders.append(real)

    def contains(self, path: str | os.PathLike) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == f or real.is_relative_to(f) for f in self.folders)

    def locate(self, value: object, bases: Sequence[Path] = ()) -> Located:
        """The allowed image file a record's path (or file:// URL) names.

        `bases` are folders the path may be relative to, nearest first (the record file's folder);
        a path that has gone stale (the run folder was moved) is also looked for by its file name
        in the first base and its images/ folder.
        """
        if not isinstance(value, str) or not value.strip():
            return Located(None, NO_PATH, "")
        text = value.strip()
        if text.startswith("file://"):
            text = unquote(urlparse(text).path)
        elif "://" in text:
            return Located(None, NO_PATH, text)       # a web URL: the viewer does not fetch
        if "\x00" in text:
            return Located(None, MISSING, text)
        given = Path(text)
        if given.suffix.lower() not in IMAGE_SUFFIXES:
            return Located(None, NOT_IMAGE, text)
        outside = False
        for candidate in _candidates(given, bases, self.folders):
            try:
                if not candidate.is_file():
                    continue
            except OSError:
                continue
            if self.contains(candidate):
                return Located(Path(os.path.realpath(candidate)), OK, text)
            outside = True
        return Located(None, OUTSIDE if outside else MISSING, text)


def _candidates(given: Path, bases: Sequence[Path], roots: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    if given.is_absolute():
        out.append(given)
    else:
        out.append(Path.cwd() / given)
        for base in bases:
            out += [base / given] + [parent / given for parent in base.parents]
        out += [root / given for root in roots]
    if bases and given.name:
        out += [bases[0] / given.name, bases[0] / "images" / given.name]
    seen: set[Path] = set()
    unique = []
    for path in out:
        if path not in seen:
            seen.add(path)
            unique.append(path)
    return unique
