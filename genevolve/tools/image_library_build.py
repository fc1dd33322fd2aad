"""Building the bundled part of the image library (user folders: image_library_user.py).

Bundled images (about 3,900, built once into `images/builtin-<key>/`):

- Every colour glyph of Noto Color Emoji (Debian `fonts-noto-color-emoji`). The font stores each
  glyph as a 136x128 PNG in its CBDT table; we read those bitmaps with fontTools and map each
  glyph back to its code-point sequence through the cmap and the GSUB ligature table. That is
  the exact bitmap Pillow draws at size 109 with `embedded_color=True`, but needs no text shaper
  (libraqm), which flag and ZWJ sequences would otherwise need. Each glyph is flattened onto
  white (generators often drop alpha, which turns transparent pixels black), upscaled with
  Lanczos to 256x256 and stored as a 256-colour PNG (about 6 KB each).
- Names: CLDR short names and aliases from the `emoji` package when installed, else Unicode
  character names. Flags: pycountry names (official, common) plus countryinfo (alternative
  spellings, demonym, capital, region); subdivision flags (England, Scotland, Wales, US states,
  Canadian provinces, ...) through pycountry subdivisions.
- Real photos shipped inside scikit-image and matplotlib, with hand-written captions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..jsonio import atomic_write_json
from .image_library import LibraryImage, library_lock, tokenize, write_manifest

BUILTIN_FORMAT = 1                 # the layout of a build folder and its manifest
EMOJI_PIXELS = 256
BUILD_WORKERS = 4
SOURCE_PACKAGES = ("emoji", "pycountry", "countryinfo", "scikit-image", "matplotlib", "fonttools")
FONT_CANDIDATES = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
                   "/usr/share/fonts/noto/NotoColorEmoji.ttf",
                   "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf")
ZWJ, VS16, TAG_END, BLACK_FLAG = "\u200d", "\ufe0f", "\U000e007f", "\U0001f3f4"
NOTO_LICENSE = "Noto Color Emoji (font: SIL OFL 1.1; artwork: Apache-2.0)"

Log = Callable[[str], None]


def find_emoji_font() -> Path | None:
    explicit = os.environ.get("GENEVOLVE_EMOJI_FONT")
    if explicit:
        return Path(explicit)
    for candidate in FONT_CANDIDATES:
        if os.path.isfile(candidate):
            return Path(candidate)
    fonts = Path("/usr/share/fonts")
    hits = sorted(fonts.rglob("NotoColorEmoji.ttf")) if fonts.is_dir() else []
    return hits[0] if hits else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_inputs() -> dict[str, Any]:
    """Everything the bundled library depends on; its hash names the build folder."""
    font = find_emoji_font()
    st = font.stat() if font and font.exists() else None
    # The hash of this file stands in for the format number in between releases: any change to
    # names, captions or image processing leads to a fresh build instead of a stale library.
    code = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12]
    inputs = {"format": BUILTIN_FORMAT, "code": code, "emoji_pixels": EMOJI_PIXELS,
              "font": [str(font), st.st_size, st.st_mtime_ns] if st else None,
              "packages": {d: _version(d) for d in SOURCE_PACKAGES}}
    inputs["key"] = hashlib.sha1(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return inputs


def find_builtin(root: Path) -> Path | None:
    target = root / f"builtin-{build_inputs()['key']}"
    return target if (target / "BUILD.json").exists() else None


def ensure_builtin(root: Path, log: Log | None = None, force: bool = False) -> Path:
    """The bundled library's folder, built first if needed (once, even across processes)."""
    inputs = build_inputs()
    target = root / f"builtin-{inputs['key']}"
    if (target / "BUILD.json").exists() and not force:
        return target
    with library_lock(root):
        if (target / "BUILD.json").exists() and not force:
            return target                     # another process built it while we waited
        for stale in root.glob(".building-*"):    # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".building-{inputs['key']}-{os.getpid()}"
        build_builtin(tmp, inputs, log or (lambda msg: None))
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)                # the build appears whole or not at all
        for old in root.glob("builtin-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    return target


def build_builtin(dest: Path, inputs: dict[str, Any], log: Log) -> None:
    start = time.perf_counter()
    (dest / "files" / "emoji").mkdir(parents=True, exist_ok=True)
    (dest / "files" / "photos").mkdir(parents=True, exist_ok=True)
    namer = EmojiNamer()
    entries: list[LibraryImage] = []
    font = find_emoji_font()
    if font is None:
        log("warning: NotoColorEmoji.ttf not found (install Debian fonts-noto-color-emoji); "
            "the library will hold photos only")
    else:
        glyphs = emoji_glyphs(font)
        log(f"rendering {len(glyphs)} emoji glyphs from {font}")
        jobs: list[tuple[bytes, str]] = []
        for sequences, png in glyphs:
            named = [(seq, d) for seq, d in ((seq, namer.describe(seq)) for seq in sequences) if d]
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
        entries.append(install_photo(photo, src, dest))
    write_manifest(dest / "manifest.jsonl", entries)
    atomic_write_json(dest / "synonyms.json", namer.synonyms())
    seconds = round(time.perf_counter() - start, 1)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.source] = counts.get(e.source, 0) + 1
    atomic_write_json(dest / "BUILD.json", {**inputs, "entries": len(entries), "by_source": counts,
                                            "build_seconds": seconds, "built_at": time.time()})
    log(f"built {len(entries)} images in {seconds} s")


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
    known = _emoji_data()
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


