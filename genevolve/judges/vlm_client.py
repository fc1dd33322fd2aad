"""The multimodal chat client shared by every model-based judge.

It speaks the OpenAI chat-completions protocol (Gemini's OpenAI endpoint, OpenAI, vLLM, SGLang, ...),
sends images inline as JPEG data URLs with a bounded long side, always samples at temperature 0,
spaces requests to a requests-per-minute budget and retries transport failures (429, 5xx, resets).
Judges retry unreadable *replies* themselves; see `jsonio.extract_json` for what counts as readable.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chat_client import ChatClient, ChatError
from ..httpretry import RetryPolicy
from ..limits import MAX_IMAGE_PIXELS
from .base import JudgeError


# ---------------------------------------------------------------------------------------------
# The endpoint (resolved from flags, environment and config by genevolve.settings)

@dataclass
class Endpoint:
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)   # never printed, never recorded


def resolve_endpoint(base_url: str | None = None, model: str | None = None,
                     api_key: str | None = None) -> Endpoint:
    if not base_url:
        raise JudgeError("no judge endpoint: pass --base-url (e.g. http://127.0.0.1:8000/v1) or set "
                         "GENEVOLVE_JUDGE_BASE_URL or OPENAI_BASE_URL")
    if not model:
        raise JudgeError("no judge model: pass --model (the paper used gemini-3.1-pro-preview) or set "
                         "GENEVOLVE_JUDGE_MODEL")
    return Endpoint(base_url=str(base_url).rstrip("/"), model=str(model), api_key=api_key or "")


# ---------------------------------------------------------------------------------------------
# Images

def image_data_url(path: str | Path, max_side: int = 4096, quality: int = 95,
                   max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    """The image at `path` as a JPEG data URL, its long side at most `max_side` pixels.

    Re-encoding makes every judge see the same kind of input whatever the source format
    (PNG with alpha, WebP, huge TIFF) and bounds the request size. An image with more than
    `max_pixels` pixels is refused before they are decoded (a large JPEG is first read at the
    reduced scale that `max_side` needs, which may bring it under the cap).
    """
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            # Our cap decides; Pillow's own error (at twice its 89-megapixel warning) still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.draft("RGB", (max_side, max_side))       # JPEG only: a no-op for other formats
                if opened.width * opened.height > max_pixels:
                    raise JudgeError(f"image {path}: {opened.width}x{opened.height} pixels is over the limit "
                                     f"of {max_pixels:,}")
                im = ImageOps.exif_transpose(opened)
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
    except Image.DecompressionBombError as exc:
        raise JudgeError(f"image {path}: too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
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
    def __init__(self, endpoint: Endpoint, *, timeout_s: float = 300.0, connect_timeout_s: float = 10.0,
                 max_tokens: int = 8192, rpm: float | None = None, retries: int = 6, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, max_side: int = 4096):
        self.endpoint = endpoint
        self.max_tokens = max_tokens
        self.max_side = max_side
        self.limiter = RateLimiter(rpm)
        self._chat = ChatClient(endpoint.base_url, endpoint.api_key, label="judge endpoint", timeout_s=timeout_s,
                                connect_timeout_s=connect_timeout_s, max_connections=64,
                                retry=RetryPolicy(attempts=retries + 1, backoff_s=backoff_s,
                                                  max_backoff_s=max_backoff_s))

    def image(self, path: str | Path) -> dict[str, Any]:
        return image_part(image_data_url(path, self.max_side))

    async def chat(self, messages: list[dict[str, Any]]) -> str:
        """One completion at temperature 0; the reply text. Raises JudgeError on transport failure."""
        body = {"model": self.endpoint.model, "messages": messages, "temperature": 0,
                "max_tokens": self.max_tokens}
        await self.limiter.wait()
        try:
            data = await self._chat.chat(body)
        except ChatError as exc:
            raise JudgeError(str(exc)) from None
        content = data["choices"][0]["message"].get("content")
        if isinstance(content, list):      # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not content.strip():
            raise JudgeError(f"{self._chat.label} sent an empty reply")
        return content

    async def aclose(self) -> None:
        await self._chat.aclose()


class EndpointJudge:
    """What every judge over an OpenAI-compatible multimodal endpoint holds: the endpoint, a
    rate-limited client, and how often a reply that does not parse is asked for again."""

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 *, rpm: float | None = None, max_attempts: int = 4, max_side: int = 4096,
                 timeout_s: float = 300.0, connect_timeout_s: float = 10.0, retries: int = 6,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0):
        self.endpoint: Endpoint = resolve_endpoint(base_url, model, api_key)
        self.client = VLMClient(self.endpoint, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, rpm=rpm,
                                retries=retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                                max_side=max_side)
        self.max_attempts = max_attempts

    async def aclose(self) -> None:
        await self.client.aclose()


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
