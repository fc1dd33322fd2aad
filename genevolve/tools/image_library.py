"""The offline `image_search` backend: a local, labelled image library with BM25F text search.

The library lives in `library_dir` (default `cache_dir()/images/`):

    images/
      builtin-<key>/          bundled images, built once on first use (image_library_build.py)
        BUILD.json            inputs, counts and build time; written last, so its presence means done
        manifest.jsonl        one LibraryImage per line
        synonyms.json         query expansions (demonyms: australian -> australia)
        files/emoji/*.png     Noto Color Emoji glyphs (all country and subdivision flags included)
        files/photos/*        real photos shipped by scikit-image and matplotlib
        files/flags/*.png     flat 1000 px flags, when `genevolve images fetch-flags` was run
        .holders/*.lock       one per process using this build (see "bundled builds" below)
      vendor/                 the fetched flag package (optional)
      user/manifest.jsonl     folders added with `genevolve images add DIR` (images stay in place)
      .lock                   serialises builds and manifest updates across processes
      .gc.lock                serialises taking a hold on a build and collecting unused builds

`<key>` is a hash of the build inputs (format, build code, font file, package versions, fetched
flags), so any change leads to a fresh build beside the old one, swapped in by one rename; old
builds are deleted only once no process holds them.

Search is BM25F over three fields with boosts: title > labels (names, aliases, keywords) >
caption. Words are lowercased, accent-folded and plural-stemmed with the text search's rules;
demonyms expand to their country (Australian -> Australia). An entry whose title names nothing
beyond the query ("Cat" for "cat") gets a bonus; photos and flat flags get a small prior over
emoji art, skin-tone variants a small penalty so the base emoji comes first. The index is built in memory
when the library loads (about 4k entries, under 2 s) and reloaded when the user manifest changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import secrets
import shutil
import socket
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
from filelock import FileLock, Timeout

from ..config import cache_dir, parse_bool
from ..jsonio import write_jsonl_atomic
from ..text_index import K1, BM25FIndex
from .base import ImageHit, ImageSearchBackend
from .offline_corpus import normalize, stem

log = logging.getLogger(__name__)

FIELD_BOOST = {"title": 3.0, "labels": 2.0, "caption": 1.0}
FIELD_B = {"title": 0.5, "labels": 0.5, "caption": 0.75}
EXPANSION_WEIGHT = 0.7            # a synonym counts a bit less than the word the user typed
PHOTO_PRIOR = 1.25                # a photo or flat flag is a better reference than emoji art
VARIANT_PRIOR = 0.9               # skin-tone variants rank just under their base emoji
TITLE_MATCH_BONUS = 1.3          # the title names nothing beyond the query ("Cat" for "cat")
_KIND_SUFFIX = re.compile(r"\s*\([^)]*\)\s*$")     # "(emoji)", "(photo)" closing a title
# Function words only: unlike text search, words like "up", "down", "off" and "over" tell
# pictures apart here ("thumbs up"), so they are kept.
_STOPWORDS = frozenset("""
a an the of and or in on at by for to from with without into is are was be been as it its this that these
those whose which what who whom where when how me my i you your please show find give get some any
image images picture pictures pic pics photograph illustration reference
""".split())
_WORD = re.compile(r"[^\W_]+")
MAX_QUERY_CHARS = 500
FONT_CANDIDATES = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
                   "/usr/share/fonts/noto/NotoColorEmoji.ttf",
                   "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf")
Log = Callable[[str], None]


class LibraryError(Exception):
    """A manifest or library folder that cannot be used; the message names the file and line."""


@dataclass
class LibraryImage:
    """One image of the library, as stored in a manifest line."""

    id: str                         # stable: emoji-1f1e6-1f1fa, photo-chelsea, user-<path hash>
    title: str
    path: str                       # relative to the manifest's folder, or absolute (user images)
    source: str                     # noto-emoji | scikit-image | matplotlib | user:<collection>
    width: int
    height: int
    labels: list[str] = field(default_factory=list)
    caption: str = ""
    collection: str = "builtin"
    license: str = ""
    page_url: str | None = None
    file_mtime_ns: int | None = None   # user images: lets a re-add skip unchanged files
    file_size: int | None = None
    ocr: bool = False                  # user images: OCR text is part of the caption

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", [], False)}

    @classmethod
    def from_dict(cls, row: Any, where: str) -> "LibraryImage":
        if not isinstance(row, dict):
            raise LibraryError(f"{where}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        for name, kind in (("id", str), ("title", str), ("path", str), ("source", str), ("width", int),
                           ("height", int)):
            if name not in row:
                raise LibraryError(f"{where}: field '{name}' is missing")
            if not isinstance(row[name], kind) or isinstance(row[name], bool):
                raise LibraryError(f"{where}: field '{name}' must be {'a string' if kind is str else 'an integer'}")
        if not isinstance(row.get("labels", []), list):
            raise LibraryError(f"{where}: field 'labels' must be a list")
        return cls(**{k: v for k, v in row.items() if k in known})

    def resolved_path(self, base: Path) -> Path:
        return Path(self.path) if os.path.isabs(self.path) else base / self.path

    @property
    def is_photo(self) -> bool:
        return self.source != "noto-emoji"


def read_manifest(path: Path) -> list[LibraryImage]:
    """Entries of one manifest; any bad line is an error naming the file and line."""
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LibraryError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            out.append(LibraryImage.from_dict(row, f"{path}:{n}"))
    return out


def write_manifest(path: Path, entries: list[LibraryImage]) -> None:
    write_jsonl_atomic(path, [e.to_dict() for e in sorted(entries, key=lambda e: e.id)])


def default_library_dir() -> Path:
    return cache_dir() / "images"


def user_manifest_path(root: Path) -> Path:
    return root / "user" / "manifest.jsonl"


def library_lock(root: Path) -> FileLock:
    """An exclusive lock over builds and manifest rewrites, shared by all processes on this host."""
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(root / ".lock")


# ----------------------------------------------------------------------------- bundled builds
# Each build is a folder named by the hash of its inputs, built beside the others and renamed into
# place whole. Two environments on one machine (one with the flat flags fetched, one without; other
# package versions) compute different keys and may run at once, so a build never deletes a folder
# another process is reading: every process that uses a build holds an exclusive lock on a file of
# its own under `<build>/.holders/` for as long as it lives, and a build is collected only when no
# lock there is held (a lock that can be taken belongs to a process that has exited). Registering
# a hold and collecting both happen under `.gc.lock`, so neither can slip in between the other's
# check and act. The holds end with the process, even on kill -9, because the kernel drops its locks.

_HELD: dict[str, FileLock] = {}     # resolved build folder -> this process's hold on it
_HELD_LOCK = threading.Lock()


def find_emoji_font(explicit: str | os.PathLike | None = None) -> Path | None:
    """Noto Color Emoji: `explicit` when given, else the first of the usual places that has it."""
    if explicit:
        return Path(explicit).expanduser()
    for candidate in FONT_CANDIDATES:
        if os.path.isfile(candidate):
            return Path(candidate)
    fonts = Path("/usr/share/fonts")
    hits = sorted(fonts.rglob("NotoColorEmoji.ttf")) if fonts.is_dir() else []
    return hits[0] if hits else None


def build_inputs(root: Path, emoji_font: str | os.PathLike | None = None) -> dict[str, Any]:
    """Everything the bundled library depends on; its hash names the build folder."""
    from . import image_library_build as build

    font = find_emoji_font(emoji_font)
    if emoji_font and not (font and font.is_file()):
        raise LibraryError(f"emoji font {font}: no such file")
    st = font.stat() if font else None
    # The hash of the build and label code stands in for the format number between releases:
    # any change to names, captions or image processing leads to a fresh build. Where builds live
    # and who holds them (this module) is not part of it.
    code = hashlib.sha1(b"".join(Path(__file__).with_name(n).read_bytes()
                                 for n in ("image_library_build.py", "image_library_labels.py")))
    inputs = {"format": build.BUILTIN_FORMAT, "code": code.hexdigest()[:12], "emoji_pixels": build.EMOJI_PIXELS,
              "font": [str(font), st.st_size, st.st_mtime_ns] if st else None,
              "flags": build.FLAG_VERSION if (build.flags_dir(root) / "countries.json").exists() else None,
              "packages": {d: _version(d) for d in build.SOURCE_PACKAGES}}
    inputs["key"] = hashlib.sha1(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return inputs


def find_builtin(root: Path, emoji_font: str | os.PathLike | None = None) -> Path | None:
    """This environment's finished build in `root` (now held by this process), or None."""
    target = root / f"builtin-{build_inputs(root, emoji_font)['key']}"
    return target if hold_build(target) else None


