"""Image library numbers: build time, size on disk, load time and query latency.

    python benchmarks/image_library.py             # the library in the default cache (built if needed)
    python benchmarks/image_library.py --fresh     # also time a full build into a temporary folder
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from genevolve.tools.image_library import ImageLibrary, default_library_dir
from genevolve.tools.image_library import ensure_builtin

QUERIES = ["flag of Australia", "Australian flag", "Australia flag", "cat", "red heart", "rocket launch",
           "flag of the country whose capital is Canberra", "man playing basketball", "cup of coffee",
           "woman with red hair", "thumbs up", "flag of the United States", "dog", "moon", "house",
           "smiling face with sunglasses", "Scottish flag", "pizza", "astronaut", "tree"]


def folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="time a full build into a temporary folder")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    if args.fresh:
        with tempfile.TemporaryDirectory() as tmp:
            start, cpu = time.perf_counter(), time.process_time()
            folder = ensure_builtin(Path(tmp))
            print(f"fresh build:    {time.perf_counter() - start:.1f} s wall, "
                  f"{time.process_time() - cpu:.1f} s CPU (all threads), "
                  f"{folder_megabytes(folder):.1f} MB")

    builtin = ensure_builtin(default_library_dir())
    info = json.loads((builtin / "BUILD.json").read_text())
    print(f"library:        {builtin}")
    print(f"entries:        {info['entries']} {info['by_source']}")
    print(f"recorded build: {info['build_seconds']} s; on disk {folder_megabytes(builtin):.1f} MB")

    start = time.perf_counter()
    library = ImageLibrary(builtin.parent, include_user=False)
    library.index()
    print(f"load + index:   {time.perf_counter() - start:.2f} s")

    times, cpu = [], []
    for _ in range(args.rounds):
        for q in QUERIES:
            t, c = time.perf_counter(), time.thread_time()
            library.search(q, 5)
            times.append((time.perf_counter() - t) * 1000)
            cpu.append((time.thread_time() - c) * 1000)
    for name, values in (("query wall", times), ("query CPU", cpu)):
        values.sort()
        p95 = values[int(len(values) * 0.95)]
        print(f"{name + ':':16}median {statistics.median(values):.2f} ms, p95 {p95:.2f} ms, "
              f"max {values[-1]:.2f} ms over {len(values)} queries")
    print("(wall time includes waiting for a CPU on a busy machine; CPU time is the query's own cost)")
    for q in QUERIES[:8]:
        top = library.search(q, 1)
        print(f"  {q!r:50} -> {top[0][0].title if top else '(none)'}")


if __name__ == "__main__":
    main()
