"""`qwen-image-edit-service`: renders through one or more Qwen-Image-Edit HTTP services.

Protocol: the one the released GenEvolve runtime speaks, so any service written to it works (ours,
`genevolve serve qwen-image-edit`, accepts it too). POST {url}/generate with JSON
{prompt, image_urls: ["data:image/png;base64,...", ...], seed, width, height, num_inference_steps,
true_cfg_scale, guidance_scale, negative_prompt, num_images_per_prompt: 1}. The size is worked out
here, as the released client does: the first reference's aspect, `long_side` (1024) on the long side,
both sides multiples of `size_multiple` (16, what the pipeline's latent packing needs). The reply is
{"success": true, "image": <plain base64>} (`image_base64` is read too); a 200 reply whose `success`
is false is the service saying the render failed, and any other status is an error whose message
is taken from {"error": {"message"}}, {"detail": ...} or the body text.

Several servers (`urls`: a list or a comma-separated string) are used round-robin: each render goes
to the next server among those with the fewest renders in flight from this client, and when a
server still fails after its retries (refused connection, timeout, 5xx, 429, a failed render) the
render moves on to the others before giving up. `max_concurrency` is the number of servers times
`slots_per_server`, so a batch keeps every GPU busy without overfilling any queue; a 503 with
Retry-After (a full queue) is waited out and retried.
References are sent as PNG (lossless, at most 2048 px on the long side), so a render through the
service matches a local render of the same program pixel for pixel.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import httpx

from ..httpretry import HTTPRetryError, LoopLocalClient, request_with_retries
from ..program import Program
from .base import Generator, GeneratorError, RenderResult
from .imageio import (MAX_IMAGE_PIXELS, bounded, decode_image_b64, image_data_b64, load_references,
                      note_dropped_references, output_size)

REQUEST_ID_HEADER = "X-Request-ID"
# The fields of the released client's request: a service written to that contract may require each.
PUBLISHED_FIELDS = ("prompt", "image_urls", "seed", "width", "height", "num_inference_steps", "true_cfg_scale",
                    "guidance_scale", "negative_prompt", "num_images_per_prompt")


class QwenImageEditServiceGenerator(Generator):
    name = "qwen-image-edit-service"

    def __init__(self, urls: str | list[str] | None = None, *, slots_per_server: int = 1, timeout: float = 900.0,
                 connect_timeout: float = 10.0, retries: int = 3, backoff: float = 1.0, max_backoff: float = 60.0,
                 seed: int = 0, steps: int = 40, true_cfg_scale: float = 4.0, guidance_scale: float = 1.0,
                 negative_prompt: str = " ", long_side: int = 1024, size_multiple: int = 16, max_refs: int = 2,
                 max_image_pixels: int = MAX_IMAGE_PIXELS):
        """Defaults are the paper's settings (those the released client sends). `urls` is required;
        the CLI fills it from --backend-opt urls=..., QWEN_EDIT_URLS or the TOML file."""
        raw = urls.split(",") if isinstance(urls, str) else urls
        self.urls = [u.strip().rstrip("/") for u in (raw or []) if u and u.strip()]
        if not self.urls:
            raise ValueError("qwen-image-edit-service needs the service address: set QWEN_EDIT_URLS "
                             "(comma-separated, e.g. http://127.0.0.1:8000) or pass urls=...")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"qwen-image-edit-service: {url!r} is not an http(s) URL")
        for label, value in (("slots_per_server", slots_per_server), ("steps", steps), ("max_refs", max_refs),
                             ("size_multiple", size_multiple)):
            if int(value) < 1:
                raise ValueError(f"qwen-image-edit-service: {label} must be at least 1, got {value}")
        if int(long_side) < int(size_multiple):
            raise ValueError(f"qwen-image-edit-service: long_side must be at least size_multiple "
                             f"({size_multiple}), got {long_side}")
        self.max_concurrency = len(self.urls) * int(slots_per_server)
        self.timeout = httpx.Timeout(float(timeout), connect=float(connect_timeout))
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.seed = int(seed)
        self.options = {"num_inference_steps": int(steps), "true_cfg_scale": float(true_cfg_scale),
                        "guidance_scale": float(guidance_scale), "negative_prompt": str(negative_prompt),
                        "num_images_per_prompt": 1}
        self.long_side = int(long_side)
        self.size_multiple = int(size_multiple)
        self.max_refs = int(max_refs)
        self.max_image_pixels = int(max_image_pixels)
        self._turn = itertools.count()
        self._in_flight = [0] * len(self.urls)
        self._last_error: dict[str, str] = {}       # request id -> the server's last error message
        self._client = LoopLocalClient(lambda: httpx.AsyncClient(
            timeout=self.timeout, event_hooks={"response": [self._remember_error]}))

    async def _remember_error(self, response: httpx.Response) -> None:
        """Keep the message of every error reply, so a request that fails after all its retries can
        still say what the server said (the retry helper reports only the status)."""
        request_id = response.request.headers.get(REQUEST_ID_HEADER)
        if request_id and response.status_code >= 400:
            await response.aread()
            self._last_error[request_id] = server_message(response)

    async def render(self, program: Program, *, seed: int | None = None) -> RenderResult:
        if not program.references:
            raise GeneratorError("qwen-image-edit-service needs at least one reference image (Qwen-Image-Edit is "
                                 "an editing model); this program has none")
        seed = self.seed if seed is None else int(seed)
        body = await asyncio.to_thread(self.request_body, program, seed)   # file reads and PNG encoding
        failures = []
        for index in self._server_order():
            url = self.urls[index]
            self._in_flight[index] += 1
            try:
                result = await self._post(url, body)
            except _ServerDown as exc:          # try the next server
                failures.append(str(exc))
                continue
            finally:
                self._in_flight[index] -= 1
            note_dropped_references(result.metadata, program, len(body["image_urls"]))
            if failures:
                result.metadata["failed_over"] = failures
            return result
        raise GeneratorError("qwen-image-edit-service: every server failed: " + " | ".join(failures))

    def request_body(self, program: Program, seed: int) -> dict[str, Any]:
        """The published request for `program` (blocking: reads and encodes the reference files)."""
        images = load_references(program, max_refs=self.max_refs)
        width, height = output_size(images[0].size, self.long_side, self.size_multiple)
        return {"prompt": program.gen_prompt,
                "image_urls": ["data:image/png;base64," + image_data_b64(bounded(im), "PNG") for im in images],
                "seed": seed, "width": width, "height": height, **self.options}

    def _server_order(self) -> list[int]:
        """Every server once: the least busy first, ties taken in turn (plain round-robin when equal)."""
        n = len(self.urls)
        start = next(self._turn) % n
        rotation = [(start + i) % n for i in range(n)]
        return sorted(rotation, key=lambda i: self._in_flight[i])     # stable: keeps the rotation on ties

    async def _post(self, url: str, body: dict[str, Any]) -> RenderResult:
        request_id = uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        try:
            response = await request_with_retries(
                self._client.get(), "POST", f"{url}/generate", json=body, headers={REQUEST_ID_HEADER: request_id},
                retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff)
        except HTTPRetryError as exc:
            said = self._last_error.pop(request_id, None)
            raise _ServerDown(f"{url}: {exc.reason} after {exc.attempts} attempts"
                              + (f": {said}" if said else "")) from None
        finally:
            self._last_error.pop(request_id, None)
        if response.status_code != 200:
            raise GeneratorError(f"qwen-image-edit-service {url}: HTTP {response.status_code}: "
                                 f"{server_message(response)}")
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise GeneratorError(f"qwen-image-edit-service {url}: the reply is not a JSON object")
        if payload.get("success") is False:      # the published way to say the render failed
            raise _ServerDown(f"{url}: the service reported a failed render: {server_message(response)}")
        encoded = payload.get("image") or payload.get("image_base64")
        if not encoded:
            raise GeneratorError(f"qwen-image-edit-service {url}: the reply has no 'image' field "
                                 f"(fields: {', '.join(sorted(payload)) or 'none'})")
        image = decode_image_b64(encoded, label=f"qwen-image-edit-service {url} reply",
                                 max_pixels=self.max_image_pixels)
        metadata = {k: v for k, v in payload.items() if k not in ("image", "image_base64", "success")}
        timings = dict(metadata.get("timings") or {})
        timings["request_s"] = round(time.perf_counter() - t0, 3)
        metadata.update({"backend": self.name, "server": url, "width": image.width, "height": image.height,
                         "requested_size": [body["width"], body["height"]], "timings": timings})
        return RenderResult(image=image, metadata=metadata)

    async def aclose(self) -> None:
        await self._client.aclose()


class _ServerDown(Exception):
    """One server could not be reached or kept failing; another may do better."""


def server_message(response: httpx.Response) -> str:
    """The message of an error reply: {"error": {"message"}} (ours, OpenAI's, Google's), else its text."""
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] if text else (response.reason_phrase or "no message")
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:1000]
        if isinstance(err, str):
            return err[:1000]
        detail = data.get("detail")
        if isinstance(detail, list):        # FastAPI's own validation reply: [{loc, msg, ...}]
            parts = [f"{'.'.join(str(p) for p in d.get('loc', ()) if p != 'body') or 'body'}: {d.get('msg')}"
                     if isinstance(d, dict) else str(d) for d in detail]
            return "; ".join(parts)[:1000]
        if detail:
            return str(detail)[:1000]
        if data.get("message"):
            return str(data["message"])[:1000]
    return str(data)[:300]
