"""Web search backends: Serper (Google results; needs an API key) and SearXNG (self-hosted, keyless).

Each backend class is built with keyword options, as the registry in `genevolve.tools` does:
`SerperSearchBackend(api_key=...)`, `SearxngImageBackend(url="http://localhost:8888")`. Nothing is
read from the environment here: the CLI passes SERPER_API_KEY, SERPER_BASE_URL and SEARXNG_URL in.

- Responses are cached on disk, one JSON file per (backend, endpoint, query, parameters) under
  `<cache_root>/web/<backend>/` (`cache_root` defaults to `cache_dir()`; downloaded images go to
  `<cache_root>/downloads/`), written atomically: a rerun gets the same results and sends no
  request. `cache=False` turns the cache off; `refresh=True` asks the service again and
  overwrites the entry. Failed calls are never cached; an empty result list is.
- Calls are retried with backoff on 429, 5xx and connection errors (genevolve.httpretry).
- Failures raise `WebSearchError` with a message the policy can read; the search tools turn it
  into an error observation and the trajectory continues.
- Image backends download every candidate through `SafeDownloader` so each hit has a vetted local
  file (`per_host_concurrency` and `per_host_rate` set its per-host politeness). A candidate whose
  download is refused is dropped: the reason is logged (INFO, logger
  `genevolve.tools.web_search`) and counted in `backend.dropped` (reason code -> count). To make
  up for drops they ask the service for `2 * top_k` candidates (at least 10) and download in
  rank order, in waves, until `top_k` images are kept or the candidates run out.
- The Serper key is sent only in the X-API-KEY header and scrubbed from every error message; it
  never reaches logs, cache files or records.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urljoin

import httpx

from ..config import cache_dir
from ..httpretry import HTTPRetryError, LoopLocalClient, request_with_retries
from ..jsonio import atomic_write_json
from .base import ImageHit, ImageSearchBackend, SearchBackend, SearchHit
from .download import DownloadRejected, SafeDownloader

log = logging.getLogger(__name__)

DEFAULT_SERPER_URL = "https://google.serper.dev"
USER_AGENT = "genevolve/0.1 (web search backend)"


class WebSearchError(RuntimeError):
    """A web search failed; the message says why in words the policy and the user can act on."""


class ResponseCache:
    """Service responses on disk, one file per request, named by the hash of what defines it."""

    def __init__(self, root: Path):
        self.root = root

    @staticmethod
    def key(backend: str, endpoint: str, query: str, params: dict[str, Any]) -> str:
        identity = json.dumps({"backend": backend, "endpoint": endpoint, "query": query, "params": params},
                              sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(identity.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, key: str) -> Any | None:
        path = self.path(key)
        try:
            return json.loads(path.read_text("utf-8"))["response"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:   # damaged entry: ask again
            log.warning("ignoring unreadable search cache entry %s (%s)", path, exc)
            return None

    def save(self, key: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.path(key), record)


class _JsonService:
    """One web API: cache, retries, HTTP status and JSON checks, and key scrubbing."""

    def __init__(self, source: str, label: str, base_url: str, *, cache: bool, cache_root: Path,
                 refresh: bool, timeout: float, retries: int, headers: dict[str, str] | None = None,
                 secret: str | None = None, status_hint: Callable[[int], str | None] = lambda s: None):
        self.source, self.label = source, label
        self.base_url = base_url.rstrip("/")
        self.cache = ResponseCache(cache_root / "web" / source) if cache else None
        self.refresh = refresh
        self.retries = retries
        self._secret = secret
        self._status_hint = status_hint
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        self._http = LoopLocalClient(lambda: httpx.AsyncClient(timeout=timeout, headers=all_headers))

    def __repr__(self) -> str:        # never show headers (the key) in a repr
        return f"<{self.label} at {self.base_url}>"

    def scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    async def call(self, method: str, path: str, query: str, shaped_by: dict[str, Any], **send: Any) -> Any:
        """The decoded JSON answer for one query. `shaped_by` holds every other parameter that
        shapes the answer (it keys the cache); `send` goes to the HTTP request (json=, params=)."""
        endpoint = self.base_url + path
        key = ResponseCache.key(self.source, endpoint, query, shaped_by)
        if self.cache is not None and not self.refresh:
            cached = self.cache.load(key)
            if cached is not None:
                log.debug("%s: cached answer for %r", self.label, query)
                return cached
        try:
            response = await request_with_retries(self._http.get(), method, endpoint,
                                                  retries=self.retries, **send)
        except HTTPRetryError as exc:
            what = "rate limited" if exc.status == 429 else "unavailable"
            raise WebSearchError(self.scrub(f"{self.label} search {what}: {exc}")) from None
        except httpx.HTTPError as exc:
            raise WebSearchError(self.scrub(f"{self.label} search failed: {type(exc).__name__}: {exc}")) from None
        data = self._decode(response)
        if self.cache is not None:
            record = {"backend": self.source, "endpoint": endpoint, "query": query, "params": shaped_by,
                      "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "response": data}
            await asyncio.to_thread(self.cache.save, key, record)   # the atomic write waits for the disk
        return data

    def _decode(self, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status >= 400:
            message = _service_message(response)
            hint = self._status_hint(status)
            text = f"{self.label} refused the search (HTTP {status}{': ' + message if message else ''})"
            raise WebSearchError(self.scrub(text + (f"; {hint}" if hint else "")))
        try:
            data = response.json()
        except ValueError:
            kind = response.headers.get("content-type", "no Content-Type")
            raise WebSearchError(self.scrub(f"{self.label} returned malformed JSON (HTTP {status}, {kind}): "
                                            f"{response.text[:120]!r}")) from None
        if not isinstance(data, dict):
            raise WebSearchError(f"{self.label} returned JSON that is not an object "
                                 f"(got {type(data).__name__})")
        return data

    async def aclose(self) -> None:
        await self._http.aclose()


def _service_message(response: httpx.Response) -> str:
    """The short error text a service puts in its error body, if any."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200]
    if isinstance(body, dict):
        for field in ("message", "error", "detail"):
            if isinstance(body.get(field), str):
                return body[field][:200]
    return ""


