"""Building the bundled part of the image library (names: image_library_labels.py; user folders:
image_library_user.py; where builds live and who holds them: image_library.py).

This file and image_library_labels.py are hashed into a build's key: what is here decides what a
build holds.

About 3,900 images, built once into `images/builtin-<key>/`:

- Every colour glyph of Noto Color Emoji (Debian `fonts-noto-color-emoji`), every country and
  subdivision flag included. The font stores each glyph as a 136x128 PNG in its CBDT table; we
  read those bitmaps with fontTools and map each glyph back to its code-point sequences through
  the cmap and the GSUB ligature table. That is the exact bitmap Pillow draws at size 109 with
  `embedded_color=True`, but needs no text shaper (libraqm), which flag and ZWJ sequences would
  otherwise need. Each glyph is flattened onto white (generators often drop alpha, which turns
  transparent pixels black), upscaled with Lanczos to 256x256 and stored as a 256-colour PNG.
- Real photos shipped inside scikit-image and matplotlib.
- Optional: flat flag renders 1000 px wide from the npm package `svg-country-flags` (public
  domain), fetched with `npm pack` by `genevolve images fetch-flags` into `images/vendor/`.
  When present they rank above the emoji flags: a flat, large flag is the better reference.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..jsonio import atomic_write_json
from .image_library import LibraryImage, library_lock, write_manifest
# Where builds live, their keys and who holds them are in image_library.py, outside the code hash
# that keys a build; these names stay importable from here for the CLI.
from .image_library import build_inputs, ensure_builtin, find_builtin, find_emoji_font  # noqa: F401
from .image_library_labels import VS16, Namer, bundled_photos, emoji_data

BUILTIN_FORMAT = 1                 # the layout of a build folder and its manifest
EMOJI_PIXELS = 256
BUILD_WORKERS = 4
SOURCE_PACKAGES = ("emoji", "pycountry", "countryinfo", "scikit-image", "matplotlib", "fonttools")
NOTO_LICENSE = "Noto Color Emoji (font: SIL OFL 1.1; artwork: Apache-2.0)"
FLAG_PACKAGE, FLAG_VERSION = "svg-country-flags", "1.2.10"
FLAG_LICENSE = "public domain (svg-country-flags 1.2.10, renders of Wikipedia's flag files)"

Log = Callable[[str], None]


def flags_dir(root: Path) -> Path:
    return root / "vendor" / f"{FLAG_PACKAGE}-{FLAG_VERSION}"


def build_builtin(dest: Path, inputs: dict[str, Any], flags: Path, log: Log) -> None:
    start = time.perf_counter()
    for sub in ("emoji", "photos", "flags"):
        (dest / "files" / sub).mkdir(parents=True, exist_ok=True)
    namer = Namer()
    entries: list[LibraryImage] = []
    font = Path(inputs["font"][0]) if inputs["font"] else None
    if font is None:
        log("warning: NotoColorEmoji.ttf not found (install Debian fonts-noto-color-emoji); "
            "the library will hold photos only")
    else:
        glyphs = emoji_glyphs(font)
        log(f"rendering {len(glyphs)} emoji glyphs from {font}")
        jobs: list[tuple[bytes, str]] = []
        for sequences, png in glyphs:
            named = [(seq, d) for seq, d in ((seq, namer.emoji(seq)) for seq in sequences) if d]
            if not named:
                continue
            rel = f"files/emoji/{_emoji_id(named[0][0])}.png"
            jobs.append((png, str(dest / rel)))
            for sequence, (title, labels, caption) in named:
                entries.append(LibraryImage(id=_emoji_id(sequence), title=title, path=rel, source="noto-emoji",
                                            width=EMOJI_PIXELS, height=EMOJI_PIXELS, labels=labels,
                                            caption=caption, license=NOTO_LICENSE))
        _render_all(jobs)
    for photo, src in bundled_photos(log):
        rel, width, height = install_image(src, dest, f"files/photos/photo-{photo.slug}")
        entries.append(LibraryImage(id=f"photo-{photo.slug}", title=photo.title, path=rel, source=photo.package,
                                    width=width, height=height, labels=photo.labels, caption=photo.caption,
                                    license=photo.license))
    if (flags / "countries.json").exists():
        entries += flag_entries(flags, dest, namer)
    write_manifest(dest / "manifest.jsonl", entries)
    atomic_write_json(dest / "synonyms.json", namer.synonyms())
    seconds = round(time.perf_counter() - start, 1)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.source] = counts.get(e.source, 0) + 1
    atomic_write_json(dest / "BUILD.json", {**inputs, "entries": len(entries), "by_source": counts,
                                            "build_seconds": seconds, "built_at": time.time()})
    log(f"built {len(entries)} images in {seconds} s")


def install_image(src: Path, dest: Path, rel_stem: str) -> tuple[str, int, int]:
    """Copy an image into the build; one with transparency is flattened onto white as PNG."""
    with Image.open(src) as im:
        width, height = im.size
        if im.mode in ("RGBA", "LA", "P") and (im.mode != "P" or "transparency" in im.info):
            rel = f"{rel_stem}.png"
            rgba = im.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            flat.alpha_composite(rgba)
            flat.convert("RGB").save(dest / rel, optimize=True)
        else:
            rel = f"{rel_stem}{src.suffix.lower()}"
            shutil.copyfile(src, dest / rel)
    return rel, width, height


# ----------------------------------------------------------------------------- emoji font

def emoji_glyphs(font_path: Path) -> list[tuple[list[str], bytes]]:
    """(code-point sequences, PNG bytes) for every colour bitmap glyph of the font.

    A glyph can stand for several emoji: the US flag also draws the US Outlying Islands, and
    legacy component orders reach the same picture. All sequences Unicode lists are returned
    (fully-qualified form); a glyph with none of them keeps its first sequence.
    """
    from fontTools.ttLib import TTFont

    font = TTFont(str(font_path), lazy=True)
    strike = font["CBDT"].strikeData[0]
    cmap = font.getBestCmap()
    char_of: dict[str, str] = {}
    candidates: dict[str, list[str]] = {}
    for cp, glyph in sorted(cmap.items()):
        char_of.setdefault(glyph, chr(cp))
        candidates.setdefault(glyph, []).append(chr(cp))
    for lookup in font["GSUB"].table.LookupList.Lookup:
        if lookup.LookupType != 4:           # ligatures: sequences drawn as one glyph
            continue
        for sub in lookup.SubTable:
            for first, ligatures in sub.ligatures.items():
                for lig in ligatures:
                    parts = [first, *lig.Component]
                    if all(p in char_of for p in parts):
                        candidates.setdefault(lig.LigGlyph, []).append("".join(char_of[p] for p in parts))
    out = []
    known = emoji_data()
    for glyph, sequences in candidates.items():
        data = strike.get(glyph)
        if data is None or not getattr(data, "imageData", b"").startswith(b"\x89PNG"):
            continue
        listed = sorted({known[s.replace(VS16, "")][0] for s in sequences if s.replace(VS16, "") in known})
        out.append((listed or sequences[:1], data.imageData))
    return sorted(out)


def _render_all(jobs: list[tuple[bytes, str]]) -> None:
    """Write every emoji PNG. Threads, not processes: Pillow releases the GIL while it resizes,
    quantizes and compresses, and threads need no re-import of the caller's main module."""
    workers = min(BUILD_WORKERS, os.cpu_count() or 1)
    if workers <= 1:
        for job in jobs:
            _render_one(job)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(_render_one, jobs):
            pass


