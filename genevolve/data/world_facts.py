"""Facts read back out of the offline search corpus, so that every clue is something a search can find.

The corpus (`tools/offline_corpus.build_corpus`) holds Wikipedia vital-article summaries, one fact
sheet per country and the large cities. This module reads those same documents into small records:
country facts (capital, region, neighbours, languages, largest cities, domain, demonym, ISO code),
Wikipedia summaries split into description and extract, and clue phrases cut from them with the
subject's name masked. Nothing here is hand-written knowledge: a fact the corpus lacks is a fact no
request relies on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..tools.offline_corpus import SENTENCE_RE, tokenize

MIN_POPULATION = 250_000          # smaller territories often fly another country's flag
MAX_CLUE_WORDS = 16
_COPULA = re.compile(r"^(.*?)\s+(?:is|are|was|were)\s+(?:(?:a|an|the|one of the|any of the|one of)\s+)?(.+)$")
_PARENS = re.compile(r"\s*\([^)]*\)")
_CLAUSE = re.compile(r",\s+|;\s+|\s+(?=(?:which|that|who|whose|where|while|although|but)\b)")
_TRAILING = re.compile(r"\b(?:of|in|on|at|for|and|or|with|by|to|from|the|a|an|as|its|their)$", re.IGNORECASE)
_YEARS = re.compile(r"\((?:c\.\s*)?(\d{3,4})\s*(?:BC|BCE)?\s*[–-]\s*(?:c\.\s*)?(\d{3,4})\s*(BC|BCE)?\)")


@dataclass
class WikiArticle:
    title: str
    description: str
    extract: str
    url: str

    @property
    def first_sentence(self) -> str:
        return SENTENCE_RE.split(self.extract.strip(), maxsplit=1)[0]


@dataclass
class Country:
    code: str                       # ISO alpha-2 (or a subdivision code such as GB-ENG)
    name: str
    doc_title: str
    text: str
    capital: str = ""
    region: str = ""
    borders: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    largest_cities: list[str] = field(default_factory=list)
    domain: str = ""
    demonym: str = ""
    population: int = 0
    names: list[str] = field(default_factory=list)


def split_wiki_text(text: str) -> tuple[str, str]:
    """The corpus stores a summary as 'description — extract' when the description adds something."""
    head, sep, tail = text.partition(" — ")
    if sep and len(head) <= 120 and "." not in head.rstrip("."):
        return head.strip(), tail.strip()
    return "", text.strip()


def wiki_articles(docs: Iterable[Any]) -> dict[str, WikiArticle]:
    out: dict[str, WikiArticle] = {}
    for d in docs:
        if d.source == "wikipedia":
            desc, extract = split_wiki_text(d.text)
            out.setdefault(d.title.lower(), WikiArticle(d.title, desc, extract, d.url))
    return out


def _field(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    return m.group(1).strip() if m else ""


def _split_list(value: str) -> list[str]:
    value = value.strip().rstrip(".")
    if not value:
        return []
    parts = re.split(r",\s+|\s+and\s+", value)
    return [p.strip() for p in parts if p.strip()]


def countries_from_docs(docs: Iterable[Any]) -> dict[str, Country]:
    """ISO code -> Country, parsed from the corpus's country fact sheets."""
    out: dict[str, Country] = {}
    for d in docs:
        if d.source != "countryinfo" or not d.title.endswith(" (country facts)"):
            continue
        text = d.text
        code = _field(r"ISO codes: ([A-Z]{2}),", text)
        if not code:
            continue
        pop = _field(r"Population: (?:about [^(]*\()?([\d,]+)", text).replace(",", "")
        borders = _field(r"It borders (.+?)\.(?: [A-Z]|$)", text)
        out[code] = Country(
            code=code, name=d.title[: -len(" (country facts)")], doc_title=d.title, text=text,
            capital=_field(r"Its capital is (.+?)\.(?: [A-Z]|$)", text),
            region=_field(r"is a country or territory in ([^.(]+)", text),
            borders=[re.sub(r"^the ", "", b) for b in _split_list(borders)],
            languages=_split_list(_field(r"Languages: (.+?)\.(?: [A-Z]|$)", text)),
            largest_cities=_split_list(_field(r"Largest cities: (.+?)\.(?: [A-Z]|$)", text)),
            domain=_field(r"Internet domain: (\.[a-z]+)\.", text),
            demonym=_field(r"Its people are called ([^.]+)\.", text),
            population=int(pop) if pop.isdigit() else 0,
            names=[n for n in getattr(d, "names", ()) if not n.startswith("capital ")])
    return out


