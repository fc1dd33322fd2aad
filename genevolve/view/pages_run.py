"""The home page, a run's table (filters, sort, pages) and two runs compared on their shared ids."""

from __future__ import annotations

import json
import math
from typing import Any

from .html import badge, esc, fmt, page, pager, termination_badge, url
from .discover import Catalog
from .records import DIMENSIONS, Entry, Source

PER_PAGE = 50
MAX_PER_PAGE = 500
# (summary key, column title, how to show it); a column appears when any item has the key.
COLUMNS = [
    ("request", "request", "request"), ("termination", "end", "termination"), ("n_tools", "tools", "num"),
    ("n_refs", "refs", "num"), ("issues", "program issues", "issues"), ("image_status", "image", "status"),
    ("reward", "reward", "score"), ("overall", "overall", "score"),
    *[(d, d.replace("_", " ").replace("visual correctness", "visual"), "score") for d in DIMENSIONS],
    ("seconds", "seconds", "num"), ("tokens", "tokens", "num"), ("category", "category", "text"),
    ("track", "track", "text"), ("difficulty", "difficulty", "text"), ("n_messages", "messages", "num"),
]
KIND_TITLES = {"run": "runs", "result": "single results", "data": "data files", "rollouts": "rollouts"}


def _status_word(value: str | None) -> str:
    return (value or "").split(":", 1)[0].strip()


# -- home ---------------------------------------------------------------------------------------
def home_page(catalog: Catalog) -> str:
    body = ["<h1>Records</h1>"]
    if not catalog.sources and not catalog.training:
        body.append('<p class="muted">Nothing to show: no results, data or training files were found under '
                    + ", ".join(esc(r) for r in catalog.roots) + ".</p>")
    if catalog.training:
        body.append("<h2>training runs</h2><ul>" + "".join(
            f'<li><a href="{esc(url("/train", key=t.key))}">{esc(t.title)}</a> '
            f'<span class="muted">{len(t.rollouts)} rollout files</span></li>' for t in catalog.training.values())
            + "</ul>")
    runs = [s for s in catalog.sources.values() if s.kind == "run"]
    for kind, title in KIND_TITLES.items():
        group = [s for s in catalog.sources.values() if s.kind == kind and s.parent is None]
        if not group:
            continue
        rows = []
        for s in group:
            entries = s.entries()
            scored = [e.summary["overall"] for e in entries if e.summary.get("overall") is not None]
            mean = f"{sum(scored) / len(scored):.3f}" if scored else "–"
            href = url("/item", src=s.key, id=entries[0].id) if kind == "result" and entries else url("/run", src=s.key)
            rows.append(f'<tr><td><a href="{esc(href)}">{esc(s.title)}</a></td><td class="num">{len(entries)}</td>'
                        f'<td class="num">{mean}</td><td class="muted">{esc(s.folder)}</td></tr>')
        body.append(f'<h2>{esc(title)}</h2><table class="items"><tr><th>name</th><th>items</th>'
                    f'<th>mean overall</th><th>folder</th></tr>{"".join(rows)}</table>')
    if len(runs) >= 2:
        options = "".join(f'<option value="{esc(s.key)}">{esc(s.title)}</option>' for s in runs)
        body.append(f'<h2>compare two runs</h2><form action="/compare" method="get" class="filters">'
                    f'<label>run A<select name="a">{options}</select></label>'
                    f'<label>run B<select name="b">{_second_selected(runs)}</select></label>'
                    f'<button>compare</button></form>')
    return page("records", "".join(body))


def _second_selected(runs: list[Source]) -> str:
    return "".join(f'<option value="{esc(s.key)}"{" selected" if n == 1 else ""}>{esc(s.title)}</option>'
                   for n, s in enumerate(runs))


