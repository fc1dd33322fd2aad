"""A loopback image host with good images and the hostile cases a web image URL can be.

Paths (all GET):
  /good.jpg, /good.png, /good.webp, /good.gif   valid images (`GOOD_SIZE`)
  /mislabeled.jpg          a PNG served as image/jpeg (content decides, not the label)
  /huge.jpg                2 GB, streamed chunked from a generator (JPEG magic first), no length
  /huge-declared.jpg       the same 2 GB, honestly declared in Content-Length
  /page.html               an HTML page served as text/html
  /fake.png                HTML served as image/png
  /truncated.jpg           the first half of a JPEG
  /bomb.png                a 1 KB PNG whose header declares 50,000 x 50,000 pixels
  /large.png               a PNG header declaring 8,000 x 8,000 (64 MP: over our 40 MP limit,
                           under Pillow's own)
  /redirect-loopback       302 to `internal_url` (another loopback service)
  /redirect-metadata       302 to the cloud metadata address 169.254.169.254
  /redirect-good           302 to /good.jpg on this host
  /redirect-loop/<n>       302 to /redirect-loop/<n+1>, forever
  /redirect?to=T[&status=S] S (default 302) to T exactly as given (absolute, relative, any scheme)
  /slow.jpg                the good JPEG after `slow_delay` seconds
  /missing.jpg             404
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Iterator

from PIL import Image

from . import FakeServer, RecordedRequest, Reply

GOOD_SIZE = (320, 240)
TWO_GB = 2 * 1024 ** 3
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def sample_image(size: tuple[int, int] = GOOD_SIZE) -> Image.Image:
    """A gradient with a square, so every codec has real detail to encode."""
    w, h = size
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    img.paste((200, 30, 30), (w // 4, h // 4, w // 2, h // 2))
    return img


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose IHDR declares width x height (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * 64) * 4, 9)     # a few rows of black; the rest is implied
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def endless_jpeg_like(total: int, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
    """`total` bytes starting with JPEG magic, produced chunk by chunk, never held in memory."""
    first = b"\xff\xd8\xff\xe0" + b"\x00" * (chunk_size - 4)
    zeros = b"\x00" * chunk_size
    sent = 0
    while sent < total:
        piece = (first if sent == 0 else zeros)[: total - sent]
        sent += len(piece)
        yield piece


class ImageHostFake(FakeServer):
    def __init__(self, internal_url: str = "http://127.0.0.1:9/admin", slow_delay: float = 0.3, **kw):
        super().__init__(**kw)
        self.internal_url = internal_url
        self.slow_delay = slow_delay
        picture = sample_image()
        self.files: dict[str, tuple[bytes, str]] = {
            "/good.jpg": (encode(picture, "JPEG", quality=90), "image/jpeg"),
            "/good.png": (encode(picture, "PNG"), "image/png"),
            "/good.webp": (encode(picture, "WEBP"), "image/webp"),
            "/good.gif": (encode(picture.convert("P"), "GIF"), "image/gif"),
            "/mislabeled.jpg": (encode(picture, "PNG"), "image/jpeg"),
            "/page.html": (b"<!doctype html><html><head><title>Gallery</title></head>"
                           b"<body><img src='/good.jpg'></body></html>", "text/html; charset=utf-8"),
            "/fake.png": (b"<html><body>Not really a PNG</body></html>", "image/png"),
            "/bomb.png": (png_with_declared_size(50_000, 50_000), "image/png"),
            "/large.png": (png_with_declared_size(8_000, 8_000), "image/png"),
        }
        whole = encode(sample_image((640, 480)), "JPEG", quality=90)
        self.files["/truncated.jpg"] = (whole[: len(whole) // 2], "image/jpeg")

    def handle(self, request: RecordedRequest) -> Reply:
        path = request.path
        if path in self.files:
            data, kind = self.files[path]
            return Reply(200, data, {"Content-Type": kind})
        if path == "/huge.jpg":
            return Reply(200, endless_jpeg_like(TWO_GB), {"Content-Type": "image/jpeg"})
        if path == "/huge-declared.jpg":
            return Reply(200, endless_jpeg_like(TWO_GB), {"Content-Type": "image/jpeg",
                                                          "Content-Length": str(TWO_GB)})
        if path == "/redirect-loopback":
            return Reply.redirect(self.internal_url)
        if path == "/redirect-metadata":
            return Reply.redirect(METADATA_URL)
        if path == "/redirect-good":
            return Reply.redirect("/good.jpg", status=301)
        if path == "/redirect" and request.param("to") is not None:
            return Reply.redirect(request.param("to"), status=int(request.param("status") or 302))
        if path.startswith("/redirect-loop/"):
            n = int(path.rsplit("/", 1)[1])
            return Reply.redirect(f"/redirect-loop/{n + 1}")
        if path == "/slow.jpg":
            data, kind = self.files["/good.jpg"]
            return Reply(200, data, {"Content-Type": kind}, delay=self.slow_delay)
        return Reply(404, b"no such image\n", {"Content-Type": "text/plain"})