def ensure_builtin(root: Path, log: Log | None = None, force: bool = False,
                   emoji_font: str | os.PathLike | None = None) -> Path:
    """This environment's build of the bundled library, built first if needed (once, even across
    processes), and held by this process. Other builds in `root` that no process holds are collected."""
    from .image_library_build import build_builtin, flags_dir

    inputs = build_inputs(root, emoji_font)
    target = root / f"builtin-{inputs['key']}"
    if not force and hold_build(target):
        return target
    with library_lock(root):
        if not force and hold_build(target):
            return target                     # another process built it while we waited
        for stale in root.glob(".building-*"):    # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".building-{inputs['key']}-{os.getpid()}"
        build_builtin(tmp, inputs, flags_dir(root), log or (lambda msg: None))
        if target.exists():
            _replace_files(tmp, target)       # a forced rebuild: same key, so the same file names
        else:
            os.rename(tmp, target)            # the build appears whole or not at all
        hold_build(target)
        collect_builds(root, keep=target)
    return target


def hold_build(folder: Path) -> bool:
    """Mark `folder` as in use by this process until it exits; False when it is not a finished build.
    A folder we cannot write to gets no hold (taken as a read-only cache, where nobody collects)."""
    real = folder.resolve()
    with _HELD_LOCK:
        if str(real) in _HELD:
            return True                       # our hold keeps it on disk
        try:
            with FileLock(real.parent / ".gc.lock"):
                if not (real / "BUILD.json").is_file():
                    return False
                holders = real / ".holders"
                holders.mkdir(exist_ok=True)
                _sweep_holders(real)          # the lock files of processes that have exited
                hold = FileLock(holders / f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.lock",
                                thread_local=False)
                hold.acquire(timeout=0)       # a fresh name: nobody else can hold it
        except (OSError, Timeout) as exc:
            log.debug("image library: no hold on %s (%s)", folder, exc)
            return (real / "BUILD.json").is_file()
        _HELD[str(real)] = hold
        return True


