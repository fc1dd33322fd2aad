"""Read a gen_prompt into a layout the offline renderer can draw, and the geometry it draws with.

`parse_layout(gen_prompt, n_refs)` is pure (text in, `Layout` out), so it is tested on its own and can
be reused by the offline judge. It reads: which reference goes where ("the first reference image on the
left", "reference image 2 above the first reference image", "the second reference image as the
background", "in the style of the second reference image"); counts ("three cats from the first
reference image", "the first reference image three times", "5 apples", "a pair of red shoes"; counts not
tied to a reference become simple shapes); quoted text ('…', "…", “…”, ‘…’) and where it goes (title/top,
caption/bottom, centre, on a sign); colour, lighting and style words.

Spatial words attach to the nearest thing named in the same sentence (a reference, a quote, a
counted group), so "the first reference image on the left and the second on the right" and
"On the left, the first reference image; on the right, the second reference image" both work.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..program import reference_mentions

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30), "crimson": (180, 20, 50), "scarlet": (230, 45, 20), "maroon": (120, 20, 40),
    "orange": (245, 140, 30), "amber": (240, 170, 30), "coral": (245, 120, 100), "peach": (250, 190, 150),
    "yellow": (245, 215, 40), "golden": (215, 170, 45), "gold": (215, 170, 45), "beige": (225, 210, 180),
    "ivory": (250, 245, 225), "olive": (120, 130, 40), "green": (40, 170, 70), "emerald": (30, 150, 90),
    "mint": (160, 230, 190), "teal": (20, 140, 140), "turquoise": (50, 200, 190), "cyan": (30, 200, 220),
    "blue": (35, 85, 225), "navy": (20, 35, 90), "indigo": (60, 40, 140), "purple": (130, 60, 180),
    "violet": (140, 80, 200), "lavender": (180, 160, 220), "magenta": (220, 40, 180),
    "pink": (240, 130, 170), "brown": (130, 85, 50), "black": (15, 15, 15), "white": (245, 245, 245),
    "gray": (128, 128, 128), "grey": (128, 128, 128), "silver": (190, 195, 200),
}
# Styles and lighting, each a canonical name and the words that ask for it.
STYLE_WORDS: dict[str, str] = {
    "watercolor": r"watercolou?rs?|aquarelle",
    "oil painting": r"oil[- ]painting|oil paint|oil on canvas|impasto|painterly",
    "cartoon": r"cartoon\w*|comic(?: book)?|anime|manga|cel[- ]shaded",
    "sketch": r"pencil|sketch(?:ed|y)?|charcoal|graphite|line drawing",
    "poster": r"poster|pop[- ]art|screen[- ]print",
    "vintage": r"vintage|retro|sepia|antique|old photo(?:graph)?",
    "noir": r"noir|black[- ]and[- ]white|b&w|monochrome|gr[ae]yscale",
}
LIGHTING_WORDS: dict[str, str] = {
    "sunset": r"sunset|sunrise|dusk|dawn|golden hour|twilight",
    "night": r"night\w*|midnight|moonlit|moonlight|starry",
    "neon": r"neon|cyberpunk|synthwave",
    "dramatic": r"dramatic|chiaroscuro|moody|cinematic",
    "soft": r"soft|diffused?|gentle|dreamy|hazy|misty|foggy",
    "warm": r"warm",
    "cold": r"cold|cool|icy|wintry|frosty",
}
PALETTE_MODIFIERS = {"pastel": r"pastel"}

NUMBER_WORDS = {w: n for n, w in enumerate("one two three four five six seven eight nine ten eleven twelve"
                                           .split(), 1)} | {"twin": 2}
MULTIWORD_NUMBERS = {("a", "pair", "of"): 2, ("a", "couple", "of"): 2, ("a", "trio", "of"): 3, ("a", "dozen"): 12}
MAX_COUNT = 64
# "35 mm lens", "50 cm tall": a number before a unit measures something; it does not count it.
MEASURE_UNITS = frozenset("mm cm m km in inch inches ft feet foot kg g lb lbs px k fps percent degrees "
                          "degree mph kmh hz mp sec secs seconds minutes hours years year".split())
REPEAT_NOUNS = set("times copies copy instances versions clones duplicates repetitions replicas".split())
ADJECTIVES = set("small big large tiny little huge giant round shiny bright pastel dark light glowing fluffy cute "
                 "identical tall short wooden metal plastic paper happy old young new smiling colorful colourful "
                 "matching floating flying ripe fresh stylized stylised simple cartoon".split())
NOT_NOUNS = set("of the a an and or in on at to with reference references ref image images photo photos more "
                "other different years px pixels percent degrees side sides o'clock".split())
# A counted noun is "from" a reference when one of these words links them: "three cats from the first ...".
LINK_WORDS = set("from of like in based as matching resembling shown depicted using taken".split())
BOUNDARY = re.compile(r"[,;:]|\b(?:and|while|but|whereas|plus|then)\b", re.IGNORECASE)

SHAPE_OF_NOUN = {shape: set(nouns.split()) for shape, nouns in {
    "circle": "circle ball balloon sphere dot disc disk coin orb bubble planet sun moon apple orange cherry "
              "wheel button cookie donut doughnut pizza plate egg lemon tomato grape pearl marble",
    "square": "square box cube block tile brick crate book window card frame gift present die dice rectangle "
              "building door screen",
    "triangle": "triangle pyramid tree mountain tent cone slice sail roof",
    "star": "star starfish sparkle",
}.items()}
DEFAULT_NOUN_COLOUR = {"apple": "red", "cherry": "red", "tomato": "red", "strawberry": "red",
                       "orange": "orange", "pumpkin": "orange", "sun": "yellow", "lemon": "yellow",
                       "banana": "yellow", "star": "gold", "coin": "gold", "moon": "silver", "tree": "green",
                       "leaf": "green", "grape": "purple", "brick": "brown", "egg": "ivory", "cloud": "white",
                       "snowball": "white", "mountain": "gray"}
ACCENTS = ["orange", "teal", "magenta", "yellow", "violet", "green"]

_TOKEN = re.compile(r"[A-Za-z]+(?:['’\-]+[A-Za-z]+)*|\d+(?:\.\d+)?[A-Za-z%]*")   # "jack-o'-lanterns" is one word
# Single quotes may hold apostrophes between letters: 'G'DAY MATE', 'ROCK 'N' ROLL' stays whole.
_QUOTES = re.compile(r"“([^”]+)”|\"([^\"]+)\"|‘([^’]+)’|«([^»]+)»|(?<![\w])'((?:[^']|(?<=\w)'(?=\w))+?)'(?![\w])")
_SENTENCE_END = re.compile(r"[.!?;]+(?=\s|$)|\n+")

# Spatial cues: (regex, what it sets, value). Relations and corners are matched before the single words.
_RELATIONS = [
    (r"to the left of", "left-of"), (r"to the right of", "right-of"), (r"on top of", "above"),
    (r"next to|beside|alongside|by the side of", "next-to"), (r"in front of", "in-front-of"),
    (r"above|over", "above"), (r"below|under|underneath|beneath", "below"), (r"behind", "behind"),
]
_CUES = [
    (r"(?:top|upper)[- ]left", "region", "top-left"), (r"(?:top|upper)[- ]right", "region", "top-right"),
    (r"(?:bottom|lower)[- ]left", "region", "bottom-left"), (r"(?:bottom|lower)[- ]right", "region", "bottom-right"),
    # "in/as/for/across the background", "background: ..." -- but not "on a blue background".
    (r"(?:(?:as|for|in|across|fills|spans|covers) )?the (?:background|backdrop)|as (?:a )?(?:background|backdrop)"
     r"|(?:as|for) (?:the )?(?:setting|scene|environment)|background(?: is| from| of|:)", "role", "background"),
    (r"in the foreground|at the front|up front|foreground", "region", "foreground"),
    (r"side[- ]by[- ]side", "side", "side-by-side"),
    (r"(?:title|titled|headline|heading|header|sky)", "text", "top"),
    (r"(?:caption|captioned|subtitle|footer|tagline)", "text", "bottom"),
    (r"(?:sign|signboard|signpost|plaque|placard|billboard|label|storefront|nameplate|board)", "text", "sign"),
    (r"left", "h", "left"),
    (r"right(?! next| beside| above| below| behind| in front| under| over| on top)", "h", "right"),
    (r"center|centre|centered|centred|middle", "h", "center"),
    (r"top|upper|above", "v", "top"), (r"bottom|lower|below|beneath|underneath", "v", "bottom"),
]
_STYLE_BEFORE = re.compile(r"\b(?:style|palette|colou?rs?|colou?r (?:scheme|grading)|tones|lighting|mood|"
                           r"aesthetic|look|texture)\s+(?:of|from|like|as in)\s+(?:the\s+)?$|"
                           r"\bstyled?\s+(?:like|after)\s+(?:the\s+)?$", re.IGNORECASE)
_STYLE_AFTER = re.compile(r"^(?:['’]s)?\s*(?:style|palette|colou?rs|colou?r scheme|tones|aesthetic)\b|"
                          r"^\s*(?:as|for)\s+(?:a\s+|the\s+)?(?:style|palette|colou?rs?|look|mood)\b",
                          re.IGNORECASE)


@dataclass
class Placement:
    """Where one reference image goes. `region` is a name from REGIONS; `cues` are the prompt words
    that decided it ("default" when the prompt said nothing)."""
    ref: int                      # 1-based position in Program.references
    role: str = "subject"         # subject | background | style
    region: str = "auto"
    count: int = 1
    mentioned: bool = False
    cues: list[str] = field(default_factory=list)


@dataclass
class ShapeGroup:
    """A counted thing not tied to a reference ("three red squares"), drawn as simple shapes."""
    noun: str
    shape: str                    # circle | square | triangle | star
    count: int
    colour: str
    rgb: tuple[int, int, int]
    region: str = "auto"
    cues: list[str] = field(default_factory=list)


@dataclass
class TextItem:
    text: str
    position: str = "top"         # top | bottom | center | sign
    cues: list[str] = field(default_factory=list)


@dataclass
class Layout:
    placements: list[Placement] = field(default_factory=list)
    shapes: list[ShapeGroup] = field(default_factory=list)
    texts: list[TextItem] = field(default_factory=list)
    colours: list[str] = field(default_factory=list)
    pastel: bool = False
    lighting: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Anchor:
    kind: str                     # ref | quote | shapes
    key: int                      # ref number, text index or shape-group index
    start: int
    end: int
    sentence: int


def parse_layout(gen_prompt: str, n_refs: int) -> Layout:
    """Turn `gen_prompt` into a Layout for a program with `n_refs` references (pure, deterministic)."""
    layout = Layout()
    text, quotes = _mask_quotes(gen_prompt)
    sentence_of = _sentence_index(text)
    used = bytearray(len(text))   # characters already explained by some earlier rule
    anchors: list[_Anchor] = []

    for start, end, content in quotes:
        layout.texts.append(TextItem(text=content))
        anchors.append(_Anchor("quote", len(layout.texts) - 1, start, end, sentence_of(start)))

    refs = {i: Placement(ref=i) for i in range(1, n_refs + 1)}
    for start, end, n in reference_mentions(text):
        _claim(used, start, end)
        if not 1 <= n <= n_refs:
            layout.notes.append(f"gen_prompt names reference {n} but the program has {n_refs}; ignored")
            continue
        refs[n].mentioned = True
        anchors.append(_Anchor("ref", n, start, end, sentence_of(start)))
        if _STYLE_BEFORE.search(text[max(0, start - 40):start]) or _STYLE_AFTER.search(text[end:end + 30]):
            refs[n].role = "style"
            refs[n].cues.append("style reference")

    layout.styles = _find_named(text, STYLE_WORDS, used)
    layout.lighting = _find_named(text, LIGHTING_WORDS, used)
    layout.pastel = bool(_find_named(text, PALETTE_MODIFIERS, used))
    _parse_counts(text, used, anchors, refs, layout, sentence_of)
    for m in re.finditer(r"\b(" + "|".join(COLOURS) + r")\b", text, re.IGNORECASE):
        proper_noun = m.group(1)[0].isupper() and text[:m.start()].rstrip()[-1:] not in ("", ".", "!", "?", ";")
        if not any(used[m.start():m.end()]) and not proper_noun and m.group(1).lower() not in layout.colours:
            layout.colours.append(m.group(1).lower())       # "Golden Gate Bridge" is a name, not a colour

    relations = _parse_relations(text, used, anchors)
    cues = _parse_cues(text, used, sentence_of)
    _assign_cues(text, cues, anchors, refs, layout)
    for subject, relation, obj, phrase in relations:
        _apply_relation(subject, relation, obj, phrase, refs, layout)
    _resolve_regions(refs, layout)
    layout.placements = list(refs.values())
    if not any(p.role == "subject" for p in layout.placements) and not layout.shapes:
        layout.shapes.append(_default_shape(text, layout))
    return layout


# ---- the parse steps -------------------------------------------------------------------------------

def _mask_quotes(prompt: str) -> tuple[str, list[tuple[int, int, str]]]:
    """Blank out quoted text (same length) so words inside quotes never count as layout words."""
    quotes, chars = [], list(prompt)
    for m in _QUOTES.finditer(prompt):
        content = next(g for g in m.groups() if g is not None).strip()
        if content:
            quotes.append((m.start(), m.end(), content))
            chars[m.start():m.end()] = " " * (m.end() - m.start())
    return "".join(chars), quotes


def _sentence_index(text: str):
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return lambda pos: sum(1 for e in ends if e <= pos)


def _claim(used: bytearray, start: int, end: int) -> None:
    used[start:end] = b"\x01" * (end - start)


def _free_matches(pattern: str, text: str, used: bytearray):
    for m in re.finditer(r"(?<!\w)(?:" + pattern + r")(?!\w)", text, re.IGNORECASE):
        if not any(used[m.start():m.end()]):
            _claim(used, m.start(), m.end())
            yield m


def _find_named(text: str, table: dict[str, str], used: bytearray) -> list[str]:
    hits = sorted((m.start(), name) for name, pattern in table.items() for m in _free_matches(pattern, text, used))
    return list(dict.fromkeys(name for _, name in hits))


def _gap(text: str, a_end: int, b_start: int) -> int:
    """Distance between two spans: words between them, plus 3 for every clause boundary crossed."""
    between = text[min(a_end, b_start):max(a_end, b_start)]
    return len(_TOKEN.findall(between)) + 3 * len(BOUNDARY.findall(between))


def _parse_counts(text, used, anchors, refs, layout, sentence_of) -> None:
    tokens = [(m.start(), m.end(), m.group(0).lower()) for m in _TOKEN.finditer(text)]
    words = [t[2] for t in tokens]
    i = 0
    while i < len(tokens):
        count, width = _number_at(words, i)
        if not count or any(used[tokens[i][0]:tokens[i][1]]):
            i += 1
            continue
        j, adjectives = i + width, []
        while j < len(words) and len(adjectives) < 3 and (_is_adjective(words[j]) or _is_compound_adjective(words, j)):
            adjectives += words[j].split("-")
            j += 1
        if j >= len(words) or (words[j] in NOT_NOUNS and words[j] != "of") or not words[j][0].isalpha():
            i += 1
            continue
        start, end, noun = tokens[i][0], tokens[j][1], words[j]
        sentence = sentence_of(start)
        phrase = text[start:end]
        target = _count_target(text, end, noun, anchors, sentence)
        if target is not None:
            refs[target].count = count
            refs[target].cues.append(phrase)
            _claim(used, start, end)
        elif noun != "of" and noun not in REPEAT_NOUNS and (count > 1 or not refs):
            # With references present, "one dog" is just the subject; only real counts get shapes.
            singular = _singular(noun)
            colour = next((a for a in adjectives if a in COLOURS), None) or DEFAULT_NOUN_COLOUR.get(singular) \
                or ACCENTS[len(layout.shapes) % len(ACCENTS)]
            shape = next((s for s, nouns in SHAPE_OF_NOUN.items() if singular in nouns), "circle")
            layout.shapes.append(ShapeGroup(noun=singular, shape=shape, count=count, colour=colour,
                                            rgb=COLOURS[colour], cues=[phrase]))
            anchors.append(_Anchor("shapes", len(layout.shapes) - 1, start, end, sentence))
            _claim(used, start, end)
        i = j + 1


def _is_adjective(word: str) -> bool:
    return all(p in ADJECTIVES or p in COLOURS for p in word.split("-"))


def _is_compound_adjective(words: list[str], j: int) -> bool:
    """ "well-known" in "three well-known landmarks": hyphenated and followed by a plain word."""
    following = words[j + 1] if j + 1 < len(words) else ""
    return "-" in words[j] and following.isalpha() and following not in NOT_NOUNS | LINK_WORDS


def _number_at(words: list[str], i: int) -> tuple[int, int]:
    for phrase, value in MULTIWORD_NUMBERS.items():
        if tuple(words[i:i + len(phrase)]) == phrase:
            return value, len(phrase)
    word = words[i]
    following = words[i + 1] if i + 1 < len(words) else ""
    if word.isdigit() and 1 <= int(word) <= MAX_COUNT and following not in MEASURE_UNITS:
        return int(word), 1
    return NUMBER_WORDS.get(word, 0), 1


def _count_target(text: str, noun_end: int, noun: str, anchors: list[_Anchor], sentence: int) -> int | None:
    """The reference a counted phrase repeats, if any: "... three times" -> nearest reference in the
    sentence; "three cats from the first reference image" -> the reference the link word points at."""
    refs_here = [a for a in anchors if a.kind == "ref" and a.sentence == sentence]
    if noun in REPEAT_NOUNS:
        if refs_here:
            return min(refs_here, key=lambda a: (_gap(text, a.end, noun_end) if a.end <= noun_end
                                                else _gap(text, noun_end, a.start))).key
        earlier = [a for a in anchors if a.kind == "ref" and a.start < noun_end]
        return earlier[-1].key if earlier else None
    for a in refs_here:
        between = text[noun_end:a.start]
        linked = noun == "of" or "(" in between or LINK_WORDS & {w.lower() for w in _TOKEN.findall(between)}
        if a.start >= noun_end and linked and not BOUNDARY.search(between) and len(_TOKEN.findall(between)) <= 5:
            return a.key
    return None


def _singular(noun: str) -> str:
    if noun.endswith("ies") and len(noun) > 4:
        return noun[:-3] + "y"
    if noun.endswith("ves") and noun[:-3] + "f" in DEFAULT_NOUN_COLOUR:
        return noun[:-3] + "f"
    if noun.endswith(("ches", "shes", "xes", "sses")):
        return noun[:-2]
    if noun.endswith("s") and not noun.endswith("ss"):
        return noun[:-1]
    return noun


def _parse_relations(text, used, anchors) -> list[tuple[_Anchor, str, _Anchor, str]]:
    """Relations between two named things: "the second reference image next to the first reference image"."""
    found = []
    for pattern, relation in _RELATIONS:
        for m in re.finditer(r"(?<!\w)(?:" + pattern + r")(?!\w)", text, re.IGNORECASE):
            if any(used[m.start():m.end()]):
                continue
            objects = [a for a in anchors if a.kind == "ref" and a.start >= m.end()
                       and _gap(text, m.end(), a.start) <= 4]
            if not objects:
                continue
            obj = objects[0]
            others = [a for a in anchors if a is not obj and a.sentence == obj.sentence]
            before = [a for a in others if a.end <= m.start()]
            subject = before[-1] if before else (min(others, key=lambda a: a.start) if others else None)
            if subject is not None:
                _claim(used, m.start(), m.end())
                found.append((subject, relation, obj, m.group(0)))
    return found


def _parse_cues(text, used, sentence_of) -> list[tuple[int, int, str, str, str, int]]:
    cues = []
    for pattern, kind, value in _CUES:
        for m in _free_matches(pattern, text, used):
            cues.append((m.start(), m.end(), kind, value, m.group(0), sentence_of(m.start())))
    return sorted(cues)


def _accepts(anchor: _Anchor, kind: str, value: str) -> bool:
    if anchor.kind == "quote":
        return kind == "text" or (kind in ("h", "v") and value != "left" and value != "right")
    if anchor.kind == "shapes":
        return kind in ("h", "v", "region")
    return kind != "text"


def _assign_cues(text, cues, anchors, refs, layout) -> None:
    side_by_side = False
    for start, end, kind, value, phrase, sentence in cues:
        if kind == "side":
            side_by_side = True
            continue
        near = [a for a in anchors if a.sentence == sentence and _accepts(a, kind, value)]
        if not near:
            continue
        # Nearest wins; on a tie the thing named first ("X on the left") beats the one after.
        anchor = min(near, key=lambda a: (_gap(text, a.end, start) if a.end <= start else _gap(text, end, a.start),
                                          0 if a.end <= start else 1))
        if anchor.kind == "quote":
            item = layout.texts[anchor.key]
            if not item.cues:
                item.position = value
            item.cues.append(phrase)
            continue
        target = refs[anchor.key] if anchor.kind == "ref" else layout.shapes[anchor.key]
        target.cues.append(phrase)
        if kind == "role" and isinstance(target, Placement):
            target.role = "background"
            target.region = "full"
        else:
            target.region = _combine(target.region, kind, value)
    if side_by_side:
        unplaced = [p for p in refs.values() if p.role == "subject" and p.region == "auto"]
        for p, side in zip(unplaced, ("left", "right"), strict=False):   # a third one stays "full"
            p.region, p.cues = side, p.cues + ["side by side"]


def _combine(region: str, kind: str, value: str) -> str:
    """Merge a horizontal or vertical word into a region name: top + left -> top-left."""
    if kind == "region":
        return value
    loose = region in ("auto", "full", "foreground", "center")
    if value == "center":
        return "center" if loose else region           # "top" stays "top": centred is implied
    parts = [] if loose else region.split("-")
    vertical = next((p for p in parts if p in ("top", "bottom")), None)
    horizontal = next((p for p in parts if p in ("left", "right")), None)
    if kind == "v":
        vertical = value
    else:
        horizontal = value
    return "-".join(p for p in (vertical, horizontal) if p)


def _apply_relation(subject, relation, obj, phrase, refs, layout) -> None:
    if subject.kind == "quote":
        item = layout.texts[subject.key]
        item.position = {"above": "top", "below": "bottom"}.get(relation, "sign")
        item.cues.append(phrase)
        return
    a = refs[subject.key] if subject.kind == "ref" else layout.shapes[subject.key]
    b = refs[obj.key]
    a.cues.append(f"{phrase} reference {b.ref}")
    b.cues.append(f"object of '{phrase}'")
    if relation in ("next-to", "left-of", "right-of"):
        if relation == "next-to":       # keep the object where the prompt put it, if anywhere
            a_side = "left" if b.region.endswith("right") else "right"
        else:
            a_side = "left" if relation == "left-of" else "right"
        b.region = _combine(b.region, "h", "right" if a_side == "left" else "left")
        a.region = _combine(b.region, "h", a_side)
    elif relation in ("above", "below"):
        a_v, b_v = ("top", "bottom") if relation == "above" else ("bottom", "top")
        b.region = _combine(b.region, "v", b_v)
        a.region = _combine(b.region, "v", a_v)
    elif relation == "in-front-of":
        a.region = "foreground"
        if b.role == "subject" and b.region == "auto":
            b.role, b.region = "background", "full"
    elif relation == "behind" and isinstance(a, Placement):
        a.role, a.region = "background", "full"
        if b.region == "auto":
            b.region = "foreground"


_COMPLEMENT = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "top-left": "bottom-right",
               "bottom-right": "top-left", "top-right": "bottom-left", "bottom-left": "top-right"}


def _resolve_regions(refs: dict[int, Placement], layout: Layout) -> None:
    """Give every reference the prompt left unplaced a region."""
    for p in refs.values():
        if p.role == "style" and p.region != "auto":   # named for style but also given a place
            p.role = "subject"
            layout.notes.append(f"reference {p.ref} is named for style and placed; shown as a subject")
    backgrounds = [p for p in refs.values() if p.role == "background"]
    for extra in backgrounds[1:]:                       # one background; later ones become subjects
        extra.role, extra.region = "subject", "auto"
        layout.notes.append(f"reference {extra.ref} also asked to be the background; placed as a subject")
    placed = [p.region for p in refs.values() if p.role == "subject" and p.region != "auto"]
    placed += [s.region for s in layout.shapes if s.region != "auto"]
    for p in refs.values():
        if p.role == "style":
            p.region = "none"
        elif p.role == "subject" and p.region == "auto":
            # Opposite the one thing already placed, else share the whole frame with the others.
            free = _COMPLEMENT.get(placed[0]) if len(placed) == 1 else None
            p.region = free if free and free not in placed else "full"
            p.cues.append("default")
            placed.append(p.region)
    for s in layout.shapes:                             # same rule; things sharing "full" sit side by side
        if s.region == "auto":
            s.region = (_COMPLEMENT.get(placed[0]) if len(placed) == 1 else None) or "full"


def _default_shape(text: str, layout: Layout) -> ShapeGroup:
    """With nothing to place, still draw one subject shape so the preview is never empty."""
    words = [_singular(w.lower()) for w in _TOKEN.findall(text)]
    noun = next((w for w in words if any(w in nouns for nouns in SHAPE_OF_NOUN.values())), "subject")
    shape = next((s for s, nouns in SHAPE_OF_NOUN.items() if noun in nouns), "circle")
    light_backdrop = layout.pastel or bool({"soft", "cold", "warm"} & set(layout.lighting))
    colour = DEFAULT_NOUN_COLOUR.get(noun) or ("navy" if light_backdrop else "white")
    return ShapeGroup(noun=noun, shape=shape, count=1, colour=colour, rgb=COLOURS[colour], region="center",
                      cues=["default subject"])


# ---- geometry ------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]    # x0, y0, x1, y1 in pixels

# Regions as fractions of the content area (the canvas minus text bands).
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "full": (0.0, 0.0, 1.0, 1.0), "center": (0.15, 0.05, 0.85, 0.95), "foreground": (0.12, 0.3, 0.88, 1.0),
    "left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.1, 0.0, 0.9, 0.5), "bottom": (0.1, 0.5, 0.9, 1.0),
    "top-left": (0.0, 0.0, 0.5, 0.5), "top-right": (0.5, 0.0, 1.0, 0.5),
    "bottom-left": (0.0, 0.5, 0.5, 1.0), "bottom-right": (0.5, 0.5, 1.0, 1.0),
}


def region_box(region: str, content: Box) -> Box:
    fx0, fy0, fx1, fy1 = REGIONS.get(region, REGIONS["center"])
    x0, y0, x1, y1 = content
    w, h = x1 - x0, y1 - y0
    return (x0 + round(fx0 * w), y0 + round(fy0 * h), x0 + round(fx1 * w), y0 + round(fy1 * h))


def split_box(box: Box, parts: int) -> list[Box]:
    """Cut a box into `parts` equal pieces along its longer side (several things sharing one region)."""
    x0, y0, x1, y1 = box
    if parts <= 1:
        return [box]
    if x1 - x0 >= y1 - y0:
        edges = [x0 + round(i * (x1 - x0) / parts) for i in range(parts + 1)]
        return [(edges[i], y0, edges[i + 1], y1) for i in range(parts)]
    edges = [y0 + round(i * (y1 - y0) / parts) for i in range(parts + 1)]
    return [(x0, edges[i], x1, edges[i + 1]) for i in range(parts)]


def grid_cells(box: Box, n: int, item_aspect: float) -> list[Box]:
    """`n` equal cells in `box`, choosing the column count that shows each item (w/h) largest."""
    x0, y0, x1, y1 = box
    w, h = max(1, x1 - x0), max(1, y1 - y0)

    def item_scale(cols: int) -> float:
        rows = -(-n // cols)
        return min(w / cols / item_aspect, h / rows)

    cols = max(range(1, n + 1), key=item_scale)
    rows = -(-n // cols)
    cells = []
    for k in range(n):
        r, c = divmod(k, cols)
        in_row = min(cols, n - r * cols)                     # centre a short last row
        offset = (cols - in_row) * w / cols / 2
        cells.append((round(x0 + offset + c * w / cols), round(y0 + r * h / rows),
                      round(x0 + offset + (c + 1) * w / cols), round(y0 + (r + 1) * h / rows)))
    return cells


def fit_inside(size: tuple[int, int], cell: Box, margin: int) -> Box:
    """The largest box with the aspect of `size` centred in `cell`, `margin` pixels in from its edges."""
    x0, y0, x1, y1 = cell
    cw, ch = max(1, x1 - x0 - 2 * margin), max(1, y1 - y0 - 2 * margin)
    scale = min(cw / size[0], ch / size[1])
    w, h = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    left, top = x0 + (x1 - x0 - w) // 2, y0 + (y1 - y0 - h) // 2
    return (left, top, left + w, top + h)
