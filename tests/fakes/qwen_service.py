"""A loopback stand-in for `genevolve serve qwen-image-edit`, for testing clients quickly.

It speaks the service's protocol (POST /generate, GET /health, errors as {"error": {"message"}}) but
draws no picture: the reply is the first reference image, recoloured by the seed, at the requested
size or the size the real service would pick (long side `long_side`, multiples of 16). The real
service runs the tiny diffusers pipeline in tests/test_qwen_diffusers.py; this one is for the
client's own behaviour (round-robin, failover, retries, error payloads, timeouts) and for batch
renders that must not take seconds per image.
"""

from __future__ import annotations

import base64
import io
import json
import time

from PIL import Image

from genevolve.generators.imageio import output_size

from . import FakeServer, RecordedRequest, Reply


class QwenServiceFake(FakeServer):
    def __init__(self, *, long_side: int = 64, model: str = "fake/qwen-image-edit", delay: float = 0.0, **kw):
        super().__init__(**kw)
        self.long_side = long_side
        self.delay = delay          # seconds each render takes
        self.model = model

    def handle(self, request: RecordedRequest) -> Reply:
        if request.method == "GET" and request.path == "/health":
            return Reply.json({"status": "ok", "model": self.model, "queue_depth": 0, "running": 0})
        if request.method != "POST" or request.path != "/generate":
            return error_reply(404, "Not Found")
        try:
            body = request.json()
            prompt, images = body["prompt"], body["images"]
        except (ValueError, KeyError, TypeError):
            return error_reply(422, "invalid request: body: expected JSON with prompt and images")
        if not isinstance(prompt, str) or not prompt.strip():
            return error_reply(422, "invalid request: prompt: the prompt is blank")
        if not isinstance(images, list) or not images:
            return error_reply(422, "invalid request: images: List should have at least 1 item")
        try:
            first = Image.open(io.BytesIO(base64.b64decode(images[0], validate=True))).convert("RGB")
        except Exception:
            return error_reply(422, "invalid request: images.0: not a readable image")
        seed = int(body.get("seed", 0))
        if body.get("width") and body.get("height"):
            size = (int(body["width"]), int(body["height"]))
        else:
            size = output_size(first.size, self.long_side)
        time.sleep(self.delay)
        shade = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, 128))
        out = Image.blend(first.resize(size), shade, 0.5)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        steps = body.get("num_inference_steps") or 40
        return Reply.json({"image": base64.b64encode(buf.getvalue()).decode(), "model": self.model,
                           "seed": seed, "steps": steps, "num_inference_steps": steps, "width": size[0],
                           "height": size[1], "n_references": len(images),
                           "timings": {"render_s": 0.0, "queue_s": 0.0}})


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps({"error": {"message": message}}).encode(),
                 {"Content-Type": "application/json", **(headers or {})})