_EMOJI_DATA: dict[str, tuple[str, dict[str, Any]]] | None = None


def _emoji_data() -> dict[str, tuple[str, dict[str, Any]]]:
    """The `emoji` package's table keyed by sequence without VS16, fully-qualified form first."""
    global _EMOJI_DATA
    if _EMOJI_DATA is None:
        _EMOJI_DATA = {}
        try:
            import emoji
        except ImportError:
            return _EMOJI_DATA
        fully = emoji.STATUS["fully_qualified"]
        for seq, data in sorted(emoji.EMOJI_DATA.items(), key=lambda kv: kv[1].get("status") != fully):
            _EMOJI_DATA.setdefault(seq.replace(VS16, ""), (seq, data))
    return _EMOJI_DATA


def _short_name(raw: str) -> str:
    return raw.strip(":").replace("_", " ").strip()


class EmojiNamer:
    """Titles, labels and captions for emoji sequences, flags named by country facts."""

    SUBDIVISION_DEMONYMS = {"GB-ENG": ["English"], "GB-SCT": ["Scottish", "Scots"], "GB-WLS": ["Welsh"]}

    def __init__(self) -> None:
        self.countries = _country_facts()
        self.demonyms: dict[str, str] = {}          # demonym -> country name, for synonyms.json

    def describe(self, seq: str) -> tuple[str, list[str], str] | None:
        key = seq.replace(VS16, "")
        data = _emoji_data().get(key, (seq, {}))[1]
        name = _short_name(data["en"]) if data.get("en") else ""
        aliases = [_short_name(a) for a in data.get("alias", [])]
        points = "U+" + " U+".join(f"{ord(c):04X}" for c in seq)
        if len(key) == 2 and all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in key):
            return self._country_flag("".join(chr(ord(c) - 0x1F1E6 + 65) for c in key), name, aliases, points)
        if key.startswith(BLACK_FLAG) and key.endswith(TAG_END) and len(key) > 3:
            tag = "".join(chr(ord(c) - 0xE0000) for c in key[1:-1]).upper()
            return self._subdivision_flag(f"{tag[:2]}-{tag[2:]}", name, aliases, points)
        unicode_names = [unicodedata.name(c, "").lower() for c in key if c != ZWJ]
        if not name:
            if len(key) == 1 and (ord(key) < 0x80 or 0x1F1E6 <= ord(key) <= 0x1F1FF
                                  or unicodedata.category(key) in ("Mn", "Me")):
                return None                          # a building block (digit, letter), not a picture
            name = ", ".join(n for n in unicode_names if n) or points
        title = f"{name[0].upper()}{name[1:]} (emoji)"
        labels = _unique([name, *aliases, *unicode_names, "emoji"])
        return title, labels, f"Emoji art of {name} from Noto Color Emoji ({points})."

    def _country_flag(self, code: str, name: str, aliases: list[str], points: str):
        facts = self.countries.get(code, {})
        name = name or facts.get("name") or code
        labels = ["flag", "national flag", name, *facts.get("names", []), *aliases, *facts.get("demonyms", []),
                  code, *facts.get("codes", [])]
        for demonym in facts.get("demonyms", []):
            self.demonyms[demonym] = name
        facts_text = "; ".join(x for x in (facts.get("subregion") or facts.get("region"),
                                           f"capital: {facts['capital']}" if facts.get("capital") else "") if x)
        caption = f"The flag of {_the(name)}" + (f" ({facts_text})" if facts_text else "") + "."
        return (f"Flag of {_the(name)} (emoji)", _unique(labels),
                f"{caption} Emoji art from Noto Color Emoji ({points}).")

    def _subdivision_flag(self, code: str, name: str, aliases: list[str], points: str):
        import pycountry

        sub = pycountry.subdivisions.get(code=code)
        country = self.countries.get(code[:2], {}).get("name", code[:2])
        name = name or (sub.name if sub else code)
        kind = (sub.type if sub else "region").lower()
        demonyms = self.SUBDIVISION_DEMONYMS.get(code, [])
        for demonym in demonyms:
            self.demonyms[demonym] = name
        labels = _unique(["flag", f"{kind} flag", name, *(p for p in [sub.name if sub else None] if p),
                          *aliases, *demonyms, country])
        caption = f"The flag of {name} ({kind}, {_the(country)}). Emoji art from Noto Color Emoji ({points})."
        return f"Flag of {name} (emoji)", labels, caption

    def synonyms(self) -> dict[str, list[str]]:
        """Query expansions: each demonym word maps to the words of its country's name."""
        out: dict[str, list[str]] = {}
        for demonym, country in sorted(self.demonyms.items()):
            words = tokenize(demonym)
            targets = [t for t in tokenize(country) if t not in words]
            if len(words) == 1 and targets:
                out.setdefault(words[0], [])
                out[words[0]] = _unique(out[words[0]] + targets)
        return out


