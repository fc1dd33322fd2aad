"""Serper and SearXNG backends against loopback fakes that speak their HTTP protocols,
and the shared retry helper (genevolve.httpretry)."""

from __future__ import annotations

import asyncio
import json
import logging
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fakes import FakeServer, Reply
from fakes.image_host import GOOD_SIZE, ImageHostFake
from fakes.searxng import SearxngFake
from fakes.serper import SerperFake, malformed_json, rate_limited
from genevolve.httpretry import HTTPRetryError, request_with_retries, retry_after_seconds
from genevolve.tools.base import ToolContext
from genevolve.tools.download import DEFAULT_PER_HOST_CONCURRENCY, SafeDownloader
from genevolve.tools.search import ImageSearchTool, SearchTool
from genevolve.tools.web_search import (SearxngImageBackend, SearxngSearchBackend, SerperImageBackend,
                                        SerperSearchBackend, WebSearchError)

KEY = "sk-serper-SECRET-0123456789"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("GENEVOLVE_CACHE", str(root))
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("GENEVOLVE_CONFIG", str(tmp_path / "empty.toml"))   # ignore any user config
    return root


@pytest.fixture
def image_host():
    with ImageHostFake() as host:
        yield host


@pytest.fixture
def serper(cache: Path, image_host: ImageHostFake):
    urls = [image_host.url + p for p in ("/page.html", "/good.jpg", "/bomb.png", "/good.png",
                                         "/redirect-metadata", "/good.webp", "/good.gif")]
    with SerperFake(api_key=KEY, image_urls=urls) as fake:
        fake.options = {"api_key": KEY, "base_url": fake.url}      # what the CLI passes from the environment
        yield fake


@pytest.fixture
def searxng(cache: Path, image_host: ImageHostFake):
    urls = [image_host.url + p for p in ("/truncated.jpg", "/good.png", "/good.jpg")]
    with SearxngFake(image_urls=urls) as fake:
        fake.options = {"url": fake.url}
        yield fake


def run(coro):
    return asyncio.run(coro)


def downloader_for(host: ImageHostFake) -> SafeDownloader:
    """The loopback image host allowed by name and port; no politeness wait on loopback."""
    return SafeDownloader(allow_hosts=[host.host_port])


async def search_once(backend, query: str, top_k: int = 5):
    try:
        return await backend.search(query, top_k)
    finally:
        await backend.aclose()


async def images_once(backend, query: str, top_k: int = 3):
    try:
        return await backend.search_images(query, top_k)
    finally:
        await backend.aclose()