def _result_list(data: dict[str, Any], field: str, label: str) -> list[dict[str, Any]]:
    """data[field] as a list of objects; a missing field means no results."""
    items = data.get(field, [])
    if not isinstance(items, list):
        raise WebSearchError(f"{label} returned '{field}' as {type(items).__name__}, expected a list")
    return [item for item in items if isinstance(item, dict)]


def _text(item: dict[str, Any], field: str) -> str:
    value = item.get(field)
    return value.strip() if isinstance(value, str) else ""


def _root(cache_root: str | Path | None) -> Path:
    """Where responses (web/) and downloads (downloads/) are kept: the given folder or the cache."""
    return Path(cache_root) if cache_root is not None else cache_dir()


def _candidate_count(top_k: int) -> int:
    return max(10, 2 * top_k)


class _ImageDownloads:
    """Turns ranked image candidates into hits with vetted local files (shared by image backends)."""

    def __init__(self, source: str, downloader: SafeDownloader | None, cache_root: Path,
                 allow_hosts: Iterable[str], allow_private: bool, per_host: int | None, rate: float | None):
        allow_hosts = list(allow_hosts)
        if downloader is not None and (allow_hosts or allow_private or per_host is not None or rate is not None):
            raise ValueError("pass allow_hosts, allow_private, per_host_concurrency and per_host_rate to "
                             "the SafeDownloader you provide, not here")
        self.source = source
        politeness: dict[str, Any] = {"per_host_rate": rate}
        if per_host is not None:
            politeness["per_host_concurrency"] = per_host
        self.downloader = downloader or SafeDownloader(out_dir=cache_root / "downloads", allow_hosts=allow_hosts,
                                                       allow_private=allow_private, **politeness)
        self._owns_downloader = downloader is None
        self.dropped: Counter[str] = Counter()

    async def keep_first(self, query: str, candidates: list[tuple[str, str, str | None]],
                         top_k: int, untitled: str | None = None, repeats: bool = False) -> list[ImageHit]:
        """Download (image_url, title, page_url) candidates in rank order until top_k are kept. An
        untitled image is named `untitled` (default: the query). A URL listed twice is fetched once;
        its later listings are dropped, or with `repeats` (as the released runtime does) kept as hits
        of the same image, which then share one IMG id."""
        first: dict[str, int] = {}
        ranked: list[tuple[str, str, str | None]] = []
        for url, title, page in candidates:
            if url and (repeats or url not in first):
                first.setdefault(url, len(ranked))
                ranked.append((url, title, page))
        fetched: dict[str, Any] = {}
        kept: dict[int, ImageHit] = {}
        pending = list(enumerate(ranked))
        while pending and len(kept) < top_k:
            wave, pending = pending[:top_k - len(kept)], pending[top_k - len(kept):]
            new = list(dict.fromkeys(url for _, (url, _, _) in wave if url not in fetched))
            results = await asyncio.gather(*(self.downloader.fetch(url) for url in new), return_exceptions=True)
            for url, result in zip(new, results):
                if isinstance(result, DownloadRejected):
                    self.dropped[str(result.reason)] += 1
                    log.info("%s image search [%s]: dropped %s (%s: %s; %d bytes read)", self.source,
                             query, url, result.reason, result.message, result.bytes_read)
                elif isinstance(result, BaseException):
                    raise result
                fetched[url] = result
            for rank, (url, title, page) in wave:
                result = fetched[url]
                if not isinstance(result, BaseException):
                    kept[rank] = ImageHit(title=title or untitled or query, local_path=result.path, url=url,
                                          page_url=page, key=url, source=self.source)
        return [kept[rank] for rank in sorted(kept)]

    async def aclose(self) -> None:
        if self._owns_downloader:
            await self.downloader.aclose()


