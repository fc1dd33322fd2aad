"""The Qwen-Image-Edit render service: one pipeline per process behind a small FastAPI app.

Endpoints
- `POST /generate`: JSON {prompt, images | image_urls, seed, width, height, num_inference_steps,
  true_cfg_scale, guidance_scale, negative_prompt, num_images_per_prompt}. Two request shapes are
  accepted: the released GenEvolve client's (`image_urls`: data URIs "data:image/...;base64,...",
  every field given, `num_images_per_prompt` 1) and our older one (`images`: plain base64). Only
  `prompt` and one of the two image lists are required; the rest default to the generator's settings
  (the paper's: 40 steps, true CFG 4.0, guidance 1.0, negative " ", seed 0, size from the first
  image). The service fetches nothing: an http(s) URL in `image_urls` is refused. Answers
  {"success": true, "image": plain base64 PNG, width, height, seed, ...metadata}.
- `GET /health`: {status: loading|ok|error, model, device, queue_depth, running, queue_size, ...}.

Errors always have the form {"success": false, "error": {"message": ...}}, with a non-200 status:
422 for a request that fails validation (the message and `fields` name each bad field), 413 for an
oversized body, 503 with Retry-After when the queue is full, 503 while the model failed to load,
500 when the pipeline fails.

Renders run one at a time in a single worker thread (the pipeline is not re-entrant and owns the
GPU). At most `queue_size` requests are admitted at once, the running one included; the rest are
turned away at once with 503 instead of piling up until clients time out. The pipeline starts
loading in that worker when the app starts, so /health answers "loading" meanwhile and early
requests simply queue behind the load.

There is no authentication: bind to 127.0.0.1 (the default) or put it behind a proxy that has some.
"""

# No `from __future__ import annotations` here: FastAPI must see the request model, which is built
# per app inside create_app, as a real class in the endpoint's signature.

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generators.base import GeneratorError, RenderResult
from ..generators.imageio import decode_image_b64, image_data_b64

log = logging.getLogger("genevolve.serve.qwen")


@dataclass
class ServiceLimits:
    queue_size: int = 8                  # requests admitted at once, the running one included
    max_images: int = 4                  # reference images per request
    max_image_pixels: int = 16_000_000   # per decoded reference image
    max_steps: int = 150
    max_side: int = 2048                 # output width / height
    max_prompt_chars: int = 8000
    max_body_bytes: int = 128 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("queue_size", "max_images", "max_image_pixels", "max_steps", "max_side",
                     "max_prompt_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def request_model(limits: ServiceLimits) -> type[BaseModel]:
    """The /generate body schema; its bounds come from `limits`, so it is built per app."""

    def decode(value: Any) -> Image.Image:
        if not isinstance(value, str):
            raise ValueError(f"expected a base64 string, got {type(value).__name__}")
        if value.startswith(("http://", "https://")):
            raise ValueError("the service fetches no URLs: send the image inline, as a data URI "
                             "(data:image/png;base64,...) or plain base64")
        try:
            return decode_image_b64(value, label="image", max_pixels=limits.max_image_pixels)
        except GeneratorError as exc:
            raise ValueError(str(exc)) from None

    ReferenceImage = Annotated[Image.Image, BeforeValidator(decode),
                               WithJsonSchema({"type": "string", "contentEncoding": "base64",
                                               "description": "a PNG/JPEG/WebP image, base64-encoded"})]

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

        prompt: str = Field(min_length=1, max_length=limits.max_prompt_chars)
        # The published shape's `image_urls` is moved here before validation (see `one_image_list`);
        # the error handler names the field the client sent.
        images: list[ReferenceImage] = Field(min_length=1, max_length=limits.max_images)
        num_images_per_prompt: int = Field(1, ge=1, le=1)
        seed: int = Field(0, ge=0, le=2**63 - 1)
        num_inference_steps: int | None = Field(None, ge=1, le=limits.max_steps)
        true_cfg_scale: float | None = Field(None, ge=0.0, le=50.0)
        guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
        negative_prompt: str | None = Field(None, max_length=limits.max_prompt_chars)
        height: int | None = Field(None, ge=16, le=limits.max_side, multiple_of=16)
        width: int | None = Field(None, ge=16, le=limits.max_side, multiple_of=16)

        @model_validator(mode="before")
        @classmethod
        def one_image_list(cls, data: Any) -> Any:
            if isinstance(data, dict) and "image_urls" in data:
                if "images" in data:
                    raise ValueError("give the references as images or as image_urls, not both")
                data = {("images" if k == "image_urls" else k): v for k, v in data.items()}
            return data

        @field_validator("prompt")
        @classmethod
        def prompt_has_text(cls, value: str) -> str:
            if not value.strip():
                raise ValueError("the prompt is blank")
            return value

        @model_validator(mode="after")
        def both_sides_or_neither(self):
            if (self.height is None) != (self.width is None):
                raise ValueError("give both height and width, or neither (then the first image's aspect is used)")
            return self

    return GenerateRequest


class RenderQueue:
    """A bounded line in front of one worker thread. Counters change on the event loop only,
    except `running`, which the worker sets around each job."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.admitted = 0
        self.running = 0
        self.ok = 0
        self.failed = 0
        self._recent: deque[float] = deque(maxlen=20)      # seconds of recent renders
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen-render")

    @property
    def waiting(self) -> int:
        return max(0, self.admitted - self.running)

    def try_admit(self) -> bool:
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead times a recent render."""
        typical = sum(self._recent) / len(self._recent) if self._recent else 10.0
        return max(1, math.ceil(typical * max(1, self.admitted - self.capacity + 1)))

    async def run(self, job: Callable[[], RenderResult]) -> tuple[RenderResult, float]:
        """Run an admitted job in the worker; returns its result and the seconds it waited."""
        queued_at = time.perf_counter()
        started: list[float] = []

        def in_worker() -> RenderResult:
            started.append(time.perf_counter())
            self.running = 1
            try:
                return job()
            finally:
                self.running = 0

        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, in_worker)
            self.ok += 1
            self._recent.append(time.perf_counter() - started[0])
            return result, started[0] - queued_at
        except BaseException:
            self.failed += 1
            raise
        finally:
            self.admitted -= 1

    def submit_background(self, fn: Callable[[], Any]):
        return self.executor.submit(fn)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"success": False, "error": {"message": message, **extra}},
                        headers=headers)