def _country_facts() -> dict[str, dict[str, Any]]:
    """ISO alpha-2 code -> names, codes, demonyms, capital and region (pycountry + countryinfo)."""
    facts: dict[str, dict[str, Any]] = {}
    try:
        import pycountry
        for c in pycountry.countries:
            # ISO's inverted forms ("Korea, Republic of") are left out: the other names cover them.
            names = [n for n in (getattr(c, a, None) for a in ("common_name", "name", "official_name"))
                     if n and "," not in n]
            facts[c.alpha_2] = {"name": names[0] if names else c.name, "names": _unique(names),
                                "codes": [c.alpha_3], "demonyms": []}
    except ImportError:
        pass
    try:
        from countryinfo import all_countries
        seen: set[str] = set()
        for country in all_countries():
            info = country.info()
            iso = info.get("ISO") if isinstance(info.get("ISO"), dict) else {}
            code = iso.get("alpha2")
            if not code or code in seen:      # duplicates (e.g. Wales filed under GB) would mislabel
                continue
            seen.add(code)
            entry = facts.setdefault(code, {"name": info.get("name") or code, "names": [], "codes": [],
                                            "demonyms": []})
            alt = [a for a in info.get("altSpellings") or []
                   if isinstance(a, str) and len(a) > 3 and "," not in a]
            entry["names"] = _unique(entry["names"] + [info.get("name") or ""] + alt)
            entry["demonyms"] = _unique(entry["demonyms"] + [info.get("demonym") or ""])
            capital = info.get("capital")
            capital = ", ".join(capital) if isinstance(capital, list) else capital
            entry["capital"] = capital or None
            entry["region"], entry["subregion"] = info.get("region"), info.get("subregion")
            entry["population"] = info.get("population") or 0
    except ImportError:
        pass
    # A demonym shared by several places ("American") labels only the most populous of them.
    owner: dict[str, str] = {}
    for code, entry in facts.items():
        for demonym in entry["demonyms"]:
            best = owner.get(demonym.lower())
            if best is None or entry.get("population", 0) > facts[best].get("population", 0):
                owner[demonym.lower()] = code
    for code, entry in facts.items():
        entry["demonyms"] = [d for d in entry["demonyms"] if owner[d.lower()] == code]
    return facts


_WITH_ARTICLE = re.compile(r"^(United |Central African|Dominican Republic|European|Holy See)|"
                           r"(Islands|Republic|Emirates|Netherlands|Bahamas|Gambia|Philippines|Maldives|"
                           r"Comoros|Seychelles|Vatican City|Territories|Nations|Territory)$")


