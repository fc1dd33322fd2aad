"""The multimodal chat client shared by every model-based judge.

It speaks the OpenAI chat-completions protocol (Gemini's OpenAI endpoint, OpenAI, vLLM, SGLang, ...),
sends images inline as JPEG data URLs with a bounded long side, always samples at temperature 0,
spaces requests to a requests-per-minute budget and retries transport failures (429, 5xx, resets).
Judges retry unreadable *replies* themselves; see `extract_json` for what counts as readable.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..config import setting
from ..httpretry import HTTPRetryError, LoopLocalClient, request_with_retries
from .base import JudgeError

MAX_RESPONSE_BYTES = 8 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Endpoint resolution: flag > GENEVOLVE_JUDGE_* > OPENAI_* > [judge] section of the TOML file.

@dataclass
class Endpoint:
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)   # never printed, never recorded


def resolve_endpoint(base_url: str | None = None, model: str | None = None,
                     api_key: str | None = None) -> Endpoint:
    base_url = (base_url or os.environ.get("GENEVOLVE_JUDGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
                or setting(None, None, "judge", "base_url"))
    if not base_url:
        raise JudgeError("no judge endpoint: pass --base-url (e.g. http://127.0.0.1:8000/v1) or set "
                         "GENEVOLVE_JUDGE_BASE_URL or OPENAI_BASE_URL")
    model = model or os.environ.get("GENEVOLVE_JUDGE_MODEL") or setting(None, None, "judge", "model")
    if not model:
        raise JudgeError("no judge model: pass --model (the paper used gemini-3.1-pro-preview) or set "
                         "GENEVOLVE_JUDGE_MODEL")
    if api_key is None:
        api_key = os.environ.get("GENEVOLVE_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or ""
    return Endpoint(base_url=str(base_url).rstrip("/"), model=str(model), api_key=api_key)


# ---------------------------------------------------------------------------------------------
# Images

def image_data_url(path: str | Path, max_side: int = 4096, quality: int = 95) -> str:
    """The image at `path` as a JPEG data URL, its long side at most `max_side` pixels.

    Re-encoding makes every judge see the same kind of input whatever the source format
    (PNG with alpha, WebP, huge TIFF) and bounds the request size.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                canvas = Image.new("RGB", im.size, (255, 255, 255))
                canvas.paste(im, mask=im.getchannel("A"))
                im = canvas
            else:
                im = im.convert("RGB")
            if max(im.size) > max_side:
                scale = max_side / max(im.size)
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                               Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
    except FileNotFoundError:
        raise JudgeError(f"image not found: {path}") from None
    except OSError as exc:
        raise JudgeError(f"cannot read image {path}: {exc}") from None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part(data_url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url}}


# ---------------------------------------------------------------------------------------------
# Rate limiting

class RateLimiter:
    """Spaces calls evenly so that at most `rpm` start in any minute (None or 0: no limit).

    No lock is needed: the slot is reserved before the first await, and asyncio runs one
    coroutine at a time.
    """

    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next_slot = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


# ---------------------------------------------------------------------------------------------
# The client

class VLMClient:
    def __init__(self, endpoint: Endpoint, *, timeout_s: float = 300.0, max_tokens: int = 8192,
                 rpm: float | None = None, retries: int = 6, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, max_side: int = 4096):
        self.endpoint = endpoint
        self.timeout_s, self.max_tokens = timeout_s, max_tokens
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.max_side = max_side
        self.limiter = RateLimiter(rpm)
        # httpx clients belong to one event loop; a sync caller may run several loops in turn.
        self._http = LoopLocalClient(lambda: httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0)))

    def image(self, path: str | Path) -> dict[str, Any]:
        return image_part(image_data_url(path, self.max_side))

    async def chat(self, messages: list[dict[str, Any]]) -> str:
        """One completion at temperature 0; the reply text. Raises JudgeError on transport failure."""
        body = {"model": self.endpoint.model, "messages": messages, "temperature": 0,
                "max_tokens": self.max_tokens}
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"} if self.endpoint.api_key else {}
        where = f"judge endpoint {self.endpoint.base_url}"
        await self.limiter.wait()
        try:
            resp = await request_with_retries(self._http.get(), "POST", f"{self.endpoint.base_url}/chat/completions",
                                              json=body, headers=headers, retries=self.retries,
                                              backoff=self.backoff_s, max_backoff=self.max_backoff_s)
        except HTTPRetryError as exc:
            raise JudgeError(f"{where} failed: {exc}") from None
        except httpx.HTTPError as exc:
            raise JudgeError(f"{where} failed: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise JudgeError(f"{where} answered HTTP {resp.status_code}: {resp.text[:300]}")
        if len(resp.content) > MAX_RESPONSE_BYTES:
            raise JudgeError(f"{where} sent a {len(resp.content)}-byte reply")
        try:
            data = resp.json()
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"{where} sent no choices[0].message.content: {resp.text[:200]}") from None
        if isinstance(content, list):      # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not content.strip():
            raise JudgeError(f"{where} sent an empty reply")
        return content

    async def aclose(self) -> None:
        await self._http.aclose()


