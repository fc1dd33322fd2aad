"""Conversations as token sequences with a mask of what the policy wrote.

Training never re-tokenises what the policy sampled: an assistant message whose sampled ids are
known goes into the sequence as those ids. The chat template is rendered with a marker in place of
each such message, the text between markers is tokenised, and the ids are spliced in at the
markers. Because the cut falls at every assistant message, the ids of a conversation's first k
turns are a prefix of the ids of its first k+1 turns: one forward pass over the whole trajectory
scores every turn exactly as it was sampled.

Loss masks: 1 on the tokens the policy wrote (and the end-of-turn token after each, when it was
sampled or, in SFT data, when the template writes one), 0 on system, user and tool-observation
tokens, which never get gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

SPLICE = "\u2063GENEVOLVE-SPLICE-{}\u2063"     # invisible separator: no chat template touches it


def end_of_turn_ids(tokenizer: Any, model_config: Any = None) -> list[int]:
    """The token ids that end an assistant turn: the tokenizer's eos, the generation config's, ChatML's."""
    ids: list[int] = []
    candidates: list[Any] = [getattr(tokenizer, "eos_token_id", None)]
    gen = getattr(model_config, "eos_token_id", None) if model_config is not None else None
    candidates += gen if isinstance(gen, list) else [gen]
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    candidates += [vocab.get("<|im_end|>"), vocab.get("<|eot_id|>")]
    for c in candidates:
        if isinstance(c, int) and c not in ids:
            ids.append(c)
    return ids


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, Any]],
                completions: Sequence[list[int] | None] = (), *, add_generation_prompt: bool = True,
                splice_all: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a conversation and the (start, end) span of each spliced assistant message.

    `completions` holds the sampled ids of each assistant message in order (None: unknown). With
    `splice_all`, an assistant message without ids is spliced as the tokens of its content alone,
    so that every assistant message has a span (SFT data written by a teacher).
    """
    rendered_messages = []
    spliced: list[list[int]] = []
    k = 0
    for message in messages:
        content = message.get("content")
        if message.get("role") == "assistant":
            ids = completions[k] if k < len(completions) else None
            k += 1
            if ids is None and splice_all:
                ids = tokenizer(str(content or ""), add_special_tokens=False)["input_ids"]
            if ids is not None:
                rendered_messages.append({"role": "assistant", "content": SPLICE.format(len(spliced))})
                spliced.append(list(ids))
                continue
        rendered_messages.append({"role": message.get("role"), "content": content if isinstance(content, str)
                                  else str(content or "")})
    text = tokenizer.apply_chat_template(rendered_messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    out: list[int] = []
    spans: list[tuple[int, int]] = []
    rest = text
    for n, ids in enumerate(spliced):
        marker = SPLICE.format(n)
        at = rest.find(marker)
        if at < 0:
            raise ValueError("the chat template dropped or changed an assistant message; cannot splice its ids")
        out += _tokens(tokenizer, rest[:at])
        spans.append((len(out), len(out) + len(ids)))
        out += ids
        rest = rest[at + len(marker):]
    out += _tokens(tokenizer, rest)
    return out, spans


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


# ------------------------------------------------------------------------------------ SFT

def sft_example(tokenizer: Any, record: dict[str, Any], *, end_ids: Sequence[int] = (),
                max_length: int | None = None, where: str = "record") -> dict[str, list[int]]:
    """One SFT record to `input_ids` and `labels` (-100 everywhere but assistant tokens).

    Raises ValueError naming `where` and the field when the record is malformed.
    """
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: field 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool") \
                or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: messages[{i}] needs a role (system/user/assistant/tool) and string content")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: no assistant message to learn from")
    completions = record.get("completion_ids") or ()
    if completions and not isinstance(completions, list):
        raise ValueError(f"{where}: field 'completion_ids' must be a list (one entry per assistant message)")
    # `loss_mask`, one 0/1 per message: a teacher's deliberate mistake stays in the context but
    # is not learnt (data pipeline export format).
    loss_mask = record.get("loss_mask")
    if loss_mask is not None and (not isinstance(loss_mask, list) or len(loss_mask) != len(messages)):
        raise ValueError(f"{where}: field 'loss_mask' must hold one 0/1 per message ({len(messages)})")
    learn = [bool(loss_mask[i]) if loss_mask is not None else True
             for i, m in enumerate(messages) if m["role"] == "assistant"]
    ids, spans = encode_chat(tokenizer, messages, completions, add_generation_prompt=False, splice_all=True)
    labels = [-100] * len(ids)
    ends = set(end_ids)
    for (start, end), keep in zip(spans, learn):
        if not keep:
            continue
        labels[start:end] = ids[start:end]
        if end < len(ids) and ids[end] in ends:          # learn to stop after the turn
            labels[end] = ids[end]
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def untrained_common_prefix(rows: Sequence[Sequence[int]], first_trained: Sequence[int], minimum: int) -> int:
    """How many leading tokens all `rows` share and none learns from: the part (the system prompt,
    in practice) that can be run once for all of them. It stops one token before the earliest trained
    one, whose logit comes from the position before it and so must lie after the prefix. 0 when
    shorter than `minimum`."""
    if not rows:
        return 0
    first = rows[0]
    limit = min(min(len(r) for r in rows), min(first_trained)) - 1
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n if n >= minimum else 0


# ------------------------------------------------------------------------------------ RL

@dataclass
class TrainSequence:
    """One forward pass worth of tokens: a whole trajectory, or one turn of it."""

    input_ids: list[int]
    mask: list[int]                       # 1 where the policy wrote the token
    rollout_logprobs: list[float]         # NaN where unknown
    trajectory: int                       # index of its trajectory in the batch
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return sum(self.mask)


def trajectory_sequences(traj: Any, index: int, encode: Any = None) -> list[TrainSequence]:
    """The token sequences of a trajectory: one for the whole run when every turn's prompt extends
    the previous turn's tokens (a policy that splices its replies), else one per turn."""
    try:
        ids, mask, logprobs = traj.token_sequence(encode)
        return [TrainSequence(ids, mask, logprobs, index)] if ids else []
    except ValueError:
        pass
    out = []
    for turn in traj.token_turns(encode):
        lp = list(turn.logprobs) if turn.logprobs else [math.nan] * len(turn.completion_ids)
        out.append(TrainSequence(turn.prompt_ids + turn.completion_ids,
                                 [0] * len(turn.prompt_ids) + [1] * len(turn.completion_ids),
                                 [math.nan] * len(turn.prompt_ids) + lp, index))
    return out


