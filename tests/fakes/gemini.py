"""A loopback Gemini API: POST /v1beta/models/{model}:generateContent with the x-goog-api-key header.

Normal behaviour: a request with the right key and at least one text part gets one candidate whose
parts are a short text and an inline PNG. The PNG is a solid colour, sized from the requested
imageConfig.aspectRatio (64 px on the long side; square when none), so tests can see that the
request reached the model. A wrong key gets Google's 400 INVALID_ARGUMENT error body. `snake_case`
replies spell `inline_data`/`mime_type` as some SDK dumps do. Script anything else with `queue`
(see `blocked_prompt`, `image_safety`, `error_reply`).
"""

from __future__ import annotations

import base64
import io
import re

from PIL import Image

from . import FakeServer, RecordedRequest, Reply

PATH_RE = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):generateContent$")
REPLY_COLOUR = (30, 144, 255)


class GeminiFake(FakeServer):
    def __init__(self, api_key: str = "test-gemini-key", *, snake_case: bool = False, **kw):
        super().__init__(**kw)
        self.api_key = api_key
        self.snake_case = snake_case

    def path_for(self, model: str) -> str:
        return f"/v1beta/models/{model}:generateContent"

    def handle(self, request: RecordedRequest) -> Reply:
        if request.method != "POST" or not PATH_RE.match(request.path):
            return error_reply(404, f"Requested entity was not found: {request.path}", "NOT_FOUND")
        if request.headers.get("x-goog-api-key") != self.api_key:
            return error_reply(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT")
        try:
            body = request.json()
            parts = body["contents"][0]["parts"]
            if not any("text" in p for p in parts):
                raise KeyError("text")
        except (ValueError, KeyError, IndexError, TypeError):
            return error_reply(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
        ratio = ((body.get("generationConfig") or {}).get("imageConfig") or {}).get("aspectRatio")
        size = size_for_ratio(ratio)
        data = base64.b64encode(png_bytes(size, REPLY_COLOUR)).decode()
        inline = ({"inline_data": {"mime_type": "image/png", "data": data}} if self.snake_case
                  else {"inlineData": {"mimeType": "image/png", "data": data}})
        return Reply.json({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Here is the image."}, inline]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302},
            "modelVersion": PATH_RE.match(request.path)["model"],
        })


def size_for_ratio(ratio: str | None, long_side: int = 64) -> tuple[int, int]:
    if not ratio:
        return long_side, long_side
    w, h = (int(x) for x in ratio.split(":"))
    return (long_side, round(long_side * h / w)) if w >= h else (round(long_side * w / h), long_side)


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def error_reply(code: int, message: str, status: str) -> Reply:
    return Reply.json({"error": {"code": code, "message": message, "status": status}}, status=code)


def blocked_prompt() -> Reply:
    """The prompt itself was blocked: no candidates, a promptFeedback block reason."""
    return Reply.json({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
                       "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}})


def image_safety() -> Reply:
    """The model started but withheld the image: a candidate with finishReason and words, no image."""
    return Reply.json({"candidates": [{"content": {"role": "model", "parts": [
        {"text": "I can't create that image because it depicts a real person in a misleading way."}]},
        "finishReason": "IMAGE_SAFETY", "index": 0}]})
