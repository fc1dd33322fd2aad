"""A training run: curves from metrics.jsonl, VED decision guides with their pairs, the memory."""

from __future__ import annotations

import json
import math
from typing import Any

from .html import badge, details, esc, fmt, line_chart, page, pager, pretty_json, url
from .discover import Catalog, TrainingRun
from .records import read_jsonl_all

GUIDES_PER_PAGE = 20
# Chart groups, in page order: (title, does this flattened metric belong here?)
GROUPS = [
    ("reward", lambda k: k.startswith("reward")),
    ("answer rate", lambda k: k.startswith("answer_rate") or k.endswith("answer_rate")),
    ("tool calls", lambda k: k.startswith("tool_calls")),
    ("skill calls", lambda k: k.startswith("skill_calls")),
    ("loss terms", lambda k: any(w in k for w in ("loss", "kl", "sdl", "entropy", "grad_norm", "clip"))),
    ("experience (VED)", lambda k: k.startswith("ved_")),
    ("seconds per phase", lambda k: k.startswith("seconds") or k.endswith("_s")),
]
NOT_PLOTTED = {"step", "time", "timestamp", "epoch_time", "wall_time"}
# Names a guide record may give the two trajectories of its pair, better one first.
PAIR_NAMES = [("best", "worst"), ("chosen", "rejected"), ("winner", "loser"), ("high", "low"),
              ("positive", "negative"), ("better", "worse")]


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def charts(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="muted">no metrics.jsonl yet</p>'
    flat = [flatten(r) for r in rows]
    xs = [f.get("step", float(i)) for i, f in enumerate(flat)]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys and k not in NOT_PLOTTED]
    out, placed = [], set()
    for title, belongs in GROUPS + [("other", lambda k: True)]:
        names = [k for k in keys if k not in placed and belongs(k)]
        if not names:
            continue
        placed.update(names)
        series = {k: [(x, f[k]) for x, f in zip(xs, flat) if k in f] for k in names}
        band = None
        if title == "reward" and "reward_mean" in series and "reward_std" in names:
            std = dict(series.pop("reward_std"))
            name = "reward_mean ± reward_std"
            band = (name, [(x, y - std[x], y + std[x]) for x, y in series["reward_mean"] if x in std])
            series = {name: series.pop("reward_mean"), **series}
        out.append(line_chart(title, series, band=band))
    last = rows[-1]
    summary = " · ".join(f"{esc(k)} {int(v) if v.is_integer() else f'{v:.3f}'}" for k, v in flatten(last).items()
                         if k in ("step", "reward_mean", "answer_rate"))
    return f'<p class="muted">{len(rows)} steps; last: {summary}</p><div class="cards" id="curves">{"".join(out)}</div>'


def _side(label: str, value: Any, rollout_link, step: Any = None) -> str:
    """One trajectory of a guide's pair: its reward and program, or whatever the record holds."""
    if not isinstance(value, dict):
        return f'<div class="card"><h3>{esc(label)}</h3><pre>{pretty_json(value)}</pre></div>'
    traj = value.get("trajectory") if isinstance(value.get("trajectory"), dict) else value
    program = traj.get("program") if isinstance(traj.get("program"), dict) else (
        {"gen_prompt": traj.get("gen_prompt"), "reference_images": traj.get("reference_images")}
        if "gen_prompt" in traj else None)
    facts = []
    reward = value.get("reward", traj.get("reward"))
    if reward is not None:
        facts.append(f"reward <b>{esc(fmt(reward, 3) if not isinstance(reward, dict) else json.dumps(reward))}</b>")
    if traj.get("termination"):
        facts.append(badge(traj["termination"]))
    calls = [c for c in traj.get("tool_calls") or [] if isinstance(c, dict)]
    if calls:
        facts.append(f"{len(calls)} tool calls: " + ", ".join(
            f'<span class="tool-name">{esc(c.get("name"))}</span> {esc(json.dumps(c.get("arguments"), ensure_ascii=False)[:80])}'
            for c in calls))
    link = rollout_link(value.get("id") or traj.get("id"), step)
    parts = [f'<h3>{esc(label)} {link}</h3><div class="stats">{" ".join(facts)}</div>']
    if program:
        refs = ", ".join(f'{esc(r.get("img_id"))} {esc(r.get("title") or "")}' for r in program.get("reference_images") or []
                         if isinstance(r, dict))
        parts.append(f'<div class="gen-prompt">{esc(program.get("gen_prompt") or "")}</div>'
                     f'<div class="muted">references: {refs or "none"}</div>')
    parts.append(details("record", f"<pre>{pretty_json(value)}</pre>"))
    return f'<div class="card">{"".join(parts)}</div>'


def _pair(guide: dict[str, Any]) -> list[tuple[str, Any]]:
    pair = guide.get("pair")
    if isinstance(pair, list) and len(pair) == 2:
        return [("better", pair[0]), ("worse", pair[1])]
    source = pair if isinstance(pair, dict) else guide
    for good, bad in PAIR_NAMES:
        if good in source or bad in source:
            return [(good, source.get(good)), (bad, source.get(bad))]
    return []