def all_cache_text(root: Path) -> str:
    return "".join(p.read_text("utf-8", errors="replace") for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------ Serper: search

def test_serper_search_speaks_the_protocol_and_maps_organic_results(serper: SerperFake):
    hits = run(search_once(SerperSearchBackend(**serper.options), "Sydney Opera House architect", top_k=3))
    assert [h.url for h in hits] == [f"https://example.org/sydney-opera-house-architect/{i}" for i in (1, 2, 3)]
    assert hits[0].title == "Sydney Opera House architect - result 1"
    assert hits[0].snippet == "Facts about Sydney Opera House architect, entry 1."
    assert {h.source for h in hits} == {"serper"}
    [request] = serper.requests
    assert (request.method, request.path) == ("POST", "/search")
    assert request.headers["x-api-key"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"q": "Sydney Opera House architect", "num": 3}


def test_serper_answers_are_cached_on_disk_and_a_rerun_sends_nothing(serper: SerperFake, cache: Path):
    first = run(search_once(SerperSearchBackend(**serper.options), "flag of Peru"))
    second = run(search_once(SerperSearchBackend(**serper.options), "flag of Peru"))   # as a fresh process would
    assert second == first
    assert len(serper.requests) == 1
    [entry] = list((cache / "web" / "serper").glob("*.json"))
    record = json.loads(entry.read_text("utf-8"))
    assert record["query"] == "flag of Peru" and record["params"] == {"num": 5}
    assert record["endpoint"] == serper.url + "/search"
    # A different parameter is a different entry; refresh asks again and rewrites.
    run(search_once(SerperSearchBackend(**serper.options), "flag of Peru", top_k=2))
    run(search_once(SerperSearchBackend(**serper.options, refresh=True), "flag of Peru"))
    run(search_once(SerperSearchBackend(**serper.options, cache=False), "flag of Peru"))
    assert len(serper.requests) == 4
    assert len(list((cache / "web" / "serper").glob("*.json"))) == 2
    assert KEY not in all_cache_text(cache)


def test_missing_serper_key_is_a_clear_error_naming_the_variable(cache: Path, monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", KEY)             # the library reads no environment: the CLI does
    with pytest.raises(ValueError, match="SERPER_API_KEY"):
        SerperSearchBackend()
    with pytest.raises(ValueError, match="SERPER_API_KEY"):
        SerperImageBackend(api_key="  ")


def test_a_401_says_check_the_key_and_never_shows_it(serper: SerperFake, cache: Path, caplog):
    wrong = "sk-wrong-KEY-that-must-not-leak"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(WebSearchError, match="HTTP 401.*check SERPER_API_KEY") as info:
        run(search_once(SerperSearchBackend(**{**serper.options, "api_key": wrong}), "anything"))
    assert wrong not in str(info.value) and wrong not in caplog.text
    assert serper.requests[0].headers["x-api-key"] == wrong      # it was sent, in the header only
    assert len(serper.requests) == 1                             # 401 is not retried
    assert not (cache / "web").exists() or all_cache_text(cache) == ""


def test_a_failed_search_becomes_an_error_observation_for_the_policy(serper: SerperFake):
    tool = SearchTool(SerperSearchBackend(**{**serper.options, "api_key": "not-the-key"}))
    result = run(tool.call({"queries": ["capital of Peru"]}, ToolContext()))
    run(tool.aclose())
    assert "Search failed:" in result.text and "SERPER_API_KEY" in result.text
    assert result.error and "not-the-key" not in result.text


def test_429_is_retried_with_backoff_then_succeeds(serper: SerperFake):
    serper.queue("POST", "/search", rate_limited("0"), rate_limited("0"))
    hits = run(search_once(SerperSearchBackend(**serper.options), "Machu Picchu"))
    assert len(hits) == 5
    assert len(serper.requests) == 3


def test_429_on_every_try_becomes_a_rate_limit_error(serper: SerperFake, cache: Path):
    serper.queue("POST", "/search", *[rate_limited("0") for _ in range(3)])
    with pytest.raises(WebSearchError, match=r"rate limited.*3 attempts.*HTTP 429"):
        run(search_once(SerperSearchBackend(**serper.options, retries=2), "Machu Picchu"))
    assert len(serper.requests) == 3
    assert not list(cache.rglob("*.json"))


def test_malformed_json_is_a_clear_error_and_is_not_cached(serper: SerperFake):
    serper.queue("POST", "/search", malformed_json())
    with pytest.raises(WebSearchError, match="malformed JSON"):
        run(search_once(SerperSearchBackend(**serper.options), "Lima"))
    assert len(run(search_once(SerperSearchBackend(**serper.options), "Lima"))) == 5     # asked again, not cached
    serper.queue("POST", "/search", Reply.json({"organic": {"not": "a list"}}))
    with pytest.raises(WebSearchError, match="'organic' as dict"):
        run(search_once(SerperSearchBackend(**serper.options), "Cusco"))


def test_an_empty_result_list_is_no_hits_and_the_tool_says_so(serper: SerperFake):
    serper.queue("POST", "/search", Reply.json({"searchParameters": {}, "organic": []}))
    tool = SearchTool(SerperSearchBackend(**serper.options))
    result = run(tool.call({"queries": ["zxqv nonexistent"]}, ToolContext()))
    run(tool.aclose())
    assert "No results." in result.text and result.error is None
    serper.queue("POST", "/search", Reply.json({"searchParameters": {}}))   # no 'organic' at all
    assert run(search_once(SerperSearchBackend(**serper.options), "another")) == []


def test_an_unreachable_service_is_retried_then_reported(cache: Path):
    closed = FakeServer().start()
    url = closed.url
    closed.stop()                                   # nothing listens there any more
    with pytest.raises(WebSearchError, match=r"unavailable.*2 attempts.*ConnectError"):
        run(search_once(SerperSearchBackend(api_key=KEY, base_url=url, retries=1), "x"))


# ------------------------------------------------------------------------------ Serper: images

def test_serper_images_are_downloaded_and_bad_candidates_dropped(serper: SerperFake, image_host, cache):
    backend = SerperImageBackend(**serper.options, downloader=downloader_for(image_host))
    hits = run(images_once(backend, "Peru flag", top_k=3))
    assert [h.url for h in hits] == [image_host.url + p for p in ("/good.jpg", "/good.png", "/good.webp")]
    for hit in hits:
        assert hit.key == hit.url and hit.source == "serper"
        assert hit.page_url and hit.page_url.startswith("https://example.org/peru-flag/page")
        assert Path(hit.local_path).parent == cache / "downloads"
        with Image.open(hit.local_path) as im:
            assert im.size == GOOD_SIZE
    assert backend.dropped == {"not_an_image": 1, "too_many_pixels": 1, "blocked_address": 1}
    [request] = serper.requests
    assert request.path == "/images" and request.json() == {"q": "Peru flag", "num": 10}
    # Downloads stopped once three images were kept: /good.gif was never fetched.
    assert image_host.requests_to("/good.gif") == []


def test_serper_image_rerun_uses_both_caches_without_any_request(serper: SerperFake, image_host):
    def search() -> list:
        backend = SerperImageBackend(**serper.options, downloader=downloader_for(image_host))
        return run(images_once(backend, "Peru flag", top_k=2))
    first = search()
    image_requests = len(image_host.requests)
    assert search() == first
    assert len(serper.requests) == 1 and len(image_host.requests) == image_requests


def test_image_search_tool_gives_serper_hits_img_ids(serper: SerperFake, image_host):
    backend = SerperImageBackend(**serper.options, allow_hosts=[image_host.host_port])     # the option users set
    tool, ctx = ImageSearchTool(backend), ToolContext()
    result = run(tool.call({"query": "Peru flag", "top_k": 2}, ctx))
    run(tool.aclose())
    assert "[IMG_001]" in result.text and "[IMG_002]" in result.text
    assert ctx.images.references["IMG_001"].url == image_host.url + "/good.jpg"
    assert Path(ctx.images.references["IMG_002"].local_path).is_file()


def test_image_backends_take_their_cache_folder_and_download_politeness(serper, searxng, image_host, tmp_path):
    root = tmp_path / "elsewhere"
    backend = SerperImageBackend(**serper.options, cache_root=root, allow_hosts=[image_host.host_port],
                                 per_host_concurrency=2, per_host_rate=50.0)
    downloader = backend.images.downloader
    assert (downloader.per_host_concurrency, downloader.per_host_rate) == (2, 50.0)
    hits = run(images_once(backend, "Peru flag", top_k=2))
    assert len(hits) == 2 and all(Path(h.local_path).parent == root / "downloads" for h in hits)
    assert len(list((root / "web" / "serper").glob("*.json"))) == 1
    assert image_host.max_in_flight <= 2
    plain = SearxngImageBackend(**searxng.options).images.downloader
    assert (plain.per_host_concurrency, plain.per_host_rate) == (DEFAULT_PER_HOST_CONCURRENCY, None)
    with pytest.raises(ValueError, match="per_host_concurrency"):
        SerperImageBackend(**serper.options, downloader=downloader_for(image_host), per_host_concurrency=2)


def test_image_search_without_the_allow_list_drops_loopback_images(serper: SerperFake, image_host):
    hits = run(images_once(SerperImageBackend(**serper.options), "Peru flag", top_k=3))
    assert hits == []
    assert image_host.requests == []                 # refused before any connection


# ------------------------------------------------------------------------------ SearXNG

def test_searxng_search_speaks_the_json_api(searxng: SearxngFake):
    hits = run(search_once(SearxngSearchBackend(**searxng.options, language="en"), "Nazca lines", top_k=4))
    assert [h.url for h in hits] == [f"https://example.org/nazca-lines/{i}" for i in range(1, 5)]
    assert hits[1].snippet == "What Nazca lines is, part 2." and hits[0].source == "searxng"
    [request] = searxng.requests
    assert (request.method, request.path) == ("GET", "/search")
    assert {k: v[0] for k, v in request.query.items()} == {
        "q": "Nazca lines", "format": "json", "categories": "general", "pageno": "1", "language": "en"}


def test_searxng_answers_are_cached(searxng: SearxngFake):
    first = run(search_once(SearxngSearchBackend(**searxng.options), "Nazca lines", top_k=3))
    again = run(search_once(SearxngSearchBackend(**searxng.options), "Nazca lines", top_k=5))   # more hits
    assert again[:3] == first and len(again) == 5
    assert len(searxng.requests) == 1


def test_searxng_images_use_img_src_and_the_page_url(searxng: SearxngFake, image_host):
    backend = SearxngImageBackend(**searxng.options, downloader=downloader_for(image_host))
    hits = run(images_once(backend, "alpaca", top_k=2))
    assert [h.url for h in hits] == [image_host.url + "/good.png", image_host.url + "/good.jpg"]
    assert hits[0].page_url == "https://example.org/alpaca/page2" and hits[0].title == "alpaca image 2"
    assert backend.dropped == {"corrupt_image": 1}
    assert searxng.requests[0].param("categories") == "images"


def test_searxng_without_json_output_explains_the_setting(cache: Path):
    with SearxngFake(json_enabled=False) as fake:
        with pytest.raises(WebSearchError, match="HTTP 403.*search.formats in its settings.yml"):
            run(search_once(SearxngSearchBackend(url=fake.url), "Lima"))


def test_missing_searxng_url_names_the_variable(cache: Path, monkeypatch):
    monkeypatch.setenv("SEARXNG_URL", "http://127.0.0.1:9")      # not read here
    with pytest.raises(ValueError, match="SEARXNG_URL"):
        SearxngSearchBackend()
    with pytest.raises(ValueError, match="SEARXNG_URL"):
        SearxngImageBackend()


def test_backends_are_found_by_name_in_the_registry(serper: SerperFake, searxng: SearxngFake):
    from genevolve.tools import make_image_search_backend, make_search_backend
    assert isinstance(make_search_backend("serper", **serper.options), SerperSearchBackend)
    assert isinstance(make_image_search_backend("searxng", **searxng.options), SearxngImageBackend)


def test_one_backend_serves_several_event_loops(serper: SerperFake):
    backend = SerperSearchBackend(**serper.options, cache=False)
    assert len(run(backend.search("a", 2))) == 2     # asyncio.run per call, as run_sync does
    assert len(run(backend.search("b", 2))) == 2
    run(backend.aclose())


# ------------------------------------------------------------------------------ httpretry

async def _request(url: str, **kw) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await request_with_retries(client, "GET", url, **kw)


@pytest.fixture
def waits(monkeypatch):
    """The pauses the retry loop asks for, in order (taken at once, so the test checks what the
    code decided rather than how long the machine took)."""
    asked: list[float] = []

    async def no_wait(seconds: float) -> None:
        asked.append(seconds)
    monkeypatch.setattr("genevolve.httpretry.asyncio.sleep", no_wait)
    return asked


def test_retry_after_is_honoured(waits):
    with FakeServer() as fake:
        fake.queue("GET", "/x", Reply(503, b"busy", {"Retry-After": "0.3"}), Reply(200, b"ok"))
        response = run(_request(fake.url + "/x", backoff=0.01, max_backoff=5))
        assert response.status_code == 200 and len(fake.requests) == 2
    assert waits == [0.3]


def test_retry_waits_never_exceed_max_backoff(waits):
    with FakeServer() as fake:
        fake.queue("GET", "/x", Reply(429, b"", {"Retry-After": "3600"}), Reply(500, b""), Reply(200, b"ok"))
        assert run(_request(fake.url + "/x", backoff=0.04, max_backoff=0.05)).status_code == 200
    assert waits == [0.05, 0.05]


def test_client_errors_are_returned_not_retried():
    with FakeServer() as fake:
        assert run(_request(fake.url + "/nothing-here")).status_code == 404
        assert len(fake.requests) == 1


def test_the_last_failure_is_raised_with_status_and_without_the_query():
    with FakeServer() as fake:
        fake.queue("GET", "/x", *[Reply(502, b"bad gateway") for _ in range(3)])
        with pytest.raises(HTTPRetryError) as info:
            run(_request(fake.url + "/x?key=SECRET", retries=2, backoff=0.01))
        assert info.value.status == 502 and info.value.attempts == 3
        assert "SECRET" not in str(info.value) and "HTTP 502" in str(info.value)


def test_retry_after_accepts_an_http_date():
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    response = httpx.Response(429, headers={"Retry-After": format_datetime(later, usegmt=True)})
    assert 25 <= retry_after_seconds(response) <= 31
    assert retry_after_seconds(httpx.Response(429, headers={"Retry-After": "soon"})) is None