def _the(name: str) -> str:
    """'United States' -> 'the United States', as English writes these names after 'flag of'."""
    return f"the {name}" if _WITH_ARTICLE.search(name) else name


def _unique(items: list[str]) -> list[str]:
    seen, out = set(), []
    for item in items:
        item = (item or "").strip()
        if item and item.lower() not in seen:
            seen.add(item.lower())
            out.append(item)
    return out


# ----------------------------------------------------------------------------- bundled photos

@dataclass
class BundledPhoto:
    package: str          # scikit-image | matplotlib
    file: str             # inside the package's sample-data folder
    slug: str
    title: str
    labels: list[str]
    caption: str
    license: str


CC0, PD = "CC0", "public domain"
# Captions are ours, written from looking at each picture; licences as the packages state them.
# (package, file in its sample-data folder, id slug, title, labels, caption, licence)
PHOTOS = [BundledPhoto(*row) for row in [
    ("scikit-image", "astronaut.png", "astronaut", "Astronaut Eileen Collins (photo)",
     ["astronaut", "Eileen Collins", "NASA", "spacesuit", "portrait", "woman", "space shuttle"],
     "Studio portrait of NASA astronaut Eileen Collins, smiling, in an orange launch suit with a "
     "black helmet beside her; the US flag and a space shuttle model behind.", PD),
    ("scikit-image", "chelsea.png", "chelsea", "Chelsea, a tabby cat (photo)",
     ["cat", "tabby cat", "kitten", "pet", "animal", "feline"],
     "Close-up of a ginger tabby cat with green eyes looking slightly to the side.", CC0),
    ("scikit-image", "coffee.png", "coffee", "Cup of coffee (photo)",
     ["coffee", "espresso", "cup", "saucer", "spoon", "cafe", "drink"],
     "A red cup of milky espresso on a red saucer with a spoon, on a wooden cafe table.", CC0),
    ("scikit-image", "rocket.jpg", "rocket", "Falcon 9 rocket on the launch pad (photo)",
     ["rocket", "Falcon 9", "SpaceX", "launch pad", "night", "spaceflight"],
     "A SpaceX Falcon 9 rocket standing on its launch pad at dusk, lit by floodlights, with lightning"
     " towers on both sides.", PD),
    ("scikit-image", "camera.png", "camera", "Photographer with a camera on a tripod (photo)",
     ["cameraman", "photographer", "camera", "tripod", "man", "black and white"],
     "Black-and-white photo of a man in a dark coat looking through a camera on a tripod, on a lawn "
     "with buildings behind.", CC0),
    ("scikit-image", "coins.png", "coins", "Ancient Greek coins (photo)",
     ["coins", "coin", "Greek coins", "Pompeii", "money", "ancient", "black and white"],
     "Twenty-four ancient Greek coins from Pompeii laid out in rows on a grey background.", PD),
    ("scikit-image", "moon.png", "moon", "Surface of the Moon (photo)",
     ["moon", "lunar surface", "craters", "black and white"],
     "Low-contrast grey image of the lunar surface with a few craters.", PD),
    ("scikit-image", "horse.png", "horse", "Horse silhouette (drawing)",
     ["horse", "silhouette", "animal", "black and white"],
     "A black silhouette of a standing horse in profile on white.", CC0),
    ("scikit-image", "hubble_deep_field.jpg", "hubble-deep-field", "Hubble eXtreme Deep Field (photo)",
     ["galaxies", "Hubble", "deep field", "space", "stars", "universe", "astronomy"],
     "Hundreds of faint, colourful galaxies on black: the Hubble telescope's deepest view.", PD),
    ("scikit-image", "motorcycle_left.png", "motorcycle", "Red motorcycle in a garage (photo)",
     ["motorcycle", "motorbike", "bike", "garage", "red"],
     "A red and chrome motorcycle parked in a workshop with shelves and boxes behind.",
     "Middlebury stereo data set (research use)"),
    ("scikit-image", "brick.png", "brick", "Brick wall texture (photo)",
     ["brick", "brick wall", "wall", "texture", "black and white"],
     "Grey close-up of a brick wall seen at an angle.", CC0),
    ("scikit-image", "grass.png", "grass", "Grass texture (photo)",
     ["grass", "lawn", "texture", "black and white"],
     "Grey close-up of short grass blades.", CC0),
    ("scikit-image", "gravel.png", "gravel", "Gravel texture (photo)",
     ["gravel", "stones", "pebbles", "texture", "black and white"],
     "Grey close-up of small gravel stones.", CC0),
    ("scikit-image", "retina.jpg", "retina", "Human retina (fundus photo)",
     ["retina", "eye", "fundus", "blood vessels", "medical"],
     "An orange-red photograph of the back of a human eye with the optic disc and blood vessels.", CC0),
    ("scikit-image", "ihc.png", "immunohistochemistry", "Colon tissue under a microscope (photo)",
     ["microscopy", "tissue", "immunohistochemistry", "histology", "cells", "medical"],
     "Stained colonic glands: brown cell membranes on a pale blue background.", PD),
    ("scikit-image", "cell.png", "cell", "A cell floating in saline (microscope image)",
     ["cell", "microscopy", "biology", "black and white"],
     "Quantitative phase image of a single round cell, bright on a grey background.", PD),
    ("scikit-image", "clock_motion.png", "clock", "Motion-blurred wall clock (photo)",
     ["clock", "wall clock", "motion blur", "black and white"],
     "A wall clock smeared sideways by camera motion.", PD),
    ("scikit-image", "page.png", "page", "Scanned page of printed text (photo)",
     ["page", "text", "document", "scan", "black and white"],
     "A scanned book page with a heading and a paragraph of text, unevenly lit.", PD),
    ("scikit-image", "text.png", "text", "Handwritten text on paper (photo)",
     ["text", "handwriting", "paper", "black and white"],
     "Lines of handwritten characters on paper, photographed at a slant.", PD),
    ("scikit-image", "color.png", "colorwheel", "Colour wheel (graphic)",
     ["color wheel", "colour wheel", "rainbow", "hue", "spectrum"],
     "A disc of all hues around the rim fading to white in the centre, on black.", PD),
    ("scikit-image", "logo.png", "skimage-logo", "scikit-image logo (graphic)",
     ["logo", "scikit-image", "snake"],
     "Green and orange yin-yang style disc with a snake.", "scikit-image project logo"),
    ("matplotlib", "grace_hopper.jpg", "grace-hopper", "Rear Admiral Grace Hopper (photo)",
     ["Grace Hopper", "portrait", "woman", "navy", "officer", "uniform", "computer scientist"],
     "Official portrait of Grace Hopper in US Navy dress uniform and cap, with flags behind.", PD),
    ("matplotlib", "Minduka_Present_Blue_Pack.png", "present", "Blue gift box (drawing)",
     ["gift", "present", "box", "ribbon", "blue"],
     "A blue wrapped present with a silver bow, drawn as clip art.",
     "matplotlib sample data (clip art by Minduka)"),
]]


