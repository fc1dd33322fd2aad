"""How long the offline renderer takes per image, over a fixed set of ten programs.

    .venv/bin/python benchmarks/renderer_speed.py [--long-side 1024] [--repeats 3]

Reference photos come from scikit-image's bundled samples, written to a temporary folder. Prints one
line per program (median and max over the repeats, and the slowest stage), then the median and max
over all renders. Target: <= 1 s for a 1024 px image on a 2-core CPU. The load average is printed too,
because on a shared machine other processes move these numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image
from skimage import data

from genevolve.generators.offline import OfflineRenderer
from genevolve.program import Program, Reference

PHOTOS = {"cat": data.chelsea, "astronaut": data.astronaut, "coffee": data.coffee, "rocket": data.rocket}
PROGRAMS = [
    ("The cat from the first reference image.", ["cat"]),
    ("The first reference image on the left and the second reference image on the right, "
     "with the title 'SPACE CATS' at the top.", ["astronaut", "cat"]),
    ("Three cats from the first reference image on a sofa, warm light, caption \"Family portrait\" at the bottom.",
     ["cat"]),
    ("The astronaut from the first reference image in the style of the second reference image, at night.",
     ["astronaut", "coffee"]),
    ("A watercolor painting of the rocket in the first reference image at sunset, 'LIFT OFF' at the top.",
     ["rocket"]),
    ("A pencil sketch of the first reference image.", ["astronaut"]),
    ("The second reference image next to the first reference image, cartoon style, neon lighting.",
     ["coffee", "cat"]),
    ("The first reference image as the background, a pair of golden balloons above, "
     "“Happy Birthday” in the center, oil painting.", ["cat"]),
    ("A vintage poster: three red squares and 5 apples, a shop sign that says 'OPEN'.", []),
    ("The first reference image, black and white, dramatic lighting, 'THE END' at the bottom.", ["rocket"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    renderer = OfflineRenderer(long_side=args.long_side)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, load in PHOTOS.items():
            paths[name] = Path(tmp) / f"{name}.jpg"
            Image.fromarray(load()).save(paths[name], quality=92)
        programs = [Program(prompt, [Reference(f"IMG_{i:03d}", local_path=str(paths[n]))
                                     for i, n in enumerate(names, 1)]) for prompt, names in PROGRAMS]
        renderer.render_sync(programs[1])                   # warm-up: fonts, OpenCV kernels
        all_times: list[float] = []
        print(f"offline renderer, long side {args.long_side}, {args.repeats} repeats, "
              f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
        for k, prog in enumerate(programs, 1):
            times, stages = [], {}
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = renderer.render_sync(prog)
                times.append(time.perf_counter() - start)
                stages = result.metadata["timings"]
            all_times += times
            slowest = max((s for s in stages if s != "total_s"), key=stages.get)
            print(f"{k:2d}. {result.image.width}x{result.image.height}  median {statistics.median(times):.3f} s  "
                  f"max {max(times):.3f} s  (slowest stage {slowest} {stages[slowest]:.3f} s)  "
                  f"{prog.gen_prompt[:60]}")
    print(f"all {len(all_times)} renders: median {statistics.median(all_times):.3f} s, max {max(all_times):.3f} s, "
          f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
