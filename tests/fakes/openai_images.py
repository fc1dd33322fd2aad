"""A loopback OpenAI Images API: POST /v1/images/edits (multipart) and /v1/images/generations (JSON).

Normal behaviour: with the right bearer key, an edit needs `model`, `prompt` and at least one
`image[]` (or `image`) file that decodes as an image; a generation needs `model` and `prompt`. The
reply is {"created", "data": [{"b64_json": PNG}], "usage"} with a solid-colour PNG sized from the
`size` field divided by 16 (so "1536x1024" gives 96x64; "auto" gives 64x64). Every multipart body is
parsed into `fake.forms` (fields and files, in order) so tests can check what the client sent.
A wrong key gets OpenAI's 401 error body. Script anything else with `queue` (`url_only`,
`moderation_blocked`).
"""

from __future__ import annotations

import base64
import io
import time
from email import policy
from email.parser import BytesParser
from typing import Any

from PIL import Image

from . import FakeServer, RecordedRequest, Reply
from .gemini import png_bytes

REPLY_COLOUR = (255, 140, 0)


class OpenAIImagesFake(FakeServer):
    def __init__(self, api_key: str = "test-openai-key", **kw):
        super().__init__(**kw)
        self.api_key = api_key
        self.forms: list[dict[str, Any]] = []      # parsed multipart bodies: {"fields": {...}, "files": [...]}

    def handle(self, request: RecordedRequest) -> Reply:
        if request.method != "POST" or request.path not in ("/v1/images/edits", "/v1/images/generations"):
            return error_reply(404, f"Invalid URL (POST {request.path})", "invalid_request_error", None)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return error_reply(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if request.path == "/v1/images/edits":
            try:
                form = parse_multipart(request.headers.get("content-type", ""), request.body)
            except ValueError as exc:
                return error_reply(400, f"Could not parse multipart form: {exc}", "invalid_request_error", None)
            self.forms.append(form)
            fields = form["fields"]
            images = [f for f in form["files"] if f["name"] in ("image", "image[]")]
            if not images:
                return error_reply(400, "Missing required parameter: 'image'.", "invalid_request_error", None)
            for f in images:
                try:
                    Image.open(io.BytesIO(f["content"])).verify()
                except Exception:
                    return error_reply(400, f"Invalid image file: {f['filename']}", "invalid_request_error", None)
        else:
            try:
                fields = request.json()
            except ValueError:
                return error_reply(400, "We could not parse the JSON body of your request.",
                                   "invalid_request_error", None)
        for required in ("model", "prompt"):
            if not fields.get(required):
                return error_reply(400, f"Missing required parameter: '{required}'.", "invalid_request_error",
                                   None)
        size = fields.get("size") or "auto"
        w, h = (64, 64) if size == "auto" else (int(x) // 16 for x in size.split("x"))
        data = base64.b64encode(png_bytes((w, h), REPLY_COLOUR)).decode()
        return Reply.json({"created": int(time.time()), "data": [{"b64_json": data}],
                           "usage": {"input_tokens": 50, "output_tokens": 272, "total_tokens": 322}})


def parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """Fields and files of a multipart/form-data body, in order, with the standard library."""
    if not content_type.startswith("multipart/form-data"):
        raise ValueError(f"content type is {content_type!r}, not multipart/form-data")
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
    if not message.is_multipart():
        raise ValueError("no parts")
    fields: dict[str, str] = {}
    files: list[dict[str, Any]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_param("filename", header="content-disposition")
        content = part.get_payload(decode=True) or b""
        if filename is not None:
            files.append({"name": name, "filename": filename, "content_type": part.get_content_type(),
                          "content": content})
        else:
            fields[name] = content.decode("utf-8")
    return {"fields": fields, "files": files}


def error_reply(status: int, message: str, type_: str, code: str | None) -> Reply:
    return Reply.json({"error": {"message": message, "type": type_, "param": None, "code": code}}, status=status)


def url_only(url: str) -> Reply:
    return Reply.json({"created": int(time.time()), "data": [{"url": url}]})


def moderation_blocked() -> Reply:
    return error_reply(400, "Your request was rejected as a result of our safety system.",
                       "image_generation_user_error", "moderation_blocked")