def collect_builds(root: Path, keep: Path) -> list[Path]:
    """Delete the builds in `root` other than `keep` that no live process holds; returns them."""
    removed = []
    with FileLock(root / ".gc.lock"):
        for trash in root.glob(".trash-*"):        # left by a collection that was killed
            shutil.rmtree(trash, ignore_errors=True)
        for old in sorted(root.glob("builtin-*")):
            if old == keep or old.is_symlink() or not old.is_dir() or _sweep_holders(old):
                continue
            trash = root / f".trash-{old.name}-{os.getpid()}"
            os.rename(old, trash)                  # gone from its name at once, then removed
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(old)
    return removed


def _sweep_holders(folder: Path) -> bool:
    """Remove the lock files under `folder/.holders/` whose process has exited (their lock can be
    taken); True while any process, this one included, still holds one. Call under `.gc.lock`."""
    holders = folder / ".holders"
    live = False
    for path in sorted(holders.glob("*.lock")) if holders.is_dir() else []:
        probe = FileLock(path, thread_local=False)
        try:
            probe.acquire(timeout=0)
        except Timeout:
            live = True
            continue
        except OSError:
            return True                            # cannot tell: keep it
        probe.release()
        path.unlink(missing_ok=True)                # its process has exited
    return live


def _replace_files(new: Path, target: Path) -> None:
    """Move every file of `new` over its namesake in `target`, each by one atomic rename, so a reader
    never finds a path missing; BUILD.json goes last. `new` is removed."""
    files = sorted((p for p in new.rglob("*") if p.is_file()), key=lambda p: p.name == "BUILD.json")
    for src in files:
        dst = target / src.relative_to(new)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    shutil.rmtree(new, ignore_errors=True)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- ranking

