"""KScore: a vision-language judge comparing a generated image with the ground-truth image.

The rubric is ours; its semantics follow the published GenEvolve/Gen-Searcher judge: image 1 is
the generated image, image 2 the ground truth; four dimensions, each exactly 0, 0.5 or 1;
`text_accuracy_na` when the request needs no readable text (text then counts 0.5 in the
per-sample overall); a short rationale that states the hard constraints first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import parse_bool
from .base import DIMENSIONS, Judge, JudgeError, JudgeResult
from ..jsonio import extract_json
from .vlm_client import EndpointJudge, ask_until_valid, text_part

RUBRIC_VERSION = "genevolve-kscore-1"
ALLOWED = (0.0, 0.5, 1.0)

SYSTEM_PROMPT = """\
You grade text-to-image results against a reference. You receive a user's request and two images:
IMAGE 1 is the image a system generated for the request; IMAGE 2 is the ground-truth image showing
what a correct answer looks like. Grade IMAGE 1 only; IMAGE 2 is the standard it is measured against.

Start by working out the hard constraints of the request: the two to five things an answer cannot
get wrong (which entity, object or person; required counts; required readable text; required
layout, style or state). Then grade four dimensions. Each score must be exactly 0, 0.5 or 1.

faithfulness - Does IMAGE 1 contain what the request asks for, with the requested structure?
  1: every required element is present and arranged as asked. 0.5: the main subject is right but
  an element, count or relation is missing or wrong. 0: the main subject is missing or wrong.
visual_correctness - Do the visual features that identify the subject in IMAGE 2 (shapes, colours,
  markings, layout, distinctive details) appear correctly in IMAGE 1? Be very strict: a generic or
  plausible-looking stand-in is not the specific thing. 1: identity features match. 0.5: partly
  right, with clear errors in identifying details. 0: a different or unrecognisable subject.
text_accuracy - If the request needs readable text in the image (a sign, label, title, number),
  is that text exactly right and legible? Misspelled, garbled or invented text earns no credit.
  1: all required text correct. 0.5: mostly correct with small errors. 0: wrong, missing or
  unreadable. If the request needs no readable text, set text_accuracy_na to true and
  text_accuracy to 0.5.
aesthetics - Overall image quality: composition, lighting, coherence, absence of artefacts.
  1: at least as good as IMAGE 2. 0.5: acceptable but clearly below IMAGE 2. 0: poor or broken.

Answer with one JSON object and nothing else:
{"rationale": "<5 to 10 sentences: the hard constraints first, then how IMAGE 1 meets or misses each>",
 "faithfulness": 0 | 0.5 | 1,
 "visual_correctness": 0 | 0.5 | 1,
 "text_accuracy": 0 | 0.5 | 1,
 "text_accuracy_na": true | false,
 "aesthetics": 0 | 0.5 | 1}
"""


def parse_kscore_reply(reply: str) -> tuple[dict[str, float], bool, str]:
    """(scores, text_accuracy_na, rationale) from a judge reply; ValueError when unusable."""
    obj = extract_json(reply)
    na = parse_bool(obj.get("text_accuracy_na", False), "text_accuracy_na")
    scores: dict[str, float] = {}
    for dim in DIMENSIONS:
        if dim == "text_accuracy" and na:
            scores[dim] = 0.5            # the published rule for requests without text
            continue
        if dim not in obj:
            raise ValueError(f"reply lacks '{dim}'")
        scores[dim] = grade(obj[dim], dim, ALLOWED)
    rationale = obj.get("rationale", "")
    return scores, na, rationale if isinstance(rationale, str) else str(rationale)


def grade(value: Any, name: str, allowed: tuple[float, ...]) -> float:
    """`value` as one of `allowed`; ValueError for anything else (the judge is asked again)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number") from None
    for a in allowed:
        if abs(number - a) < 1e-9:
            return a
    raise ValueError(f"{name}={value!r} is not one of {', '.join(f'{a:g}' for a in allowed)}")


def missing_images(**paths: str | Path | None) -> str | None:
    """An error naming each image that does not exist; None when all do."""
    gone = []
    for role, path in paths.items():
        if not path:
            gone.append(f"no {role} image given")
        elif not Path(path).is_file():
            gone.append(f"{role} image not found: {path}")
    return "; ".join(gone) or None


class KScoreJudge(EndpointJudge, Judge):
    """The four-dimension KScore judge over any OpenAI-compatible multimodal endpoint."""

    name = "kscore"

    def info(self) -> dict[str, str]:
        return {"judge": self.name, "model": self.endpoint.model, "endpoint": self.endpoint.base_url,
                "rubric_version": RUBRIC_VERSION}

    def messages(self, request: str, generated_image: str | Path, gt_image: str | Path) -> list[dict[str, Any]]:
        user = [text_part(f"Request:\n{request.strip()}\n\nIMAGE 1 (generated):"),
                self.client.image(generated_image),
                text_part("IMAGE 2 (ground truth):"),
                self.client.image(gt_image),
                text_part("Grade IMAGE 1 now. Reply with the JSON object only.")]
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    async def score(self, *, request: str, generated_image: str | Path, gt_image: str | Path,
                    program: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> JudgeResult:
        info = self.info()
        problem = missing_images(generated=generated_image, GT=gt_image)
        if problem:
            return JudgeResult.failure(problem, attempts=0, **info)
        try:
            messages = self.messages(request, generated_image, gt_image)
            (scores, na, rationale), attempts = await ask_until_valid(
                self.client, messages, parse_kscore_reply, self.max_attempts)
        except JudgeError as exc:
            return JudgeResult.failure(str(exc), attempts=self.max_attempts, **info)
        return JudgeResult(scores=scores, text_accuracy_na=na, rationale=rationale, attempts=attempts, **info)
