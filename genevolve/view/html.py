"""Small HTML pieces shared by the pages: escaping, the page shell, badges, bars, charts, pagers.

Pages are built on the server as plain strings (no template engine, no JavaScript build); the
one script, static/view.js, only refreshes a page when its files change and submits filters.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any, Iterable
from urllib.parse import urlencode

PALETTE = ("#3b6fb6", "#d1603d", "#3f9b5b", "#8c5fb8", "#c2a23a", "#3aa3b3", "#b5487b", "#6b7280")


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def url(path: str, **params: Any) -> str:
    """A link with its query; parameters that are None or "" are left out."""
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")}, doseq=True)
    return f"{path}?{query}" if query else path


def page(title: str, body: str, *, crumbs: Iterable[tuple[str, str | None]] = (), live: str = "",
         stamp: str = "") -> str:
    trail = "".join(f' <span class="sep">›</span> <a href="{esc(href)}">{esc(text)}</a>' if href else
                    f' <span class="sep">›</span> <span>{esc(text)}</span>' for text, href in crumbs)
    live_box = ('<label class="live" title="reload this page when its files change">'
                '<input type="checkbox" id="live" checked> live</label>' if live else "")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)} · GenEvolve view</title>'
            f'<link rel="stylesheet" href="/static/view.css"><script src="/static/view.js" defer></script>'
            f'</head><body data-live="{esc(live)}" data-stamp="{esc(stamp)}">'
            f'<header><a class="home" href="/">GenEvolve view</a>{trail}{live_box}</header>'
            f'<main id="main">{body}</main></body></html>')


def badge(text: Any, kind: str = "") -> str:
    return f'<span class="badge {esc(kind)}">{esc(text)}</span>'


TERMINATION_KIND = {"answer": "good", "max_rounds": "warn", "max_rounds_reached": "warn", "error": "bad"}


def termination_badge(value: str | None) -> str:
    return badge(value, TERMINATION_KIND.get(value or "", "")) if value else ""


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def score_bar(value: float | None, label: str = "") -> str:
    if value is None:
        return f'<div class="score"><span class="name">{esc(label)}</span><span class="val">–</span></div>'
    width = max(0.0, min(1.0, float(value))) * 100
    return (f'<div class="score"><span class="name">{esc(label)}</span><span class="bar">'
            f'<span style="width:{width:.0f}%"></span></span><span class="val">{value:.2f}</span></div>')


def pretty_json(value: Any) -> str:
    return esc(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def details(summary: str, inner: str, open_: bool = False, cls: str = "") -> str:
    return (f'<details class="{esc(cls)}"{" open" if open_ else ""}><summary>{summary}</summary>'
            f'{inner}</details>')


def pager(path: str, params: dict[str, Any], page_no: int, pages: int) -> str:
    if pages <= 1:
        return ""
    def link(n: int, text: str) -> str:
        return f'<a href="{esc(url(path, **{**params, "page": n}))}">{esc(text)}</a>'
    parts = [link(page_no - 1, "‹ previous") if page_no > 1 else '<span class="off">‹ previous</span>']
    parts.append(f'<span class="where">page {page_no} of {pages}</span>')
    parts.append(link(page_no + 1, "next ›") if page_no < pages else '<span class="off">next ›</span>')
    return f'<nav class="pager">{" ".join(parts)}</nav>'


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks, value = [], start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def line_chart(title: str, series: dict[str, list[tuple[float, float]]],
               band: tuple[str, list[tuple[float, float, float]]] | None = None,
               width: int = 440, height: int = 210) -> str:
    """An inline SVG line chart; `band` shades (x, low, high) around the series it names."""
    points = [p for values in series.values() for p in values]
    if band:
        points += [(x, lo) for x, lo, _ in band[1]] + [(x, hi) for x, _, hi in band[1]]
    if not points:
        return ""
    left, right, top, bottom = 46, 10, 24, 28
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:
        y0, y1 = y0 - 0.5, y1 + 0.5
    x1 = x1 if x1 > x0 else x0 + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{esc(title)}"><text x="{left}" y="15" class="title">{esc(title)}</text>']
    for tick in _nice_ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(tick):.1f}" y2="{sy(tick):.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{sy(tick) + 4:.1f}" class="tick" text-anchor="end">{tick:g}</text>')
    for tick in _nice_ticks(x0, x1, 5):
        out.append(f'<text x="{sx(tick):.1f}" y="{height - 10}" class="tick" text-anchor="middle">{tick:g}</text>')
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    if band and band[1]:
        upper = " ".join(f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in band[1])
        lower = " ".join(f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(band[1]))
        out.append(f'<polygon points="{upper} {lower}" fill="{colours.get(band[0], PALETTE[0])}" opacity="0.15"/>')
    for name, values in series.items():
        if not values:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colours[name]}" stroke-width="1.8">'
                   f'<title>{esc(name)}</title></polyline>')
        if len(values) == 1:
            out.append(f'<circle cx="{sx(values[0][0]):.1f}" cy="{sy(values[0][1]):.1f}" r="3" '
                       f'fill="{colours[name]}"/>')
    out.append("</svg>")
    legend = "".join(f'<span><i style="background:{colours[n]}"></i>{esc(n)}</span>' for n in series)
    return f'<figure class="chart-box">{"".join(out)}<figcaption>{legend}</figcaption></figure>'