class TextIndex:
    """The library's BM25F index over title / labels / caption (`text_index.BM25FIndex`), with this
    collection's priors, weighted synonyms and exact-title bonus on top."""

    def __init__(self, entries: list[LibraryImage], synonyms: dict[str, list[str]] | None = None):
        self.entries = entries
        self.synonyms = synonyms or {}
        # Title and labels are names: a word counts once there however many aliases repeat it.
        self.bm25 = BM25FIndex.build({"title": [_distinct(tokenize(e.title)) for e in entries],
                                      "labels": [_distinct(tokenize(" ; ".join(e.labels))) for e in entries],
                                      "caption": [tokenize(e.caption) for e in entries]},
                                     FIELD_BOOST, FIELD_B, K1, dtype=np.float64)
        self.prior = np.asarray([self._prior(e) for e in entries], dtype=np.float64)
        # For the exact-title bonus: which entries have each word in their title, and how many words.
        title_words = [_distinct(tokenize(_KIND_SUFFIX.sub("", e.title))) for e in entries]
        self.title_len = np.asarray([len(w) for w in title_words], dtype=np.int32)
        title_rows: dict[str, list[int]] = {}
        for i, words in enumerate(title_words):
            for w in words:
                title_rows.setdefault(w, []).append(i)
        self.title_postings = {w: np.asarray(d, dtype=np.int32) for w, d in title_rows.items()}

    @staticmethod
    def _prior(e: LibraryImage) -> float:
        if e.is_photo:
            return PHOTO_PRIOR
        return VARIANT_PRIOR if "skin tone" in e.title else 1.0

    def query_terms(self, query: str) -> dict[str, float]:
        """Query words with their weights; expansions (demonym -> country) weigh less."""
        terms: dict[str, float] = {}
        for t in tokenize(query[:MAX_QUERY_CHARS]):
            terms[t] = 1.0
            for extra in self.synonyms.get(t, []):
                terms.setdefault(extra, EXPANSION_WEIGHT)
        return terms

    def search(self, query: str, top_k: int) -> list[tuple[LibraryImage, float]]:
        terms = self.query_terms(query)
        n = len(self.entries)
        scores = np.zeros(n)
        matched = np.zeros(n, dtype=np.int32)
        title_hits = np.zeros(n, dtype=np.int32)
        typed = 0
        for t, w in terms.items():
            hit = self.bm25.postings(t)
            if hit is None:
                continue
            docs, weights = hit
            scores[docs] += w * weights
            if w == 1.0:
                matched[docs] += 1
                typed += 1
            if t in self.title_postings:
                title_hits[self.title_postings[t]] += 1
        candidates = np.flatnonzero(scores > 0)
        if not len(candidates) or top_k <= 0:
            return []
        # Entries that cover more of the typed words win over ones that repeat one word often;
        # an entry whose title asks for nothing beyond the query ("Cat" for "cat") gets a bonus.
        want = max(1, typed)
        final = (scores[candidates] * self.prior[candidates]
                 * (0.5 + 0.5 * np.minimum(matched[candidates], want) / want))
        exact = (self.title_len[candidates] > 0) & (title_hits[candidates] == self.title_len[candidates])
        final = np.where(exact, final * TITLE_MATCH_BONUS, final)
        keep = min(len(candidates), top_k)
        top = np.argpartition(-final, keep - 1)[:keep] if keep < len(candidates) else np.arange(len(candidates))
        ranked = sorted(((float(final[j]), int(candidates[j])) for j in top),
                        key=lambda x: (-x[0], self.entries[x[1]].id))
        return [(self.entries[i], s) for s, i in ranked]


# ----------------------------------------------------------------------------- library