def _package_data_dir(package: str) -> Path | None:
    try:
        if package == "scikit-image":
            import skimage.data
            return Path(skimage.data.data_dir)
        if package == "matplotlib":
            import matplotlib
            return Path(matplotlib.get_data_path()) / "sample_data"
    except ImportError:
        return None
    return None


def bundled_photos(log: Log) -> list[tuple[BundledPhoto, Path]]:
    """The photos whose files are present (scikit-image fetches some from the web; we never do)."""
    out = []
    for photo in PHOTOS:
        folder = _package_data_dir(photo.package)
        path = folder / photo.file if folder else None
        if path is None or not path.is_file():
            log(f"skipped photo {photo.package}/{photo.file}: not installed")
            continue
        out.append((photo, path))
    return out


def install_photo(photo: BundledPhoto, src: Path, dest: Path) -> LibraryImage:
    """Copy one photo into the library; images with transparency are flattened onto white."""
    ident = f"photo-{photo.slug}"
    with Image.open(src) as im:
        width, height = im.size
        if im.mode in ("RGBA", "LA", "P") and (im.mode != "P" or "transparency" in im.info):
            rel = f"files/photos/{ident}.png"
            rgba = im.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            flat.alpha_composite(rgba)
            flat.convert("RGB").save(dest / rel)
        else:
            rel = f"files/photos/{ident}{src.suffix.lower()}"
            shutil.copyfile(src, dest / rel)
    return LibraryImage(id=ident, title=photo.title, path=rel, source=photo.package, width=width,
                        height=height, labels=photo.labels, caption=photo.caption, license=photo.license)
