"""How fast `genevolve view` opens a large run: a 5,000-item run (agent + render + judge stages).

    .venv/bin/python benchmarks/viewer_load.py [--items 5000] [--browser]

A small run is made with the real runtime (scripted policy, offline tools, offline renderer and
judge), and its rows are copied under new ids until the run holds --items items, in the layout of
`genevolve bench` (agent/, render/, eval/ journals; the rows keep their full messages, tool calls
and observations, about 20 KB each per stage). Then a fresh viewer starts on it and the numbers
are printed: start-up, the first page of the run table (which indexes all three journals), the
same page again, a filtered and sorted page, the last page, an item page, a thumbnail, and a row
appended while the viewer runs. With --browser, headless Chromium also opens the run page and
reports its navigation timing (request to load event) on a fresh viewer, index included. Target:
the run page opens in under 2 s.
The load average is printed too: the machine is shared, and other processes move these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from genevolve.cli import main as genevolve
from genevolve.jsonio import jsonl_lines
from genevolve.view import ViewServer

ROWS = [{"id": f"seed_{n}", "prompt": p, "category": c, "meta": {"track": t}} for n, (p, c, t) in enumerate([
    ("The national flag of the country whose capital is Rabat.", "flags", "knowledge"),
    ("The national flag of Japan on a plain backdrop.", "flags", "knowledge"),
    ("One red apple on a white table.", "objects", "quality"),
    ("A wooden sign with the words 'HELLO' on it.", "text", "quality"),
])]
SCRIPT = [
    '<think>Which country? Look it up.</think>\n<tool_call>{"name": "search", "arguments": {"queries": '
    '["Rabat capital country"]}}</tool_call>',
    '<think>Now the picture.</think>\n<tool_call>{"name": "image_search", "arguments": {"query": "flag of Morocco"}}'
    '</tool_call>',
    '<think>IMG_001.</think>\n<answer>{"gen_prompt": "The flag shown in IMG_001, centered.", "reference_images": '
    '[{"img_id": "IMG_001", "note": "the flag"}]}</answer>',
]


def seed_run(folder: Path) -> Path:
    """A real four-item run: agent, render and judge, as `genevolve bench` lays them out."""
    from PIL import Image

    bench = folder / "bench"
    (bench / "images").mkdir(parents=True)
    rows = []
    for row in ROWS:
        Image.new("RGB", (256, 192), (200, 40, 40)).save(bench / "images" / f"{row['id']}.png")
        rows.append({**row, "gt_image": f"images/{row['id']}.png"})
    (bench / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "script.json").write_text(json.dumps(SCRIPT))
    run = folder / "seed"
    for argv in (["run", "--policy", "scripted", "--script", str(folder / "script.json"), "--input",
                  str(bench / "rows.jsonl"), "--output-dir", str(run / "agent")],
                 ["render", "--input", str(run / "agent" / "results.jsonl"), "--output-dir", str(run / "render")],
                 ["judge", "--results", str(run / "render" / "results.jsonl"), "--gt-root", str(bench),
                  "--judge", "offline", "--output-dir", str(run / "eval")]):
        if genevolve([*argv, "--quiet"]) not in (0, 1):
            raise SystemExit(f"genevolve {argv[0]} failed")
    return run


def grow(seed: Path, out: Path, items: int) -> dict[str, int]:
    """Copy the seed's rows under new ids until each stage journal holds `items` rows."""
    sizes = {}
    for stage, name in (("agent", "results.jsonl"), ("render", "results.jsonl"), ("eval", "results_eval.jsonl")):
        rows = [json.loads(line) for line in jsonl_lines((seed / stage / name).read_text()) if line.strip()]
        (out / stage).mkdir(parents=True, exist_ok=True)
        with open(out / stage / name, "w") as f:
            for n in range(items):
                row = dict(rows[n % len(rows)])
                row["id"] = f"item_{n:05d}"
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        sizes[stage] = (out / stage / name).stat().st_size
    shutil.copytree(seed / "render" / "images", out / "render" / "images")
    return sizes


def timed(client: httpx.Client, path: str, **params) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    reply = client.get(path, params=params)
    seconds = time.perf_counter() - t0
    reply.raise_for_status()
    return seconds, reply


def browser_open(url: str) -> dict[str, float] | None:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="viewer-bench-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        timing = driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return {response_end_s: n.responseEnd / 1000, dom_ready_s: n.domContentLoadedEventEnd / 1000,"
            " load_s: n.loadEventEnd / 1000, rows: document.querySelectorAll('#items tr[data-id]').length};")
        return timing
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="viewer-load-") as tmp:
        tmp = Path(tmp)
        seed = seed_run(tmp)
        sizes = grow(seed, tmp / "big", args.items)
        print(f"run: {args.items} items; journals " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))

        t0 = time.perf_counter()
        server = ViewServer([tmp / "big"]).start()
        started = time.perf_counter() - t0
        numbers = {"start_s": started}
        try:
            src = next(iter(server.app.state.viewer.catalog.sources))
            with httpx.Client(base_url=server.url, timeout=120) as client:
                numbers["run_page_first_s"], first = timed(client, "/run", src=src)
                assert f'id="n-items">{args.items}<' in first.text, "the page shows every item"
                numbers["run_page_again_s"], _ = timed(client, "/run", src=src)
                numbers["filtered_sorted_s"], _ = timed(client, "/run", src=src, track="quality", sort="overall", desc=1)
                numbers["last_page_s"], _ = timed(client, "/run", src=src, page=args.items // 50)
                numbers["item_page_s"], _ = timed(client, "/item", src=src, id=f"item_{args.items // 2:05d}")
                numbers["thumbnail_s"], _ = timed(client, "/img", src=src, id=f"item_{args.items // 2:05d}", slot="output")
                journal = tmp / "big" / "agent" / "results.jsonl"
                with open(journal) as f:
                    row = json.loads(f.readline())
                with open(journal, "a") as f:                    # a batch still writing
                    f.write(json.dumps({**row, "id": "item_new"}) + "\n")
                numbers["after_append_s"], again = timed(client, "/run", src=src)
                assert f'id="n-items">{args.items + 1}<' in again.text
        finally:
            server.stop()
        if args.browser:
            # a second viewer on the same files, opened in Chromium: the index is built from scratch
            # (nothing is cached on disk), so this is the whole wait from request to a shown page
            server = ViewServer([tmp / "big"]).start()
            try:
                timing = browser_open(f"{server.url}run?src={src}")
                if timing:
                    numbers.update({f"browser_fresh_{k}": v for k, v in timing.items()})
            finally:
                server.stop()
    for key, value in numbers.items():
        print(f"{key:<28} {value:8.3f}" if isinstance(value, float) else f"{key:<28} {value:>8}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(json.dumps({"items": args.items, **{k: round(v, 4) for k, v in numbers.items()}}))


if __name__ == "__main__":
    main()
