"""One client for OpenAI-compatible chat servers, shared by the policy and the VLM judges.

It POSTs JSON with retries (`httpretry.RetryPolicy`: 408/429/5xx, dropped connections, timeouts,
and a 200 whose body is not a chat reply, all backed off exponentially or as Retry-After says),
caps the reply size, and never lets the API key into an error message. It runs on aiohttp rather
than httpx (used elsewhere in the project): with dozens of chats in flight the client is CPU-bound,
and aiohttp costs several times less CPU per request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import aiohttp

from .httpretry import RetryPolicy, parse_retry_after, safe_url
from .limits import MAX_REPLY_BYTES

MAX_RESPONSE_BYTES = MAX_REPLY_BYTES     # a chat reply larger than this is a broken server


class ChatError(RuntimeError):
    """The server could not give a usable reply after every attempt. `status` is the last HTTP status."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _SessionPerLoop:
    """One aiohttp session per running event loop (a client may serve several `asyncio.run` calls)."""

    def __init__(self, max_connections: int, timeout: aiohttp.ClientTimeout):
        self.max_connections, self.timeout = max_connections, timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections)
            self._session, self._loop = aiohttp.ClientSession(connector=connector, timeout=self.timeout), loop
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                await session.close()
            except RuntimeError:        # opened on a loop that has since closed
                pass


def chat_choice(data: Any) -> dict[str, Any]:
    """choices[0] of a chat reply, or ValueError saying what is missing."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"JSON without choices[0].message: {str(data)[:200]}") from None
    if not isinstance(message, dict):
        raise ValueError("choices[0].message is not an object")
    return choice


class ChatClient:
    """POSTs to one OpenAI-compatible server. `label` names it in errors ("policy server", ...)."""

    def __init__(self, base_url: str, api_key: str = "", *, label: str = "chat server",
                 timeout_s: float = 300.0, connect_timeout_s: float = 10.0, retry: RetryPolicy | None = None,
                 max_connections: int = 256, max_response_bytes: int = MAX_RESPONSE_BYTES):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or ""
        self.label = f"{label} {safe_url(self.base_url)}"
        self.retry = retry or RetryPolicy()
        self.max_response_bytes = max_response_bytes
        self._sessions = _SessionPerLoop(max_connections, aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=timeout_s))

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /chat/completions; the reply JSON, whose choices[0].message is an object."""
        return await self.post_json("/chat/completions", body, check=chat_choice)

    async def post_json(self, path: str, body: dict[str, Any], *, root: bool = False,
                        check: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """POST `body` to base_url + path (or to the server's root + path when `root`: vLLM serves
        /tokenize there) and return the reply's JSON object.

        A reply that is not JSON, or that `check` refuses (raising ValueError), is retried like a
        5xx: servers under load send truncated or empty bodies with status 200.
        """
        url = (self._root() if root else self.base_url) + path
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempts = self.retry.attempts
        problem, status = "no attempt made", None
        for attempt in range(attempts):
            last = attempt == attempts - 1
            asked = None
            try:
                async with self._sessions.get().post(url, data=payload, headers=headers) as resp:
                    status = resp.status
                    raw = await _read_capped(resp.content, self.max_response_bytes + 1)
                    asked = parse_retry_after(resp.headers.get("Retry-After"))
                if len(raw) > self.max_response_bytes:
                    raise ChatError(f"{self.label} sent a reply over the {self.max_response_bytes}-byte limit", status)
                if status >= 400:
                    problem = f"HTTP {status}: {self.redact(_error_text(raw))}"
                    if not self.retry.retryable(status):
                        raise ChatError(f"{self.label} answered {problem}", status)
                else:
                    try:
                        data = json.loads(raw.decode("utf-8"))
                        if not isinstance(data, dict):
                            raise ValueError(f"a JSON {type(data).__name__}, not an object")
                        if check is not None:
                            check(data)
                        return data
                    except UnicodeDecodeError:
                        problem = "a reply that is not UTF-8"
                    except (ValueError, RecursionError) as exc:
                        problem = (f"a reply that is not JSON: {self.redact(repr(raw[:120]))}"
                                   if isinstance(exc, json.JSONDecodeError) else self.redact(str(exc)))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {self.redact(str(exc))}" if str(exc) else type(exc).__name__
                status = None
            if last:
                break
            await asyncio.sleep(self.retry.wait(attempt, asked))
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        raise ChatError(f"{self.label} failed after {tries}: {problem}", status)

    def redact(self, text: str) -> str:
        """The text with this client's key taken out (servers echo keys in error bodies)."""
        from .secrets import scrub
        return scrub(text, [self._api_key])

    def _root(self) -> str:
        base = self.base_url
        return base[:-3] if base.endswith("/v1") else base

    async def aclose(self) -> None:
        await self._sessions.aclose()


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, or its first `limit` bytes when it is longer (the caller treats that as too big)."""
    chunks, size = [], 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _error_text(raw: bytes) -> str:
    try:
        data = json.loads(raw)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except (ValueError, UnicodeDecodeError, RecursionError):
        return raw[:300].decode("utf-8", "replace")
