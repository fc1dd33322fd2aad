"""One item turn by turn, and one item of two runs side by side."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .html import badge, details, esc, fmt, page, pretty_json, score_bar, termination_badge, url
from .itemview import FoundImage, ItemView, TurnView
from .paths import MISSING, NO_PATH, NOT_IMAGE, OK, OUTSIDE, Located
from .records import DIMENSIONS, Loaded, Source

SLOT_RE = re.compile(r"^(output|gt|img:IMG_\d{3,}|ref:\d{1,2}|extra:\d{1,4})$")
PLACEHOLDER_TEXT = {MISSING: "image missing", OUTSIDE: "outside the folders given to the viewer",
                    NOT_IMAGE: "not an image file", NO_PATH: "no image"}


@dataclass
class ItemContext:
    """What a page needs to show one item: its records, their view, and where its images are."""

    source: Source
    item_id: str
    loaded: Loaded
    view: ItemView
    locate: Callable[[str], Located]          # slot -> the image file, confined to the roots

    def picture(self, slot: str, caption: str = "", big: bool = False, cls: str = "") -> str:
        located = self.locate(slot)
        base = dict(src=self.source.key, id=self.item_id, slot=slot)
        if located.status == OK:
            thumb = url("/img", **base, size="large" if big else "thumb")
            inner = (f'<a href="{esc(url("/img", **base, size="full"))}" target="_blank">'
                     f'<img src="{esc(thumb)}" alt="{esc(caption or slot)}" loading="lazy" data-slot="{esc(slot)}" '
                     f'data-state="ok"></a>')
        else:
            text = PLACEHOLDER_TEXT.get(located.status, located.status)
            link = (f'<br><a href="{esc(located.name)}" target="_blank" rel="noreferrer">web image</a>'
                    if located.name.startswith(("http://", "https://")) else "")
            inner = (f'<div class="placeholder" data-slot="{esc(slot)}" data-state="{esc(located.status)}">'
                     f'{esc(text)}<br><span class="mono">{esc(Path(located.name).name[:48])}</span>{link}</div>')
        size = " big" if big else ""
        return f'<figure class="pic{size} {esc(cls)}">{inner}<figcaption>{caption}</figcaption></figure>'


def slot_value(loaded: Loaded, view: ItemView, slot: str, source_folder: Path) -> tuple[Any, list[Path]]:
    """The path a record gives for an image slot, and the folders it may be relative to."""
    main = loaded.main
    stage = next((s for s in ("result", "row", "data") if s in loaded.records), None)
    main_bases = [loaded.files[stage].parent] if stage else []
    main_bases.append(source_folder)
    evaluation = loaded.records.get("eval", {})
    eval_bases = [loaded.files["eval"].parent, source_folder] if "eval" in loaded.files else [source_folder]
    if slot == "output":
        for key in ("output_path", "image_path"):
            if main.get(key):
                return main[key], main_bases
        return evaluation.get("generated_image"), eval_bases
    if slot == "gt":
        if evaluation.get("gt_image"):
            return evaluation["gt_image"], eval_bases
        return main.get("gt_image"), main_bases
    kind, _, arg = slot.partition(":")
    if kind == "img":
        found = view.images.get(arg)
        return (found.local_path or found.url, main_bases) if found else (None, main_bases)
    if kind == "ref":
        refs = (view.program or {}).get("reference_images") or []
        n = int(arg)
        ref = refs[n] if n < len(refs) and isinstance(refs[n], dict) else {}
        return ref.get("local_path") or ref.get("url"), main_bases
    if kind == "extra":
        n = int(arg)
        return (view.extra_images[n] if n < len(view.extra_images) else None), main_bases
    return None, main_bases


# -- pieces -------------------------------------------------------------------------------------
def _found_gallery(ctx: ItemContext, found: list[FoundImage], chosen: set[str]) -> str:
    cells = []
    for img in found:
        mark = " chosen" if img.img_id in chosen else ""
        caption = f'<span class="id">{esc(img.img_id)}</span>{" ✓" if mark else ""} {esc(img.title[:70])}'
        cells.append(ctx.picture(f"img:{img.img_id}", caption, cls=f"thumb{mark}"))
    return f'<div class="thumbs">{"".join(cells)}</div>' if cells else ""


def _cost(tv: TurnView) -> str:
    parts = []
    if tv.tokens:
        tokens = (f'{tv.tokens["prompt"]} read → {tv.tokens.get("completion", "?")} written tokens'
                  if "prompt" in tv.tokens else f'{tv.tokens.get("completion", "?")} tokens written')
        if tv.tokens.get("cached"):
            tokens += f' ({tv.tokens["cached"]} cached)'
        parts.append(tokens)
    if tv.seconds is not None:
        parts.append(f"policy {tv.seconds:.2f} s")
    if tv.tool_seconds is not None:
        parts.append(f"tool {tv.tool_seconds:.2f} s")
    if tv.finish_reason and tv.finish_reason != "stop":
        parts.append(f"finish: {tv.finish_reason}")
    return " · ".join(parts)


def turn_card(ctx: ItemContext, tv: TurnView, chosen: set[str]) -> str:
    head = [f"<b>turn {tv.number}</b>"]
    if tv.round is not None:
        head.append(f'<span class="muted">round {tv.round}</span>')
    head.append(badge(tv.action or "?", "good" if tv.action == "answer" else
                      "warn" if tv.action not in ("tool_call", "answer") else ""))
    if tv.tool_name:
        head.append(f'<span class="tool-name">{esc(tv.tool_name)}</span>')
    if tv.repeat:
        head.append(badge("repeat", "warn"))
    body = [f'<div class="head">{" ".join(head)}<span class="cost">{esc(_cost(tv))}</span></div>']
    if tv.think:
        body.append(f'<div class="think">{esc(tv.think)}</div>')
    if tv.tool_name:
        line = json.dumps(tv.arguments, ensure_ascii=False, default=str)
        body.append(f'<pre class="args">{esc(line) if len(line) <= 110 else pretty_json(tv.arguments)}</pre>')
    if tv.answer_raw is not None:
        body.append(f'<div class="muted">answer as written</div><pre class="answer">{esc(_pretty(tv.answer_raw))}</pre>')
    if tv.action in ("format_error",) or (not tv.tool_name and tv.answer_raw is None and tv.text):
        body.append(f'<div class="muted">reply as written</div><pre>{esc(tv.text)}</pre>')
    if tv.note:
        body.append(f'<div class="muted">note: {esc(tv.note)}</div>')
    if tv.tool_error:
        body.append(f'<div class="reply">tool error: {esc(tv.tool_error)}</div>')
    if tv.observation is not None:
        body.append(details(f"observation ({len(tv.observation)} characters)",
                            f'<pre class="obs">{esc(tv.observation)}</pre>', open_=len(tv.observation) < 1200,
                            cls="obs"))
    body.append(_found_gallery(ctx, tv.found, chosen))
    for reply in tv.replies:
        body.append(f'<div class="reply">{esc(reply)}</div>')
    if tv.text and (tv.tool_name or tv.answer_raw is not None):
        body.append(details("raw reply", f"<pre>{esc(tv.text)}</pre>"))
    return f'<section class="turn {esc(tv.action)}" data-turn="{tv.number}">{"".join(body)}</section>'


def _pretty(raw: str) -> str:
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False, indent=2)
    except ValueError:
        return raw


def _diff(old: str, new: str) -> str:
    """gen_prompt as written → as repaired, word by word."""
    a, b = old.split(" "), new.split(" ")
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(esc(" ".join(a[i1:i2])))
        if op in ("delete", "replace"):
            out.append(f"<del>{esc(' '.join(a[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            out.append(f"<ins>{esc(' '.join(b[j1:j2]))}</ins>")
    return " ".join(out)


def program_section(ctx: ItemContext) -> str:
    v = ctx.view
    if v.program is None and v.written is None:
        return ""
    final = v.program or {}
    written = v.written or {}
    refs = [r for r in final.get("reference_images") or [] if isinstance(r, dict)]
    ref_cells = []
    for n, ref in enumerate(refs):
        img_id = str(ref.get("img_id") or "")
        slot = f"img:{img_id}" if img_id in v.images else f"ref:{n}"
        caption = (f'<span class="id">{esc(img_id)}</span> {esc(ref.get("title") or "")}'
                   f'<br><i>{esc(ref.get("note") or "")}</i>')
        ref_cells.append(ctx.picture(slot, caption, cls="thumb chosen"))
    written_prompt = written.get("gen_prompt") if isinstance(written.get("gen_prompt"), str) else None
    final_prompt = str(final.get("gen_prompt") or "")
    changed = written_prompt is not None and written_prompt != final_prompt
    written_ids = [str(r.get("img_id")) for r in written.get("reference_images") or [] if isinstance(r, dict)]
    repairs = [i for i in v.issues if i.repair]
    problems = [i for i in v.issues if not i.repair]
    issue_list = "".join(f'<li>{badge(i.kind, "repair")} {esc(i.detail)}</li>' for i in repairs)
    issue_list += "".join(f'<li>{badge(i.kind, "bad")} {esc(i.detail)}</li>' for i in problems)
    left = ('<h3>as the policy wrote it</h3>'
            + (f'<div class="gen-prompt">{esc(written_prompt)}</div>' if written_prompt is not None else
               '<p class="muted">no answer was written</p>')
            + (f'<div class="muted">references: {esc(", ".join(written_ids) or "none")}</div>' if written else "")
            + (details("answer JSON", f'<pre>{esc(_pretty(v.answer_raw))}</pre>') if v.answer_raw else ""))
    right = ('<h3>after the runtime\'s repairs</h3>'
             + f'<div class="gen-prompt" id="gen-prompt">{_diff(written_prompt, final_prompt) if changed else esc(final_prompt)}</div>'
             + (f'<ul class="issues" id="issues">{issue_list}</ul>' if issue_list else
                '<p class="muted">no repairs, no issues</p>')
             + f'<div class="thumbs" id="references">{"".join(ref_cells)}</div>')
    if v.program is None:
        right = '<h3>after the runtime\'s repairs</h3><p class="muted">the record holds no repaired program</p>'
    return f'<h2>program</h2><div class="program"><div class="card">{left}</div><div class="card">{right}</div></div>'


def judge_card(evaluation: dict[str, Any]) -> str:
    if not evaluation:
        return ""
    scores = evaluation.get("scores") if isinstance(evaluation.get("scores"), dict) else {}
    rows = "".join(score_bar(scores.get(d) if isinstance(scores.get(d), (int, float)) else None,
                             d.replace("_", " ") + (" (n/a)" if d == "text_accuracy" and evaluation.get("text_accuracy_na") else ""))
                   for d in DIMENSIONS)
    judge = evaluation.get("judge") if isinstance(evaluation.get("judge"), dict) else {}
    who = " · ".join(str(judge[k]) for k in ("judge", "model", "rubric_version") if judge.get(k))
    parts = [f'<h3>judge <span class="muted">{esc(who)}</span></h3>', rows,
             score_bar(evaluation.get("overall") if isinstance(evaluation.get("overall"), (int, float)) else None,
                       "overall")]
    if evaluation.get("error"):
        parts.append(f'<div class="reply">judge failed: {esc(evaluation["error"])}</div>')
    rationale = evaluation.get("rationale")
    if isinstance(rationale, dict):
        parts.append('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(t)}</dd>" for k, t in rationale.items())
                     + "</dl>")
    elif rationale:
        parts.append(f'<p class="rationale">{esc(rationale)}</p>')
    if evaluation.get("extra"):
        parts.append(details("measurements", f'<pre>{pretty_json(evaluation["extra"])}</pre>'))
    return f'<div class="card judge" id="judge">{"".join(parts)}</div>'


def _header(ctx: ItemContext) -> str:
    v, main = ctx.view, ctx.loaded.main
    facts = [termination_badge(v.termination)]
    if v.rounds is not None:
        facts.append(f"<span>{v.rounds} rounds</span>")
    if v.turns:
        n_calls = sum(1 for t in v.turns if t.tool_name and t.action == "tool_call")
        facts.append(f'<span><b id="n-calls">{n_calls}</b> tool calls</span>')
    if v.seconds is not None:
        facts.append(f"<span>{v.seconds:.1f} s</span>")
    if v.tokens:
        read = f'{v.tokens["prompt"]} read / ' if "prompt" in v.tokens else ""
        facts.append(f'<span>{read}{v.tokens.get("completion", 0)} tokens written</span>')
    for key in ("policy", "protocol"):
        if getattr(v, key):
            facts.append(f"<span>{key} {esc(getattr(v, key))}</span>")
    for key in ("category", "eval_type", "difficulty"):
        if main.get(key):
            facts.append(badge(main[key]))
    if isinstance(main.get("meta"), dict) and main["meta"].get("track"):
        facts.append(badge(f'track {main["meta"]["track"]}'))
    reward = main.get("reward")
    if reward is not None:
        facts.append(f"<span>reward <b>{esc(fmt(reward) if not isinstance(reward, dict) else json.dumps(reward))}</b></span>")
    if main.get("image_status") and main["image_status"] != "ok":
        facts.append(badge(main["image_status"], "bad"))
    out = [f'<h1 class="mono">{esc(ctx.item_id)}</h1><p class="request" id="request">{esc(v.request)}</p>',
           f'<div class="stats">{" ".join(facts)}</div>']
    if v.error:
        out.append(f'<div class="reply">error: {esc(v.error)}</div>')
    return "".join(out)


def _images_row(ctx: ItemContext) -> str:
    main, evaluation = ctx.loaded.main, ctx.loaded.records.get("eval", {})
    has_gt = bool(main.get("gt_image") or evaluation.get("gt_image"))
    rendered = any(main.get(k) for k in ("output_path", "image_path", "image_status")) or bool(evaluation)
    cells = [ctx.picture("output", "rendered image", big=True)] if rendered else []
    if has_gt:
        cells.append(ctx.picture("gt", "ground truth", big=True))
    render = main.get("render") if isinstance(main.get("render"), dict) else None
    info = details("generator metadata", f"<pre>{pretty_json(render)}</pre>") if render else ""
    return (f'<div class="cards" id="images">{"".join(cells)}{judge_card(ctx.loaded.records.get("eval", {}))}</div>'
            + info)


def item_page(ctx: ItemContext, neighbours: tuple[str | None, str | None]) -> str:
    v = ctx.view
    chosen = {str(r.get("img_id")) for r in (v.program or {}).get("reference_images") or [] if isinstance(r, dict)}
    nav = []
    for text, target in (("‹ previous", neighbours[0]), ("next ›", neighbours[1])):
        if target is not None:
            nav.append(f'<a href="{esc(url("/item", src=ctx.source.key, id=target))}">{text}</a>')
    parts = [f'<nav class="pager">{" ".join(nav)}</nav>' if nav else "", _header(ctx)]
    main = ctx.loaded.main
    if main.get("output_path") or main.get("image_path") or main.get("image_status") or main.get("gt_image") \
            or ctx.loaded.records.get("eval"):
        parts.append(_images_row(ctx))
    parts.append(program_section(ctx))
    if v.turns:
        parts.append("<h2>turns</h2>")
        if v.system_prompt:
            parts.append(details(f"system prompt ({len(v.system_prompt)} characters)",
                                 f"<pre>{esc(v.system_prompt)}</pre>"))
        if v.guide:
            parts.append(details("decision guide (teacher view)", f"<pre>{esc(v.guide)}</pre>", open_=True))
        parts.append('<div id="turns">' + "".join(turn_card(ctx, t, chosen) for t in v.turns) + "</div>")
    if v.extra_images:
        parts.append("<h2>images of the record</h2><div class=\"thumbs\">" + "".join(
            ctx.picture(f"extra:{n}", esc(Path(p).name)) for n, p in enumerate(v.extra_images)) + "</div>")
    meta = ctx.loaded.main.get("meta")
    if meta:
        parts.append(details("meta", f"<pre>{pretty_json(meta)}</pre>"))
    parts.append(f'<p><a href="{esc(url("/api/item", src=ctx.source.key, id=ctx.item_id))}">the full records (JSON)</a></p>')
    crumbs = [(ctx.source.title, url("/run", src=ctx.source.key)), (ctx.item_id, None)]
    if ctx.source.parent:
        crumbs.insert(0, ("training", url("/train", key=ctx.source.parent)))
    return page(ctx.item_id, "".join(parts), crumbs=crumbs, live=ctx.source.key, stamp=ctx.source.stamp)


def compare_item_page(a: ItemContext, b: ItemContext) -> str:
    columns = []
    for label, ctx in (("A", a), ("B", b)):
        v = ctx.view
        chosen = {str(r.get("img_id")) for r in (v.program or {}).get("reference_images") or [] if isinstance(r, dict)}
        calls = "".join(f'<li><span class="tool-name">{esc(t.tool_name)}</span> '
                        f'<span class="mono">{esc(json.dumps(t.arguments, ensure_ascii=False)[:140])}</span></li>'
                        for t in v.turns if t.tool_name)
        columns.append(
            f'<div class="column" data-run="{label}"><h2>{label}: <a href="{esc(url("/item", src=ctx.source.key, id=ctx.item_id))}">'
            f'{esc(ctx.source.title)}</a></h2><div class="stats">{termination_badge(v.termination)}'
            f'<span>{sum(1 for t in v.turns if t.tool_name)} tool calls</span>'
            + (f"<span>{v.seconds:.1f} s</span>" if v.seconds is not None else "") + "</div>"
            + ctx.picture("output", "rendered image", big=True) + judge_card(ctx.loaded.records.get("eval", {}))
            + f'<h3>gen_prompt</h3><div class="gen-prompt">{esc((v.program or {}).get("gen_prompt") or "")}</div>'
            + _found_gallery(ctx, [v.images[i] for i in sorted(chosen) if i in v.images], chosen)
            + (f'<h3>tool calls</h3><ol>{calls}</ol>' if calls else "") + "</div>")
    gt = a.picture("gt", "ground truth", big=True) if a.locate("gt").status != NO_PATH else ""
    body = (f'<h1 class="mono">{esc(a.item_id)}</h1><p class="request">{esc(a.view.request)}</p>{gt}'
            f'<div class="side">{"".join(columns)}</div>')
    crumbs = [("compare", url("/compare", a=a.source.key, b=b.source.key)), (a.item_id, None)]
    return page(a.item_id, body, crumbs=crumbs, live=f"{a.source.key},{b.source.key}",
                stamp=f"{a.source.stamp}|{b.source.stamp}")