def guides_section(guides: list[dict[str, Any]], page_no: int, key: str, rollout_link) -> str:
    if not guides:
        return '<p class="muted">no guides.jsonl</p>'
    pages = max(1, math.ceil(len(guides) / GUIDES_PER_PAGE))
    page_no = min(max(page_no, 1), pages)
    newest_first = list(reversed(guides))
    cards = []
    for g in newest_first[(page_no - 1) * GUIDES_PER_PAGE: page_no * GUIDES_PER_PAGE]:
        text = g.get("guide") if isinstance(g.get("guide"), str) else json.dumps(g.get("guide"), ensure_ascii=False)
        request = next((g[k] for k in ("request", "prompt", "question") if isinstance(g.get(k), str)), "")
        head = " · ".join(f"{k} {esc(g[k])}" for k in ("step", "id", "group") if g.get(k) is not None)
        pair = _pair(g)
        shown = {"guide", "request", "prompt", "question", "step", "id", "group", "pair",
                 *[name for name, _ in pair]}
        rest = {k: v for k, v in g.items() if k not in shown}
        cards.append(f'<div class="guide"><div class="muted">{head}</div><p>{esc(request)}</p>'
                     f'<h3>decision guide</h3><pre class="guide-text">{esc(text)}</pre>'
                     + (f'<div class="side">{"".join(_side(n, v, rollout_link, g.get("step")) for n, v in pair)}</div>' if pair else "")
                     + (details("other fields", f"<pre>{pretty_json(rest)}</pre>") if rest else "") + "</div>")
    return (f'<p class="muted">{len(guides)} guides, newest first</p>'
            + pager("/train", {"key": key}, page_no, pages) + "".join(cards))


def memory_section(memory: Any) -> str:
    if memory is None:
        return '<p class="muted">no memory.json</p>'
    entries = memory
    if isinstance(memory, dict):
        entries = next((memory[k] for k in ("entries", "items", "experiences", "memory") if isinstance(memory.get(k), list)),
                       None)
    if not isinstance(entries, list):
        return f"<pre>{pretty_json(memory)}</pre>"
    rows = []
    for n, entry in enumerate(entries, 1):
        if isinstance(entry, dict):
            cells = "".join(f"<dt>{esc(k)}</dt><dd>{_cell(v)}</dd>" for k, v in entry.items())
            rows.append(f'<div class="guide"><b>#{n}</b><dl class="kv">{cells}</dl></div>')
        else:
            rows.append(f'<div class="guide"><b>#{n}</b> {esc(entry)}</div>')
    return f'<p class="muted">{len(entries)} entries</p>' + "".join(rows)


def _cell(value: Any) -> str:
    if isinstance(value, str) and "\n" in value:          # a decision guide keeps its lines
        return f'<pre class="guide-text">{esc(value)}</pre>'
    return esc(value) if isinstance(value, (str, int, float)) else f"<pre>{pretty_json(value)}</pre>"


def train_page(catalog: Catalog, run: TrainingRun, page_no: int = 1) -> str:
    folder = run.folder
    config = None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    memory = None
    try:
        memory = json.loads((folder / "memory.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass

    def rollout_link(item_id: Any, step: Any = None) -> str:
        if item_id is None:
            return ""
        # the rollouts file of the guide's own step first: the same row comes back in later epochs
        own = f"step_{step:05d}" if isinstance(step, int) else None
        for key in sorted(reversed(run.rollouts), key=lambda k: catalog.sources[k].files[0].path.stem != own):
            if catalog.sources[key].get(str(item_id)) is not None:
                return f'<a class="muted" href="{esc(url("/item", src=key, id=str(item_id)))}">{esc(item_id)}</a>'
        return f'<span class="muted">{esc(item_id)}</span>'

    rollouts = []
    for key in run.rollouts:
        source = catalog.sources[key]
        entries = source.entries()
        rewards = [e.summary["reward"] for e in entries if e.summary.get("reward") is not None]
        mean = f"{sum(rewards) / len(rewards):.3f}" if rewards else "–"
        rollouts.append(f'<tr><td><a href="{esc(url("/run", src=key))}">{esc(source.files[0].path.stem)}</a></td>'
                        f'<td class="num">{len(entries)}</td><td class="num">{mean}</td></tr>')
    checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir()) if (folder / "checkpoints").is_dir() else []
    body = [f"<h1>{esc(run.title)}</h1><p class=\"muted\">{esc(folder)}</p>",
            "<h2>curves</h2>", charts(read_jsonl_all(folder / "metrics.jsonl")),
            "<h2>decision guides (VED)</h2>",
            guides_section(read_jsonl_all(folder / "guides.jsonl"), page_no, run.key, rollout_link),
            "<h2>experience memory</h2>", memory_section(memory)]
    if rollouts:
        body.append('<h2>rollouts</h2><table class="items"><tr><th>file</th><th>trajectories</th>'
                    f'<th>mean reward</th></tr>{"".join(rollouts)}</table>')
    if checkpoints:
        body.append("<h2>checkpoints</h2><p>" + ", ".join(esc(c) for c in checkpoints) + "</p>")
    if config is not None:
        body.append("<h2>config</h2>" + details("config.json", f"<pre>{pretty_json(config)}</pre>"))
    stamp = training_stamp(run)
    return page(run.title, "".join(body), crumbs=[("training", None)], live=f"train:{run.key}", stamp=stamp)


def training_stamp(run: TrainingRun) -> str:
    parts = []
    for name in ("metrics.jsonl", "guides.jsonl", "memory.json"):
        try:
            st = (run.folder / name).stat()
            parts.append(f"{st.st_size}.{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    rollouts = run.folder / "rollouts"
    parts.append(str(len(list(rollouts.glob("*.jsonl")))) if rollouts.is_dir() else "0")
    return "-".join(parts)
