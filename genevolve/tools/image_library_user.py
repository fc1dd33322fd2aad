"""Indexing the user's own image folders into the library (`genevolve images add DIR`).

Images are referenced in place, not copied: user folders may be large and stay under the
user's control. Each image gets a stable id from its real path, so adding a folder again
updates its entries instead of duplicating them, skips unchanged files (same size and mtime,
sidecars included) and drops entries whose file is gone. The manifest is rewritten atomically
under the library lock.

An entry is made of: the words of the file name, the names of the sub-folders it sits in,
sidecar files (`photo.jpg` + `photo.txt` caption, or `photo.json` with title / caption /
keywords / page_url), text embedded in the file (EXIF ImageDescription, UserComment, Windows
XPTitle / XPSubject / XPComment / XPKeywords; PNG Title / Description / Comment / Keywords),
and optionally OCR'd text (`ocr=True`, rapidocr-onnxruntime; about a second per image on CPU).

Every file is fully decoded before it is indexed, with at most `max_pixels` pixels (default
DEFAULT_MAX_PIXELS, 64 megapixels): a JPEG is decoded at a reduced scale (Pillow's draft, 1/2 to
1/8) to about DECODE_BOX, so a larger JPEG is still read when its reduced size fits; any other
format over the cap is refused before its pixels are read. Corrupt or truncated files, non-images
with an image suffix, unreadable files and images over the cap (or over Pillow's own bomb check)
are skipped with a one-line reason naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image, UnidentifiedImageError

from ..limits import MAX_IMAGE_PIXELS
from ..ocr import OCRUnavailable, ocr_engine, read_text
from .image_library import (LibraryError, LibraryImage, default_library_dir, library_lock, read_manifest,
                            user_manifest_path, write_manifest)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
SIDECAR_SUFFIXES = (".txt", ".json")
DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS   # more decoded pixels than this are refused as a possible bomb
DECODE_BOX = (2048, 2048)           # JPEGs are decoded at about this size: enough to check, judge and OCR
MAX_CAPTION_CHARS = 4000
OCR_MIN_SCORE = 0.5
# File names that say nothing about the picture (IMG_2043, DSC00012, 20240101_101500, ...).
_CAMERA_NAME = re.compile(r"^(img|dsc[nf]?|pxl|photo|image|scan|screenshot|p)?[\W_]*\d+([\W_]*\d+)*$", re.I)
_EXIF_DESCRIPTION, _EXIF_IFD, _EXIF_USER_COMMENT = 0x010E, 0x8769, 0x9286
_XP_TITLE, _XP_COMMENT, _XP_KEYWORDS, _XP_SUBJECT = 0x9C9B, 0x9C9C, 0x9C9E, 0x9C9F
Log = Callable[[str], None]


@dataclass
class AddReport:
    collection: str
    folder: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    ignored: int = 0                                              # neither images nor sidecars
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"collection '{self.collection}' ({self.folder}): {self.added} added, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.removed} removed, {len(self.skipped)} skipped, "
                f"{self.ignored} other files ignored, {len(self.warnings)} warnings")


def add_folder(root: str | os.PathLike | None, folder: str | os.PathLike, name: str | None = None,
               ocr: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, log: Log | None = None) -> AddReport:
    """Index every image under `folder` (recursively) into the user manifest of library `root`."""
    root = Path(root) if root else default_library_dir()
    base = Path(folder).expanduser()
    if not base.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    base = base.resolve()
    say = log or (lambda msg: None)
    report = AddReport(collection=name or base.name, folder=str(base))
    manifest = user_manifest_path(root)
    before = {e.id: e for e in read_manifest(manifest)}
    if ocr:
        try:
            ocr_engine()                 # loaded now: a missing package fails before any work
        except OCRUnavailable:
            raise LibraryError("--ocr needs the rapidocr-onnxruntime package") from None
    fresh: dict[str, LibraryImage] = {}
    for path, sidecars in _walk_folder(base, report):
        ident = "user-" + hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:16]
        try:
            stamp = max(p.stat().st_mtime_ns for p in [path, *sidecars])
            size = path.stat().st_size
        except OSError as exc:
            report.skipped.append((str(path), f"cannot read the file ({exc.strerror})"))
            say(f"skipped {path}: cannot read the file ({exc.strerror})")
            continue
        old = before.get(ident)
        if old and old.file_mtime_ns == stamp and old.file_size == size and (old.ocr or not ocr):
            old.collection, old.source = report.collection, f"user:{report.collection}"
            fresh[ident] = old
            report.unchanged += 1
            continue
        try:
            entry = _index_image(path, sidecars, base, report, ocr, max_pixels)
        except ValueError as exc:
            report.skipped.append((str(path), str(exc)))
            say(f"skipped {path}: {exc}")
            continue
        entry.id, entry.file_mtime_ns, entry.file_size = ident, stamp, size
        fresh[ident] = entry
        if old:
            report.updated += 1
        else:
            report.added += 1
    for warning in report.warnings:
        say(f"warning: {warning}")
    inside = str(base) + os.sep
    with library_lock(root):             # re-read: another process may have added other folders
        current = {e.id: e for e in read_manifest(manifest)}
        kept = {i: e for i, e in current.items() if not e.path.startswith(inside) or i in fresh}
        report.removed = len(current) - len(kept)
        kept.update(fresh)
        write_manifest(manifest, list(kept.values()))
    return report


def remove_collection(root: str | os.PathLike | None, name: str) -> int:
    """Forget every user image of one collection (the files themselves are left alone)."""
    root = Path(root) if root else default_library_dir()
    with library_lock(root):
        entries = read_manifest(user_manifest_path(root))
        kept = [e for e in entries if e.collection != name]
        if len(kept) != len(entries):
            write_manifest(user_manifest_path(root), kept)
    return len(entries) - len(kept)


def _walk_folder(base: Path, report: AddReport) -> Iterator[tuple[Path, list[Path]]]:
    """(image, its sidecar files) for every image file under base; hidden entries are skipped."""
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = set(files)
        images = {f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith(".")}
        claimed: set[str] = set()
        for f in sorted(images):
            candidates = [Path(f).stem + s for s in SIDECAR_SUFFIXES] + [f + s for s in SIDECAR_SUFFIXES]
            found = [n for n in candidates if n in names and n not in images]
            claimed.update(found)
            yield Path(folder) / f, [Path(folder) / n for n in found]
        report.ignored += len(names - images - claimed)


def _index_image(path: Path, sidecars: list[Path], base: Path, report: AddReport, ocr: bool,
                 max_pixels: int) -> LibraryImage:
    with open_checked(path, max_pixels) as im:
        width, height = im.info["full_size"]
        meta = _embedded_text(im)
        ocr_text = _ocr(im) if ocr else ""
    side = _read_sidecars(sidecars, report)
    captions = [side.get("caption", ""), *meta["captions"]]
    if ocr_text:
        captions.append(f"Text in the image: {ocr_text}")
    caption = " ".join(dict.fromkeys(c.strip() for c in captions if c and c.strip()))[:MAX_CAPTION_CHARS]
    words = " ".join(w for w in re.split(r"[\W_]+", path.stem) if w)
    title = side.get("title") or meta["title"]
    if not title:
        uninformative = _CAMERA_NAME.match(path.stem) is not None
        title = (caption[:80].rsplit(" ", 1)[0] if len(caption) > 80 else caption) if caption and uninformative \
            else words or path.name
    folders = list(path.parent.relative_to(base).parts)
    labels = [*side.get("keywords", []), *meta["keywords"], *folders, report.collection, words]
    return LibraryImage(id="", title=title, path=str(path), source=f"user:{report.collection}",
                        width=width, height=height, labels=[x for x in dict.fromkeys(labels) if x],
                        caption=caption, collection=report.collection, page_url=side.get("page_url"),
                        ocr=ocr)


def open_checked(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft_box: tuple[int, int] = DECODE_BOX) -> Image.Image:
    """Open and fully decode an image, refusing one with more than `max_pixels` decoded pixels
    before its pixels are read (see the module docstring; the offline judge reads through here too).

    A JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8) when it is larger than `draft_box`, and
    at least as reduced as it takes to fit the cap. The true size is kept in `im.info["full_size"]`.
    Raises ValueError with a one-line reason for anything that is not a usable image.
    """
    try:
        with warnings.catch_warnings():
            # Our cap decides. Pillow's warning (at 89 megapixels) would refuse a JPEG that draft
            # makes small; its error (at twice that) still applies: the header alone is suspect then.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
            try:
                w, h = im.size
                box = draft_box
                if w * h > max_pixels:               # ask for a scale at which it fits, if one does
                    d = next((d for d in (2, 4, 8) if -(-w // d) * -(-h // d) <= max_pixels), 8)
                    box = (max(1, min(box[0], w // d)), max(1, min(box[1], h // d)))
                im.draft("RGB", box)                 # JPEG only: a no-op for every other format
                if im.width * im.height > max_pixels:
                    raise ValueError(f"too large: {w}x{h} = {w * h / 1e6:,.0f} megapixels (limit "
                                     f"{max_pixels / 1e6:,.0f}; a possible decompression bomb)")
                im.load()
            except BaseException:
                im.close()
                raise
            im.info["full_size"] = (w, h)
            return im
    except Image.DecompressionBombError as exc:
        raise ValueError(f"too large (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise ValueError("not an image file Pillow can read") from None
    except PermissionError:
        raise ValueError("cannot read the file: permission denied") from None
    except (OSError, SyntaxError, EOFError, struct.error) as exc:
        raise ValueError(f"damaged or truncated image ({type(exc).__name__}: {exc})") from None


def _read_sidecars(paths: list[Path], report: AddReport) -> dict[str, Any]:
    """Caption, title, keywords and page URL from `photo.txt` / `photo.json` next to an image."""
    out: dict[str, Any] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            report.warnings.append(f"{path}: sidecar not read ({exc}); ignored")
            continue
        if path.suffix == ".txt":
            out.setdefault("caption", " ".join(text.split()))
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            report.warnings.append(f"{path}: line {exc.lineno} column {exc.colno}: {exc.msg}; sidecar ignored")
            continue
        if not isinstance(data, dict):
            report.warnings.append(f"{path}: expected a JSON object; sidecar ignored")
            continue
        for key in ("title", "caption", "description"):
            if key in data and not isinstance(data[key], str):
                report.warnings.append(f"{path}: field '{key}' must be a string; ignored")
            elif data.get(key):
                out.setdefault("title" if key == "title" else "caption", " ".join(data[key].split()))
        for key in ("keywords", "tags", "labels"):
            value = data.get(key)
            if isinstance(value, str):
                value = re.split(r"[;,]", value)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                out["keywords"] = out.get("keywords", []) + [v.strip() for v in value if v.strip()]
            elif value is not None:
                report.warnings.append(f"{path}: field '{key}' must be a list of strings; ignored")
        url = data.get("page_url") or data.get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            out["page_url"] = url
    return out


def _embedded_text(im: Image.Image) -> dict[str, Any]:
    """Title, captions and keywords written into the file: EXIF (incl. Windows XP tags), PNG text."""
    out: dict[str, Any] = {"title": "", "captions": [], "keywords": []}
    try:
        exif = im.getexif()
        user_comment = exif.get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
    except Exception:           # a damaged EXIF block must not cost us the image itself
        exif, user_comment = {}, None
    out["title"] = _xp_text(exif.get(_XP_TITLE))
    for value in (exif.get(_EXIF_DESCRIPTION), _decode_user_comment(user_comment),
                  _xp_text(exif.get(_XP_SUBJECT)), _xp_text(exif.get(_XP_COMMENT))):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value.strip("\x00 "):
            out["captions"].append(" ".join(value.strip("\x00").split()))
    out["keywords"] = _split_keywords(_xp_text(exif.get(_XP_KEYWORDS)))
    chunks = getattr(im, "text", None) or {}
    for key in ("Description", "Comment", "Subject"):
        if isinstance(chunks.get(key), str) and chunks[key].strip():
            out["captions"].append(" ".join(chunks[key].split()))
    if not out["title"] and isinstance(chunks.get("Title"), str):
        out["title"] = chunks["Title"].strip()
    if isinstance(chunks.get("Keywords"), str):
        out["keywords"] += _split_keywords(chunks["Keywords"])
    return out


def _split_keywords(text: str) -> list[str]:
    return [k.strip() for k in re.split(r"[;,]", text or "") if k.strip()]


def _xp_text(value: Any) -> str:
    """Windows XP* tags hold UTF-16LE bytes (Pillow may hand them over as a tuple of ints)."""
    if isinstance(value, tuple):
        value = bytes(value)
    if isinstance(value, bytes):
        return value.decode("utf-16-le", "replace").strip("\x00 ")
    return value.strip() if isinstance(value, str) else ""


def _decode_user_comment(value: Any) -> str:
    """EXIF UserComment: an 8-byte character-code prefix, then the text."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes) or len(value) < 8:
        return ""
    code, body = value[:8], value[8:]
    if code.startswith(b"UNICODE"):
        return body.decode("utf-16-le" if body[1:2] == b"\x00" else "utf-16-be", "replace").strip("\x00 ")
    return body.decode("utf-8", "replace").strip("\x00 ")


def _ocr(im: Image.Image) -> str:
    import numpy as np

    rgb = np.asarray(im.convert("RGB"))
    return " ".join(text for text, score, _ in read_text(rgb[:, :, ::-1]) if score >= OCR_MIN_SCORE)
