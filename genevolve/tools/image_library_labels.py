"""What each bundled image is called: emoji names, flag facts and photo captions.

- Emoji: CLDR short names and aliases from the `emoji` package when it is installed, else
  Unicode character names.
- Flags (emoji and flat renders alike): pycountry names (common, official) plus countryinfo
  (alternative spellings, demonym, capital, region); subdivision flags (England, Scotland,
  Wales, US states, Canadian provinces, ...) through pycountry's subdivisions. Demonyms also
  become query expansions (Australian -> Australia), saved with the build as synonyms.json.
- Photos shipped by scikit-image and matplotlib: captions written by us.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .image_library import tokenize

ZWJ, VS16, TAG_END, BLACK_FLAG = "\u200d", "\ufe0f", "\U000e007f", "\U0001f3f4"
REGIONAL_A = 0x1F1E6
Log = Callable[[str], None]

_EMOJI_DATA: dict[str, tuple[str, dict[str, Any]]] | None = None


def emoji_data() -> dict[str, tuple[str, dict[str, Any]]]:
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


def flag_sequence(code: str) -> str:
    """'AU' -> regional-indicator pair; 'GB-SCT' -> black flag + tag letters + cancel tag."""
    if "-" not in code:
        return "".join(chr(REGIONAL_A + ord(c) - ord("A")) for c in code.upper())
    return BLACK_FLAG + "".join(chr(0xE0000 + ord(c)) for c in code.replace("-", "").lower()) + TAG_END


def flag_code(key: str) -> str | None:
    """The inverse of flag_sequence, for a sequence without VS16; None for other emoji."""
    if len(key) == 2 and all(REGIONAL_A <= ord(c) < REGIONAL_A + 26 for c in key):
        return "".join(chr(ord(c) - REGIONAL_A + ord("A")) for c in key)
    if key.startswith(BLACK_FLAG) and key.endswith(TAG_END) and len(key) > 4:
        tag = "".join(chr(ord(c) - 0xE0000) for c in key[1:-1]).upper()
        return f"{tag[:2]}-{tag[2:]}"
    return None


class Namer:
    """Titles, labels and captions for emoji sequences and flags."""

    SUBDIVISION_DEMONYMS = {"GB-ENG": ["English"], "GB-SCT": ["Scottish", "Scots"], "GB-WLS": ["Welsh"]}

    def __init__(self) -> None:
        self.countries = _country_facts()
        self.demonyms: dict[str, str] = {}          # demonym -> place name, for synonyms.json

    def emoji(self, seq: str) -> tuple[str, list[str], str] | None:
        """(title, labels, caption) of one emoji, or None for a building block (digit, letter)."""
        key = seq.replace(VS16, "")
        points = "U+" + " U+".join(f"{ord(c):04X}" for c in seq)
        art = f"Emoji art from Noto Color Emoji ({points})."
        code = flag_code(key)
        if code:
            stem, labels, sentence = self.flag(code)
            return f"{stem} (emoji)", labels + ["emoji"], f"{sentence} {art}"
        data = emoji_data().get(key, (seq, {}))[1]
        name = _short_name(data["en"]) if data.get("en") else ""
        unicode_names = [unicodedata.name(c, "").lower() for c in key if c != ZWJ]
        if not name:
            if len(key) == 1 and (ord(key) < 0x80 or REGIONAL_A <= ord(key) < REGIONAL_A + 26
                                  or unicodedata.category(key) in ("Mn", "Me")):
                return None
            name = ", ".join(n for n in unicode_names if n) or points
        labels = _unique([name, *(_short_name(a) for a in data.get("alias", [])), *unicode_names, "emoji"])
        return (f"{name[0].upper()}{name[1:]} (emoji)", labels,
                f"Emoji art of {name} from Noto Color Emoji ({points}).")

    def flag(self, code: str) -> tuple[str, list[str], str]:
        """('Flag of Australia', labels, one-sentence caption) for 'AU' or a subdivision like 'GB-SCT'."""
        data = emoji_data().get(flag_sequence(code), ("", {}))[1]
        cldr = _short_name(data["en"]) if data.get("en") else ""
        aliases = [_short_name(a) for a in data.get("alias", [])]
        if "-" in code:
            return self._subdivision_flag(code, cldr, aliases)
        facts = self.countries.get(code, {})
        name = cldr or facts.get("name") or code
        demonyms = facts.get("demonyms", [])
        for demonym in demonyms:
            self.demonyms[demonym] = name
        labels = ["flag", "national flag", "country flag", name, *facts.get("names", []), *aliases, *demonyms,
                  code, *facts.get("codes", [])]
        where = "; ".join(x for x in (facts.get("subregion") or facts.get("region"),
                                      f"capital: {facts['capital']}" if facts.get("capital") else "") if x)
        sentence = f"The flag of {_the(name)}" + (f" ({where})" if where else "") + "."
        return f"Flag of {_the(name)}", _unique(labels), sentence

    def _subdivision_flag(self, code: str, cldr: str, aliases: list[str]) -> tuple[str, list[str], str]:
        import pycountry

        sub = pycountry.subdivisions.get(code=code)
        country = self.countries.get(code[:2], {}).get("name", code[:2])
        name = cldr or (sub.name if sub else code)
        kind = (sub.type if sub else "region").lower()
        demonyms = self.SUBDIVISION_DEMONYMS.get(code, [])
        for demonym in demonyms:
            self.demonyms[demonym] = name
        labels = _unique(["flag", f"{kind} flag", name, sub.name if sub else "", *aliases, *demonyms, country])
        return f"Flag of {name}", labels, f"The flag of {name} ({kind}, {_the(country)})."

    def synonyms(self) -> dict[str, list[str]]:
        """Query expansions: each one-word demonym maps to the words of its place's name."""
        out: dict[str, list[str]] = {}
        for demonym, place in sorted(self.demonyms.items()):
            words = tokenize(demonym)
            targets = [t for t in tokenize(place) if t not in words]
            if len(words) == 1 and targets:
                out[words[0]] = _unique(out.get(words[0], []) + targets)
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
