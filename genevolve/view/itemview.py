"""One item as the page shows it: records of any schema version turned into turns, images, a program.

Reads result rows of `genevolve run`/`render` (schema 2 and the older schema 1: program issues as
strings, no token fields, no `answer`/`written_program`), trajectory records (training rollouts),
`generate` results, and messages-only records (SFT data). The messages are the spine: they are
exactly what the policy saw and wrote. Turn records (tokens, seconds, action) attach to their
assistant message by `message_index` (schema 2) or by order (schema 1); tool-call records attach
by round.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..program import REPAIR_ISSUES, RESOLUTION_ISSUES
from .records import issue_kind

# What the runtime did to an answer (resolution steps and repairs, named in program_issues); other
# kinds are problems. Rows of schema 1 spelt a dropped malformed entry as a phrase.
REPAIR_KINDS = RESOLUTION_ISSUES + REPAIR_ISSUES + ("malformed reference entry dropped",)
_ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_IMG_LINE_RE = re.compile(r"\[(IMG_\d{3,})\]\s*(.*)")


@dataclass
class FoundImage:
    img_id: str
    title: str = ""
    local_path: str | None = None
    url: str | None = None
    page_url: str | None = None
    note: str = ""


@dataclass
class TurnView:
    number: int
    round: int | None = None
    action: str = ""
    text: str = ""                  # the assistant message as written
    think: str | None = None
    tool_name: str | None = None
    arguments: Any = None
    observation: str | None = None
    tool_error: str | None = None
    repeat: bool = False
    tool_seconds: float | None = None
    found: list[FoundImage] = field(default_factory=list)
    answer_raw: str | None = None
    note: str | None = None
    replies: list[str] = field(default_factory=list)     # runtime messages after this turn
    tokens: dict[str, Any] = field(default_factory=dict)  # prompt, cached, completion
    seconds: float | None = None
    finish_reason: str | None = None


@dataclass
class Issue:
    kind: str
    detail: str
    repair: bool


@dataclass
class ItemView:
    request: str = ""
    system_prompt: str | None = None
    guide: str | None = None
    turns: list[TurnView] = field(default_factory=list)
    images: dict[str, FoundImage] = field(default_factory=dict)
    answer_raw: str | None = None
    written: dict[str, Any] | None = None       # the program as the policy wrote it
    program: dict[str, Any] | None = None       # after the runtime's repairs
    issues: list[Issue] = field(default_factory=list)
    termination: str | None = None
    rounds: int | None = None
    error: str | None = None
    policy: str | None = None
    protocol: str | None = None
    schema_version: int = 1
    seconds: float | None = None
    tokens: dict[str, int] = field(default_factory=dict)
    extra_images: list[str] = field(default_factory=list)   # SFT `images` that match no IMG id


def _parse(text: str):
    try:
        from ..protocol import parse_turn
        return parse_turn(text)
    except Exception:                    # a record the current parser rejects is still shown
        return None


def trajectory_of(record: dict[str, Any]) -> dict[str, Any]:
    """The trajectory part of any record: a `generate` result nests it, the others are flat."""
    if isinstance(record.get("trajectory"), dict):
        return {**record["trajectory"], **{k: v for k, v in record.items() if k == "program" and v}}
    return record


def build_item(record: dict[str, Any]) -> ItemView:
    t = trajectory_of(record)
    view = ItemView()
    view.request = next((t[k] for k in ("request", "prompt", "question") if isinstance(t.get(k), str)), "")
    view.schema_version = t.get("schema_version") if isinstance(t.get("schema_version"), int) else 1
    for attr, key in (("termination", "termination"), ("error", "error"), ("policy", "policy"),
                      ("protocol", "protocol"), ("guide", "guide")):
        if t.get(key) is not None:
            setattr(view, attr, str(t[key]))
    view.rounds = t.get("rounds") if isinstance(t.get("rounds"), int) else None
    view.seconds = t.get("duration_s") if isinstance(t.get("duration_s"), (int, float)) else None

    messages = [m for m in t.get("messages") or [] if isinstance(m, dict)]
    turns = [x for x in t.get("turns") or [] if isinstance(x, dict)]
    calls = [c for c in t.get("tool_calls") or [] if isinstance(c, dict)]
    view.images = _found_images(t, calls, messages)
    if messages and messages[0].get("role") == "system":
        view.system_prompt = str(messages[0].get("content") or "")
    view.turns = _turns(messages, turns, calls, view.images)
    if not view.request:
        first_user = next((m for m in messages if m.get("role") == "user"), None)
        view.request = str(first_user.get("content") or "") if first_user else ""
    for key in ("prompt", "cached", "completion"):
        values = [tv.tokens[key] for tv in view.turns if isinstance(tv.tokens.get(key), int)]
        if values:
            view.tokens[key] = sum(values)
    _program(view, t)
    if isinstance(t.get("images"), list):          # SFT record: image files in IMG id order
        known = {f.local_path for f in view.images.values()}
        view.extra_images = [p for p in t["images"] if isinstance(p, str) and p not in known]
    return view


def _found_images(t: dict[str, Any], calls: list[dict[str, Any]], messages: list[dict]) -> dict[str, FoundImage]:
    found: dict[str, FoundImage] = {}
    files = t.get("images")
    if isinstance(files, list) and files and not calls:
        # an SFT record: `images[k]` is the k-th IMG id the observations name, when all were kept
        titles: dict[str, str] = {}
        for m in messages:
            if m.get("role") == "user" and str(m.get("content") or "").lstrip().startswith("<tool_response>"):
                for match in _IMG_LINE_RE.finditer(str(m["content"])):
                    titles.setdefault(match.group(1), match.group(2).strip())
        if len(titles) == len(files) and all(isinstance(p, str) for p in files):
            return {i: FoundImage(i, titles[i], local_path=p) for i, p in zip(sorted(titles), files)}
    images = t.get("images")
    if isinstance(images, dict):                     # schema 2: the trajectory's registry
        for img_id, d in images.items():
            if isinstance(d, dict):
                found[str(img_id)] = _image(str(img_id), d)
    for call in calls:                               # schema 1: what each image search returned
        data = call.get("data") if isinstance(call.get("data"), dict) else {}
        for d in data.get("images") or []:
            if isinstance(d, dict) and isinstance(d.get("img_id"), str) and d["img_id"] not in found:
                found[d["img_id"]] = _image(d["img_id"], d)
    return dict(sorted(found.items()))


def _image(img_id: str, d: dict[str, Any]) -> FoundImage:
    def s(key: str) -> str | None:
        return d[key] if isinstance(d.get(key), str) else None
    return FoundImage(img_id, s("title") or "", s("local_path"), s("url"), s("page_url"), s("note") or "")


def _turns(messages: list[dict], turns: list[dict], calls: list[dict],
           images: dict[str, FoundImage]) -> list[TurnView]:
    assistant_at = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    by_message: dict[int, dict] = {}
    for n, turn in enumerate(turns):
        index = turn.get("message_index")
        if not isinstance(index, int) and n < len(assistant_at):
            index = assistant_at[n]
        if isinstance(index, int):
            by_message[index] = turn
    unused_calls = list(calls)
    views: list[TurnView] = []
    if not assistant_at:                             # turns without messages: what the records say
        for n, turn in enumerate(turns, 1):
            tv = _turn_view(n, "", turn)
            _attach_call(tv, unused_calls, images)
            views.append(tv)
        return views
    for n, index in enumerate(assistant_at, 1):
        text = str(messages[index].get("content") or "")
        tv = _turn_view(n, text, by_message.get(index, {}))
        parsed = _parse(text)
        if parsed is not None:
            tv.think = parsed.think
            if parsed.kind == "tool_call":
                tv.tool_name, tv.arguments = parsed.tool_name, parsed.arguments
            elif parsed.kind == "answer":
                tv.answer_raw = getattr(parsed, "raw", None) or _answer_text(text)
            if not tv.action:
                tv.action = {"error": "format_error"}.get(parsed.kind, parsed.kind)
        if tv.action == "tool_call" or (not turns and tv.tool_name):
            _attach_call(tv, unused_calls, images)
        # the runtime's replies up to the next assistant message (observation, errors, final step)
        following = messages[index + 1: assistant_at[n] if n < len(assistant_at) else len(messages)]
        for m in following:
            content = str(m.get("content") or "")
            if tv.observation is not None and content.lstrip().startswith("<tool_response>"):
                continue                             # the observation, shown from the call record
            if tv.observation is None and tv.tool_name and tv.action == "tool_call" \
                    and content.lstrip().startswith("<tool_response>"):
                tv.observation = _strip_response(content)
                tv.found = _images_in(tv.observation, images)
                continue
            tv.replies.append(_strip_response(content))
        views.append(tv)
    return views


def _turn_view(number: int, text: str, turn: dict[str, Any]) -> TurnView:
    tv = TurnView(number=number, text=text)
    tv.round = turn.get("round") if isinstance(turn.get("round"), int) else None
    tv.action = str(turn.get("action") or "")
    tv.note = turn.get("note") if isinstance(turn.get("note"), str) else None
    tv.finish_reason = turn.get("finish_reason") if isinstance(turn.get("finish_reason"), str) else None
    for key in ("prompt", "cached", "completion"):
        value = turn.get(f"{key}_tokens")
        if isinstance(value, int):
            tv.tokens[key] = value
    latency = turn.get("latency_s")
    tv.seconds = float(latency) if isinstance(latency, (int, float)) else None
    return tv


def _attach_call(tv: TurnView, calls: list[dict], images: dict[str, FoundImage]) -> None:
    match = next((c for c in calls if tv.round is None or c.get("round") == tv.round), None)
    if match is None:
        return
    calls.remove(match)
    tv.tool_name = tv.tool_name or str(match.get("name") or "")
    if tv.arguments is None:
        tv.arguments = match.get("arguments")
    tv.observation = str(match.get("observation") or "")
    tv.tool_error = str(match["error"]) if match.get("error") else None
    tv.repeat = bool(match.get("repeat"))
    tv.tool_seconds = match.get("duration_s") if isinstance(match.get("duration_s"), (int, float)) else None
    data = match.get("data") if isinstance(match.get("data"), dict) else {}
    ids = [d.get("img_id") for d in data.get("images") or [] if isinstance(d, dict)]
    tv.found = [images[i] for i in ids if i in images] or _images_in(tv.observation, images)


def _images_in(observation: str, images: dict[str, FoundImage]) -> list[FoundImage]:
    """Images an observation lists ("[IMG_001] title"), from the registry or from the text alone."""
    out = []
    for m in _IMG_LINE_RE.finditer(observation or ""):
        out.append(images.get(m.group(1)) or FoundImage(m.group(1), m.group(2).strip()))
    return out


def _strip_response(content: str) -> str:
    text = content.strip()
    if text.startswith("<tool_response>"):
        text = text[len("<tool_response>"):]
        if text.rstrip().endswith("</tool_response>"):
            text = text.rstrip()[: -len("</tool_response>")]
    return text.strip("\n")


def _answer_text(text: str) -> str | None:
    m = _ANSWER_RE.search(text)
    return m.group(1).strip() if m else None


def _program(view: ItemView, t: dict[str, Any]) -> None:
    program = t.get("program") if isinstance(t.get("program"), dict) else None
    if program is None and ("gen_prompt" in t or "reference_images" in t):
        program = {"gen_prompt": t.get("gen_prompt") or "", "reference_images": t.get("reference_images") or []}
    view.program = program
    answer = t.get("answer") if isinstance(t.get("answer"), dict) else None
    answer_turns = [tv for tv in view.turns if tv.answer_raw is not None]
    final = next((tv for tv in reversed(answer_turns) if tv.action == "answer"),
                 answer_turns[-1] if answer_turns else None)
    view.answer_raw = (answer.get("raw") if answer and isinstance(answer.get("raw"), str)
                       else final.answer_raw if final else None)
    written = t.get("written_program") if isinstance(t.get("written_program"), dict) else None
    if written is None and view.answer_raw is not None:       # schema 1: read the answer again
        parsed = answer.get("parsed") if answer else None
        if not isinstance(parsed, dict):
            try:
                parsed = json.loads(view.answer_raw)
            except ValueError:
                p = _parse(f"<answer>{view.answer_raw}</answer>")
                parsed = p.answer if p is not None else None
        if isinstance(parsed, dict):
            refs = parsed.get("reference_images") if isinstance(parsed.get("reference_images"), list) else []
            written = {"gen_prompt": parsed.get("gen_prompt"),
                       "reference_images": [r if isinstance(r, dict) else {"img_id": r} for r in refs]}
    view.written = written
    for issue in t.get("program_issues") or []:
        kind = issue_kind(issue)
        if isinstance(issue, dict):
            detail = str(issue.get("detail") or "")
        else:
            text = str(issue)
            detail = text[len(kind) + 2:] if text.startswith(kind + ": ") else ("" if text == kind else text)
        view.issues.append(Issue(kind, detail, kind.startswith(REPAIR_KINDS)))