class ImageLibrary:
    """The bundled images plus every added user folder, searchable as one collection."""

    def __init__(self, root: str | os.PathLike | None = None, include_builtin: bool = True,
                 include_user: bool = True, build: bool = True, emoji_font: str | os.PathLike | None = None):
        self.root = (Path(root).expanduser() if root else default_library_dir()).absolute()
        self.include_builtin, self.include_user, self.build = include_builtin, include_user, build
        self.emoji_font = emoji_font
        self.builtin_dir: Path | None = None
        self._index: TextIndex | None = None
        self._user_stamp: tuple[int, int] | None = None
        self._base_of: dict[str, Path] = {}       # entry id -> folder its relative path starts from
        self._lock = threading.Lock()

    def _user_signature(self) -> tuple[int, int] | None:
        try:
            st = user_manifest_path(self.root).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def index(self) -> TextIndex:
        """The loaded index; reloaded when the user manifest changed since the last call."""
        with self._lock:
            stamp = self._user_signature() if self.include_user else None
            if self._index is None or stamp != self._user_stamp:
                self._index = self._load()
                self._user_stamp = stamp
            return self._index

    def _load(self) -> TextIndex:
        entries: list[LibraryImage] = []
        synonyms: dict[str, list[str]] = {}
        base_of: dict[str, Path] = {}
        if self.include_builtin:
            self.builtin_dir = (ensure_builtin(self.root, emoji_font=self.emoji_font) if self.build
                                else find_builtin(self.root, self.emoji_font))
            if self.builtin_dir is None:
                raise LibraryError(f"{self.root}: the bundled image library is not built "
                                   "(run `genevolve images build`)")
            builtin = read_manifest(self.builtin_dir / "manifest.jsonl")
            entries += builtin
            base_of.update((e.id, self.builtin_dir) for e in builtin)
            syn_path = self.builtin_dir / "synonyms.json"
            if syn_path.exists():
                synonyms = json.loads(syn_path.read_text(encoding="utf-8"))
        if self.include_user:
            user = read_manifest(user_manifest_path(self.root))
            entries += user
            base_of.update((e.id, user_manifest_path(self.root).parent) for e in user)
        self._base_of = base_of
        return TextIndex(entries, synonyms)

    def path_of(self, entry: LibraryImage) -> Path:
        return entry.resolved_path(self._base_of.get(entry.id, self.root))

    def entries(self) -> list[LibraryImage]:
        return self.index().entries

    def search(self, query: str, top_k: int = 5) -> list[tuple[LibraryImage, Path, float]]:
        """The best top_k entries whose image file is still present (user files may move)."""
        index = self.index()
        out = []
        for entry, score in index.search(query, top_k + 10):
            path = self.path_of(entry)
            if entry.collection != "builtin" and not path.exists():
                log.warning("image library: %s (%s) is gone; re-add its folder", path, entry.id)
                continue
            out.append((entry, path, score))
            if len(out) == top_k:
                break
        return out


class ImageLibraryBackend(ImageSearchBackend):
    """`image_search` over the local library: emoji art (all flags), sample photos, user folders."""

    name = "offline"

    def __init__(self, library_dir: str | os.PathLike | None = None, include_builtin: bool | str = True,
                 include_user: bool | str = True, build: bool | str = True,
                 emoji_font: str | os.PathLike | None = None):
        self.library = ImageLibrary(library_dir, include_builtin=parse_bool(include_builtin, "include_builtin"),
                                    include_user=parse_bool(include_user, "include_user"),
                                    build=parse_bool(build, "build"), emoji_font=emoji_font)

    async def search_images(self, query: str, top_k: int) -> list[ImageHit]:
        # In a worker thread: the first call may build the library, a later one reload it.
        return await asyncio.to_thread(self.search_sync, query, top_k)

    def search_sync(self, query: str, top_k: int) -> list[ImageHit]:
        return [ImageHit(title=e.title, local_path=str(p), url=p.resolve().as_uri(), page_url=e.page_url,
                         key=e.id, source=e.source)
                for e, p, _ in self.library.search(query, top_k)]


def tokenize(text: str) -> list[str]:
    """Lowercased, accent-folded, plural-stemmed words (the text search's rules, our stopwords)."""
    return [stem(w) for w in _WORD.findall(normalize(text)) if w not in _STOPWORDS]


def _distinct(tokens: list[str]) -> list[str]:
    return list(dict.fromkeys(tokens))
