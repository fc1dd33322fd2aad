"""Run the hostile-download suite against the loopback image host and print what happened.

    .venv/bin/python benchmarks/download_guard.py [--max-mb 20] [--json out.json]

The downloader runs with its default limits (20 MB, 40 MP, 5 redirects); only the image host's
own address is allow-listed, exactly as a local mirror would be. Every hostile case must be
refused and every good image kept; the exit status is 1 otherwise. Nothing leaves 127.0.0.1:
the metadata redirect is refused before any connection is tried.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes import FakeServer  # noqa: E402
from fakes.image_host import ImageHostFake  # noqa: E402
from genevolve.tools.download import DEFAULT_MAX_BYTES, Download, SafeDownloader  # noqa: E402

# (case, path on the image host, should it be kept?)
CASES = [
    ("2 GB stream, no length", "/huge.jpg", False),
    ("2 GB, declared length", "/huge-declared.jpg", False),
    ("HTML page", "/page.html", False),
    ("HTML labelled image/png", "/fake.png", False),
    ("truncated JPEG", "/truncated.jpg", False),
    ("50000x50000 PNG header", "/bomb.png", False),
    ("8000x8000 PNG header", "/large.png", False),
    ("redirect to 127.0.0.1", "/redirect-loopback", False),
    ("redirect to 169.254.169.254", "/redirect-metadata", False),
    ("endless redirects", "/redirect-loop/0", False),
    ("404", "/missing.jpg", False),
    ("good JPEG", "/good.jpg", True),
    ("good PNG", "/good.png", True),
    ("good WebP", "/good.webp", True),
    ("PNG labelled image/jpeg", "/mislabeled.jpg", True),
    ("good JPEG via redirect", "/redirect-good", True),
]


async def run_suite(max_bytes: int, out_dir: Path) -> list[dict]:
    rows = []
    with FakeServer() as internal, ImageHostFake(internal_url=internal.url + "/secret") as host:
        guarded = SafeDownloader(out_dir=out_dir, max_bytes=max_bytes, allow_hosts=[host.host_port],
                                 reuse=False)
        unlisted = SafeDownloader(out_dir=out_dir, max_bytes=max_bytes, reuse=False)
        plan = [(name, host.url + path, keep, guarded) for name, path, keep in CASES]
        plan.append(("good JPEG, host not allow-listed", host.url + "/good.jpg", False, unlisted))
        for name, url, keep, downloader in plan:
            started = time.perf_counter()
            try:
                result: Download | Exception = await downloader.fetch(url)
            except Exception as exc:  # DownloadRejected, or a bug that the table should show
                result = exc
            ms = (time.perf_counter() - started) * 1000
            kept = isinstance(result, Download)
            rows.append({"case": name, "expected": "accept" if keep else "reject",
                         "outcome": "accepted" if kept else "rejected",
                         "reason": "" if kept else str(getattr(result, "reason", type(result).__name__)),
                         "bytes_read": result.size_bytes if kept else getattr(result, "bytes_read", 0),
                         "ms": round(ms, 1), "ok": kept == keep})
        await guarded.aclose()
        await unlisted.aclose()
        for row in rows:
            if row["case"] == "2 GB stream, no length":
                row["server_bytes_sent"] = host.requests_to("/huge.jpg")[0].bytes_sent
        if internal.requests:
            rows.append({"case": "internal service contacted", "expected": "never", "outcome": "CONTACTED",
                         "reason": "", "bytes_read": 0, "ms": 0.0, "ok": False})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_BYTES / 2 ** 20,
                        help="size cap in MiB (default: the downloader's default)")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(run_suite(int(args.max_mb * 2 ** 20), Path(tmp)))

    print(f"{'case':34} {'expected':8} {'outcome':9} {'reason':20} {'bytes read':>12} {'ms':>8}")
    for r in rows:
        flag = "" if r["ok"] else "   <-- WRONG"
        print(f"{r['case']:34} {r['expected']:8} {r['outcome']:9} {r['reason']:20} "
              f"{r['bytes_read']:>12,} {r['ms']:>8.1f}{flag}")
    hostile = [r for r in rows if r["expected"] == "reject"]
    good = [r for r in rows if r["expected"] == "accept"]
    rejected = sum(r["outcome"] == "rejected" for r in rows)
    print(f"\ntried {len(rows)}, rejected {rejected}, accepted {len(rows) - rejected}; "
          f"hostile refused {sum(r['ok'] for r in hostile)}/{len(hostile)}, "
          f"good kept {sum(r['ok'] for r in good)}/{len(good)}")
    print(f"bytes read before rejection: {sum(r['bytes_read'] for r in hostile):,} in all")
    stream = next(r for r in rows if r["case"] == "2 GB stream, no length")
    print(f"2 GB stream: read {stream['bytes_read']:,} bytes, the server got to send "
          f"{stream['server_bytes_sent']:,} of {2 * 1024 ** 3:,} before the hang-up")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