def reprompted_sequence(tokenizer: Any, traj: Any, system_prompt: str) -> TrainSequence:
    """The trajectory's own tokens under another system prompt: the VED teacher's view.

    Observations, user turns and the sampled completion (and end-of-turn) ids stay as they were;
    only the system prompt differs. The mask marks the policy's tokens, in the same order as in
    the student's sequence, so per-token log-probs of the two views line up one to one.
    """
    messages = [{"role": "system", "content": system_prompt}, *traj.messages[1:]]
    turns = [t for t in traj.turns if t.completion_ids and t.message_index is not None]
    if not turns:
        return TrainSequence([], [], [], 0)
    last = max(t.message_index for t in turns)
    completions = traj.completions()
    ids, spans = encode_chat(tokenizer, messages[:last + 1], completions, add_generation_prompt=False)
    stops = {t.message_index: len(t.stop_ids or []) for t in turns}
    written = [i for i, m in enumerate(messages[:last + 1]) if m.get("role") == "assistant"
               and completions[sum(1 for x in messages[:i] if x.get("role") == "assistant")]]
    mask = [0] * len(ids)
    for (start, end), index in zip(spans, written):
        for p in range(start, min(end + stops.get(index, 0), len(ids))):
            mask[p] = 1
    return TrainSequence(ids, mask, [math.nan] * len(ids), 0)