def busy(queue: RenderQueue, **extra: Any) -> JSONResponse:
    wait = queue.retry_after()
    return error(503, f"the render queue is full ({queue.capacity} requests); retry in about {wait}s",
                 headers={"Retry-After": str(wait)}, **extra)


def create_app(generator, limits: ServiceLimits | None = None, *, load_on_startup: bool = True) -> FastAPI:
    """The service around `generator` (a `QwenImageEditGenerator`: anything with `render_images`,
    `load`, `loaded`, `model`, `loaded_on`). `load_on_startup=False` loads on the first request."""
    limits = limits or ServiceLimits()
    queue = RenderQueue(limits.queue_size)
    GenerateRequest = request_model(limits)
    state: dict[str, Any] = {"status": "loading" if load_on_startup else "idle", "load_error": None}

    def load() -> None:
        try:
            generator.load()
            state["status"] = "ok"
        except Exception as exc:       # recorded and reported by /health and /generate
            log.exception("loading the pipeline failed")
            state["status"], state["load_error"] = "error", str(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_on_startup:
            queue.submit_background(load)
        yield
        queue.shutdown()

    app = FastAPI(title="genevolve Qwen-Image-Edit service", lifespan=lifespan)
    app.state.queue = queue

    @app.middleware("http")
    async def guard(request: Request, call_next):
        # Both checks run before the body is read and its images decoded, so a crowd of large
        # requests costs neither memory nor time once the queue is full.
        if request.url.path == "/generate" and queue.admitted >= queue.capacity:
            return busy(queue)
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > limits.max_body_bytes
            except ValueError:
                return error(400, f"bad Content-Length header {length!r}")
            if too_big:
                return error(413, f"request body of {length} bytes is over the limit of {limits.max_body_bytes}")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        sent_urls = isinstance(exc.body, dict) and "image_urls" in exc.body
        fields = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if loc[:1] == ["images"]:
                if sent_urls:                  # the client sent the published shape: use its name
                    loc[0] = "image_urls"
                elif err.get("type") == "missing":
                    msg += " (the references, as images: [base64, ...] or image_urls: [data URI, ...])"
            fields.append({"field": ".".join(loc) or "body", "message": msg})
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return error(422, f"invalid request: {summary}", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        body = {"status": state["status"], "model": generator.model, "device": generator.loaded_on,
                "queue_depth": queue.waiting, "running": queue.running, "queue_size": queue.capacity,
                "renders_ok": queue.ok, "renders_failed": queue.failed,
                "load_seconds": getattr(generator, "load_seconds", None)}
        if state["load_error"]:
            body["error"] = {"message": state["load_error"]}
        return body

    @app.post("/generate")
    async def generate(req: GenerateRequest, request: Request):   # type: ignore[valid-type]
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        if state["status"] == "error":
            return error(503, f"the model failed to load: {state['load_error']}", request_id=request_id)
        if not queue.try_admit():
            return busy(queue, request_id=request_id)

        def job() -> RenderResult:
            if state["status"] == "error":       # the load queued ahead of this request failed
                raise GeneratorError(f"the model failed to load: {state['load_error']}")
            return generator.render_images(
                req.prompt, list(req.images), seed=req.seed, steps=req.num_inference_steps,
                true_cfg_scale=req.true_cfg_scale, guidance_scale=req.guidance_scale,
                negative_prompt=req.negative_prompt, width=req.width, height=req.height)

        try:
            result, waited = await queue.run(job)
        except GeneratorError as exc:
            log.warning("request %s failed: %s", request_id, exc)
            return error(500, str(exc), request_id=request_id)
        except Exception as exc:        # a bug or an unexpected library error: say what, log where
            log.exception("request %s failed", request_id)
            return error(500, f"render failed: {type(exc).__name__}: {exc}", request_id=request_id)
        if state["status"] == "idle":
            state["status"] = "ok"
        meta = dict(result.metadata)
        timings = dict(meta.pop("timings", {}))
        timings["queue_s"] = round(waited, 3)
        log.info("request %s: %dx%d, %s steps, %.2fs render, %.2fs queued", request_id, result.image.width,
                 result.image.height, meta.get("steps"), timings.get("render_s", 0.0), waited)
        encoded = await asyncio.to_thread(image_data_b64, result.image, "PNG")
        return {"success": True, "image": encoded, **meta, "num_inference_steps": meta.get("steps"),
                "timings": timings, "request_id": request_id}

    return app
