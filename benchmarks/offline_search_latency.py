"""Offline search latency: index build and load time, then per-query latency over 50 queries.

    .venv/bin/python benchmarks/offline_search_latency.py [--no-build] [--no-semantic] [--repeat 5]
    .venv/bin/python benchmarks/offline_search_latency.py --compare    # needs `pip install bm25s`

Builds a fresh index in a temporary folder (corpus assembly, BM25F weights, save), loads it back,
then times `await backend.search(query, 5)` for each query (BM25F alone, then with the MiniLM
re-rank: first pass encodes the candidates, second pass finds their vectors cached).

--compare instead ranks the same corpus, with the same tokens, with our BM25F arrays
(genevolve/text_index.py), bm25s and SQLite FTS5, one after the other in this one process and one
thread, and prints build, load and query times side by side (on a shared machine compare the
ratios, not the absolute numbers) and how many known answers each puts first.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from genevolve.tools import offline_search as osearch

QUERIES = [
    "capital Canberra", "country whose capital is Canberra", "what is the capital of Japan",
    "capital of France", "population of Brazil", "currency of Switzerland", "languages spoken in India",
    "Eiffel Tower height", "famous iron tower in Paris", "Paris landmarks", "cathedral in Paris",
    "Louvre museum", "Mona Lisa painter", "dutch painter starry night", "Van Gogh sunflowers",
    "Frida Kahlo self portrait", "Hokusai great wave", "Claude Monet water lilies", "Guernica Picasso",
    "Taj Mahal marble", "Great Wall of China", "Statue of Liberty torch", "Sydney Opera House roof",
    "Golden Gate Bridge color", "Mount Fuji snow", "Machu Picchu Inca", "Colosseum Rome",
    "Angkor Wat temple", "Amazon rainforest animals", "Sahara desert dunes", "giant panda bamboo",
    "African elephant tusks", "bald eagle", "cherry blossom Japan", "samurai armor",
    "Viking longship", "Roman legion soldier", "ancient Egyptian pharaoh", "Renaissance architecture",
    "Art Nouveau style", "Bombay", "Los Angeles", "largest city in Nigeria", "Istanbul Bosphorus",
    "Zürich", "🐱 cat", "東京タワー", "xyzzyqwv flurbonic", "what does a violin look like",
    "Apollo 11 moon landing",
]


def percentiles(ms: list[float]) -> str:
    ordered = sorted(ms)
    p = lambda q: ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]  # noqa: E731
    return f"p50 {p(0.5):7.2f} ms   p95 {p(0.95):7.2f} ms   max {ordered[-1]:7.2f} ms   (n={len(ms)})"


async def time_queries(backend: osearch.OfflineSearchBackend, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        for q in QUERIES:
            started = time.perf_counter()
            await backend.search(q, 5)
            out.append((time.perf_counter() - started) * 1000)
    return out


# Known answers (from tests/test_offline_search.py): the title each query must put first.
KNOWN = {"capital Canberra": "Australia (country facts)", "country whose capital is Canberra": "Australia (country facts)",
         "Which country has capital Canberra?": "Australia (country facts)", "Canberra capital": "Australia (country facts)",
         "what is the capital of Japan": "Japan (country facts)", "capital of France": "France (country facts)",
         "Canberra": "Canberra (city in Australia)", "Eiffel Tower height": "Eiffel Tower", "Louvre museum": "Louvre",
         "Paris": "Paris", "dutch painter starry night": "The Starry Night", "Van Gogh": "Vincent van Gogh",
         "Mona Lisa painter": "Mona Lisa", "Los Angeles": "Los Angeles (city in California, United States)",
         "Zürich": "Zurich", "🐱 cat": "Cat"}


def _timed(fn, queries: list[list[str]], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        for q in queries:
            started = time.perf_counter()
            fn(q)
            out.append((time.perf_counter() - started) * 1000)
    return out


def compare(repeat: int) -> None:
    """Our BM25F arrays, bm25s and SQLite FTS5 on the same documents and tokens, one thread."""
    import sqlite3

    import numpy as np

    from genevolve.text_index import BM25FIndex, top_k
    try:
        import bm25s
    except ImportError:
        raise SystemExit("--compare needs bm25s (pip install bm25s)") from None

    docs = osearch.build_corpus(500_000)
    keys = [osearch.tokenize(d.keys) for d in docs]
    body = [osearch.tokenize(d.text + " " + d.aliases) for d in docs]
    titles = [d.title for d in docs]
    queries = [list(dict.fromkeys(osearch.tokenize(q)))[:osearch.MAX_QUERY_TERMS] for q in QUERIES]
    known = {q: osearch.tokenize(q) for q in KNOWN}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # ours: BM25F, keys weighted 3 with b 0.5, body 1 with b 0.75 (the search index's settings)
        t0 = time.perf_counter()
        ours = BM25FIndex.build({"keys": keys, "body": body}, osearch.FIELD_WEIGHT, osearch.FIELD_B)
        t1 = time.perf_counter()
        np.savez(f"{tmp}/ours.npz", offsets=ours.offsets, doc_ids=ours.doc_ids, weights=ours.weights)
        t2 = time.perf_counter()
        with np.load(f"{tmp}/ours.npz") as z:
            BM25FIndex(ours.vocab, z["offsets"], z["doc_ids"], z["weights"], len(docs))
        t3 = time.perf_counter()

        def ours_top(q: list[str]) -> list[int]:
            scores = ours.scores(q)
            return sorted(top_k(scores, 5).tolist(), key=lambda d: (-scores[d], d))

        rows.append(("ours (BM25F, CSR)", t1 - t0, (t3 - t2), _timed(ours_top, queries, repeat), ours_top))

        # bm25s: one field (keys then body), Lucene BM25 with the same k1 and the body's b
        t0 = time.perf_counter()
        retriever = bm25s.BM25(k1=osearch.K1, b=0.75)
        retriever.index([k + b for k, b in zip(keys, body)], show_progress=False)
        t1 = time.perf_counter()
        retriever.save(f"{tmp}/bm25s")
        t2 = time.perf_counter()
        bm25s.BM25.load(f"{tmp}/bm25s", mmap=False)
        t3 = time.perf_counter()
        vocab = retriever.vocab_dict

        def bm25s_top(q: list[str]) -> list[int]:
            q = [t for t in q if t in vocab]          # bm25s refuses words it has never seen
            if not q:
                return []
            found, scores = retriever.retrieve([q], k=5, show_progress=False, n_threads=1)
            return [int(d) for d, s in zip(found[0], scores[0]) if s > 0]

        def bm25s_scores_top(q: list[str]) -> list[int]:        # its scoring core, without retrieve()
            q = [t for t in q if t in vocab]
            if not q:
                return []
            scores = retriever.get_scores(q)
            return sorted(top_k(scores, 5).tolist(), key=lambda d: (-scores[d], d))

        rows.append(("bm25s retrieve()", t1 - t0, t3 - t2, _timed(bm25s_top, queries, repeat), bm25s_top))
        rows.append(("bm25s get_scores() + top 5", t1 - t0, t3 - t2, _timed(bm25s_scores_top, queries, repeat),
                     bm25s_scores_top))

        # SQLite FTS5: two columns weighted 3:1 in bm25(); the tokens are ours, space-joined
        t0 = time.perf_counter()
        db = sqlite3.connect(f"{tmp}/fts.db")
        db.execute("CREATE VIRTUAL TABLE docs USING fts5(keys, body, tokenize='unicode61 remove_diacritics 0')")
        db.executemany("INSERT INTO docs(rowid, keys, body) VALUES (?, ?, ?)",
                       ((i, " ".join(k), " ".join(b)) for i, (k, b) in enumerate(zip(keys, body))))
        db.commit()
        db.close()
        t1 = time.perf_counter()
        db = sqlite3.connect(f"{tmp}/fts.db", check_same_thread=False)
        db.execute("SELECT count(*) FROM docs").fetchone()
        t3 = time.perf_counter()

        def fts_top(q: list[str]) -> list[int]:
            if not q:
                return []
            match = " OR ".join('"' + t.replace('"', '""') + '"' for t in q)
            return [r[0] for r in db.execute("SELECT rowid FROM docs WHERE docs MATCH ? "
                                             "ORDER BY bm25(docs, 3.0, 1.0) LIMIT 5", (match,))]

        rows.append((f"SQLite {sqlite3.sqlite_version} FTS5", t1 - t0, t3 - t1, _timed(fts_top, queries, repeat), fts_top))

        print(f"{len(docs)} documents, {len(queries)} queries x {repeat}, top 5, one thread, one process")
        base = None
        for name, build_s, load_s, ms, top in rows:
            p50 = sorted(ms)[len(ms) // 2]
            base = base or p50
            right = sum(bool(top(known[q])) and titles[top(known[q])[0]] == want for q, want in KNOWN.items())
            print(f"{name:28} build {build_s:6.2f} s   load {load_s * 1000:7.1f} ms   {percentiles(ms)}   "
                  f"x{p50 / base:5.2f} of ours at p50   known answers first: {right}/{len(KNOWN)}")
        db.close()
    backend = osearch.OfflineSearchBackend(index_dir=osearch.OfflineSearchBackend().index_dir)
    right = sum(bool(h := backend.search_sync(q, 1)) and h[0].title == want for q, want in KNOWN.items())
    print(f"(the search backend, BM25F plus its name boosts: known answers first {right}/{len(KNOWN)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-build", action="store_true", help="time only loading the cached index")
    ap.add_argument("--no-semantic", action="store_true", help="skip the MiniLM re-rank")
    ap.add_argument("--repeat", type=int, default=5, help="passes over the queries for BM25 timing")
    ap.add_argument("--compare", action="store_true", help="our BM25F vs bm25s vs SQLite FTS5, side by side")
    args = ap.parse_args()
    assert len(QUERIES) == 50
    if args.compare:
        compare(args.repeat)
        return

    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp)
        if args.no_build:
            index_dir = osearch.OfflineSearchBackend().index_dir
            osearch.load_or_build_index(index_dir)        # make sure the shared index exists
        else:
            meta = osearch._expected_meta(500_000)
            t0 = time.perf_counter()
            docs = osearch.build_corpus(500_000)
            t1 = time.perf_counter()
            index = osearch.SearchIndex.build(docs, {**meta, "documents": len(docs)})
            t2 = time.perf_counter()
            index.save(index_dir / osearch.INDEX_FILE)
            t3 = time.perf_counter()
            size = (index_dir / osearch.INDEX_FILE).stat().st_size / 1e6
            print(f"build: {t3 - t0:.2f} s  (corpus {t1 - t0:.2f} s, BM25F weights {t2 - t1:.2f} s, "
                  f"save {t3 - t2:.2f} s); {len(docs)} documents, {len(index.vocab)} terms, "
                  f"{len(index.doc_ids)} postings, {size:.1f} MB")
        loads = []
        for _ in range(3):
            t0 = time.perf_counter()
            index = osearch.SearchIndex.load(index_dir / osearch.INDEX_FILE, osearch._expected_meta(500_000))
            loads.append(time.perf_counter() - t0)
        print(f"load from cache: best {min(loads) * 1000:.0f} ms, worst {max(loads) * 1000:.0f} ms (3 loads)")

        backend = osearch.OfflineSearchBackend(index_dir=index_dir)
        asyncio.run(backend.search("warm up", 5))
        print(f"BM25F search, top 5:          {percentiles(asyncio.run(time_queries(backend, args.repeat)))}")

        if args.no_semantic:
            return
        try:
            t0 = time.perf_counter()
            osearch._RERANKER = osearch._RERANKER or osearch.SemanticReranker()
            print(f"MiniLM load: {time.perf_counter() - t0:.2f} s")
        except RuntimeError as exc:
            print(f"semantic re-rank skipped: {exc}")
            return
        sem = osearch.OfflineSearchBackend(index_dir=index_dir, semantic=True)
        for label in ("cold (encodes candidates)", "warm (vectors cached)"):
            ms = asyncio.run(time_queries(sem, 1))
            print(f"BM25F + MiniLM re-rank of top {sem.rerank_depth}, {label}: {percentiles(ms)}")


if __name__ == "__main__":
    main()
