"""The offline `image_search` backend: a local, labelled image library with BM25F text search.

The library lives in `cache_dir()/images/` (or `library_dir`, or env GENEVOLVE_IMAGE_LIBRARY):

    images/
      builtin-<key>/          bundled images, built once on first use (image_library_build.py)
        BUILD.json            inputs, counts and build time; written last, so its presence means done
        manifest.jsonl        one LibraryImage per line
        synonyms.json         query expansions (demonyms: australian -> australia)
        files/emoji/*.png     Noto Color Emoji glyphs (all country and subdivision flags included)
        files/photos/*        real photos shipped by scikit-image and matplotlib
        files/flags/*.png     flat 1000 px flags, when `genevolve images fetch-flags` was run
      vendor/                 the fetched flag package (optional)
      user/manifest.jsonl     folders added with `genevolve images add DIR` (images stay in place)
      .lock                   serialises builds and manifest updates across processes

`<key>` is a hash of the build inputs (format, build code, font file, package versions, fetched
flags), so any change leads to a fresh build beside the old one, swapped in by one rename.

Search is BM25F over three fields with boosts: title > labels (names, aliases, keywords) >
caption. Words are lowercased, accent-folded and plural-stemmed with the text search's rules;
demonyms expand to their country (Australian -> Australia). An entry whose title names nothing
beyond the query ("Cat" for "cat") gets a bonus; photos and flat flags get a small prior over
emoji art, skin-tone variants a small penalty so the base emoji comes first. The index is built in memory
when the library loads (about 4k entries, under 2 s) and reloaded when the user manifest changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import cache_dir
from ..jsonio import write_jsonl_atomic
from .base import ImageHit, ImageSearchBackend
from .offline_corpus import normalize, stem

log = logging.getLogger(__name__)

K1 = 1.2
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
    explicit = os.environ.get("GENEVOLVE_IMAGE_LIBRARY")
    return Path(explicit) if explicit else cache_dir() / "images"


def user_manifest_path(root: Path) -> Path:
    return root / "user" / "manifest.jsonl"


@contextmanager
def library_lock(root: Path) -> Iterator[None]:
    """An exclusive lock over builds and manifest rewrites, shared by all processes on this host."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as f:
        try:
            import fcntl
        except ImportError:             # Windows: no advisory locks; single-writer use only
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- ranking

class TextIndex:
    """BM25F over title / labels / caption; each (term, entry) weight is computed once.

    Postings are numpy arrays, so a query costs a few vector additions however common its
    words are ("man", "skin" and "flag" each reach hundreds of entries).
    """

    def __init__(self, entries: list[LibraryImage], synonyms: dict[str, list[str]] | None = None):
        self.entries = entries
        self.synonyms = synonyms or {}
        # Title and labels are names: a word counts once there however many aliases repeat it.
        tokens = {"title": [_distinct(tokenize(e.title)) for e in entries],
                  "labels": [_distinct(tokenize(" ; ".join(e.labels))) for e in entries],
                  "caption": [tokenize(e.caption) for e in entries]}
        avg = {f: max(1.0, sum(map(len, ts)) / max(1, len(ts))) for f, ts in tokens.items()}
        rows: dict[str, tuple[list[int], list[float]]] = {}
        for i in range(len(entries)):
            tf: dict[str, float] = {}
            for f in FIELD_BOOST:
                toks = tokens[f][i]
                norm = FIELD_BOOST[f] / (1 - FIELD_B[f] + FIELD_B[f] * len(toks) / avg[f])
                for t in toks:
                    tf[t] = tf.get(t, 0.0) + norm
            for t, v in tf.items():
                docs, tfs = rows.setdefault(t, ([], []))
                docs.append(i)
                tfs.append(v)
        n = len(entries)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for t, (docs, tfs) in rows.items():
            idf = math.log(1 + (n - len(docs) + 0.5) / (len(docs) + 0.5))
            v = np.asarray(tfs, dtype=np.float64)
            self.postings[t] = (np.asarray(docs, dtype=np.int32), idf * v * (K1 + 1) / (v + K1))
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
            if t not in self.postings:
                continue
            docs, weights = self.postings[t]
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
                 include_user: bool = True, build: bool = True):
        self.root = (Path(root).expanduser() if root else default_library_dir()).absolute()
        self.include_builtin, self.include_user, self.build = include_builtin, include_user, build
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
        from .image_library_build import ensure_builtin, find_builtin

        entries: list[LibraryImage] = []
        synonyms: dict[str, list[str]] = {}
        base_of: dict[str, Path] = {}
        if self.include_builtin:
            self.builtin_dir = ensure_builtin(self.root) if self.build else find_builtin(self.root)
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
                 include_user: bool | str = True, build: bool | str = True):
        self.library = ImageLibrary(library_dir, include_builtin=_flag(include_builtin),
                                    include_user=_flag(include_user), build=_flag(build))

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


def _flag(value: bool | str) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)