class EndpointJudge:
    """What every judge over an OpenAI-compatible multimodal endpoint holds: the endpoint, a
    rate-limited client, and how often a reply that does not parse is asked for again."""

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 *, rpm: float | None = None, max_attempts: int = 4, max_side: int = 4096,
                 timeout_s: float = 300.0, retries: int = 6, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0):
        self.endpoint: Endpoint = resolve_endpoint(base_url, model, api_key)
        self.client = VLMClient(self.endpoint, timeout_s=timeout_s, rpm=rpm, retries=retries,
                                backoff_s=backoff_s, max_backoff_s=max_backoff_s, max_side=max_side)
        self.max_attempts = max_attempts

    async def aclose(self) -> None:
        await self.client.aclose()


# ---------------------------------------------------------------------------------------------
# Reading JSON out of a model's reply

_FENCE_RE = re.compile(r"```(?:json|JSON|javascript|js)?\s*\n?(.*?)```", re.DOTALL)
_BARE_WORDS = {"True": "true", "False": "false", "None": "null"}


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in a model reply, forgiving the usual slips.

    Accepts a code fence or prose around the object, trailing commas, single-quoted strings,
    unquoted keys and Python's True/False/None. Raises ValueError when no object can be read (a truncated reply,
    for instance): the caller retries rather than guessing.
    """
    candidates = [m.group(1) for m in _FENCE_RE.finditer(text)] + [text]
    for chunk in candidates:
        for start in (i for i, c in enumerate(chunk) if c == "{"):
            obj_text = _balanced_object(chunk, start)
            if obj_text is None:
                continue                   # never closes (a truncated reply); try later braces
            try:
                obj = json.loads(_repair(obj_text))
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    raise ValueError(f"no JSON object in the reply: {_clip(text)}")


def _balanced_object(text: str, start: int) -> str | None:
    """text[start:end] where the '{' at `start` closes, skipping braces inside strings."""
    depth, quote, i = 0, None, start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            # an apostrophe inside a bare word ("don't") is not a string start
            if c == "'" and i > 0 and text[i - 1].isalnum():
                pass
            else:
                quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
        i += 1
    return None


def _repair(obj: str) -> str:
    """Rewrite single quotes to double quotes, Python literals to JSON, quote bare keys, and drop
    trailing commas."""
    out: list[str] = []
    quote, i = None, 0
    while i < len(obj):
        c = obj[i]
        if quote:
            if c == "\\" and i + 1 < len(obj):
                nxt = obj[i + 1]
                out.append("'" if (quote == "'" and nxt == "'") else c + nxt)
                i += 2
                continue
            if c == quote:
                out.append('"')
                quote = None
            elif c == '"':                 # a double quote inside a single-quoted string
                out.append('\\"')
            elif c == "\n":
                out.append("\\n")
            else:
                out.append(c)
        elif c in "\"'":
            quote = c
            out.append('"')
        elif c in "}]":
            while out and out[-1].isspace():
                out.pop()
            if out and out[-1] == ",":
                out.pop()
            out.append(c)
        elif c.isalpha():
            j = i
            while j < len(obj) and (obj[j].isalnum() or obj[j] == "_"):
                j += 1
            word = obj[i:j]
            k = j
            while k < len(obj) and obj[k].isspace():
                k += 1
            if k < len(obj) and obj[k] == ":":      # an unquoted key
                out.append(f'"{word}"')
            else:
                out.append(_BARE_WORDS.get(word, word))
            i = j
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "…"


async def ask_until_valid(client: VLMClient, messages: list[dict[str, Any]], parse: Any,
                          attempts: int) -> tuple[Any, int]:
    """Ask until `parse(reply)` accepts the reply; (parsed value, attempts used).

    `parse` raises ValueError for a reply that is unreadable or out of range; that costs one attempt.
    A transport failure (after the client's own retries) ends the loop at once. Raises JudgeError
    naming the last problem when no attempt succeeds.
    """
    problem = "no attempt made"
    for attempt in range(1, max(1, attempts) + 1):
        reply = await client.chat(messages)
        try:
            return parse(reply), attempt
        except ValueError as exc:
            problem = str(exc)
    raise JudgeError(f"unusable judge reply after {max(1, attempts)} attempt(s): {problem}")