# -- one run ------------------------------------------------------------------------------------
def _matches(s: dict[str, Any], f: dict[str, str]) -> bool:
    if f.get("q"):
        needle = f["q"].lower()
        if needle not in s["id"].lower() and needle not in str(s.get("request") or "").lower():
            return False
    for key in ("termination", "category", "track"):
        if f.get(key) and s.get(key) != f[key]:
            return False
    if f.get("image") and _status_word(s.get("image_status")) != f["image"]:
        return False
    issue = f.get("issue")
    if issue == "any" and not s.get("issues") or issue == "none" and s.get("issues"):
        return False
    if issue and issue not in ("any", "none") and issue not in (s.get("issues") or []):
        return False
    if f.get("failed") and not s.get("judge_failed"):
        return False
    return True


def _sort_key(key: str):
    def k(e: Entry):
        value = e.summary.get(key)
        if isinstance(value, list):
            value = len(value)
        missing = value is None
        return (missing, value if isinstance(value, (int, float)) else str(value or "").lower())
    return k


def filter_sort(entries: list[Entry], f: dict[str, str]) -> list[Entry]:
    chosen = [e for e in entries if _matches(e.summary, f)]
    key = f.get("sort") or ""
    if key and key != "position":
        present = [e for e in chosen if e.summary.get(key) is not None]
        absent = [e for e in chosen if e.summary.get(key) is None]
        present.sort(key=_sort_key(key), reverse=f.get("desc") == "1")
        chosen = present + absent                  # items without the value go last either way
    elif f.get("desc") == "1":
        chosen.reverse()
    return chosen


def _select(name: str, label: str, values: list[str], current: str, extra: list[tuple[str, str]] = ()) -> str:
    options = ['<option value="">all</option>'] + [
        f'<option value="{esc(v)}"{" selected" if v == current else ""}>{esc(t)}</option>' for v, t in extra]
    options += [f'<option value="{esc(v)}"{" selected" if v == current else ""}>{esc(v)}</option>' for v in values]
    return f'<label>{esc(label)}<select name="{name}">{"".join(options)}</select></label>'


def _cell(kind: str, value: Any) -> str:
    if kind == "termination":
        return f"<td>{termination_badge(value)}</td>"
    if kind == "issues":
        return "<td>" + " ".join(badge(i, "repair") for i in value or []) + "</td>"
    if kind == "status":
        word = _status_word(value)
        return f'<td>{badge(word, {"ok": "good", "error": "bad"}.get(word, "warn")) if value else ""}</td>'
    if kind == "score":
        return f'<td class="num">{fmt(value)}</td>'
    if kind == "num":
        return f'<td class="num">{fmt(value, 1) if isinstance(value, float) else fmt(value)}</td>'
    text = str(value or "")
    if kind == "request":
        return f'<td class="req">{esc(text[:220])}{"…" if len(text) > 220 else ""}</td>'
    return f"<td>{esc(text[:80])}</td>"


