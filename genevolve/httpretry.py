"""Plumbing shared by every async HTTP client of the project.

- `RetryPolicy`: the one retry policy (how many attempts, which failures, how long to wait),
  used by `request_with_retries` (httpx clients) and `chat_client.ChatClient` (aiohttp).
- `request_with_retries`: one request, retried with exponential backoff on the failures that
  usually pass (429, most 5xx, dropped or refused connections, timeouts), honouring Retry-After.
- `LoopLocalClient`: one `httpx.AsyncClient` per running event loop. Backends are created once
  but may be driven by several `asyncio.run` calls (`run_sync`); a client that was opened on a
  loop that has since closed cannot be reused, so each loop gets its own.

Error messages name the method and the URL without its query string, because some services
(Gemini, for one) accept keys as query parameters.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

log = logging.getLogger(__name__)

# 501 (not implemented) and 505 (version not supported) will not change on a second try.
_NOT_RETRIED_5XX = frozenset({501, 505})
# Transport errors that are the caller's mistake rather than the network's.
_NOT_RETRIED_ERRORS = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


class HTTPRetryError(RuntimeError):
    """A request still failed after its last try. `status` is the last HTTP status, if any."""

    def __init__(self, method: str, url: str, attempts: int, reason: str, status: int | None = None):
        self.method = method
        self.url = url
        self.attempts = attempts
        self.status = status
        self.reason = reason
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        super().__init__(f"{method} {url} failed after {tries}: {reason}")


def is_retryable_status(status: int) -> bool:
    return status in (408, 429) or (500 <= status < 600 and status not in _NOT_RETRIED_5XX)


@dataclass(frozen=True)
class RetryPolicy:
    """How a request is retried: `attempts` tries in all; before retry n (n = 0, 1, ...) wait the
    server's Retry-After when it sends one, else `backoff_s * 2**n`, either way at most
    `max_backoff_s`. Retried: HTTP 408, 429 and 5xx (but 501/505) and transport failures."""

    attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")

    def retryable(self, status: int) -> bool:
        return is_retryable_status(status)

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        return min(retry_after if retry_after is not None else self.backoff_s * 2 ** attempt, self.max_backoff_s)


def safe_url(url: httpx.URL | str) -> str:
    """The URL without query, fragment or user info: safe to print even when a key rides in it."""
    u = httpx.URL(str(url))
    return str(u.copy_with(query=None, fragment=None, username=None, password=None))


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (Retry-After as seconds or as an HTTP date), if any."""
    return parse_retry_after(response.headers.get("retry-after"), now)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header value (seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def request_with_retries(client: httpx.AsyncClient, method: str, url: str | httpx.URL, *,
                               retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                               policy: RetryPolicy | None = None, **kw: Any) -> httpx.Response:
    """Send one request, retrying up to `retries` more times (so `retries + 1` attempts in all),
    or as `policy` says when given.

    Retried: HTTP 408, 429 and 5xx (except 501/505), and transport errors (refused or reset
    connections, timeouts); waits as RetryPolicy.wait says. Any other status is returned as is for
    the caller to interpret (401, 404, ...). When the last attempt still fails, raises
    HTTPRetryError naming the last status or error.

    Every method is retried, POST included: the callers here (search APIs, image services) are
    safe to repeat. Keyword arguments go to `client.request` (json=, params=, headers=, ...).
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    policy = policy or RetryPolicy(attempts=retries + 1, backoff_s=backoff, max_backoff_s=max_backoff)
    shown = safe_url(url)
    attempts = policy.attempts
    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            response = await client.request(method, url, **kw)
        except _NOT_RETRIED_ERRORS:
            raise
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if last:
                raise HTTPRetryError(method, shown, attempts, reason) from exc
            wait = policy.wait(attempt)
            log.warning("%s %s: %s; retrying in %.2fs (%d/%d)", method, shown, reason, wait,
                        attempt + 1, attempts - 1)
            await asyncio.sleep(wait)
            continue
        if not policy.retryable(response.status_code):
            return response
        reason = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
        if last:
            raise HTTPRetryError(method, shown, attempts, reason, status=response.status_code)
        wait = policy.wait(attempt, retry_after_seconds(response))
        log.warning("%s %s: %s; retrying in %.2fs (%d/%d)", method, shown, reason, wait,
                    attempt + 1, attempts - 1)
        await response.aclose()
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises on its last attempt


class LoopLocalClient:
    """Hands out one httpx.AsyncClient per running event loop, built by `factory` on first use."""

    def __init__(self, factory: Callable[[], httpx.AsyncClient]):
        self._factory = factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            # The previous loop is gone (or it is this loop's closed client): start afresh.
            self._client, self._loop = self._factory(), loop
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None and not client.is_closed:
            try:
                await client.aclose()
            except RuntimeError:  # opened on a loop that has since closed; nothing left to free
                pass
