"""Image plumbing shared by the generator backends and the Qwen-Image-Edit service.

- `load_references`: a program's reference files, decoded safely (pixel limit checked before the
  pixels are decoded, EXIF orientation applied, alpha flattened onto white), as RGB images.
- `encode_image` / `image_data_b64`: an image as PNG or JPEG bytes or base64 text.
- `decode_image_bytes` / `decode_image_b64`: bytes or base64 from a service back to a verified image,
  with the same pixel limit, so a hostile reply cannot exhaust memory.
- `output_size`: the paper's output size rule (long side 1024, sides multiples of 16, the aspect of the
  first reference).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from ..limits import MAX_IMAGE_PIXELS
from ..program import Program
from .base import GeneratorError
# References are sent to services at most this long on their long side: every backend we talk to
# resizes inputs to about a megapixel anyway, so larger uploads only cost bandwidth.
MAX_UPLOAD_SIDE = 2048


def load_image_file(path: str | Path, *, label: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode one image file to RGB; errors (`GeneratorError`) name `label` and the file."""
    path = Path(path)
    if not path.is_file():
        raise GeneratorError(f"{label}: file not found: {path}")
    try:
        with path.open("rb") as f:
            return _decode(f, label=f"{label} ({path})", max_pixels=max_pixels)
    except OSError as exc:
        raise GeneratorError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None


def load_references(program: Program, *, max_refs: int | None = None,
                    max_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
    """The program's reference images in order, at most `max_refs` of them (upstream keeps the first)."""
    refs = program.references if max_refs is None else program.references[:max_refs]
    images = []
    for index, ref in enumerate(refs, 1):
        label = f"reference {index} ({ref.img_id})"
        if not ref.local_path:
            where = f" (url: {ref.url})" if ref.url else ""
            raise GeneratorError(f"{label} has no local_path{where}; generators read downloaded files only")
        images.append(load_image_file(ref.local_path, label=label, max_pixels=max_pixels))
    return images


def decode_image_bytes(data: bytes, *, label: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Bytes that should be an image (a service's reply) to a verified RGB image."""
    if not data:
        raise GeneratorError(f"{label}: empty image data")
    return _decode(io.BytesIO(data), label=label, max_pixels=max_pixels)


def decode_image_b64(text: str, *, label: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Base64 text (a `data:image/...;base64,` prefix is allowed) to a verified RGB image."""
    return decode_image_bytes(b64_to_bytes(text, label=label), label=label, max_pixels=max_pixels)


def b64_to_bytes(text: str, *, label: str = "image") -> bytes:
    if not isinstance(text, str):
        raise GeneratorError(f"{label}: expected base64 text, got {type(text).__name__}")
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise GeneratorError(f"{label}: a data URL must be base64-encoded")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise GeneratorError(f"{label}: not valid base64") from None


def _decode(stream, *, label: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise GeneratorError(f"{label}: {w}x{h} pixels is over the limit of {max_pixels}")
                im.load()           # decodes every pixel: a truncated file fails here
                return to_rgb(ImageOps.exif_transpose(im))
    except GeneratorError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise GeneratorError(f"{label}: not a readable image ({exc})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB with transparency flattened onto white (a plain convert would turn it black)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        canvas = Image.new("RGB", im.size, (255, 255, 255))
        canvas.paste(im, mask=im.getchannel("A"))
        return canvas
    return im.convert("RGB") if im.mode != "RGB" else im.copy()


def bounded(im: Image.Image, max_side: int = MAX_UPLOAD_SIDE) -> Image.Image:
    """`im` scaled down (aspect kept) so that its long side is at most `max_side`."""
    if max(im.size) <= max_side:
        return im
    out = im.copy()
    out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out


def encode_image(im: Image.Image, fmt: str = "PNG", *, quality: int = 95) -> bytes:
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in ("PNG", "JPEG", "WEBP"):
        raise ValueError(f"unsupported image format {fmt!r} (PNG, JPEG or WEBP)")
    buf = io.BytesIO()
    if fmt == "PNG":
        im.save(buf, format="PNG")
    else:
        to_rgb(im).save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def image_data_b64(im: Image.Image, fmt: str = "PNG", *, quality: int = 95) -> str:
    return base64.b64encode(encode_image(im, fmt, quality=quality)).decode("ascii")


def mime_type(fmt: str) -> str:
    return {"PNG": "image/png", "JPEG": "image/jpeg", "JPG": "image/jpeg", "WEBP": "image/webp"}[fmt.upper()]


def output_size(first_reference: tuple[int, int] | None, long_side: int = 1024,
                multiple: int = 16, max_aspect: float | None = None) -> tuple[int, int]:
    """(width, height): long side `long_side`, the aspect of the first reference, sides multiples of
    `multiple` (at least one multiple); square without a reference. As in the paper's Qwen setup.
    `max_aspect` clamps very long or tall references (e.g. 4.0 keeps the canvas within 1:4..4:1)."""
    long_side = max(multiple, int(long_side) // multiple * multiple)
    if first_reference is None:
        return long_side, long_side
    w, h = first_reference
    if w <= 0 or h <= 0:
        raise ValueError(f"reference size must be positive, got {w}x{h}")
    ratio = min(w, h) / max(w, h)
    if max_aspect:
        ratio = max(ratio, 1 / max_aspect)
    short = max(multiple, round(long_side * ratio / multiple) * multiple)
    return (long_side, short) if w >= h else (short, long_side)


def note_dropped_references(metadata: dict, program: Program, sent: int) -> None:
    """Record how many of the program's references a backend could not send (its cap is lower)."""
    dropped = len(program.references) - sent
    if dropped > 0:
        metadata["references_dropped"] = dropped
