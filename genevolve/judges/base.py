"""The judge interface: score one generated image against its request and ground-truth image.

Every judge (the KScore VLM judge, the offline proxy judge, ...) returns a `JudgeResult`. A result
carries either four dimension scores or an `error`; a failed judgement is never a row of zeros, so
that aggregation can count failures apart from real low scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The four KScore dimensions, in the order the paper reports them.
DIMENSIONS: tuple[str, ...] = ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics")


class JudgeError(RuntimeError):
    """A judgement could not be obtained (endpoint down, unreadable reply, missing image, ...)."""


@dataclass
class JudgeResult:
    """One judgement. `scores` maps each of DIMENSIONS to a value in [0, 1] when `error` is None."""

    scores: dict[str, float] = field(default_factory=dict)
    text_accuracy_na: bool = False      # the request needs no readable text in the image
    rationale: str = ""
    judge: str = ""                     # judge kind: "kscore", "offline", ...
    model: str = ""                     # judge model name ("" for model-free judges)
    endpoint: str = ""                  # base URL of the judge service ("" when local)
    rubric_version: str = ""
    error: str | None = None
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)   # judge-specific details (OCR text, matches, ...)

    @property
    def ok(self) -> bool:
        return self.error is None and all(d in self.scores for d in DIMENSIONS)

    @property
    def overall(self) -> float | None:
        """Per-sample overall score as published; None for a failed judgement."""
        if not self.ok:
            return None
        from .aggregate import sample_overall   # one home for the weights
        return sample_overall(self.scores, self.text_accuracy_na)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["overall"] = self.overall
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JudgeResult":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def failure(cls, error: str, **info: Any) -> "JudgeResult":
        return cls(error=error, **info)


class Judge(ABC):
    """Scores one sample. Implementations must not raise for a bad sample: they return a result
    whose `error` says what went wrong (missing image, unreadable reply after retries, ...)."""

    name: str = "judge"

    @abstractmethod
    async def score(self, *, request: str, generated_image: str | Path, gt_image: str | Path,
                    program: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> JudgeResult: ...

    def info(self) -> dict[str, str]:
        """Identity recorded with every output (model, endpoint, rubric version)."""
        return {"judge": self.name, "model": "", "endpoint": "", "rubric_version": ""}

    async def aclose(self) -> None:
        pass
