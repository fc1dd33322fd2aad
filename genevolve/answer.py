"""From the policy's <answer> JSON to a program: resolution, named repairs, checks.

Resolution maps the answer's IMG ids to the images the searches found, sorts them by id (the
order ordinals refer to) and caps the list; it changes nothing the policy wrote in gen_prompt, and
its result is the *written* program that rewards score. Repairs are named steps that rewrite the
program so that a generator can use it (an id in gen_prompt becomes an ordinal, an ordinal past
the list is renumbered, a found image named by id joins the list); a protocol mode chooses which
run (the released runtime runs none). Every step records what it did as a ProgramIssue, and the
checks at the end record what is still wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from .limits import MAX_ANSWER_REFERENCE_ENTRIES, MAX_GEN_PROMPT_CHARS
from .program import (IMG_ID_MENTION_RE, IMG_ID_RE, Program, ProgramIssue, REPAIR_ISSUES, Reference,
                      check_gen_prompt, ids_to_ordinals, renumber_ordinals)

MAX_REFERENCES = 2


@dataclass(frozen=True)
class AnswerRules:
    """How an answer becomes a program."""

    max_references: int = MAX_REFERENCES
    drop_duplicates: bool = True           # the released runtime keeps a repeated id twice
    accept_bare_ids: bool = True           # "IMG_001" in the list instead of {"img_id": "IMG_001"}
    repairs: tuple[str, ...] = REPAIR_ISSUES   # which repair steps run, in this order
    max_gen_prompt_chars: int = MAX_GEN_PROMPT_CHARS          # longer is cut (genevolve/limits.py)
    max_reference_entries: int = MAX_ANSWER_REFERENCE_ENTRIES   # entries of the list looked at

    def __post_init__(self) -> None:
        unknown = set(self.repairs) - set(REPAIRS)
        if unknown:
            raise ValueError(f"unknown repair step(s) {sorted(unknown)}; known: {', '.join(REPAIRS)}")


@dataclass
class Resolved:
    written: Program                 # ids resolved, gen_prompt as written
    program: Program                 # after the repairs
    issues: list[ProgramIssue]       # resolution, repairs, then what is still wrong


def resolve_answer(answer: Any, found: dict[str, Reference], rules: AnswerRules | None = None) -> Resolved:
    rules = rules or AnswerRules()
    issues: list[ProgramIssue] = []
    answer = answer if isinstance(answer, dict) else {}
    gen_prompt = answer.get("gen_prompt")
    if not isinstance(gen_prompt, str):
        issues.append(ProgramIssue("gen_prompt_not_string", type(gen_prompt).__name__))
        gen_prompt = "" if gen_prompt is None else json.dumps(gen_prompt, ensure_ascii=False)
    gen_prompt = gen_prompt.strip()
    if len(gen_prompt) > rules.max_gen_prompt_chars:      # bounded before any repair or generator reads it
        issues.append(ProgramIssue("gen_prompt_truncated", f"{len(gen_prompt):,} characters; kept the first "
                                                          f"{rules.max_gen_prompt_chars:,}"))
        gen_prompt = gen_prompt[:rules.max_gen_prompt_chars].rstrip()
    chosen = _resolve_references(answer.get("reference_images", []), found, rules, issues)
    written = Program(gen_prompt=gen_prompt, references=chosen)
    program = Program(gen_prompt=gen_prompt, references=list(chosen))
    for name in rules.repairs:
        program = REPAIRS[name](program, found, rules, issues)
    issues.extend(check_gen_prompt(program.gen_prompt, len(program.references)))
    return Resolved(written, program, issues)


def _resolve_references(raw: Any, found: dict[str, Reference], rules: AnswerRules,
                        issues: list[ProgramIssue]) -> list[Reference]:
    if not isinstance(raw, list):
        issues.append(ProgramIssue("reference_images_not_list", type(raw).__name__))
        raw = []
    if len(raw) > rules.max_reference_entries:           # one issue for the rest, not one per entry
        issues.append(ProgramIssue("reference_list_cut", f"{len(raw):,} entries; read the first "
                                                        f"{rules.max_reference_entries}"))
        raw = raw[:rules.max_reference_entries]
    kept: list[Reference] = []
    for item in raw:
        if isinstance(item, str) and rules.accept_bare_ids:
            item = {"img_id": item}
        img_id = item.get("img_id") if isinstance(item, dict) else None
        if not isinstance(img_id, str) or not IMG_ID_RE.fullmatch(img_id.strip()):
            issues.append(ProgramIssue("malformed_reference", repr(item)[:200]))
            continue
        img_id = img_id.strip()
        if img_id not in found:
            issues.append(ProgramIssue("unknown_img_id", f"{img_id} dropped"))
            continue
        if rules.drop_duplicates and any(r.img_id == img_id for r in kept):
            issues.append(ProgramIssue("duplicate_img_id", f"{img_id} dropped"))
            continue
        note = item.get("note")
        kept.append(_reference(found[img_id], note.strip() if isinstance(note, str) else ""))
    order = [r.img_id for r in kept]
    kept.sort(key=lambda r: r.img_id)           # stable: duplicates stay together
    if [r.img_id for r in kept] != order:
        issues.append(ProgramIssue("references_reordered", f"{order} -> {[r.img_id for r in kept]}"))
    if len(kept) > rules.max_references:
        issues.append(ProgramIssue("references_truncated",
                                   f"kept {[r.img_id for r in kept[:rules.max_references]]}, "
                                   f"dropped {[r.img_id for r in kept[rules.max_references:]]}"))
        kept = kept[:rules.max_references]
    return kept


def _reference(found: Reference, note: str = "") -> Reference:
    return Reference(img_id=found.img_id, note=note, local_path=found.local_path, url=found.url,
                     title=found.title, page_url=found.page_url)


# -- repair steps: (program, found images, rules, issues) -> program ---------------------------

def add_named_references(program: Program, found: dict[str, Reference], rules: AnswerRules,
                         issues: list[ProgramIssue]) -> Program:
    """A found image that gen_prompt names by id ("the words from IMG-002") but the list left out:
    the policy meant to use it. It joins when there is room and it sorts after every chosen id,
    so that no ordinal already in gen_prompt changes its meaning."""
    refs = list(program.references)
    for mention in IMG_ID_MENTION_RE.finditer(program.gen_prompt):
        img_id = f"IMG_{mention.group(1)}"
        if img_id in found and all(img_id > r.img_id for r in refs) and len(refs) < rules.max_references:
            refs.append(_reference(found[img_id]))
            issues.append(ProgramIssue("reference_added", f"{img_id} named in gen_prompt"))
    return Program(program.gen_prompt, refs)


def replace_ids_with_ordinals(program: Program, found: dict[str, Reference], rules: AnswerRules,
                              issues: list[ProgramIssue]) -> Program:
    """Ids of chosen references in gen_prompt become their ordinal phrase."""
    text, done = ids_to_ordinals(program.gen_prompt, [r.img_id for r in program.references])
    issues.extend(done)
    return Program(text, program.references)


def renumber_out_of_range(program: Program, found: dict[str, Reference], rules: AnswerRules,
                          issues: list[ProgramIssue]) -> Program:
    """Ordinals past the list point at the references nothing names, when they pair up exactly."""
    text, done = renumber_ordinals(program.gen_prompt, len(program.references))
    issues.extend(done)
    return Program(text, program.references)


Repair = Callable[[Program, dict[str, Reference], AnswerRules, list[ProgramIssue]], Program]
REPAIRS: dict[str, Repair] = {
    "reference_added": add_named_references,
    "img_id_replaced": replace_ids_with_ordinals,
    "ordinal_renumbered": renumber_out_of_range,
}
