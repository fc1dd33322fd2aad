"""Image bytes for the page: thumbnails, full-size files, and a placeholder that says what is wrong."""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from html import escape
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..limits import MAX_IMAGE_PIXELS

THUMB_PX = 320
# Formats a browser shows; anything else (or a file PIL cannot read) gets the placeholder.
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
               "BMP": "image/bmp", "MPO": "image/jpeg"}
MAX_FULL_BYTES = 64 * 1024 * 1024


class ImageProblem(Exception):
    """The file cannot be shown; the message is the placeholder's text."""


class ThumbnailCache:
    """Recently made thumbnails, keyed by file, size on disk and modification time."""

    def __init__(self, capacity: int = 512):
        self.capacity = capacity
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, px: int = THUMB_PX) -> bytes:
        try:
            st = path.stat()
        except OSError as exc:
            raise ImageProblem(f"unreadable: {exc.strerror or exc}") from None
        key = (str(path), st.st_size, st.st_mtime_ns, px)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = make_thumbnail(path, px)
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return data


def make_thumbnail(path: Path, px: int = THUMB_PX, max_pixels: int = MAX_IMAGE_PIXELS) -> bytes:
    """A WebP at most `px` on its long side (transparency kept). An image with more than
    `max_pixels` pixels to decode gets the placeholder instead (a JPEG counts at its reduced size)."""
    try:
        with warnings.catch_warnings():
            # Our cap decides; Pillow's own error (at twice its 89-megapixel warning) still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            img.draft("RGB", (px, px))          # JPEG: decode at a reduced size, much faster
            if img.width * img.height > max_pixels:
                raise ImageProblem(f"too large to show ({img.width}x{img.height} pixels)")
            img.thumbnail((px, px))
            if img.mode not in ("RGB", "RGBA"):
                img = img.convert("RGBA" if "transparency" in img.info or img.mode in ("LA", "PA") else "RGB")
            buf = io.BytesIO()
            img.save(buf, format="WEBP", quality=82)
            return buf.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageProblem(f"corrupt image ({type(exc).__name__})") from None


def full_image(path: Path) -> tuple[bytes, str]:
    """The file's own bytes and media type, once PIL has checked that it is a whole image."""
    try:
        if path.stat().st_size > MAX_FULL_BYTES:
            raise ImageProblem("too large to show")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            fmt = img.format or ""
            if img.width * img.height > MAX_IMAGE_PIXELS:   # the browser would decode every pixel
                raise ImageProblem(f"too large to show ({img.width}x{img.height} pixels)")
            img.verify()                        # reads the whole file: catches truncated data
    except ImageProblem:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageProblem(f"corrupt image ({type(exc).__name__})") from None
    if fmt not in MEDIA_TYPES:
        raise ImageProblem(f"format {fmt or 'unknown'} not shown")
    return path.read_bytes(), MEDIA_TYPES[fmt]


def placeholder_svg(reason: str, name: str = "", width: int = 240, height: int = 160) -> bytes:
    """A grey box naming the problem, so a missing image is never just a blank."""
    label = escape(reason)
    tail = escape(Path(name).name[:40]) if name else ""
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}"><rect width="100%" height="100%" fill="#eceff3" '
           f'stroke="#b6bdc8" stroke-dasharray="6 4"/>'
           f'<text x="50%" y="45%" text-anchor="middle" font-family="sans-serif" font-size="14" '
           f'fill="#5b6470">{label}</text>'
           f'<text x="50%" y="62%" text-anchor="middle" font-family="monospace" font-size="11" '
           f'fill="#7b8490">{tail}</text></svg>')
    return svg.encode("utf-8")
