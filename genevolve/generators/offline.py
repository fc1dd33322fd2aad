"""The offline renderer: a deterministic CPU preview compositor for prompt-reference programs.

No diffusion model runs offline on a CPU (see reference/offline-models.md), so this backend does the
honest thing a layout artist would do with the same program: it reads the gen_prompt
(`offline_layout.parse_layout`), puts each reference image where the prompt says, repeats it as often
as the prompt counts, draws counted things without a reference as simple shapes, sets the background
from colour and lighting words, applies style filters (edge-preserving watercolour washes, pencil sketch,
cartoon inking, posterising, sepia, noir; Lab colour transfer from a style reference) and writes quoted
text legibly with real fonts.
The result makes the agent's choices visible and checkable; the metadata says what was done and where.

Canvas: the aspect of the first reference (clamped to 1:4 .. 4:1), long side `long_side` (default 1024),
both sides multiples of 16; 1024x1024 without references. With no reference to place, the canvas still
gets its background, text and one simple shape for the subject. Text is drawn last, after every filter,
so it stays legible. Same program + seed -> identical pixels; the seed moves the gradient angle, the
film grain, the paper texture and small shape offsets.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..limits import MAX_IMAGE_PIXELS
from ..program import Program, Reference
from .base import Generator, GeneratorError, RenderResult
from .imageio import output_size
from .offline_effects import LIGHTING, STYLES, colour_transfer
from .offline_layout import COLOURS, Box, Layout, Placement, fit_inside, grid_cells, parse_layout, region_box, split_box

BOLD_FONTS = ("DejaVuSans-Bold.ttf", "NotoSans-Bold.ttf", "LiberationSans-Bold.ttf", "FreeSansBold.ttf")
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
STYLE_ORDER = ("watercolor", "oil painting", "cartoon", "sketch", "poster", "vintage", "noir")
_FONT_LOCK = threading.Lock()
DEFAULT_GRADIENT = ((92, 110, 135), (38, 46, 60))
LIGHTING_GRADIENT = {
    "sunset": ((250, 170, 90), (110, 55, 115)), "night": ((22, 32, 72), (4, 5, 18)),
    "neon": ((70, 12, 100), (8, 18, 60)), "dramatic": ((62, 62, 72), (8, 8, 10)),
    "soft": ((236, 226, 236), (198, 208, 226)), "warm": ((245, 200, 150), (185, 115, 75)),
    "cold": ((200, 226, 246), (105, 135, 178)),
}


class OfflineRenderer(Generator):
    """Render a Program on the CPU as a layout preview (see the module docstring)."""

    name = "offline"
    max_concurrency = 2

    def __init__(self, long_side: int = 1024, seed: int = 0, font: str | None = None,
                 max_reference_pixels: int = MAX_IMAGE_PIXELS):
        self.long_side = max(64, int(long_side) // 16 * 16)
        self.seed = int(seed)
        self.max_reference_pixels = int(max_reference_pixels)
        self.font_path = font or find_font(BOLD_FONTS)
        if self.font_path is None:
            warnings.warn("no TrueType bold sans font found (install fonts-dejavu-core); the offline renderer "
                          "falls back to Pillow's built-in font", RuntimeWarning, stacklevel=2)

    async def render(self, program: Program, *, seed: int | None = None) -> RenderResult:
        return await asyncio.to_thread(self.render_sync, program, seed=seed)

    def render_sync(self, program: Program, *, seed: int | None = None) -> RenderResult:
        seed = self.seed if seed is None else int(seed)
        clock = _Clock()
        layout = parse_layout(program.gen_prompt, len(program.references))
        clock.lap("parse_s")
        refs, first_size = [], None
        for index, ref in enumerate(program.references, 1):
            image, oriented_size = self._load_reference(index, ref)
            refs.append(image)
            first_size = first_size or oriented_size
        width, height = output_size(first_size, self.long_side, max_aspect=4.0)
        clock.lap("load_s")

        rng = np.random.default_rng(seed)
        canvas = _background(layout, width, height, rng)
        bands = _text_bands(layout, width, height)
        content = (0, bands["top_end"], width, bands["bottom_start"])
        if content[3] - content[1] < height // 3:          # text everywhere: draw underneath it
            content = (0, 0, width, height)
        placed = _compose(canvas, layout, refs, content, rng)
        clock.lap("compose_s")
        effects: list[str] = []
        for p in layout.placements:
            if p.role == "style":
                canvas = colour_transfer(canvas, refs[p.ref - 1])
                effects.append(f"colour transfer from reference {p.ref}")
        for light in layout.lighting:
            canvas = LIGHTING[light](canvas)
            effects.append(f"lighting: {light}")
        for style in STYLE_ORDER:
            if style in layout.styles:
                canvas = STYLES[style](canvas, rng)
                effects.append(f"style: {style}")
        clock.lap("effects_s")

        image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
        with _FONT_LOCK:                   # cached FreeType faces must not be used by two threads at once
            placed += _draw_texts(image, layout, bands, self.font_path)
        clock.lap("text_s")
        metadata: dict[str, Any] = {
            "backend": self.name, "seed": seed, "size": [width, height], "layout": layout.to_dict(),
            "placed": placed, "effects": effects, "font": self.font_path or "pillow-default",
            "timings": clock.timings,
        }
        return RenderResult(image=image, metadata=metadata)

    def _load_reference(self, index: int, ref: Reference) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode one reference to RGBA (bounded in size); errors name the reference and its file."""
        label = f"reference {index} ({ref.img_id})"
        if not ref.local_path:
            raise GeneratorError(f"{label} has no local_path; the offline renderer reads local files only"
                                 + (f" (url: {ref.url})" if ref.url else ""))
        path = Path(ref.local_path)
        if not path.is_file():
            raise GeneratorError(f"{label}: file not found: {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    w, h = im.size
                    if w * h > self.max_reference_pixels:
                        raise GeneratorError(f"{label}: {path} is {w}x{h} pixels, over the limit of "
                                             f"{self.max_reference_pixels} (decompression-bomb guard)")
                    if im.getexif().get(0x0112) in (5, 6, 7, 8):      # EXIF says the picture is turned
                        w, h = h, w
                    im.draft("RGB", (self.long_side, self.long_side))   # JPEG: decode at a reduced scale
                    im = ImageOps.exif_transpose(im).convert("RGBA")
        except GeneratorError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            raise GeneratorError(f"{label}: cannot read image file {path}: {exc}") from None
        if max(im.size) > 2 * self.long_side:
            im.thumbnail((2 * self.long_side, 2 * self.long_side), Image.Resampling.LANCZOS)
        return np.asarray(im), (w, h)


@lru_cache(maxsize=8)
def find_font(names: tuple[str, ...]) -> str | None:
    """The first of `names` found in the system font folders or matplotlib's bundled fonts."""
    dirs = [Path(os.path.expanduser(d)) for d in FONT_DIRS]
    spec = find_spec("matplotlib")
    if spec and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf")
    found: dict[str, str] = {}
    for root in dirs:
        for folder, _, files in os.walk(root):
            for name in files:
                found.setdefault(name, os.path.join(folder, name))
    return next((found[n] for n in names if n in found), None)


@lru_cache(maxsize=256)
def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.last, 4)
        self.timings["total_s"] = round(now - self.start, 4)
        self.last = now


