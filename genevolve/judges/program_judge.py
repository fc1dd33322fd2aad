"""R_text, the program judge, and the training reward R = (1 − α)·R_img + α·R_text.

The program judge never sees the generated image. It reads the request, the ground-truth image and
the agent's answer (gen_prompt plus the chosen references) and asks: given a perfect generator,
would this program be enough to produce the ground truth? It answers on five levels
{0, .25, .5, .75, 1}. Grading the program apart from the render keeps the reward informative when
the generator is the weak link.

Protocol failures (no answer, empty prompt, no usable reference where the generator needs one,
render failure) earn 0 without asking any judge. A judge that fails gives no reward at all (None):
the trainer should drop the sample rather than learn from a made-up number.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..protocol import MAX_REFERENCES, parse_turn
from .base import Judge, JudgeError, JudgeResult
from .kscore import grade, missing_images
from ..jsonio import extract_json
from .vlm_client import EndpointJudge, ask_until_valid, text_part

RUBRIC_VERSION = "genevolve-program-1"
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
ALPHA = 0.5          # weight of R_text in the mixed reward (GEN_REWARD_TEXT_COEF upstream)

SYSTEM_PROMPT = """\
You grade the plan an image-generation agent wrote, not an image. The agent read a user's request,
researched it, and handed a generator a program: a generation prompt and up to two reference images
(described by their notes and titles; the generator receives the images themselves). You also see
the ground-truth image: what a correct result looks like.

Imagine a perfect image generator that follows the program exactly. Would its output match the
ground truth on what matters for the request: the right entity or object, its identifying visual
features, required text spelled exactly, counts, layout and style? Judge the program's content, not
its length or wording.

Score, exactly one of 0, 0.25, 0.5, 0.75, 1:
1     the program pins down everything needed; a faithful render would match the ground truth.
0.75  nearly sufficient; one minor detail is missing or vague.
0.5   the main subject is right but important identifying details, text or structure are missing
      or wrong.
0.25  only loosely related; the render would likely show the wrong specific subject.
0     wrong, empty, or useless for this request.

Answer with one JSON object and nothing else:
{"rationale": "<2 to 6 sentences: what the request requires, then what the program gets right or misses>",
 "score": 0 | 0.25 | 0.5 | 0.75 | 1}