def run_page(source: Source, f: dict[str, str]) -> str:
    entries = source.entries()
    summaries = [e.summary for e in entries]
    rows = filter_sort(entries, f)
    per = min(max(int(f.get("per") or PER_PAGE), 1), MAX_PER_PAGE)
    pages = max(1, math.ceil(len(rows) / per))
    page_no = min(max(int(f.get("page") or 1), 1), pages)
    shown = rows[(page_no - 1) * per: page_no * per]
    columns = [c for c in COLUMNS if any(c[0] in s for s in summaries)]

    def values(key: str) -> list[str]:
        return sorted({str(s[key]) for s in summaries if s.get(key) is not None})

    params = {k: v for k, v in f.items() if v and k != "page"}
    controls = [f'<label>search<input type="text" name="q" value="{esc(f.get("q", ""))}" '
                f'placeholder="id or request"></label>']
    for key, label in (("termination", "end"), ("category", "category"), ("track", "track")):
        if values(key):
            controls.append(_select(key, label, values(key), f.get(key, "")))
    images = sorted({_status_word(s.get("image_status")) for s in summaries if s.get("image_status")})
    if images:
        controls.append(_select("image", "image", images, f.get("image", "")))
    kinds = sorted({i for s in summaries for i in s.get("issues") or []})
    if any("issues" in s for s in summaries):
        controls.append(_select("issue", "program issues", kinds, f.get("issue", ""),
                                [("any", "any issue"), ("none", "no issue")]))
    if any("judge_failed" in s for s in summaries):
        checked = " checked" if f.get("failed") else ""
        controls.append(f'<label>judge failed<input type="checkbox" name="failed" value="1"{checked}></label>')
    sort_options = [("position", "file order")] + [(c[0], c[1]) for c in columns] + [("id", "id")]
    controls.append(_select("sort", "sort by", [], f.get("sort", ""), sort_options).replace(
        '<option value="">all</option>', ""))
    controls.append(_select("desc", "order", [], f.get("desc", ""), [("1", "descending")]).replace(
        ">all<", ">ascending<"))
    controls.append(f'<input type="hidden" name="src" value="{esc(source.key)}"><button>apply</button>')

    head = "".join(f'<th><a href="{esc(url("/run", **{**params, "sort": key, "desc": "1" if f.get("sort") == key and f.get("desc") != "1" else ""}))}">'
                   f'{esc(label)}</a></th>' for key, label, _ in columns)
    body_rows = []
    for e in shown:
        s = e.summary
        link = url("/item", src=source.key, id=e.id)
        cells = "".join(_cell(kind, s.get(key)) for key, _, kind in columns)
        body_rows.append(f'<tr data-id="{esc(e.id)}"><td class="mono"><a href="{esc(link)}">{esc(e.id)}</a></td>{cells}</tr>')

    answered = [s for s in summaries if "termination" in s]
    scored = [s["overall"] for s in summaries if s.get("overall") is not None]
    stats = [f'<span><b id="n-items">{len(entries)}</b> items</span>',
             f'<span><b id="n-shown">{len(rows)}</b> match</span>']
    if answered:
        share = sum(s["termination"] == "answer" for s in answered) / len(answered)
        stats.append(f"<span>answered <b>{share:.0%}</b></span>")
    if scored:
        stats.append(f"<span>mean overall <b>{sum(scored) / len(scored):.3f}</b> over {len(scored)} judged</span>")
    kscore = _kscore(source)
    if kscore is not None:
        stats.append(f"<span>KScore (summary.json) <b>{kscore:.4f}</b></span>")
    body = (f'<h1>{esc(source.title)}</h1><div class="stats">{"".join(stats)}</div>'
            f'<form class="filters auto" method="get" action="/run">{"".join(controls)}</form>'
            f'{pager("/run", params, page_no, pages)}'
            f'<table class="items" id="items"><tr><th>id</th>{head}</tr>{"".join(body_rows)}</table>'
            f'{pager("/run", params, page_no, pages)}')
    return page(source.title, body, crumbs=_crumbs(source), live=source.key, stamp=source.stamp)


def _crumbs(source: Source) -> list[tuple[str, str | None]]:
    crumbs: list[tuple[str, str | None]] = []
    if source.parent:
        crumbs.append(("training", url("/train", key=source.parent)))
    crumbs.append((source.title, url("/run", src=source.key)))
    return crumbs


def _kscore(source: Source) -> float | None:
    for f in source.files:
        if f.stage == "eval":
            try:
                value = json.loads((f.path.parent / "summary.json").read_text(encoding="utf-8")).get("kscore")
            except (OSError, ValueError, AttributeError):
                return None
            return float(value) if isinstance(value, (int, float)) else None
    return None


# -- two runs -----------------------------------------------------------------------------------
METRICS = {"overall": "overall", **{d: d for d in DIMENSIONS}, "reward": "reward", "answered": "answered",
           "n_tools": "tool calls", "seconds": "seconds"}


def metric_value(summary: dict[str, Any], metric: str) -> float | None:
    if metric == "answered":
        return None if "termination" not in summary else float(summary["termination"] == "answer")
    value = summary.get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def default_metric(a: list[Entry], b: list[Entry]) -> str:
    for metric in ("overall", "reward", "answered"):
        if any(metric_value(e.summary, metric) is not None for e in a) and \
                any(metric_value(e.summary, metric) is not None for e in b):
            return metric
    return "n_tools"