# ---- background and composition -------------------------------------------------------------------

def _background(layout: Layout, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A two-colour gradient from the colour and lighting words, at a seeded angle, with light grain."""
    top, bottom = (np.array(c, np.float32) for c in LIGHTING_GRADIENT.get(
        layout.lighting[0] if layout.lighting else "", DEFAULT_GRADIENT))
    if layout.colours:
        first = np.array(COLOURS[layout.colours[0]], np.float32)
        second = np.array(COLOURS[layout.colours[1]], np.float32) if len(layout.colours) > 1 else first * 0.45
        weight = 0.65 if layout.lighting else 1.0
        top, bottom = weight * first + (1 - weight) * top, weight * second + (1 - weight) * bottom
    if layout.pastel:
        top, bottom = 0.45 * top + 0.55 * 255, 0.45 * bottom + 0.55 * 255
    for shape in layout.shapes:           # keep drawn shapes distinguishable from the backdrop
        rgb = np.array(shape.rgb, np.float32)
        if min(np.abs(top - rgb).sum(), np.abs(bottom - rgb).sum()) < 150:
            shift = (60, 30) if rgb.mean() > 100 else (225, 200)     # dark backdrop for light shapes
            top, bottom = 0.35 * top + 0.65 * shift[0], 0.35 * bottom + 0.65 * shift[1]
    angle = rng.uniform(-0.35, 0.35)
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    t = np.clip(ys * np.float32(np.cos(angle)) + xs * np.float32(np.sin(angle)) + 0.5, 0, 1)
    t += rng.standard_normal((height, width), dtype=np.float32) * np.float32(0.008)   # fine grain
    canvas = np.empty((height, width, 3), np.float32)
    for c in range(3):
        canvas[..., c] = top[c] + (bottom[c] - top[c]) * t
    return canvas


def _compose(canvas: np.ndarray, layout: Layout, refs: list[np.ndarray], content: Box,
             rng: np.random.Generator) -> list[dict[str, Any]]:
    """Draw the background reference, then every subject reference and shape group in its region."""
    height, width = canvas.shape[:2]
    placed: list[dict[str, Any]] = []
    background = next((p for p in layout.placements if p.role == "background"), None)
    if background is not None:
        _cover(canvas, refs[background.ref - 1])
        placed.append({"what": f"reference {background.ref}", "role": "background", "boxes": [[0, 0, width, height]]})
    items = [p for p in layout.placements if p.role == "subject"] + layout.shapes
    by_region: dict[str, list[Any]] = {}
    for item in items:
        by_region.setdefault(item.region, []).append(item)
    lone_full = (background is None and len(items) == 1 and items[0].region == "full"
                 and isinstance(items[0], Placement) and items[0].count == 1)
    if lone_full:                          # one reference, nowhere in particular: it is the picture
        _cover(canvas, refs[items[0].ref - 1])
        return placed + [{"what": f"reference {items[0].ref}", "role": "subject", "region": "full",
                          "boxes": [[0, 0, width, height]]}]
    order = ["full", "top", "top-left", "top-right", "left", "right", "center", "bottom-left", "bottom-right",
             "bottom", "foreground"]
    for region in sorted(by_region, key=order.index):
        for item, box in zip(by_region[region], split_box(region_box(region, content), len(by_region[region])),
                             strict=True):
            is_ref = isinstance(item, Placement)
            aspect = refs[item.ref - 1].shape[1] / refs[item.ref - 1].shape[0] if is_ref else 1.0
            cells = [c for c in grid_cells(box, item.count, aspect) if min(c[2] - c[0], c[3] - c[1]) >= 4]
            if not cells:
                continue                   # too many things for this canvas; the metadata still lists them
            if is_ref:
                boxes = [_paste(canvas, refs[item.ref - 1], cell) for cell in cells]
                what = f"reference {item.ref}"
            else:
                boxes = [_draw_shape(canvas, item.shape, item.rgb, cell, rng) for cell in cells]
                what = f"{item.count} x {item.colour} {item.shape} ({item.noun})"
            placed.append({"what": what, "role": "subject", "region": region, "boxes": [list(b) for b in boxes]})
    return placed


def _cover(canvas: np.ndarray, image: np.ndarray) -> None:
    """Fill the canvas with `image`, scaled to cover it and centre-cropped."""
    height, width = canvas.shape[:2]
    ih, iw = image.shape[:2]
    scale = max(width / iw, height / ih)
    w, h = max(width, round(iw * scale)), max(height, round(ih * scale))
    resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x, y = (w - width) // 2, (h - height) // 2
    crop = resized[y:y + height, x:x + width]
    if crop[..., 3].min() == 255:
        canvas[:] = crop[..., :3]
    else:
        alpha = crop[..., 3:].astype(np.float32) / 255.0
        canvas[:] = canvas * (1 - alpha) + crop[..., :3] * alpha


def _paste(canvas: np.ndarray, image: np.ndarray, cell: Box) -> Box:
    """Fit `image` inside `cell` with a margin, a thin light frame (opaque images) and a soft shadow."""
    cw, ch = cell[2] - cell[0], cell[3] - cell[1]
    margin = max(4, round(0.05 * min(cw, ch)))
    x0, y0, x1, y1 = fit_inside((image.shape[1], image.shape[0]), cell, margin)
    w, h = x1 - x0, y1 - y0
    scale_down = w < image.shape[1]
    rgba = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if scale_down else cv2.INTER_LINEAR)
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    opaque = bool(alpha.min() > 0.99)
    frame = max(2, round(0.012 * min(w, h))) if opaque else 0
    _shadow(canvas, alpha, (x0 - frame, y0 - frame, x1 + frame, y1 + frame), frame, margin)
    if frame:
        canvas[max(0, y0 - frame):y1 + frame, max(0, x0 - frame):x1 + frame] = 242.0
    region = canvas[y0:y1, x0:x1]
    region[:] = region * (1 - alpha) + rgba[..., :3].astype(np.float32) * alpha
    return (x0, y0, x1, y1)


def _shadow(canvas: np.ndarray, alpha: np.ndarray, box: Box, frame: int, margin: int) -> None:
    """Darken the canvas under a blurred, offset copy of the pasted image's outline."""
    height, width = canvas.shape[:2]
    spread = max(2, margin // 2)
    mask = np.zeros((box[3] - box[1] + 4 * spread, box[2] - box[0] + 4 * spread), np.float32)
    mask[2 * spread + frame:2 * spread + frame + alpha.shape[0],
         2 * spread + frame:2 * spread + frame + alpha.shape[1]] = alpha[..., 0]
    if frame:
        mask[2 * spread:-2 * spread, 2 * spread:-2 * spread] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), spread / 1.5) * 0.45
    ox, oy = box[0] - 2 * spread + spread // 2, box[1] - 2 * spread + spread // 2
    sx0, sy0 = max(0, ox), max(0, oy)
    sx1, sy1 = min(width, ox + mask.shape[1]), min(height, oy + mask.shape[0])
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0:sy1, sx0:sx1] *= 1 - mask[sy0 - oy:sy1 - oy, sx0 - ox:sx1 - ox, None]


