"""A loopback Qwen-Image-Edit service written to the released GenEvolve client's contract, for
testing clients quickly.

POST /generate must carry every field the released client sends (`PUBLISHED_FIELDS`: prompt,
image_urls as "data:image/...;base64," URIs, seed, width, height as multiples of 16,
num_inference_steps, true_cfg_scale, guidance_scale, negative_prompt, num_images_per_prompt 1); a
request missing one, or with one of the wrong kind, gets 422 in FastAPI's own shape
({"detail": [{"loc": ["body", field], "msg", "type"}]}), as a strict service built on FastAPI
would answer. A good request gets {"success": true, "image": plain base64 PNG, ...}: no picture is
drawn, the reply is the first reference recoloured by the seed, at the requested size. GET /health
answers like ours. `error_reply` and `failed_render` script the other answers a service can give.

The real service (tests/test_qwen_diffusers.py) runs a tiny diffusers pipeline; this one is for the
client's own behaviour (round-robin, failover, retries, error payloads, timeouts) and for batch
renders that must not take seconds per image.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
from typing import Any

from PIL import Image

from . import FakeServer, RecordedRequest, Reply

# The released client's request fields; each is required here.
PUBLISHED_FIELDS = ("prompt", "image_urls", "seed", "width", "height", "num_inference_steps", "true_cfg_scale",
                    "guidance_scale", "negative_prompt", "num_images_per_prompt")


class QwenServiceFake(FakeServer):
    def __init__(self, *, model: str = "fake/qwen-image-edit", delay: float = 0.0,
                 rendezvous: threading.Barrier | None = None, **kw):
        super().__init__(**kw)
        self.delay = delay          # seconds each render takes
        self.model = model
        # Shared by several fakes: each render waits there for the others' renders, so a client
        # that sends to the services one at a time gets errors instead of images.
        self.rendezvous = rendezvous

    def handle(self, request: RecordedRequest) -> Reply:
        if request.method == "GET" and request.path == "/health":
            return Reply.json({"status": "ok", "model": self.model, "queue_depth": 0, "running": 0})
        if request.method != "POST" or request.path != "/generate":
            return error_reply(404, "Not Found")
        try:
            body = request.json()
        except ValueError:
            return invalid([], "JSON decode error", "json_invalid")
        if not isinstance(body, dict):
            return invalid([], "Input should be a valid dictionary", "model_attributes_type")
        missing = [f for f in PUBLISHED_FIELDS if f not in body]
        if missing:
            return invalid(missing, "Field required", "missing")
        problem = check_fields(body)
        if problem:
            return invalid(*problem)
        first = Image.open(io.BytesIO(decode_data_uri(body["image_urls"][0]))).convert("RGB")
        seed, size = body["seed"], (body["width"], body["height"])
        time.sleep(self.delay)
        if self.rendezvous is not None:
            try:
                self.rendezvous.wait(timeout=10)
            except threading.BrokenBarrierError:
                return error_reply(500, "no render ran at the same time on another service")
        shade = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, 128))
        out = Image.blend(first.resize(size), shade, 0.5)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        return Reply.json({"success": True, "image": base64.b64encode(buf.getvalue()).decode(),
                           "model": self.model, "seed": seed, "num_inference_steps": body["num_inference_steps"],
                           "width": size[0], "height": size[1], "n_references": len(body["image_urls"])})


def check_fields(body: dict[str, Any]) -> tuple[list[str], str, str] | None:
    """(fields, message, type) of the first wrong field, or None when the request is good."""
    prompt = body["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        return ["prompt"], "the prompt is blank", "value_error"
    urls = body["image_urls"]
    if not isinstance(urls, list) or not urls:
        return ["image_urls"], "List should have at least 1 item", "too_short"
    for i, url in enumerate(urls):
        try:
            Image.open(io.BytesIO(decode_data_uri(url))).verify()
        except Exception:
            return [f"image_urls.{i}"], "not a base64 data URI of a readable image", "value_error"
    for name in ("seed", "width", "height", "num_inference_steps", "num_images_per_prompt"):
        if not isinstance(body[name], int) or isinstance(body[name], bool):
            return [name], "Input should be a valid integer", "int_type"
    for name in ("width", "height"):
        if body[name] < 16 or body[name] % 16:
            return [name], "must be a positive multiple of 16", "value_error"
    for name in ("true_cfg_scale", "guidance_scale"):
        if not isinstance(body[name], (int, float)) or isinstance(body[name], bool):
            return [name], "Input should be a valid number", "float_type"
    if not isinstance(body["negative_prompt"], str):
        return ["negative_prompt"], "Input should be a valid string", "string_type"
    if body["num_images_per_prompt"] != 1:
        return ["num_images_per_prompt"], "only 1 is supported", "value_error"
    return None


def decode_data_uri(value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith("data:image/"):
        raise ValueError("not a data:image/ URI")
    header, sep, data = value.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ValueError("not base64")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None


def invalid(fields: list[str], message: str, kind: str) -> Reply:
    detail = [{"loc": ["body", *f.split(".")] if f else ["body"], "msg": message, "type": kind}
              for f in (fields or [""])]
    return Reply.json({"detail": detail}, status=422)


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps({"success": False, "error": {"message": message}}).encode(),
                 {"Content-Type": "application/json", **(headers or {})})


def failed_render(message: str) -> Reply:
    """HTTP 200 with success false: how a published-contract service may report a failed render."""
    return Reply.json({"success": False, "error": message})
