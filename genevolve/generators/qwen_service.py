"""`qwen-image-edit-service`: renders through one or more `genevolve serve qwen-image-edit` servers.

Protocol (see `genevolve.serve.qwen_app`): POST {url}/generate with JSON {prompt, images: [base64 ...],
seed, num_inference_steps, true_cfg_scale, guidance_scale, negative_prompt, height, width}; the reply
is {image: base64 PNG, ...metadata}, an error is {"error": {"message": ...}}.

Several servers (`urls`, or env QWEN_EDIT_URLS, comma-separated) are used round-robin: each render
goes to the next server among those with the fewest renders in flight from this client, and when a
server still fails after its retries (refused connection, timeout, 5xx) the render moves on to the
others before giving up. `max_concurrency` is the number of servers
times `slots_per_server`, so a batch keeps every GPU busy without overfilling any queue.
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

from ..config import setting
from ..httpretry import HTTPRetryError, LoopLocalClient, request_with_retries
from ..program import Program
from .base import Generator, GeneratorError, RenderResult
from .imageio import MAX_IMAGE_PIXELS, bounded, decode_image_b64, image_data_b64, load_references, note_dropped_references

REQUEST_ID_HEADER = "X-Request-ID"


class QwenImageEditServiceGenerator(Generator):
    name = "qwen-image-edit-service"

    def __init__(self, urls: str | list[str] | None = None, *, slots_per_server: int = 1, timeout: float = 900.0,
                 connect_timeout: float = 10.0, retries: int = 3, backoff: float = 1.0, max_backoff: float = 60.0,
                 seed: int = 0, steps: int | None = None, true_cfg_scale: float | None = None,
                 guidance_scale: float | None = None, negative_prompt: str | None = None, max_refs: int = 2,
                 max_image_pixels: int = MAX_IMAGE_PIXELS):
        raw = urls if urls is not None else setting(None, "QWEN_EDIT_URLS", "generator", "qwen_edit_urls")
        if isinstance(raw, str):
            raw = raw.split(",")
        self.urls = [u.strip().rstrip("/") for u in (raw or []) if u and u.strip()]
        if not self.urls:
            raise ValueError("qwen-image-edit-service needs the service address: set QWEN_EDIT_URLS "
                             "(comma-separated, e.g. http://127.0.0.1:8000) or pass urls=...")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"qwen-image-edit-service: {url!r} is not an http(s) URL")
        if int(slots_per_server) < 1:
            raise ValueError(f"slots_per_server must be at least 1, got {slots_per_server}")
        self.max_concurrency = len(self.urls) * int(slots_per_server)
        self.timeout = httpx.Timeout(float(timeout), connect=float(connect_timeout))
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.seed = int(seed)
        # None = the server's default (the paper's settings unless the server was started otherwise).
        self.options = {"num_inference_steps": steps, "true_cfg_scale": true_cfg_scale,
                        "guidance_scale": guidance_scale, "negative_prompt": negative_prompt}
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
        encoded = await asyncio.to_thread(self._encoded_references, program)     # file reads and PNG encoding
        body = {"prompt": program.gen_prompt, "images": encoded, "seed": seed,
                **{k: v for k, v in self.options.items() if v is not None}}
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
            note_dropped_references(result.metadata, program, len(encoded))
            if failures:
                result.metadata["failed_over"] = failures
            return result
        raise GeneratorError("qwen-image-edit-service: every server failed: " + " | ".join(failures))

    def _encoded_references(self, program: Program) -> list[str]:
        return [image_data_b64(bounded(im), "PNG") for im in load_references(program, max_refs=self.max_refs)]

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
            encoded = payload["image"]
        except (ValueError, KeyError, TypeError):
            raise GeneratorError(f"qwen-image-edit-service {url}: the reply is not JSON with an 'image' "
                                 "field") from None
        image = decode_image_b64(encoded, label=f"qwen-image-edit-service {url} reply",
                                 max_pixels=self.max_image_pixels)
        metadata = {k: v for k, v in payload.items() if k != "image"}
        timings = dict(metadata.get("timings") or {})
        timings["request_s"] = round(time.perf_counter() - t0, 3)
        metadata.update({"backend": self.name, "server": url, "width": image.width, "height": image.height,
                         "timings": timings})
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
        if data.get("detail"):
            return str(data["detail"])[:1000]
        if data.get("message"):
            return str(data["message"])[:1000]
    return str(data)[:300]