def _draw_shape(canvas: np.ndarray, shape: str, rgb: tuple[int, int, int], cell: Box,
                rng: np.random.Generator) -> Box:
    """One flat, anti-aliased shape inside `cell`, nudged by the seed but never out of its cell."""
    x0, y0, x1, y1 = cell
    cw, ch = x1 - x0, y1 - y0
    side = max(4, round(0.72 * min(cw, ch)))
    cx = cw // 2 + round(rng.uniform(-0.3, 0.3) * (cw - side) / 2)     # cell coordinates
    cy = ch // 2 + round(rng.uniform(-0.3, 0.3) * (ch - side) / 2)
    r = side / 2
    patch = np.ascontiguousarray(canvas[y0:y1, x0:x1])                 # OpenCV draws on whole arrays only
    offset = max(2, side // 30)
    shadow = patch.copy()
    _fill_shape(shadow, shape, (cx + offset, cy + offset), r, (0.0, 0.0, 0.0))
    patch = 0.8 * patch + 0.2 * shadow                                 # a faint drop shadow
    _fill_shape(patch, shape, (cx, cy), r, tuple(float(c) for c in rgb))
    canvas[y0:y1, x0:x1] = patch
    return (x0 + round(cx - r), y0 + round(cy - r), x0 + round(cx + r), y0 + round(cy + r))


def _fill_shape(target: np.ndarray, shape: str, centre: tuple[int, int], r: float, colour) -> None:
    points = _shape_points(shape, centre, r)
    if points is None:
        cv2.circle(target, centre, round(r), colour, -1, cv2.LINE_AA)
    else:
        cv2.fillPoly(target, [points], colour, cv2.LINE_AA)


def _shape_points(shape: str, centre: tuple[int, int], r: float) -> np.ndarray | None:
    cx, cy = centre
    if shape == "square":
        s = r * 0.9
        return np.array([[cx - s, cy - s], [cx + s, cy - s], [cx + s, cy + s], [cx - s, cy + s]], np.int32)
    if shape == "triangle":
        return np.array([[cx, cy - r], [cx + r * 0.95, cy + r * 0.8], [cx - r * 0.95, cy + r * 0.8]], np.int32)
    if shape == "star":
        angles = np.arange(10) * np.pi / 5 - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
    return None


# ---- colour, lighting and style ---------------------------------------------------------------------

def _text_bands(layout: Layout, width: int, height: int) -> dict[str, Any]:
    """Boxes for each quoted text: stacked title bands at the top, caption bands at the bottom, a
    centred box, a sign board. The rest of the canvas is where references and shapes go."""
    band = round(0.16 * min(width, height))
    edge = round(0.025 * height)
    boxes: list[tuple[int, Box]] = []
    top_y, bottom_y = edge, height - edge
    centre_items = [i for i, t in enumerate(layout.texts) if t.position == "center"]
    sign_items = [i for i, t in enumerate(layout.texts) if t.position == "sign"]
    for i, item in enumerate(layout.texts):
        if item.position == "top":
            boxes.append((i, (round(0.04 * width), top_y, round(0.96 * width), top_y + band)))
            top_y += band
        elif item.position == "bottom":
            boxes.append((i, (round(0.04 * width), bottom_y - band, round(0.96 * width), bottom_y)))
            bottom_y -= band
    for k, i in enumerate(centre_items):
        y = height // 2 - band * len(centre_items) * 3 // 5 + k * band * 6 // 5
        boxes.append((i, (round(0.07 * width), y, round(0.93 * width), y + band * 6 // 5)))
    for k, i in enumerate(sign_items):
        y = bottom_y - round(0.03 * height) - (len(sign_items) - k) * band * 5 // 4
        boxes.append((i, (round(0.19 * width), y, round(0.81 * width), y + band * 5 // 4)))
    if sign_items:                         # the sign stands in front: nothing is placed behind it
        bottom_y = min(box[1] for i, box in boxes if i in sign_items)
    return {"boxes": boxes, "top_end": top_y if top_y > edge else 0,
            "bottom_start": bottom_y if bottom_y < height - edge else height}


def _draw_texts(image: Image.Image, layout: Layout, bands: dict[str, Any], font_path: str | None) -> list[dict]:
    placed = []
    draw = ImageDraw.Draw(image, "RGBA")
    for index, box in bands["boxes"]:
        item = layout.texts[index]
        on_sign = item.position == "sign"
        pad = round(0.12 * (box[3] - box[1]))
        font, lines, line_h = _fit_text(item.text, font_path, box[2] - box[0] - 2 * pad, box[3] - box[1] - 2 * pad)
        text_w = max(font.getlength(line) for line in lines)
        cx = (box[0] + box[2]) / 2
        top = (box[1] + box[3]) / 2 - line_h * len(lines) / 2
        backing = (round(cx - text_w / 2 - pad), round(top - pad * 0.6),
                   round(cx + text_w / 2 + pad), round(top + line_h * len(lines) + pad * 0.6))
        if on_sign:
            backing = (box[0], backing[1], box[2], backing[3])
            draw.rounded_rectangle(backing, radius=pad // 2, fill=(236, 224, 196, 255), outline=(92, 62, 36, 255),
                                   width=max(3, pad // 3))
        else:
            draw.rounded_rectangle(backing, radius=pad // 2, fill=(12, 12, 18, 165))
        size = font.size if hasattr(font, "size") else 12
        for k, line in enumerate(lines):
            x, y = cx - font.getlength(line) / 2, top + k * line_h
            if on_sign:
                draw.text((x, y), line, font=font, fill=(28, 24, 20))
            else:
                draw.text((x, y), line, font=font, fill=(255, 255, 255), stroke_width=max(2, size // 16),
                          stroke_fill=(0, 0, 0))
        placed.append({"what": f"text {item.text!r}", "role": "text", "region": item.position,
                       "boxes": [list(backing)], "font_size": size})
    return placed


def _fit_text(text: str, font_path: str | None, box_w: int, box_h: int, max_lines: int = 3):
    """The largest font size at which `text`, wrapped on spaces into <= max_lines, fits the box."""
    def layout_at(size: int):
        font = _font(font_path, size)
        ascent, descent = font.getmetrics()
        line_h = round((ascent + descent) * 1.08)
        lines = _wrap(text, font, box_w)
        if lines is None or len(lines) > max_lines or line_h * len(lines) > box_h:
            return None
        return font, lines, line_h

    best, lo, hi = None, 8, max(8, box_h)
    while lo <= hi:
        mid = (lo + hi) // 2
        fitted = layout_at(mid)
        if fitted:
            best, lo = fitted, mid + 1
        else:
            hi = mid - 1
    if best is None:                       # too long for any legible size: smallest size, as many lines as needed
        font = _font(font_path, 8)
        best = font, _wrap(text, font, box_w) or [text], sum(font.getmetrics())
    return best


def _wrap(text: str, font, width: int) -> list[str] | None:
    lines: list[str] = []
    for word in text.split():
        if font.getlength(word) > width:
            return None
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [text]
