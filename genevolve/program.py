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


@dataclass(frozen=True)
class ProgramIssue:
    """Something the runtime found or changed in an answer: `kind` is one of ISSUE_KINDS."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}

    @classmethod
    def from_any(cls, value: Any) -> "ProgramIssue":
        """From {"kind", "detail"} or a schema-1 string "kind: detail"."""
        if isinstance(value, dict):
            return cls(str(value["kind"]), str(value.get("detail") or ""))
        if isinstance(value, str):
            kind, _, detail = value.partition(":")
            return cls(kind.strip(), detail.strip())
        raise TypeError(f"a program issue must be an object or a string, got {type(value).__name__}")


# Issue kinds. Resolution: how the answer's reference list became the program's. Repairs: what
# the runtime rewrote (each a named step a protocol mode may switch off). Unusable: what a
# generator would trip over; an answer with one of these is not usable as written.
RESOLUTION_ISSUES = ("gen_prompt_not_string", "gen_prompt_truncated", "reference_images_not_list",
                     "reference_list_cut", "malformed_reference", "unknown_img_id", "duplicate_img_id",
                     "references_reordered", "references_truncated")
REPAIR_ISSUES = ("reference_added", "img_id_replaced", "ordinal_renumbered")
UNUSABLE_ISSUES = ("empty_gen_prompt", "ordinal_out_of_range", "img_id_in_gen_prompt", "url_in_gen_prompt")
ISSUE_KINDS = RESOLUTION_ISSUES + REPAIR_ISSUES + UNUSABLE_ISSUES


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

    def check(self) -> list[ProgramIssue]:
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


def ids_to_ordinals(gen_prompt: str, reference_ids: list[str]) -> tuple[str, list[ProgramIssue]]:
    """Replace mentions of chosen references' ids in gen_prompt ("IMG_002", "image IMG-002")
    with their ordinal phrase ("the second reference image"), as the protocol wants them named.

    Returns the new text and one issue per replacement; ids of images not chosen stay (and are
    then reported by `check_gen_prompt`).
    """
    issues: list[ProgramIssue] = []

    def replace(m: re.Match) -> str:
        img_id = f"IMG_{m.group(1)}"
        if img_id not in reference_ids or reference_ids.index(img_id) + 1 not in _ORDINAL_WORD_OF:
            return m.group(0)
        phrase = f"the {_ORDINAL_WORD_OF[reference_ids.index(img_id) + 1]} reference image"
        issues.append(ProgramIssue("img_id_replaced", f"{m.group(0).strip()!r} -> {phrase!r}"))
        return phrase
    text = _ID_PHRASE_RE.sub(replace, gen_prompt)
    return re.sub(r"\bthe the\b", "the", text, flags=re.IGNORECASE), issues


def renumber_ordinals(gen_prompt: str, n_references: int) -> tuple[str, list[ProgramIssue]]:
    """Point ordinals past the reference list at the references no ordinal names, when they pair up.

    "The rocket is the first reference image. The heart is the fourth reference image." with two
    references means the second one: the one reference left unnamed. Out-of-range positions map
    in order onto the unnamed references only when there are exactly as many of each; otherwise
    the text is left as it is (and `check_gen_prompt` reports it). Returns the text and one issue
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
    issues: list[ProgramIssue] = []
    parts, last = [], 0
    for start, end, n in mentions:
        if n not in new_position:
            continue
        old = gen_prompt[start:end]
        m = _ORDINAL_BEFORE.fullmatch(old)
        new = (old[:m.start(1)] + _ORDINAL_WORD_OF[new_position[n]] + old[m.end(1):] if m else
               re.sub(r"\d+$", str(new_position[n]), old))
        issues.append(ProgramIssue("ordinal_renumbered", f"{old!r} -> {new!r}"))
        parts += [gen_prompt[last:start], new]
        last = end
    return "".join(parts) + gen_prompt[last:], issues


def unusable_issues(issues: list[ProgramIssue]) -> list[ProgramIssue]:
    """The issues among these that make the program unusable as written."""
    return [i for i in issues if i.kind in UNUSABLE_ISSUES]


def check_gen_prompt(gen_prompt: str, n_references: int) -> list[ProgramIssue]:
    issues: list[ProgramIssue] = []
    if not gen_prompt.strip():
        issues.append(ProgramIssue("empty_gen_prompt"))
        return issues
    beyond = sorted({n for n in ordinals_in(gen_prompt) if n > n_references})
    if beyond:
        issues.append(ProgramIssue("ordinal_out_of_range", f"gen_prompt names reference {beyond} "
                                                           f"but the program has {n_references}"))
    ids = [m.group(0) for m in IMG_ID_MENTION_RE.finditer(gen_prompt)]
    if ids:
        issues.append(ProgramIssue("img_id_in_gen_prompt", str(sorted(set(ids)))))
    if URL_RE.search(gen_prompt):
        issues.append(ProgramIssue("url_in_gen_prompt"))
    return issues
