"""The prompt-reference program z = (g, R) that the agent hands to a generator.

`g` is the generation prompt; it may name references only by ordinal words
("the first reference image"), because generators receive the images as an
ordered list and know nothing of the agent's IMG ids.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

IMG_ID_RE = re.compile(r"\bIMG_\d{3,}\b")
# An image id as written in prose, also misspelt ("IMG-001", "IMG 001"): none belongs in gen_prompt.
_ID_MENTION = r"\bIMG[\s_-]?(\d{3,})\b"
IMG_ID_MENTION_RE = re.compile(_ID_MENTION, re.IGNORECASE)
URL_RE = re.compile(r"\bhttps?://\S+|\bwww\.\S+", re.IGNORECASE)

_ORDINAL_WORDS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5,
    "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10,
    "1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5,
}
_ORDINAL_WORD_OF = {n: w for w, n in _ORDINAL_WORDS.items() if w.isalpha()}     # 2 -> "second"
# "the second reference image", "the 3rd reference", "reference image 2", "ref image #2"
_ORDINAL_BEFORE = re.compile(
    r"\b(" + "|".join(_ORDINAL_WORDS) + r")\s+(?:reference|ref)(?:\s+(?:image|photo|picture))?\b",
    re.IGNORECASE,
)
_NUMBER_AFTER = re.compile(r"\b(?:reference|ref)\s+(?:image|photo|picture)?\s*#?(\d+)\b", re.IGNORECASE)


@dataclass
class Reference:
    """One reference image of a program, as the policy chose it."""

    img_id: str
    note: str = ""
    local_path: str | None = None
    url: str | None = None
    title: str | None = None
    page_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Reference":
        return cls(**{k: d.get(k) for k in ("img_id", "note", "local_path", "url", "title", "page_url")
                      if k in d})


@dataclass
class Program:
    gen_prompt: str
    references: list[Reference] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"gen_prompt": self.gen_prompt, "reference_images": [r.to_dict() for r in self.references]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Program":
        refs = d.get("reference_images") or d.get("references") or []
        return cls(gen_prompt=d.get("gen_prompt") or "", references=[Reference.from_dict(r) for r in refs])

    def check(self) -> list[str]:
        """Problems a generator would trip over; empty when the program is clean."""
        return check_gen_prompt(self.gen_prompt, len(self.references))


def reference_mentions(text: str) -> list[tuple[int, int, int]]:
    """Where `text` names a reference by position: (start, end, 1-based position), in text order."""
    found = [(m.start(), m.end(), _ORDINAL_WORDS[m.group(1).lower()]) for m in _ORDINAL_BEFORE.finditer(text)]
    found += [(m.start(), m.end(), int(m.group(1))) for m in _NUMBER_AFTER.finditer(text)]
    found.sort()
    kept: list[tuple[int, int, int]] = []
    for item in found:                     # "the first reference image 1" must not count twice
        if not kept or item[0] >= kept[-1][1]:
            kept.append(item)
    return kept


def ordinals_in(text: str) -> list[int]:
    """Every reference position (1-based) that `text` names, in order of appearance."""
    return [n for _, _, n in reference_mentions(text)]


# An id mention with the words around it that an ordinal phrase replaces ("the reference image IMG001").
_ID_PHRASE_RE = re.compile(r"(?:\b(?:the\s+)?(?:reference\s+)?(?:image|picture|photo)\s+)?"
                           r"\(?" + _ID_MENTION + r"\)?", re.IGNORECASE)


def ids_to_ordinals(gen_prompt: str, reference_ids: list[str]) -> tuple[str, list[str]]:
    """Replace mentions of chosen references' ids in gen_prompt ("IMG_002", "image IMG-002")
    with their ordinal phrase ("the second reference image"), as the protocol wants them named.

    Returns the new text and one note per replacement; ids of images not chosen stay (and are
    then reported by `check_gen_prompt`).
    """
    notes: list[str] = []

    def replace(m: re.Match) -> str:
        img_id = f"IMG_{m.group(1)}"
        if img_id not in reference_ids or reference_ids.index(img_id) + 1 not in _ORDINAL_WORD_OF:
            return m.group(0)
        phrase = f"the {_ORDINAL_WORD_OF[reference_ids.index(img_id) + 1]} reference image"
        notes.append(f"img_id_replaced: {m.group(0).strip()!r} -> {phrase!r}")
        return phrase
    text = _ID_PHRASE_RE.sub(replace, gen_prompt)
    return re.sub(r"\bthe the\b", "the", text, flags=re.IGNORECASE), notes


def renumber_ordinals(gen_prompt: str, n_references: int) -> tuple[str, list[str]]:
    """Point ordinals past the reference list at the references no ordinal names, when they pair up.

    "The rocket is the first reference image. The heart is the fourth reference image." with two
    references means the second one: the one reference left unnamed. Out-of-range positions map
    in order onto the unnamed references only when there are exactly as many of each; otherwise
    the text is left as it is (and `check_gen_prompt` reports it). Returns the text and one note
    per rewritten mention.
    """
    mentions = reference_mentions(gen_prompt)
    beyond = sorted({n for _, _, n in mentions if n > n_references})
    # A position counts as named when its word occurs at all ("the first and second reference
    # image" names both), so a doubtful text is left alone.
    named = {m for _, _, m in mentions} | {n for w, n in _ORDINAL_WORDS.items()
                                           if re.search(rf"\b{w}\b", gen_prompt, re.IGNORECASE)}
    unnamed = [n for n in range(1, n_references + 1) if n not in named]
    if not beyond or len(beyond) != len(unnamed):
        return gen_prompt, []
    new_position = dict(zip(beyond, unnamed))
    notes: list[str] = []
    parts, last = [], 0
    for start, end, n in mentions:
        if n not in new_position:
            continue
        old = gen_prompt[start:end]
        m = _ORDINAL_BEFORE.fullmatch(old)
        new = (old[:m.start(1)] + _ORDINAL_WORD_OF[new_position[n]] + old[m.end(1):] if m else
               re.sub(r"\d+$", str(new_position[n]), old))
        notes.append(f"ordinal_renumbered: {old!r} -> {new!r}")
        parts += [gen_prompt[last:start], new]
        last = end
    return "".join(parts) + gen_prompt[last:], notes


# Issues (prefixes of `check_gen_prompt`'s strings) that make a program unusable as written, as
# opposed to repairs the runtime already made (reordered or dropped references).
UNUSABLE_PROGRAM_ISSUES = ("empty_gen_prompt", "ordinal_out_of_range", "img_id_in_gen_prompt", "url_in_gen_prompt")


def unusable_issues(issues: list[str]) -> list[str]:
    """The issues among these that make the program unusable as written."""
    return [i for i in issues if i.startswith(UNUSABLE_PROGRAM_ISSUES)]


def check_gen_prompt(gen_prompt: str, n_references: int) -> list[str]:
    issues: list[str] = []
    if not gen_prompt.strip():
        issues.append("empty_gen_prompt")
        return issues
    beyond = sorted({n for n in ordinals_in(gen_prompt) if n > n_references})
    if beyond:
        issues.append(f"ordinal_out_of_range: gen_prompt names reference {beyond} "
                      f"but the program has {n_references}")
    ids = [m.group(0) for m in IMG_ID_MENTION_RE.finditer(gen_prompt)]
    if ids:
        issues.append(f"img_id_in_gen_prompt: {sorted(set(ids))}")
    if URL_RE.search(gen_prompt):
        issues.append("url_in_gen_prompt")
    return issues