# ------------------------------------------------------------------------------ Serper

def _serper_service(api_key: str | None, base_url: str | None, cache: bool, cache_root: Path, refresh: bool,
                    timeout: float, retries: int) -> _JsonService:
    key = (api_key or "").strip()
    if not key:
        raise ValueError("Serper search needs an API key: set the SERPER_API_KEY environment variable "
                         "(get one at serper.dev) or pass api_key=..., or use --search searxng / offline")
    url = base_url or DEFAULT_SERPER_URL

    def hint(status: int) -> str | None:
        if status in (401, 403):
            return "check SERPER_API_KEY (is it valid, and does the account have credits?)"
        return None

    return _JsonService("serper", "Serper", url, cache=cache, cache_root=cache_root, refresh=refresh,
                        timeout=timeout, retries=retries, headers={"X-API-KEY": key}, secret=key,
                        status_hint=hint)


def _serper_body(query: str, num: int, gl: str | None, hl: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"q": query, "num": num}
    if gl:
        body["gl"] = gl
    if hl:
        body["hl"] = hl
    return body


class SerperSearchBackend(SearchBackend):
    """Google web results through Serper: POST {base}/search {"q", "num"} -> organic[]."""

    name = "serper"

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, gl: str | None = None,
                 hl: str | None = None, cache: bool = True, cache_root: str | Path | None = None,
                 refresh: bool = False, timeout: float = 20.0, retries: int = 3):
        self.gl, self.hl = gl, hl
        self.api = _serper_service(api_key, base_url, cache, _root(cache_root), refresh, timeout, retries)

    async def search(self, query: str, top_k: int) -> list[SearchHit]:
        body = _serper_body(query, top_k, self.gl, self.hl)
        data = await self.api.call("POST", "/search", query, {k: v for k, v in body.items() if k != "q"},
                                   json=body)
        # Items without a link are kept (their title and snippet still inform); the layout decides
        # what to show for a missing title or link.
        hits = [SearchHit(title=_text(item, "title"), url=_text(item, "link") or _text(item, "url"),
                          snippet=_text(item, "snippet"), source="serper")
                for item in _result_list(data, "organic", "Serper")]
        return hits[:top_k]

    async def aclose(self) -> None:
        await self.api.aclose()


class SerperImageBackend(ImageSearchBackend):
    """Google image results through Serper (POST {base}/images), each downloaded and vetted."""

    name = "serper"

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, gl: str | None = None,
                 hl: str | None = None, cache: bool = True, cache_root: str | Path | None = None,
                 refresh: bool = False, timeout: float = 20.0, retries: int = 3,
                 downloader: SafeDownloader | None = None, allow_hosts: Iterable[str] = (),
                 allow_private: bool = False, per_host_concurrency: int | None = None,
                 per_host_rate: float | None = None):
        self.gl, self.hl = gl, hl
        root = _root(cache_root)
        self.api = _serper_service(api_key, base_url, cache, root, refresh, timeout, retries)
        self.images = _ImageDownloads("serper", downloader, root, allow_hosts, allow_private,
                                      per_host_concurrency, per_host_rate)

    @property
    def dropped(self) -> Counter[str]:
        return self.images.dropped

    async def search_images(self, query: str, top_k: int) -> list[ImageHit]:
        body = _serper_body(query, _candidate_count(top_k), self.gl, self.hl)
        data = await self.api.call("POST", "/images", query, {k: v for k, v in body.items() if k != "q"},
                                   json=body)
        candidates = [(_text(item, "imageUrl"), _text(item, "title"), _text(item, "link") or None)
                      for item in _result_list(data, "images", "Serper")]
        return await self.images.keep_first(query, candidates, top_k)

    async def search_images_released(self, query: str, top_k: int) -> list[ImageHit]:
        """As the released runtime asks Serper: exactly `top_k` results, the image URL from the first
        field that has one, "image" for an untitled result, the page from `link` or `source`; the
        ones that cannot be downloaded are left out, not replaced."""
        body = _serper_body(query, top_k, self.gl, self.hl)
        data = await self.api.call("POST", "/images", query, {k: v for k, v in body.items() if k != "q"},
                                   json=body)
        candidates = [(next((_text(item, f) for f in ("imageUrl", "image_url", "thumbnailUrl", "url")
                             if _text(item, f)), ""), _text(item, "title"),
                       _text(item, "link") or _text(item, "source") or None)
                      for item in _result_list(data, "images", "Serper")[:top_k]]
        return await self.images.keep_first(query, candidates, top_k, untitled="image", repeats=True)

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.images.aclose()


