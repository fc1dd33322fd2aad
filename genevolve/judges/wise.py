"""WISE: world-knowledge text-to-image evaluation, both published scoring protocols.

Prompt files are JSON arrays of {Prompt, Explanation, Category, Subcategory, prompt_id}; users point
at their own copy (the WISE repository has no licence file, so we ship none). Images are named
`{prompt_id}.png` in one folder. Categories come from prompt_id ranges, as in the WISE scripts,
because the Category strings are cased inconsistently.

- legacy:   a judge rates consistency, realism and aesthetic quality on 0-2;
            WiScore = (0.7·consistency + 0.2·realism + 0.1·aesthetic) / 2;
            overall = 0.4·cultural + 0.167·time + 0.133·space + 0.1·(biology + physics + chemistry).
- verified: a judge answers `Score: 1` or `Score: 0` per image;
            overall = 0.40·cultural + 0.12·(time + space + biology + physics + chemistry).
The two protocols use different prompt files and id ranges; their numbers are not comparable.
Scoring a folder of images is a batch stage: `genevolve.pipeline.wise.score_images`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .base import JudgeError
from .kscore import grade, missing_images
from ..jsonio import extract_json
from .vlm_client import EndpointJudge, ask_until_valid, text_part

CATEGORIES = ("cultural", "time", "space", "biology", "physics", "chemistry")


@dataclass(frozen=True)
class Protocol:
    name: str
    ranges: tuple[tuple[str, int, int], ...]      # (category, first id, last id), inclusive
    weights: dict[str, float]
    rubric_version: str

    def category_of(self, prompt_id: int) -> str | None:
        for name, lo, hi in self.ranges:
            if lo <= prompt_id <= hi:
                return name
        return None


LEGACY = Protocol(
    name="legacy",
    ranges=(("cultural", 1, 400), ("time", 401, 567), ("space", 568, 700), ("biology", 701, 800),
            ("physics", 801, 900), ("chemistry", 901, 1000)),
    weights={"cultural": 0.4, "time": 0.167, "space": 0.133, "biology": 0.1, "physics": 0.1, "chemistry": 0.1},
    rubric_version="genevolve-wise-legacy-1")
VERIFIED = Protocol(
    name="verified",
    ranges=(("cultural", 1, 400), ("time", 401, 520), ("space", 521, 640), ("biology", 641, 760),
            ("physics", 761, 880), ("chemistry", 881, 1000)),
    weights={"cultural": 0.40, "time": 0.12, "space": 0.12, "biology": 0.12, "physics": 0.12, "chemistry": 0.12},
    rubric_version="genevolve-wise-verified-1")
PROTOCOLS = {p.name: p for p in (LEGACY, VERIFIED)}


# ---------------------------------------------------------------------------------------------
# Prompt files

@dataclass
class WisePrompt:
    prompt_id: int
    prompt: str
    explanation: str
    category: str
    subcategory: str

    def to_row(self) -> dict[str, Any]:
        """An input row for the agent batch; the id is the prompt_id so images land as {id}.png."""
        return {"id": str(self.prompt_id), "prompt": self.prompt, "prompt_id": self.prompt_id,
                "explanation": self.explanation, "category": self.category, "subcategory": self.subcategory}


# Files in the WISE repository's data folders that copy the category files: data_verified/merge.json
# concatenates them, WISE_legacy/data/*_rewrite.json repeats them with prompts simplified to the answer.
_MERGED = re.compile(r"^merge.*\.json$", re.IGNORECASE)
_REWRITTEN = re.compile(r"_rewrite\.json$", re.IGNORECASE)


def prompt_files(paths: Iterable[str | Path], say: Callable[[str], None] = lambda m: None) -> list[Path]:
    """The prompt files that `paths` name: files as given, folders as their *.json files. Where
    category files are among them, the merged and rewritten copies are skipped (their prompt_ids
    repeat the category files'), each with a note to `say`; given alone, a copy is read as asked."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise ValueError(f"{path}: a folder with no .json prompt files")
            files += found
        else:
            files.append(path)
    copies = [f for f in files if _MERGED.search(f.name) or _REWRITTEN.search(f.name)]
    if len(copies) == len(files):
        return files
    for f in copies:
        what = ("the category files merged into one" if _MERGED.search(f.name) else
                "the category file with its prompts rewritten")
        say(f"skipping {f}: {what}, whose prompt_ids repeat the category files'")
    return [f for f in files if f not in copies]


def sample_prompts(prompts: list[WisePrompt], n: int, seed: int = 0) -> list[WisePrompt]:
    """`n` prompts drawn at random (seeded) with each category's share of the whole, so a small
    sample covers every category (the first n by prompt_id would all be cultural)."""
    if n >= len(prompts):
        return list(prompts)
    groups: dict[str, list[WisePrompt]] = {}
    for p in prompts:
        groups.setdefault(normalised_category(p.category) or p.category.strip().lower(), []).append(p)
    shares = {c: n * len(g) / len(prompts) for c, g in groups.items()}
    counts = {c: int(share) for c, share in shares.items()}
    # the seats left over go to the largest remainders (Hamilton's method), ties to the larger group
    left = n - sum(counts.values())
    for c in sorted(groups, key=lambda c: (shares[c] - counts[c], len(groups[c])), reverse=True)[:left]:
        counts[c] += 1
    rng = random.Random(seed)
    chosen = [p for c, g in sorted(groups.items()) for p in rng.sample(g, counts[c])]
    return sorted(chosen, key=lambda p: p.prompt_id)


def load_prompts(paths: Iterable[str | Path], say: Callable[[str], None] = lambda m: None) -> list[WisePrompt]:
    """Read WISE prompt files, or the WISE repository's data folders (see `prompt_files`); errors
    name the file, the record and the field."""
    prompts: list[WisePrompt] = []
    seen: dict[int, str] = {}
    for path in prompt_files(paths, say):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the prompt file ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: a WISE prompt file is a JSON array of records")
        for i, rec in enumerate(data):
            where = f"{path} record {i}"
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
            pid = rec.get("prompt_id")
            if isinstance(pid, str) and pid.strip().isdigit():
                pid = int(pid)
            if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
                raise ValueError(f"{where}: 'prompt_id' must be a positive integer, got {pid!r}")
            for key in ("Prompt", "Explanation"):
                if not isinstance(rec.get(key), str) or not rec[key].strip():
                    raise ValueError(f"{where} (prompt_id {pid}): '{key}' must be non-empty text")
            if pid in seen:
                raise ValueError(f"{where}: prompt_id {pid} already appears in {seen[pid]}")
            seen[pid] = where
            prompts.append(WisePrompt(prompt_id=pid, prompt=rec["Prompt"].strip(),
                                      explanation=rec["Explanation"].strip(),
                                      category=str(rec.get("Category", "")),
                                      subcategory=str(rec.get("Subcategory", ""))))
    return sorted(prompts, key=lambda p: p.prompt_id)


def normalised_category(label: str) -> str | None:
    """'Cultural knowledge' -> cultural, 'Physical Knowledge' -> physics, 'time' -> time, ..."""
    low = label.strip().lower()
    for prefix, name in (("cult", "cultural"), ("time", "time"), ("spa", "space"), ("bio", "biology"),
                         ("phys", "physics"), ("chem", "chemistry")):
        if low.startswith(prefix):
            return name
    return None


def range_mismatches(prompts: list[WisePrompt], protocol: Protocol) -> list[int]:
    """prompt_ids whose Category label disagrees with the protocol's id ranges: a sign of scoring
    one protocol's prompt files with the other protocol."""
    return [p.prompt_id for p in prompts
            if normalised_category(p.category) not in (None, protocol.category_of(p.prompt_id))]


# ---------------------------------------------------------------------------------------------
# Judge prompts and reply parsing

LEGACY_SYSTEM = """\
You evaluate one image made by a text-to-image system for a prompt that tests world knowledge.
You get the prompt and an explanation of what a correct image must show (the knowledge the prompt
hides). Rate three things, each an integer 0, 1 or 2:

consistency - does the image show what the explanation says the prompt means?
  2: fully and clearly; 1: partly, or with an important error; 0: no, or the literal words of the
  prompt were drawn without the knowledge behind them.
realism - is the image physically and visually plausible, with natural detail?
  2: convincingly real; 1: noticeable flaws; 0: clearly implausible or broken.
aesthetic_quality - composition, colour, lighting, detail.
  2: high quality; 1: ordinary; 0: poor.

Answer with one JSON object and nothing else:
{"rationale": "<one to three sentences>", "consistency": 0|1|2, "realism": 0|1|2, "aesthetic_quality": 0|1|2}
"""

VERIFIED_SYSTEM = """\
You check one image made by a text-to-image system for a prompt that tests world knowledge. You get
the prompt and an explanation of what a correct image must show. Decide whether the image shows the
intended content as the explanation describes it: the right subject, state, time, place or reaction.
Image quality does not matter unless it hides the content. Drawing the literal words of the prompt
without the knowledge behind them is wrong.

Reason briefly, then end your reply with a final line that is exactly `Score: 1` (correct) or
`Score: 0` (not correct).
"""

_SCORE_LINE = re.compile(r"score\s*[:=]\s*\**\s*([01])\b", re.IGNORECASE)
_LEGACY_KEYS = ("consistency", "realism", "aesthetic_quality")


def parse_legacy_reply(reply: str) -> dict[str, float]:
    """{consistency, realism, aesthetic_quality} on 0-2, from JSON or from 'Name: n' lines."""
    try:
        obj = extract_json(reply)
        obj = {k.lower().replace(" ", "_"): v for k, v in obj.items()}
        obj.setdefault("aesthetic_quality", obj.get("aesthetic", obj.get("aesthetics")))
    except ValueError:
        obj = {}
        for key in _LEGACY_KEYS:
            m = re.search(rf"{key.split('_')[0]}[a-z _]*\**\s*[:=]\s*\**\s*([0-9.]+)", reply, re.IGNORECASE)
            if m:
                obj[key] = m.group(1)
    missing = [k for k in _LEGACY_KEYS if obj.get(k) is None]
    if missing:
        raise ValueError(f"reply lacks {', '.join(missing)}")
    return {k: grade(obj[k], k, (0.0, 1.0, 2.0)) for k in _LEGACY_KEYS}


def parse_verified_reply(reply: str) -> float:
    """The binary score of the last `Score: 0/1` line."""
    found = _SCORE_LINE.findall(reply)
    if not found:
        raise ValueError("reply has no 'Score: 0' or 'Score: 1' line")
    return float(found[-1])


def wiscore(consistency: float, realism: float, aesthetic_quality: float) -> float:
    """Legacy per-image score in [0, 1]."""
    return (0.7 * consistency + 0.2 * realism + 0.1 * aesthetic_quality) / 2


# ---------------------------------------------------------------------------------------------
# The judge

class WiseJudge(EndpointJudge):
    """Scores one image per WISE prompt under one protocol, over an OpenAI-compatible endpoint."""

    def __init__(self, protocol: str, *args: Any, **kwargs: Any):
        """`protocol` names the WISE judging protocol; the rest is `EndpointJudge`'s."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown WISE protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
        self.protocol = PROTOCOLS[protocol]
        super().__init__(*args, **kwargs)

    def info(self) -> dict[str, str]:
        return {"judge": f"wise-{self.protocol.name}", "model": self.endpoint.model,
                "endpoint": self.endpoint.base_url, "rubric_version": self.protocol.rubric_version}

    async def score(self, prompt: WisePrompt, image: str | Path) -> dict[str, Any]:
        """One score record in the WISE score-file layout, plus category, judge info and error."""
        record: dict[str, Any] = {"id": str(prompt.prompt_id), "prompt_id": prompt.prompt_id,
                                  "category": self.protocol.category_of(prompt.prompt_id),
                                  "judge": self.info(), "error": None}
        problem = missing_images(generated=image)
        if problem:
            return {**record, "error": problem}
        legacy = self.protocol is LEGACY
        system, parse = (LEGACY_SYSTEM, parse_legacy_reply) if legacy else (VERIFIED_SYSTEM, parse_verified_reply)
        user = [text_part(f"Prompt: {prompt.prompt}\nExplanation: {prompt.explanation}\n\nThe image:"),
                self.client.image(image)]
        try:
            value, attempts = await ask_until_valid(
                self.client, [{"role": "system", "content": system}, {"role": "user", "content": user}],
                parse, self.max_attempts)
        except JudgeError as exc:
            return {**record, "error": str(exc)}
        if legacy:
            return {**record, **value, "wiscore": wiscore(**value), "attempts": attempts}
        return {**record, "score": value, "attempts": attempts}


# ---------------------------------------------------------------------------------------------
# Aggregation

def item_score(record: dict[str, Any], protocol: Protocol) -> float | None:
    if record.get("error"):
        return None
    if protocol is LEGACY:
        if any(record.get(k) is None for k in _LEGACY_KEYS):
            return None
        return wiscore(record["consistency"], record["realism"], record["aesthetic_quality"])
    return record.get("score")


def summarize_wise(records: Iterable[dict[str, Any]], protocol: Protocol,
                   judge_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Category means and the weighted overall.

    Failed items (missing image, judge failure) are left out of the means and listed; the
    `*_missing_zero` figures count them as 0. `overall` needs all six categories; with some missing
    it is None and `overall_renormalised` weighs the present ones.
    """
    by_cat: dict[str, list[dict[str, Any]]] = {c: [] for c in CATEGORIES}
    unassigned: list[Any] = []
    for r in records:
        cat = protocol.category_of(int(r["prompt_id"]))
        (by_cat[cat] if cat else unassigned).append(r if cat else r["prompt_id"])
    categories: dict[str, Any] = {}
    for cat, rows in by_cat.items():
        values = [s for s in (item_score(r, protocol) for r in rows) if s is not None]
        categories[cat] = {"n_items": len(rows), "n_scored": len(values), "n_failed": len(rows) - len(values),
                           "score": sum(values) / len(values) if values else None,
                           "score_missing_zero": sum(values) / len(rows) if rows else None}
    present = [c for c in CATEGORIES if categories[c]["score"] is not None]
    weight = sum(protocol.weights[c] for c in present)
    all_rows = [r for rows in by_cat.values() for r in rows]
    return {
        "protocol": protocol.name,
        "overall": (sum(protocol.weights[c] * categories[c]["score"] for c in CATEGORIES)
                    if len(present) == len(CATEGORIES) else None),
        "overall_renormalised": (sum(protocol.weights[c] * categories[c]["score"] for c in present) / weight
                                 if present else None),
        "overall_missing_zero": (sum(protocol.weights[c] * categories[c]["score_missing_zero"] for c in CATEGORIES)
                                 if all(categories[c]["n_items"] for c in CATEGORIES) else None),
        "categories": categories,
        "weights": dict(protocol.weights),
        "n_items": len(all_rows),
        "n_scored": sum(categories[c]["n_scored"] for c in CATEGORIES),
        "n_failed": sum(categories[c]["n_failed"] for c in CATEGORIES),
        "failures": [{"prompt_id": r["prompt_id"], "error": r.get("error") or "incomplete scores"}
                     for r in all_rows if item_score(r, protocol) is None],
        "unassigned_prompt_ids": unassigned,
        "judge": dict(judge_info or {}),
    }


def format_wise_table(summary: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"
    label = f"WISE {summary['protocol']}"
    head = "".join(f"{c:>10}" for c in (*CATEGORIES, "overall"))
    vals = "".join(f"{f(summary['categories'][c]['score']):>10}" for c in CATEGORIES) + f"{f(summary['overall']):>10}"
    return f"{label:<14}{head}\n{'':<14}{vals}"


def score_row(record: dict[str, Any], protocol: Protocol) -> dict[str, Any]:
    """A scored record in the layout of WISE's own score files."""
    keys = ("prompt_id", *_LEGACY_KEYS) if protocol is LEGACY else ("prompt_id", "score")
    return {k: record[k] for k in keys}
