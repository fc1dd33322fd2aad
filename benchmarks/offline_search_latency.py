"""Offline search latency: index build and load time, then per-query latency over 50 queries.

    .venv/bin/python benchmarks/offline_search_latency.py [--no-build] [--no-semantic] [--repeat 5]

Builds a fresh index in a temporary folder (corpus assembly, BM25F weights, save), loads it back,
then times `await backend.search(query, 5)` for each query (BM25F alone, then with the MiniLM
re-rank: first pass encodes the candidates, second pass finds their vectors cached).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-build", action="store_true", help="time only loading the cached index")
    ap.add_argument("--no-semantic", action="store_true", help="skip the MiniLM re-rank")
    ap.add_argument("--repeat", type=int, default=5, help="passes over the queries for BM25 timing")
    args = ap.parse_args()
    assert len(QUERIES) == 50

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
