"""`openai-images`: the OpenAI Images API (gpt-image-1 by default) or any server that speaks it.

With references: POST {base}/images/edits as multipart form data (model, prompt, size, n=1 and one
`image[]` PNG file per reference, in program order). Without references: POST {base}/images/generations
with JSON (text-to-image). The key comes from OPENAI_API_KEY (environment only), the base from
OPENAI_BASE_URL (default https://api.openai.com/v1).

The reply must carry the image inline (`data[0].b64_json`, which gpt-image models always return;
for dall-e models we ask for it with response_format=b64_json). A reply that only gives a URL is
refused rather than downloaded: fetching an address chosen by the server would sidestep the
download guard, and such URLs expire anyway.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from ..httpretry import HTTPRetryError, LoopLocalClient, request_with_retries
from ..program import Program
from .base import Generator, GeneratorError, RenderResult
from .imageio import MAX_IMAGE_PIXELS, bounded, decode_image_b64, encode_image, load_references, note_dropped_references
from .qwen_service import server_message

DEFAULT_MODEL = "gpt-image-1"
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIImagesGenerator(Generator):
    name = "openai-images"

    def __init__(self, model: str = DEFAULT_MODEL, *, api_key: str | None = None, base_url: str | None = None,
                 size: str = "auto",
                 quality: str | None = None, input_fidelity: str | None = None, max_refs: int = 16,
                 max_concurrency: int = 4, timeout: float = 300.0, connect_timeout: float = 10.0, retries: int = 3,
                 backoff: float = 2.0, max_backoff: float = 60.0, max_image_pixels: int = MAX_IMAGE_PIXELS):
        self.api_key = api_key
        if not self.api_key:
            raise ValueError("openai-images needs an API key: set OPENAI_API_KEY")
        self.model = model
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.size = size
        self.quality = quality
        self.input_fidelity = input_fidelity
        self.max_refs = int(max_refs)
        self.max_concurrency = max(1, int(max_concurrency))
        self.retries, self.backoff, self.max_backoff = int(retries), float(backoff), float(max_backoff)
        self.max_image_pixels = int(max_image_pixels)
        timeout_ = httpx.Timeout(float(timeout), connect=float(connect_timeout))
        self._client = LoopLocalClient(lambda: httpx.AsyncClient(timeout=timeout_))

    def _fields(self, prompt: str) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": self.model, "prompt": prompt, "n": 1}
        if self.size:
            fields["size"] = self.size
        if self.quality:
            fields["quality"] = self.quality
        if self.model.startswith("dall-e"):
            fields["response_format"] = "b64_json"
        return fields

    async def render(self, program: Program, *, seed: int | None = None) -> RenderResult:
        # The API takes no seed; `seed` is accepted for the interface and recorded.
        if not program.gen_prompt.strip():
            raise GeneratorError("openai-images: the prompt is empty")
        images = await asyncio.to_thread(load_references, program, max_refs=self.max_refs)
        fields = self._fields(program.gen_prompt)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if images:
            endpoint = f"{self.base_url}/images/edits"
            if self.input_fidelity:
                fields["input_fidelity"] = self.input_fidelity
            pngs = await asyncio.to_thread(lambda: [encode_image(bounded(im), "PNG") for im in images])
            files = [("image[]", (f"reference_{i}.png", png, "image/png")) for i, png in enumerate(pngs, 1)]
            kwargs: dict[str, Any] = {"data": {k: str(v) for k, v in fields.items()}, "files": files}
        else:
            endpoint = f"{self.base_url}/images/generations"
            kwargs = {"json": fields}
        t0 = time.perf_counter()
        try:
            response = await request_with_retries(self._client.get(), "POST", endpoint, headers=headers,
                                                  retries=self.retries, backoff=self.backoff,
                                                  max_backoff=self.max_backoff, **kwargs)
        except HTTPRetryError as exc:
            raise GeneratorError(f"openai-images: {exc}") from None
        if response.status_code != 200:
            said = server_message(response).replace(self.api_key, "[key]")    # some proxies echo the key
            raise GeneratorError(f"openai-images: HTTP {response.status_code}: {said}")
        image, info = parse_reply(response, max_pixels=self.max_image_pixels)
        metadata = {"backend": self.name, "model": self.model, "endpoint": endpoint.rsplit("/", 1)[-1],
                    "requested_size": self.size, "width": image.width, "height": image.height,
                    "n_references": len(images), "seed": seed, **info,
                    "timings": {"request_s": round(time.perf_counter() - t0, 3)}}
        note_dropped_references(metadata, program, len(images))
        return RenderResult(image=image, metadata=metadata)

    async def aclose(self) -> None:
        await self._client.aclose()


def parse_reply(response: httpx.Response, *, max_pixels: int = MAX_IMAGE_PIXELS):
    try:
        payload = response.json()
        item = payload["data"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise GeneratorError("openai-images: the reply has no data[0] "
                             "(expected {'data': [{'b64_json': ...}]})") from None
    if not isinstance(item, dict):
        raise GeneratorError("openai-images: data[0] is not an object")
    if not item.get("b64_json"):
        if item.get("url"):
            raise GeneratorError("openai-images: the reply gives a URL instead of b64_json; URL replies are not "
                                 "downloaded (use a model or server that returns b64_json)")
        raise GeneratorError("openai-images: data[0] has no b64_json")
    image = decode_image_b64(item["b64_json"], label="openai-images reply image", max_pixels=max_pixels)
    info: dict[str, Any] = {}
    if item.get("revised_prompt"):
        info["revised_prompt"] = item["revised_prompt"]
    for key in ("usage", "size", "quality", "output_format"):
        if isinstance(payload, dict) and payload.get(key) is not None:
            info[f"reply_{key}" if key != "usage" else "usage"] = payload[key]
    return image, info