def unique_values(countries: list[Country], key: Any) -> dict[str, Country]:
    """value -> country for the values of `key(country)` that exactly one country has."""
    seen: dict[str, list[Country]] = {}
    for c in countries:
        value = key(c)
        if value:
            seen.setdefault(value, []).append(c)
    return {v: cs[0] for v, cs in seen.items() if len(cs) == 1}


# ----------------------------------------------------------------------------- clues

def name_tokens(names: Iterable[str]) -> set[str]:
    """Words that would give a name away (short function words aside)."""
    out: set[str] = set()
    for n in names:
        out.update(t for t in tokenize(_PARENS.sub("", n)) if len(t) >= 3)
    return out


def is_masked(clue: str, names: Iterable[str]) -> bool:
    """True when no word of the clue gives a name away, also as the start of a longer word
    ('Camelus' gives 'camel' away)."""
    words, hidden = set(tokenize(clue)), name_tokens(names)
    return not any(w == n or (len(n) >= 4 and w.startswith(n)) for w in words for n in hidden)


def shorten(phrase: str, max_words: int = MAX_CLUE_WORDS) -> str:
    """Cut a phrase at a clause boundary so it stays a short noun phrase."""
    phrase = " ".join(_PARENS.sub("", phrase).split()).rstrip(" .,;:")
    if len(phrase.split()) > max_words:
        kept = ""
        for part in _CLAUSE.split(phrase):
            candidate = f"{kept}, {part}" if kept else part
            if len(candidate.split()) > max_words:
                break
            kept = candidate
        phrase = kept or " ".join(phrase.split()[:max_words])
    while _TRAILING.search(phrase):
        phrase = _TRAILING.sub("", phrase).rstrip(" ,;:")
    return phrase


def lower_first(phrase: str, context: str = "") -> str:
    """Lower-case a description's first word unless the source writes it capitalised mid-sentence
    (a proper adjective: 'English polymath' stays, 'Largest living land animal' does not)."""
    if not phrase:
        return phrase
    first = phrase.split()[0]
    if first.isupper() or re.search(rf"(?<=[a-z,;] ){re.escape(first)}\b", context):
        return phrase
    return phrase[0].lower() + phrase[1:]


def predicate(sentence: str) -> str:
    """'Elephants are the largest living land animals.' -> 'largest living land animals'."""
    m = _COPULA.match(_PARENS.sub("", sentence).strip())
    if not m:
        return ""
    text = m.group(2)
    while True:                 # 'typically an outer garment', 'any one of the 40 species' -> the noun phrase
        cut = re.sub(r"^(?:either|typically|usually|generally|commonly|mostly|often|any one of|any of|one of|"
                     r"a|an|the)\s+", "", text, flags=re.IGNORECASE)
        if cut == text:
            return shorten(text)
        text = cut


def description_clue(article: WikiArticle) -> str:
    """A person's description with its years spelled out: 'English polymath (1642–1727)' ->
    'English polymath who lived from 1642 to 1727'; other descriptions as they are."""
    desc = article.description
    m = _YEARS.search(desc)
    if m:
        era = f" {m.group(3)}" if m.group(3) else ""
        desc = _YEARS.sub("", desc).strip() + f" who lived from {m.group(1)} to {m.group(2)}{era}"
    return shorten(lower_first(desc, article.extract), MAX_CLUE_WORDS + 4)


def clue_candidates(article: WikiArticle, names: Iterable[str]) -> list[tuple[str, str]]:
    """(clue, sentence it comes from) pairs that do not give the name away, best first."""
    names = list(names) + [article.title]
    out: list[tuple[str, str]] = []
    for text, source in ((description_clue(article), article.description),
                         (lower_first(predicate(article.first_sentence), article.extract), article.first_sentence)):
        if text and len(text.split()) >= 2 and is_masked(text, names) and text not in (c for c, _ in out):
            out.append((text, source))
    return out


def article_phrase(clue: str) -> str:
    """A clue as a noun phrase with a definite article: 'largest land animal' -> 'the largest land animal'."""
    return clue if re.match(r"^(?:the|a|an)\s", clue, re.IGNORECASE) else f"the {clue}"


def demonym_of(sentence: str) -> str:
    """The nationality word of a biography's first sentence: 'was an English polymath' -> 'English'."""
    m = re.search(r"\b(?:is|was)\s+(?:an?|the)\s+((?:[A-Z][a-z]+(?:-born)?\s+)+)", sentence)
    if not m:
        return ""
    return m.group(1).split()[0].removesuffix("-born")