def _render_one(job: tuple[bytes, str]) -> None:
    png, path = job
    _emoji_image(png).save(path)


def _emoji_id(sequence: str) -> str:
    return "emoji-" + "-".join(f"{ord(c):x}" for c in sequence if c != VS16)


def _emoji_image(png: bytes) -> Image.Image:
    """The glyph centred on a white square, upscaled to EMOJI_PIXELS, as a 256-colour image."""
    glyph = Image.open(io.BytesIO(png)).convert("RGBA")
    side = int(max(glyph.size) * 1.08)              # a thin margin around the art
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    rgb = canvas.convert("RGB").resize((EMOJI_PIXELS, EMOJI_PIXELS), Image.Resampling.LANCZOS)
    # Emoji art has few colours (the font's own bitmaps are 256-colour), so a palette PNG keeps it
    # intact at a quarter of the size; the background's palette entry is set back to pure white.
    paletted = rgb.quantize(256, method=Image.Quantize.FASTOCTREE)
    palette = paletted.getpalette() or []
    corner = paletted.getpixel((0, 0))
    palette[corner * 3:corner * 3 + 3] = [255, 255, 255]
    paletted.putpalette(palette)
    return paletted


# ----------------------------------------------------------------------------- flat flags

def flag_entries(folder: Path, dest: Path, namer: Namer) -> list[LibraryImage]:
    """Entries for the 1000 px flag renders in `folder` (png1000px/<code>.png + countries.json)."""
    entries = []
    for src in sorted((folder / "png1000px").glob("*.png")):
        code = src.stem.upper()
        ident = f"flag-{src.stem.lower()}"
        stem, labels, sentence = namer.flag(code)
        rel, width, height = install_image(src, dest, f"files/flags/{ident}")
        entries.append(LibraryImage(id=ident, title=f"{stem} (flat, {width} px)", path=rel, source=FLAG_PACKAGE,
                                    width=width, height=height, labels=labels,
                                    caption=f"{sentence} A flat rendering of the flag, {width}x{height} pixels.",
                                    license=FLAG_LICENSE))
    return entries


def fetch_flags(root: Path, log: Log) -> Path:
    """Fetch the pinned flag package with `npm pack` and keep its 1000 px PNGs under root/vendor/.

    Needs the npm client (the flags ship only on the npm registry). Idempotent; atomic.
    """
    target = flags_dir(root)
    npm = shutil.which("npm")
    if npm is None and not (target / "countries.json").exists():
        raise RuntimeError("fetching the flag renders needs the npm client (e.g. apt-get install npm)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with library_lock(root), tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if (target / "countries.json").exists():
            return target
        log(f"npm pack {FLAG_PACKAGE}@{FLAG_VERSION}")
        done = subprocess.run([str(npm), "pack", f"{FLAG_PACKAGE}@{FLAG_VERSION}", "--silent"], cwd=tmp,
                              capture_output=True, text=True, timeout=600)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise RuntimeError(f"npm pack {FLAG_PACKAGE}@{FLAG_VERSION} failed: "
                               f"{(done.stderr or done.stdout).strip()[-500:]}")
        staging = Path(tmp) / "out"
        (staging / "png1000px").mkdir(parents=True)
        with tarfile.open(tarballs[0]) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                wanted = (len(parts) == 3 and parts[1] == "png1000px" and parts[2].endswith(".png")) or \
                    (len(parts) == 2 and parts[1] in ("countries.json", "README.md", "package.json"))
                if member.isfile() and wanted and ".." not in parts:
                    data = tar.extractfile(member)
                    (staging.joinpath(*parts[1:])).write_bytes(data.read() if data else b"")
        if not (staging / "countries.json").exists():
            raise RuntimeError(f"{tarballs[0].name}: no countries.json inside; not the expected package")
        os.rename(staging, target)
    log(f"{len(list((target / 'png1000px').glob('*.png')))} flag renders in {target}")
    return target
