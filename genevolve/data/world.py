"""The offline world as entities a recipe can bind: what exists, what shows it, what describes it.

Entities come from the offline tools' own data, so the pool grows with the corpora:
- every library image whose subject has a Wikipedia summary (emoji and photos; several images of
  one subject become renditions of one entity: the cat emoji, the cat-face emoji, the tabby photo);
- countries from the corpus's fact sheets, each with its flag images (emoji and, when fetched, flat);
- landmarks: Wikipedia summaries of buildings and monuments that place them in a flagged country;
- large cities: each flagged country's capital and most populous city;
- public figures: biographies whose first sentence gives a nationality with a flag;
- poses (people and hands doing something, with their gender and skin-tone variants) and colour
  variants (red/blue/green hearts, books, circles, squares, apples) for the quality track.

A Knowledge-Anchored entity keeps only clues that the offline search resolves: the clue, typed as a
query, must bring the entity's document into the top hits. `OfflineWorld.counts()` says how many
distinct entities each category reaches.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .taxonomy import CATEGORIES
from .world_facts import (MIN_POPULATION, Country, WikiArticle, article_phrase, clue_candidates, countries_from_docs,
                          demonym_of, is_masked, predicate, unique_values, wiki_articles)

TOP_HITS = 3                     # a clue counts when its document is among this many search hits
MAX_TEXT_CHARS = 20              # names written into the picture must stay short enough to typeset and read

# Which Knowledge-Anchored category a summarised thing belongs to, by the words of its description.
# Order matters: the first match wins.
_CATEGORY_WORDS = [
    ("vehicle_transport", r"vehicle|aircraft|airplane|aeroplane|helicopter|boat|\bship|locomotive|railway|\btram|"
                          r"\bbus\b|automobile|bicycle|motorcycle|scooter|truck|tractor|rocket|spacecraft|canoe|"
                          r"sled|sledge|monorail|cable car|ambulance|taxi|sailboat|ferry|skateboard|wheelchair"),
    ("event_sport", r"\bsport|\bgame\b|festival|holiday|celebration|ceremony|wedding|olympic|tournament|"
                    r"martial art|carnival|parade|racing|fireworks|christmas|halloween|birthday"),
    ("science_nature", r"species|animal|mammal|\bbird|\bfish|insect|reptile|amphibian|marsupial|primate|rodent|"
                       r"\bplant|flower|\btree|fungus|planet|\bstar\b|comet|galaxy|moon|weather|cloud|storm|"
                       r"molecule|\batom|\bcell\b|organ\b|virus|bacteri|magnet|chemical|crystal|mineral|"
                       r"invertebrate|mollus|crustacean|arachnid|order of|family of|genus"),
    ("architecture_landmark", r"building|tower|bridge|statue|monument|castle|temple|church|mosque|synagogue|shrine|"
                              r"stadium|mountain|volcano|\bhouse\b|hospital|school|factory|fountain|"
                              r"\btent\b|\bhut\b|skyscraper"),
    ("commercial_product", r"dish|food|fruit|vegetable|bread|dessert|drink|beverage|cheese|meat|sauce|cake|"
                           r"pastry|snack|confection|soup|berry|device|phone|computer|camera|television|"
                           r"clothing|garment|shoe|footwear|\bhat\b|headgear|\bbag\b|furniture|appliance|toy|"
                           r"cosmetic|umbrella|container|utensil|\bpen\b|pencil|\bwatch\b|eyewear|jewel"),
    ("cultural_artifact", r"instrument|\btool|weapon|sword|shield|\bbow\b|\bcoin|compass|telescope|microscope|"
                          r"abacus|scroll|\blamp|lantern|clock|hourglass|\bbell\b|\bdrum|\bkey\b|\block\b|"
                          r"anchor|\bmap\b|\bbook|pottery|\bmask|crown|\bring\b|medal|trophy|implement|"
                          r"artifact|device for|calendar|\bflag\b|candle|chopsticks"),
]
_LANDMARK_WORDS = re.compile(r"building|tower|bridge|statue|monument|castle|temple|church|cathedral|mosque|"
                             r"palace|museum|stadium|amphitheat|pyramid|\bwall\b|\bdam\b|canal|\bfort\b|fortress|"
                             r"shrine|tomb|mausoleum|skyscraper|opera house|abbey|basilica|ruins|citadel|"
                             r"archaeological site|ancient city|\bgate\b|\barch\b|landmark|observatory", re.IGNORECASE)
_NOT_LANDMARK = re.compile(r"university|college|company|organi[sz]ation|club|school of|institute", re.IGNORECASE)
_POSE_RE = re.compile(r"^(?:person|man|woman|people|men|women) (?P<what>(?:\w+ing\b.*|in lotus position|"
                      r"standing|kneeling|with white cane|in steamy room|in manual wheelchair|"
                      r"in motorized wheelchair))$")
_HAND_RE = re.compile(r"^(?P<what>(?:waving|raised|victory|ok|call me|folded|writing|clapping|open|palms up|"
                      r"crossed|love-you|thumbs|raised back of|flexed|pinched|index pointing up|"
                      r"backhand index pointing (?:up|down|left|right))[\w\s-]*(?:hands?|fingers?|thumbs? \w+|"
                      r"fist|biceps|gesture|up|down|left|right))$")
_SKIN = re.compile(r"\s+(?:light|medium-light|medium|medium-dark|dark)(?: skin tone)?(?:,? (?:light|medium-light|"
                   r"medium|medium-dark|dark) skin tone)?$")
_COLOUR_VARIANT = re.compile(r"^(?P<colour>red|orange|yellow|green|blue|purple|brown|black|white) "
                             r"(?P<kind>heart|circle|square|book|apple)$")
# Descriptions of processes, activities and kinds rather than of one countable thing.
_ABSTRACT = re.compile(r"^(?:the )?(?:process|art|act|practice|system|ceremony|method|activity|class|group|"
                       r"concept|state|field|study|branch|discipline|condition|phenomenon|event|preparing|"
                       r"team|sport|game|genre|style|type of|form of|any of|various|several)\b|\bsport\b|"
                       r"\bhuman\b|\bperson\b|\bpeople\b|\badult\b", re.IGNORECASE)
_PERSONLIKE = re.compile(r"\b(?:person|human|people|adult|child|male|female|man|woman|occupation|worker)\b",
                         re.IGNORECASE)
_GENERIC_LABELS = {"emoji", "adult", "man", "woman", "person", "people", "face", "black and white", "texture"}


@dataclass
class Entity:
    key: str                              # stable id: "wiki:Elephant", "country:IT", "city:Sydney|AU", ...
    name: str
    kind: str                             # thing | country | landmark | city | person | pose | variant
    noun: str                             # how a prompt names it ("elephant", "flag of Italy")
    plural: str
    renditions: list[str]                 # library ids that show it, the usual search hit first
    visual_query: str
    aliases: list[str] = field(default_factory=list)
    clues: list[dict[str, Any]] = field(default_factory=list)   # {clue, query, source, fact, rank}
    facts: dict[str, Any] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plural_of(noun: str) -> str:
    head, sep, tail = noun.partition(" of ")
    if sep and head:                       # "Statue of Liberty" -> "Statues of Liberty"
        return f"{plural_of(head)} of {tail}"
    if noun.endswith(("ss", "us", "is", "x", "ch", "sh", "z")):
        return noun + "es"
    if noun.endswith("s"):                 # already plural: "gloves", "hot springs"
        return noun
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def library_code_of(entry_id: str) -> str | None:
    """The ISO or subdivision code a flag image shows: 'flag-it' -> 'IT', 'emoji-1f1ee-1f1f9' -> 'IT'."""
    from ..tools.image_library_labels import flag_code

    if entry_id.startswith("flag-"):
        return entry_id[5:].upper()
    if entry_id.startswith("emoji-"):
        try:
            seq = "".join(chr(int(h, 16)) for h in entry_id[6:].split("-"))
        except ValueError:
            return None
        return flag_code(seq)
    return None


class OfflineWorld:
    """All entities of the offline world, bound to categories. Build with `OfflineWorld.load()`."""

    def __init__(self, library: Any, docs: list[Any], search: Any):
        self.library, self.search = library, search
        self.entries = {e.id: e for e in library.entries()}
        self.articles = wiki_articles(docs)
        self.countries = {c: k for c, k in countries_from_docs(docs).items() if k.population >= MIN_POPULATION}
        self.entities: dict[str, Entity] = {}
        self.portraits: dict[str, list[str]] = {}     # article title -> photos of that person
        self.flags = self._flags()
        self._bind_things()
        self._bind_countries()
        self._bind_landmarks()
        self._bind_cities()
        self._bind_people()
        self._bind_poses_and_variants()

    @classmethod
    def load(cls, *, library_dir: str | None = None, search_index_dir: str | None = None) -> "OfflineWorld":
        from ..tools.image_library import ImageLibrary
        from ..tools.offline_corpus import build_corpus
        from ..tools.offline_search import OfflineSearchBackend

        return cls(ImageLibrary(library_dir, include_user=False), build_corpus(),
                   OfflineSearchBackend(index_dir=search_index_dir, semantic=False))

    # -- helpers -------------------------------------------------------------------------------
    def rank_of(self, query: str, title: str) -> int | None:
        """Where the document `title` ranks when the offline search is asked `query` (1-based)."""
        titles = [h.title for h in self.search.search_sync(query, TOP_HITS)]
        return titles.index(title) + 1 if title in titles else None

    def ordered(self, query: str, ids: list[str]) -> list[str]:
        """Renditions in the order an image search for `query` returns them; unreached ones last."""
        hits = [e.id for e, _, _ in self.library.search(query, 12)]
        return sorted(dict.fromkeys(ids), key=lambda i: hits.index(i) if i in hits else len(hits))

    def add(self, entity: Entity) -> None:
        if entity.renditions:
            entity.facts["titles"] = [self.entries[i].title for i in entity.renditions if i in self.entries]
            self.entities[entity.key] = entity

    def by_category(self) -> dict[str, list[Entity]]:
        out: dict[str, list[Entity]] = {c: [] for c in CATEGORIES}
        for e in self.entities.values():
            for c in e.categories:
                out[c].append(e)
        return out

    def counts(self) -> dict[str, Any]:
        """Distinct entities per category, and the categories the offline world cannot give a GT."""
        return {"entities": {c: len(es) for c, es in self.by_category().items()},
                "kinds": _tally(e.kind for e in self.entities.values()),
                "no_offline_gt": {c.id: c.offline_gt_why for c in CATEGORIES.values() if not c.offline_gt}}

    # -- flags and countries -------------------------------------------------------------------
    def _flags(self) -> dict[str, list[str]]:
        flags: dict[str, list[str]] = {}
        for entry in self.entries.values():
            if "flag" in entry.labels:
                code = library_code_of(entry.id)
                if code:
                    flags.setdefault(code, []).append(entry.id)
        return flags

    def flag_entity(self, code: str) -> Entity | None:
        key = f"country:{code}"
        if key in self.entities:
            return self.entities[key]
        if code not in self.flags:
            return None
        name = self.countries[code].name if code in self.countries else \
            re.sub(r"^Flag of (?:the )?| \((?:emoji|flat.*)\)$", "", self.entries[self.flags[code][0]].title)
        query = f"flag of {the(name)}"
        entity = Entity(key, name, "country", query, f"flags of {the(name)}",
                        self.ordered(query, self.flags[code]), query, aliases=[name])
        self.add(entity)
        return entity

    def _bind_countries(self) -> None:
        """Country entities with their flags; their facts become clues of cities and landmarks."""
        for code, country in sorted(self.countries.items()):
            entity = self.flag_entity(code)
            if entity:
                entity.aliases = list(dict.fromkeys([country.name, *country.names]))
                entity.facts.update({"capital": country.capital, "region": country.region, "doc": country.doc_title})
        ranked = list(self.countries.values())
        self.country_clues: dict[str, list[dict[str, Any]]] = {}
        kinds = [("capital", lambda c: c.capital, "the country whose capital is {v}", "country whose capital is {v}"),
                 ("domain", lambda c: c.domain, "the country whose internet domain is {v}",
                  "country internet domain {v}"),
                 ("borders", lambda c: ", ".join(c.borders[:-1]) + f" and {c.borders[-1]}" if len(c.borders) >= 2
                  else "", "the country that borders {v}", "country that borders {v}"),
                 ("languages", lambda c: f"{c.region}|{' and '.join(c.languages)}" if c.region and c.languages
                  else "", "the country in {region} whose languages are {langs}", "country {region} languages {langs}")]
        for kind, key, clue_form, query_form in kinds:
            for value, country in unique_values(ranked, key).items():
                if f"country:{country.code}" not in self.entities:
                    continue
                region, _, langs = value.partition("|")
                fill = {"v": value, "region": region, "langs": langs}
                clue, query = clue_form.format(**fill), query_form.format(**fill)
                if not is_masked(clue, [country.name]):
                    continue
                rank = self.rank_of(query, country.doc_title)
                if rank:
                    self.country_clues.setdefault(country.code, []).append(
                        {"clue": clue, "query": query, "source": country.doc_title, "fact": kind, "rank": rank})

    # -- things with a summary ------------------------------------------------------------------
    def _article_for(self, entry: Any) -> tuple[WikiArticle, str] | None:
        name = base_name(entry.title)
        forms = [name, name[:-1] if name.endswith("s") else name + "s"]
        sport = re.sub(r"^(?:person|man|woman|men|women|people) (?:playing )?", "", name, flags=re.IGNORECASE)
        if sport != name:                       # "Woman playing handball" shows handball
            forms.append(sport)
        if name.lower().endswith(" face"):
            forms.append(name[:-5])
        if entry.source != "noto-emoji":          # photos: their subject is in the labels
            forms += [l for l in entry.labels[:1] if l.lower() not in _GENERIC_LABELS]
        for form in forms:
            article = self.articles.get(form.lower())
            if article:
                return article, (name if entry.source == "noto-emoji" else form)
        return None

    def _bind_things(self) -> None:
        groups: dict[str, tuple[WikiArticle, list[Any]]] = {}
        self.names_of: dict[str, str] = {}        # library id -> the name it is found by
        for entry in self.entries.values():
            if "flag" in entry.labels or "skin tone" in entry.title or entry.title.startswith("Flag of"):
                continue
            found = self._article_for(entry)
            if found:
                groups.setdefault(found[0].title, (found[0], []))[1].append(entry)
                self.names_of[entry.id] = found[1]
        for title, (article, entries) in sorted(groups.items()):
            persons = [e for e in entries if e.source != "noto-emoji" and "portrait" in e.labels]
            if persons:                        # a photographed public figure is bound with the people
                self.portraits[title] = [e.id for e in persons]
                continue
            ordered = self.ordered(title, [e.id for e in entries])
            query = self.names_of[ordered[0]]
            if re.search(r"[A-Z]", title[1:]) and query.lower() == title.lower():
                query = title                  # a proper name keeps its capitals: "Mount Fuji"
            elif not re.search(r"[A-Z]", query[1:]):
                query = query.lower()
            entity = Entity(f"wiki:{title}", title, "thing", query, plural_of(query),
                            self.ordered(query, ordered), query,
                            aliases=[title, *sorted({base_name(e.title) for e in entries})],
                            facts={"description": article.description, "doc": title})
            concrete = not _ABSTRACT.search(article.description or article.first_sentence)
            category = ka_category_of(article)
            if category != "event_sport" and not concrete:    # a sport is drawn by its emblem; others must be things
                category = None
            if category:
                for clue, fact in clue_candidates(article, entity.aliases):
                    rank = self.rank_of(clue, title)
                    if rank:
                        entity.clues.append({"clue": article_phrase(clue), "query": clue, "source": title,
                                             "fact": fact, "rank": rank})
                if entity.clues:
                    entity.categories.append(category)
            top = self.library.search(query, 1)
            person_action = re.match(r"(?:person|man|woman|people|men|women) ", query, re.IGNORECASE)
            if concrete and not person_action and top and top[0][0].id in entity.renditions:   # usable by name
                entity.categories += ["grounded_text_layout", "spatial_composition", "grounded_quantity_scene",
                                      "material_physics", "aesthetic_lighting", "creative_transfer"]
            self.add(entity)

    # -- landmarks, cities, people: hidden things that point to a flag ----------------------------
    def _country_in(self, text: str) -> Country | None:
        """The one flagged country a text names (by its corpus name), or None when it names none or several."""
        found = {c.code: c for c in self.countries.values() if f"country:{c.code}" in self.entities
                 and re.search(rf"\b{re.escape(c.name)}\b", text)}
        return next(iter(found.values())) if len(found) == 1 else None

    def _bind_landmarks(self) -> None:
        for article in self.articles.values():
            head = " ".join(predicate(article.first_sentence).split()[:6])
            if not (_LANDMARK_WORDS.search(article.description) and _LANDMARK_WORDS.search(head)) \
                    or _YEARS_IN(article.description) \
                    or _PERSONLIKE.search(article.description) or _NOT_LANDMARK.search(article.description):
                continue
            country = self._country_in(f"{article.description} {article.first_sentence}")
            if country is None or article.title.lower() == country.name.lower():
                continue
            flag = self.entities[f"country:{country.code}"]
            rank = self.rank_of(article.title, article.title)
            if not rank:
                continue
            title = re.sub(r"\s*\(.*\)$|,\s.*$", "", article.title)     # "Pantheon, Rome" -> "Pantheon"
            if not is_masked(title, [country.name, *country.names]):
                continue                     # "National Museum of China" gives its country away
            common = re.search(r"\b(?:Museum|Tower|Bridge|Palace|Canal|Dam|Wall|Gate|Fort|Cathedral|Mosque|Temple|"
                               r"Church|Library|Building|Pyramid|Abbey|Basilica|Castle|Stadium|Observatory)$", title)
            named = f"the {title}" if article.extract.startswith(f"The {title}") or common else title
            clues = [{"clue": f"the country where {named} stands", "query": article.title,
                      "source": article.title, "fact": article.first_sentence, "rank": rank, "hops": 1}]
            for clue, fact in clue_candidates(article, [article.title, country.name, *country.names]):
                r = self.rank_of(clue, article.title)
                if r:
                    clues.append({"clue": f"the country that is home to {article_phrase(clue)}", "query": clue,
                                  "source": article.title, "fact": fact, "rank": r, "hops": 2})
            self.add(Entity(f"wiki:{article.title}", title, "landmark", flag.noun, flag.plural,
                            flag.renditions, flag.visual_query, aliases=[title, article.title], clues=clues,
                            facts={"country": country.name, "country_code": country.code,
                                   "description": article.description}, categories=["architecture_landmark"]))

    def _bind_cities(self) -> None:
        for code, country in sorted(self.countries.items()):
            flag = self.entities.get(f"country:{code}")
            if not flag:
                continue
            picks = []
            if country.capital:
                picks.append((country.capital, "capital"))
            if country.largest_cities and country.largest_cities[0] != country.capital:
                picks.append((country.largest_cities[0], "largest"))
            for city, role in picks:
                if not _typesettable(city) or not is_masked(country.name, [city]):
                    continue                 # a city named like its country would be given away
                described = [f"the capital of {the(country.name)}"] if role == "capital" else \
                    [f"the most populous city of {the(country.name)}"]
                queries = [f"capital of {country.name}"] if role == "capital" else [f"largest cities {country.name}"]
                clues = [{"clue": c, "query": q, "source": country.doc_title, "fact": role, "rank": 1, "hops": 1}
                         for c, q in zip(described, queries)]
                if role == "capital":           # two hops: the country itself is described
                    for cc in self.country_clues.get(code, []):
                        if cc["fact"] != "capital":
                            clues.append({**cc, "clue": f"the capital of {cc['clue']}", "hops": 2})
                self.add(Entity(f"city:{city}|{code}", city, "city", flag.noun, flag.plural, flag.renditions,
                                flag.visual_query, aliases=[city], clues=clues,
                                facts={"country": country.name, "country_code": code, "role": role,
                                       "text": city.upper()}, categories=["city_street"]))

    def _bind_people(self) -> None:
        by_demonym: dict[str, str] = {}
        for c in self.countries.values():
            for d in re.split(r",\s*|\s+or\s+", c.demonym):
                if d and f"country:{c.code}" in self.entities:
                    by_demonym.setdefault(d.strip(), c.code)
        for code in self.flags:                 # England, Scotland, Wales: their own flags
            if "-" in code:
                for label in self.entries[self.flags[code][0]].labels:
                    if re.fullmatch(r"[A-Z][a-z]+(?:ish|sh|ese|an|ch)", label):
                        by_demonym.setdefault(label, code)
        portraits = self.portraits
        for article in self.articles.values():
            sentence = article.first_sentence
            if not re.search(r"\b(?:was|is) (?:an?|the) ", sentence) or not _YEARS_IN(article.description):
                continue
            code = by_demonym.get(demonym_of(sentence))
            name = re.sub(r"\s*\(.*\)$", "", article.title)
            if not code or not _typesettable(name) or len(name.split()) < 2:
                continue
            flag = self.flag_entity(code)
            if flag is None:
                continue
            clues = []
            for clue, fact in clue_candidates(article, [article.title, *name.split()]):
                rank = self.rank_of(clue, article.title)
                if rank:
                    clues.append({"clue": article_phrase(clue), "query": clue, "source": article.title,
                                  "fact": fact, "rank": rank})
            if not clues:
                continue
            photo = portraits.get(article.title)
            renditions = photo or flag.renditions
            self.add(Entity(f"wiki:{article.title}", name, "person", "portrait of " + name if photo else flag.noun,
                            flag.plural, renditions, name if photo else flag.visual_query, aliases=[name, article.title],
                            clues=clues, facts={"country": flag.name, "country_code": code, "text": name.upper(),
                                                "portrait": bool(photo)},
                            categories=["public_figure_longtail"]))

    # -- quality-track subjects ------------------------------------------------------------------
    def _bind_poses_and_variants(self) -> None:
        poses: dict[str, list[str]] = {}
        variants: dict[tuple[str, str], list[str]] = {}
        for entry in self.entries.values():
            if entry.source != "noto-emoji":
                continue
            name = _SKIN.sub("", re.sub(r"\s*\(emoji\)$", "", entry.title).lower()).strip(" ,")
            m = _POSE_RE.match(name) or _HAND_RE.match(name)
            if m:
                poses.setdefault(m.group("what"), []).append(entry.id)
            m = _COLOUR_VARIANT.match(name)
            if m:
                variants.setdefault((m.group("kind"), m.group("colour")), []).append(entry.id)
        for what, ids in sorted(poses.items()):
            if _HAND_RE.match(what):
                noun = what if "hand" in what or "fingers" in what or "thumbs" in what else f"{what} hand"
            else:
                noun = f"person {what}"
            query = noun
            self.add(Entity(f"pose:{what}", noun, "pose", noun, plural_of(noun) if noun.endswith("hand") else noun,
                            self.ordered(query, ids), query, aliases=[noun], facts={"pose": what},
                            categories=["anatomy_pose"]))
        for (kind, colour), ids in sorted(variants.items()):
            noun = f"{colour} {kind}"
            self.add(Entity(f"variant:{kind}#{colour}", noun, "variant", noun, plural_of(noun),
                            self.ordered(noun, ids), noun, aliases=[noun], facts={"kind": kind, "colour": colour},
                            categories=["attribute_binding"]))


def base_name(title: str) -> str:
    """A library title without its kind: 'Elephant (emoji)' -> 'Elephant'."""
    return re.sub(r"\s*\((?:emoji|photo|drawing|graphic|microscope image|fundus photo|flat, \d+ px)\)$", "", title)


def ka_category_of(article: WikiArticle) -> str | None:
    """The Knowledge-Anchored category of a summarised thing: its description decides, else its first
    sentence; people-like subjects (a farmer, a mermaid) belong to none."""
    for text in (article.description, article.first_sentence[:200]):
        if not text or _PERSONLIKE.search(text):
            continue
        for category, pattern in _CATEGORY_WORDS:
            if re.search(pattern, text.lower()):
                return category
    return None


def _typesettable(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z .'-]*", name)) and len(name) <= MAX_TEXT_CHARS


_NEEDS_THE = re.compile(r"^(?:United|Czech|Democratic|Republic|Dominican|Central African|Netherlands|Philippines|"
                        r"Bahamas|Gambia|Maldives|Comoros|Seychelles|Palestinian)|(?:Islands|Republic|States|"
                        r"Territory|Emirates)$")


def the(country: str) -> str:
    """'Philippines' -> 'the Philippines'; 'France' stays."""
    return f"the {country}" if _NEEDS_THE.search(country) else country


def _YEARS_IN(description: str) -> bool:
    return bool(re.search(r"\d{3,4}\s*(?:BC|BCE)?\s*[–-]\s*\d{3,4}", description or ""))


def _tally(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


__all__ = ["Entity", "OfflineWorld", "plural_of"]