# ------------------------------------------------------------------------------ SearXNG

def _searxng_service(url: str | None, cache: bool, cache_root: Path, refresh: bool, timeout: float,
                     retries: int) -> _JsonService:
    if not url:
        raise ValueError("SearXNG search needs the address of your instance: set SEARXNG_URL "
                         "(e.g. http://localhost:8888), put url under [searxng] in genevolve.toml, or pass url=...")

    def hint(status: int) -> str | None:
        if status == 403:
            return "the instance must allow JSON output: add 'json' to search.formats in its settings.yml"
        return None

    return _JsonService("searxng", "SearXNG", url, cache=cache, cache_root=cache_root, refresh=refresh,
                        timeout=timeout, retries=retries, status_hint=hint)


class _SearxngBase:
    def __init__(self, url: str | None, language: str | None, safesearch: int | None, cache: bool,
                 cache_root: Path, refresh: bool, timeout: float, retries: int):
        self.api = _searxng_service(url, cache, cache_root, refresh, timeout, retries)
        self.language, self.safesearch = language, safesearch

    async def _results(self, query: str, category: str) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"format": "json", "categories": category, "pageno": 1}
        if self.language:
            params["language"] = self.language
        if self.safesearch is not None:
            params["safesearch"] = self.safesearch
        data = await self.api.call("GET", "/search", query, params, params={"q": query, **params})
        return _result_list(data, "results", "SearXNG")


class SearxngSearchBackend(_SearxngBase, SearchBackend):
    """GET {url}/search?q=...&format=json&categories=general -> results[].title/url/content."""

    name = "searxng"

    def __init__(self, url: str | None = None, *, language: str | None = None,
                 safesearch: int | None = None, cache: bool = True, cache_root: str | Path | None = None,
                 refresh: bool = False, timeout: float = 20.0, retries: int = 3):
        super().__init__(url, language, safesearch, cache, _root(cache_root), refresh, timeout, retries)

    async def search(self, query: str, top_k: int) -> list[SearchHit]:
        results = await self._results(query, "general")
        hits = [SearchHit(title=_text(r, "title") or _text(r, "url"), url=_text(r, "url"),
                          snippet=_text(r, "content"), source="searxng")
                for r in results if _text(r, "url")]
        return hits[:top_k]

    async def aclose(self) -> None:
        await self.api.aclose()


class SearxngImageBackend(_SearxngBase, ImageSearchBackend):
    """GET {url}/search?...&categories=images -> results[].img_src (image) and url (page).

    A relative img_src (an instance with its image proxy on) is joined to the instance URL; if
    the instance is on your own network, add it to `allow_hosts` so the downloader may use it.
    """

    name = "searxng"

    def __init__(self, url: str | None = None, *, language: str | None = None,
                 safesearch: int | None = None, cache: bool = True, cache_root: str | Path | None = None,
                 refresh: bool = False, timeout: float = 20.0, retries: int = 3,
                 downloader: SafeDownloader | None = None, allow_hosts: Iterable[str] = (),
                 allow_private: bool = False, per_host_concurrency: int | None = None,
                 per_host_rate: float | None = None):
        root = _root(cache_root)
        super().__init__(url, language, safesearch, cache, root, refresh, timeout, retries)
        self.images = _ImageDownloads("searxng", downloader, root, allow_hosts, allow_private,
                                      per_host_concurrency, per_host_rate)

    @property
    def dropped(self) -> Counter[str]:
        return self.images.dropped

    async def search_images(self, query: str, top_k: int) -> list[ImageHit]:
        results = await self._results(query, "images")
        candidates = []
        for r in results[:_candidate_count(top_k)]:
            src = _text(r, "img_src") or _text(r, "thumbnail_src")
            if src:
                candidates.append((urljoin(self.api.base_url + "/", src), _text(r, "title"),
                                   _text(r, "url") or None))
        return await self.images.keep_first(query, candidates, top_k)

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.images.aclose()
