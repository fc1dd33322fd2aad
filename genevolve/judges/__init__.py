"""Image judges by name, like the generators; each is imported only when chosen.

Every judge here scores a generated image against its request and ground truth (`Judge.score`).
The program judge (R_text, it never sees the render) and the WISE judges (one image, no ground
truth) answer different questions and are built directly.
"""

from __future__ import annotations

from typing import Any

from ..registry import make

JUDGES = {
    "kscore": "genevolve.judges.kscore:KScoreJudge",
    "offline": "genevolve.judges.offline:OfflineJudge",
}


def make_judge(name: str, **options: Any):
    return make(JUDGES, "judge", name, **options)


__all__ = ["JUDGES", "make_judge"]
