"""`nano-banana-pro`: Google's Gemini image model (the paper's strong generator) over its REST API.

POST {base}/v1beta/models/{model}:generateContent with header `x-goog-api-key`; the key comes from
GOOGLE_API_KEY or GEMINI_API_KEY (environment only), the base from GEMINI_BASE_URL (default
https://generativelanguage.googleapis.com). The request holds one user turn: the gen_prompt as a text
part, then each reference as an inline JPEG part, in program order, and asks for TEXT and IMAGE.

References: none is fine (text-to-image). `aspect_ratio="auto"` (default) asks for the supported
ratio nearest the first reference's; with no reference the model chooses. `image_size` (1K/2K/4K)
is passed when set. A reply without an image (a safety block, a refusal in words) is an error that
carries the block or finish reason and what the model said.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx

from ..httpretry import HTTPRetryError, LoopLocalClient, request_with_retries
from ..program import Program
from .base import Generator, GeneratorError, RenderResult
from .imageio import MAX_IMAGE_PIXELS, bounded, decode_image_b64, image_data_b64, load_references, note_dropped_references
from .qwen_service import server_message

DEFAULT_MODEL = "gemini-3-pro-image-preview"
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")


class NanoBananaProGenerator(Generator):
    name = "nano-banana-pro"

    def __init__(self, model: str = DEFAULT_MODEL, *, api_key: str | None = None, base_url: str | None = None,
                 aspect_ratio: str | None = "auto",
                 image_size: str | None = None, max_refs: int = 14, max_concurrency: int = 4,
                 timeout: float = 300.0, connect_timeout: float = 10.0, retries: int = 3, backoff: float = 2.0,
                 max_backoff: float = 60.0, jpeg_quality: int = 95, max_image_pixels: int = MAX_IMAGE_PIXELS):
        self.api_key = api_key
        if not self.api_key:
            raise ValueError("nano-banana-pro needs an API key: set GOOGLE_API_KEY or GEMINI_API_KEY")
        if aspect_ratio not in (None, "", "auto", *ASPECT_RATIOS):
            raise ValueError(f"aspect_ratio must be auto or one of {', '.join(ASPECT_RATIOS)}, got {aspect_ratio!r}")
        self.model = model
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.aspect_ratio = aspect_ratio or None
        self.image_size = image_size or None
        self.max_refs = int(max_refs)
        self.max_concurrency = max(1, int(max_concurrency))
        self.retries, self.backoff, self.max_backoff = int(retries), float(backoff), float(max_backoff)
        self.jpeg_quality = int(jpeg_quality)
        self.max_image_pixels = int(max_image_pixels)
        timeout_ = httpx.Timeout(float(timeout), connect=float(connect_timeout))
        self._client = LoopLocalClient(lambda: httpx.AsyncClient(timeout=timeout_))

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/v1beta/models/{self.model}:generateContent"

    def request_body(self, prompt: str, images: list) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": prompt}]
        for im in images:
            parts.append({"inline_data": {"mime_type": "image/jpeg",
                                          "data": image_data_b64(bounded(im), "JPEG", quality=self.jpeg_quality)}})
        config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
        image_config = {}
        ratio = self.aspect_ratio
        if ratio == "auto":
            ratio = nearest_aspect_ratio(images[0].size) if images else None
        if ratio:
            image_config["aspectRatio"] = ratio
        if self.image_size:
            image_config["imageSize"] = self.image_size
        if image_config:
            config["imageConfig"] = image_config
        return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}

    async def render(self, program: Program, *, seed: int | None = None) -> RenderResult:
        # The API has no seed for image output; `seed` is accepted for the interface and recorded.
        if not program.gen_prompt.strip():
            raise GeneratorError("nano-banana-pro: the prompt is empty")
        images = await asyncio.to_thread(load_references, program, max_refs=self.max_refs)
        body = await asyncio.to_thread(self.request_body, program.gen_prompt, images)
        t0 = time.perf_counter()
        try:
            response = await request_with_retries(
                self._client.get(), "POST", self.endpoint, json=body,
                headers={"x-goog-api-key": self.api_key, "Content-Type": "application/json"},
                retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff)
        except HTTPRetryError as exc:
            raise GeneratorError(f"nano-banana-pro: {exc}") from None
        if response.status_code != 200:
            said = server_message(response).replace(self.api_key, "[key]")    # some proxies echo the key
            raise GeneratorError(f"nano-banana-pro: HTTP {response.status_code}: {said}")
        try:
            payload = response.json()
        except ValueError:
            raise GeneratorError("nano-banana-pro: the reply is not JSON") from None
        image, info = parse_reply(payload, max_pixels=self.max_image_pixels)
        metadata = {"backend": self.name, "model": self.model, "width": image.width, "height": image.height,
                    "n_references": len(images), "aspect_ratio": body["generationConfig"].get("imageConfig", {})
                    .get("aspectRatio"), "seed": seed, **info,
                    "timings": {"request_s": round(time.perf_counter() - t0, 3)}}
        note_dropped_references(metadata, program, len(images))
        return RenderResult(image=image, metadata=metadata)

    async def aclose(self) -> None:
        await self._client.aclose()


def parse_reply(payload: Any, *, max_pixels: int = MAX_IMAGE_PIXELS):
    """The first inline image of a generateContent reply, and what else it said (text, reasons, usage)."""
    if not isinstance(payload, dict):
        raise GeneratorError("nano-banana-pro: the reply is not a JSON object")
    candidates = payload.get("candidates") or []
    texts: list[str] = []
    finish = None
    for cand in candidates if isinstance(candidates, list) else []:
        if not isinstance(cand, dict):
            continue
        finish = finish or cand.get("finishReason")
        parts = (cand.get("content") or {}).get("parts") or []
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            inline = part.get("inlineData") or part.get("inline_data")
            if isinstance(inline, dict) and str(inline.get("mimeType") or inline.get("mime_type") or "").startswith(
                    "image/") and not part.get("thought"):
                image = decode_image_b64(inline.get("data") or "", label="nano-banana-pro reply image",
                                         max_pixels=max_pixels)
                info: dict[str, Any] = {"finish_reason": cand.get("finishReason")}
                if texts:
                    info["text"] = " ".join(texts)[:2000]
                if payload.get("usageMetadata"):
                    info["usage"] = payload["usageMetadata"]
                if payload.get("modelVersion"):
                    info["model_version"] = payload["modelVersion"]
                return image, info
            if isinstance(part.get("text"), str) and not part.get("thought"):
                texts.append(part["text"].strip())
    feedback = payload.get("promptFeedback") or {}
    reasons = []
    if feedback.get("blockReason"):
        reasons.append(f"prompt blocked: {feedback['blockReason']}"
                       + (f" ({feedback['blockReasonMessage']})" if feedback.get("blockReasonMessage") else ""))
    if finish:
        reasons.append(f"finishReason {finish}")
    if not candidates and not reasons:
        reasons.append("no candidates")
    said = " ".join(t for t in texts if t)
    if said:
        reasons.append(f"model said: {said[:300]}")
    raise GeneratorError("nano-banana-pro returned no image (" + "; ".join(reasons or ["no image part"]) + ")")


def nearest_aspect_ratio(size: tuple[int, int]) -> str:
    """The supported aspect ratio closest to width/height (compared on a log scale)."""
    w, h = size
    target = math.log(w / h)
    return min(ASPECT_RATIOS, key=lambda r: abs(math.log(int(r.split(":")[0]) / int(r.split(":")[1])) - target))