def compare_page(a: Source, b: Source, f: dict[str, str]) -> str:
    ea, eb = {e.id: e for e in a.entries()}, {e.id: e for e in b.entries()}
    shared = [i for i in ea if i in eb]
    metric = f.get("metric") if f.get("metric") in METRICS else default_metric(list(ea.values()), list(eb.values()))
    rows, unscored = [], 0
    for item_id in shared:
        va, vb = metric_value(ea[item_id].summary, metric), metric_value(eb[item_id].summary, metric)
        if va is None or vb is None:
            unscored += 1
        rows.append((item_id, va, vb, None if va is None or vb is None else vb - va))
    order = f.get("order") or "best"
    with_diff = [r for r in rows if r[3] is not None]
    with_diff.sort(key=lambda r: (-r[3] if order == "best" else r[3] if order == "worst" else -abs(r[3]), r[0]))
    rows = with_diff + [r for r in rows if r[3] is None]
    better = sum(1 for r in with_diff if r[3] > 1e-12)
    worse = sum(1 for r in with_diff if r[3] < -1e-12)
    mean_a = _mean([r[1] for r in with_diff])
    mean_b = _mean([r[2] for r in with_diff])
    per = PER_PAGE
    pages = max(1, math.ceil(len(rows) / per))
    page_no = min(max(int(f.get("page") or 1), 1), pages)
    params = {"a": a.key, "b": b.key, "metric": metric, "order": order}

    metric_select = "".join(f'<option value="{m}"{" selected" if m == metric else ""}>{esc(t)}</option>'
                            for m, t in METRICS.items())
    order_select = "".join(f'<option value="{o}"{" selected" if o == order else ""}>{t}</option>' for o, t in
                           (("best", "B better first"), ("worst", "B worse first"), ("abs", "largest change first")))
    table = []
    for item_id, va, vb, diff in rows[(page_no - 1) * per: page_no * per]:
        request = str(ea[item_id].summary.get("request") or "")[:160]
        cls = "" if diff is None or abs(diff) < 1e-12 else ("up" if diff > 0 else "down")
        table.append(f'<tr data-id="{esc(item_id)}"><td class="mono"><a href="{esc(url("/compare/item", a=a.key, b=b.key, id=item_id))}">'
                     f'{esc(item_id)}</a></td><td class="req">{esc(request)}</td>'
                     f'<td class="num">{fmt(va)}</td><td class="num">{fmt(vb)}</td>'
                     f'<td class="num {cls}">{"–" if diff is None else f"{diff:+.2f}"}</td></tr>')
    body = (f'<h1>{esc(a.title)} <span class="muted">vs</span> {esc(b.title)}</h1>'
            f'<div class="stats"><span><b id="n-shared">{len(shared)}</b> shared ids</span>'
            f'<span>only in A <b>{len(ea) - len(shared)}</b></span><span>only in B <b>{len(eb) - len(shared)}</b></span>'
            f'<span>B better <b id="n-better">{better}</b></span><span>B worse <b id="n-worse">{worse}</b></span>'
            f'<span>same <b>{len(with_diff) - better - worse}</b></span>'
            + (f'<span>without {esc(METRICS[metric])} <b>{unscored}</b></span>' if unscored else "")
            + (f'<span>mean {esc(METRICS[metric])}: A <b>{mean_a:.3f}</b> → B <b>{mean_b:.3f}</b></span>'
               if mean_a is not None else "") + "</div>"
            f'<form class="filters auto" method="get" action="/compare"><input type="hidden" name="a" value="{esc(a.key)}">'
            f'<input type="hidden" name="b" value="{esc(b.key)}"><label>metric<select name="metric">{metric_select}'
            f'</select></label><label>order<select name="order">{order_select}</select></label><button>apply</button></form>'
            f'{pager("/compare", params, page_no, pages)}'
            f'<table class="items" id="compare"><tr><th>id</th><th>request</th><th>A: {esc(a.title)}</th>'
            f'<th>B: {esc(b.title)}</th><th>B − A</th></tr>{"".join(table)}</table>'
            f'{pager("/compare", params, page_no, pages)}')
    return page("compare", body, crumbs=[("compare", None)], live=f"{a.key},{b.key}",
                stamp=f"{a.stamp}|{b.stamp}")


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