"""


@dataclass
class ProgramJudgement:
    score: float | None = None
    rationale: str = ""
    model: str = ""
    endpoint: str = ""
    rubric_version: str = RUBRIC_VERSION
    error: str | None = None
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_program_reply(reply: str) -> tuple[float, str]:
    obj = extract_json(reply)
    if "score" not in obj:
        raise ValueError("reply lacks 'score'")
    rationale = obj.get("rationale", "")
    return grade(obj["score"], "score", LEVELS), rationale if isinstance(rationale, str) else str(rationale)


def program_for_judge(program: dict[str, Any]) -> dict[str, Any]:
    """The answer as the judge should read it: prompt and reference descriptions, no local paths."""
    refs = program.get("reference_images") or program.get("references") or []
    return {"gen_prompt": program.get("gen_prompt", ""),
            "reference_images": [{k: r[k] for k in ("img_id", "note", "title") if r.get(k)}
                                 for r in refs if isinstance(r, dict)]}


class ProgramJudge(EndpointJudge):
    """R_text over any OpenAI-compatible multimodal endpoint."""

    name = "program"

    async def score(self, *, request: str, gt_image: str | Path, program: dict[str, Any]) -> ProgramJudgement:
        info = {"model": self.endpoint.model, "endpoint": self.endpoint.base_url}
        problem = missing_images(GT=gt_image)
        if problem:
            return ProgramJudgement(error=problem, attempts=0, **info)
        try:
            user = [text_part(f"Request:\n{request.strip()}\n\nGround-truth image:"),
                    self.client.image(gt_image),
                    text_part("The agent's program:\n" + json.dumps(program_for_judge(program),
                                                                     ensure_ascii=False, indent=1)
                              + "\n\nGrade the program now. Reply with the JSON object only.")]
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
            (value, rationale), attempts = await ask_until_valid(self.client, messages, parse_program_reply,
                                                                 self.max_attempts)
        except JudgeError as exc:
            return ProgramJudgement(error=str(exc), attempts=self.max_attempts, **info)
        return ProgramJudgement(score=value, rationale=rationale, attempts=attempts, **info)


# ---------------------------------------------------------------------------------------------
# The training reward

def mixed_reward(r_img: float, r_text: float, alpha: float = ALPHA) -> float:
    return (1.0 - alpha) * r_img + alpha * r_text


def protocol_failure(program: dict[str, Any] | None, *, generated_image: str | Path | None = None,
                     render_error: str | None = None, require_reference: bool = False,
                     max_references: int = MAX_REFERENCES) -> str | None:
    """Why this rollout earns 0 before any judge is asked; None when it is a valid attempt."""
    if not isinstance(program, dict):
        return "no_answer"
    if not str(program.get("gen_prompt") or "").strip():
        return "empty_gen_prompt"
    refs = [r for r in (program.get("reference_images") or []) if isinstance(r, dict)]
    if len(refs) > max_references:
        return f"too_many_references: {len(refs)} > {max_references}"
    if require_reference and not any(r.get("local_path") and Path(r["local_path"]).is_file() for r in refs):
        return "no_usable_reference"
    if render_error:
        return f"render_failed: {render_error}"
    if not generated_image or not Path(generated_image).is_file():
        return "render_failed: no generated image"
    return None


@dataclass
class RewardBreakdown:
    reward: float | None            # None: a judge failed; drop the sample
    r_img: float | None = None
    r_text: float | None = None
    failure: str | None = None      # protocol failure (reward 0) or judge failure (reward None)
    image_judgement: JudgeResult | None = None
    program_judgement: ProgramJudgement | None = None


async def training_reward(*, request: str, program: dict[str, Any] | None, generated_image: str | Path | None,
                          gt_image: str | Path, image_judge: Judge, program_judge: ProgramJudge,
                          alpha: float = ALPHA, render_error: str | None = None,
                          require_reference: bool = False, max_references: int = MAX_REFERENCES
                          ) -> RewardBreakdown:
    """R for one rollout: 0 on a protocol failure, else the α-mix of the two judges (run together)."""
    failure = protocol_failure(program, generated_image=generated_image, render_error=render_error,
                               require_reference=require_reference, max_references=max_references)
    if failure:
        return RewardBreakdown(reward=0.0, failure=failure)
    assert program is not None and generated_image is not None
    image_result, program_result = await asyncio.gather(
        image_judge.score(request=request, generated_image=generated_image, gt_image=gt_image, program=program),
        program_judge.score(request=request, gt_image=gt_image, program=program))
    r_img, r_text = image_result.overall, program_result.score
    if r_img is None or r_text is None:
        why = image_result.error if r_img is None else program_result.error
        return RewardBreakdown(reward=None, r_img=r_img, r_text=r_text, failure=f"judge_failed: {why}",
                               image_judgement=image_result, program_judgement=program_result)
    return RewardBreakdown(reward=mixed_reward(r_img, r_text, alpha), r_img=r_img, r_text=r_text,
                           image_judgement=image_result, program_judgement=program_result)


class TrainingReward:
    """A TRL-style reward function: `reward(prompts, completions, **columns) -> list[float | None]`.

    Per-sample columns (lists as long as `completions`): `gt_image` (required), `generated_image`
    and `render_error` (the caller renders first), optionally `request` (else the prompt text) and
    `program` (else the <answer> parsed from the completion). The last breakdowns are kept in
    `last_breakdowns` for logging.
    """

    __name__ = "genevolve_reward"

    def __init__(self, image_judge: Judge, program_judge: ProgramJudge, *, alpha: float = ALPHA,
                 require_reference: bool = False, max_references: int = MAX_REFERENCES, parallel: int = 8):
        self.image_judge, self.program_judge = image_judge, program_judge
        self.alpha, self.require_reference, self.max_references = alpha, require_reference, max_references
        self.parallel = parallel
        self.last_breakdowns: list[RewardBreakdown] = []

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        self.last_breakdowns = asyncio.run(self.score_batch(prompts, completions, **columns))
        return [b.reward for b in self.last_breakdowns]

    async def score_batch(self, prompts: Sequence[Any], completions: Sequence[Any],
                          **columns: Any) -> list[RewardBreakdown]:
        n = len(completions)
        if "gt_image" not in columns:
            raise ValueError("the reward needs a 'gt_image' column")

        def column(name: str) -> list[Any]:
            values = columns.get(name)
            if values is None:
                return [None] * n
            if len(values) != n:
                raise ValueError(f"column '{name}' has {len(values)} values for {n} completions")
            return list(values)

        gt, images, render_errors = column("gt_image"), column("generated_image"), column("render_error")
        requests, programs = column("request"), column("program")
        sem = asyncio.Semaphore(max(1, self.parallel))

        async def one(i: int) -> RewardBreakdown:
            async with sem:
                program = programs[i] if programs[i] is not None else answer_of(completions[i])
                return await training_reward(
                    request=requests[i] or _text_of(prompts[i]), program=program, generated_image=images[i],
                    gt_image=gt[i], image_judge=self.image_judge, program_judge=self.program_judge,
                    alpha=self.alpha, render_error=render_errors[i], require_reference=self.require_reference,
                    max_references=self.max_references)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def answer_of(completion: Any) -> dict[str, Any] | None:
    """The <answer> object of a completion (a string or a list of chat messages), or None."""
    turn = parse_turn(_text_of(completion, role="assistant"))
    return turn.answer if turn.kind == "answer" else None


def _text_of(value: Any, role: str = "user") -> str:
    """A plain string, or the last `role` message of a conversation."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for m in reversed(value):
            if isinstance(m, dict) and m.get("role") == role:
                content = m.get("content")
                return content if isinstance(content, str) else " ".join(
                    p.get("text", "") for p in content or [] if isinstance(p, dict))
    return ""
