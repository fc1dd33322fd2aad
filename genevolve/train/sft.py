"""SFT cold start: assistant-token-only loss over multi-turn trajectories, on TRL's SFTTrainer.

What is ours: turning each SFT record (`messages`, optional `completion_ids`) into `input_ids`
and `labels` with everything but the assistant's tokens masked (train/sequences.py: system, user
and tool-observation tokens never get gradient; each assistant turn's end-of-turn token is learnt,
so the model learns to stop), optionally with the student's own system prompt in place of the
teacher's. Everything else is TRL/transformers: batching, bf16 autocast, the cosine schedule,
gradient accumulation, checkpoints and resume (`checkpoints/checkpoint-N`), and multi-GPU or
DeepSpeed when launched with `accelerate launch`.

Also ours, for speed on one process: every record opens with the same system prompt (about 1,700
tokens, some 70% of an average record, none of it learnt). With `share_prefix` the tokens all rows of
a batch begin with are run once per batch and their keys and values are reused by every row
(`prefix_shared_token_loss`). The loss and its gradient are the same as running each row whole (the
shared keys and values send back the sum of what each row would), so this is a speed-up, not an
approximation. Neither TRL nor transformers trains this way, hence our own `compute_loss`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..jsonio import atomic_write_json, jsonl_lines
from .config import SFTConfig
from .metrics import MetricsLog, plot_curves


def student_view(policy_options: dict[str, Any] | None = None) -> tuple[str, int]:
    """(system prompt, observation characters) of the in-process policy (and its GGUF export)."""
    from ..policies.grammar import protocol_tool_schemas
    from ..policies.hf import HFPolicy
    from ..protocol import build_system_prompt
    policy = HFPolicy("unloaded", **(policy_options or {}))        # nothing loads until chat()
    budget = policy.tool_call_budget
    schemas = policy.set_tools(protocol_tool_schemas(), max_tool_calls=budget)
    prompt = build_system_prompt(schemas, max_tool_calls=budget, inline_skills=policy.inline_skills)
    return prompt, int(policy.observation_chars)


def cut_observation(content: str, chars: int) -> str:
    """A tool response cut to `chars` characters of observation, as the agent cuts it at run time."""
    head, tail = "<tool_response>\n", "\n</tool_response>"
    if not (content.startswith(head) and content.endswith(tail)):
        return content
    text = content[len(head):-len(tail)]
    if len(text) <= chars:
        return content
    return f"{head}{text[:chars]}\n…[cut: {len(text)} characters in all]{tail}"


def read_sft_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(path)
    records = []
    for n, line in enumerate(jsonl_lines(p.read_text(encoding="utf-8")), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{p}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{p}:{n}: a record must be a JSON object")
            record["_where"] = f"{p}:{n}"
            records.append(record)
    if not records:
        raise ValueError(f"{p}: no SFT records")
    return records


def tokenize_records(records: list[dict[str, Any]], tokenizer: Any, *, max_length: int,
                     student: tuple[str, int] | None = None, end_ids: list[int] | None = None
                     ) -> list[dict[str, list[int]]]:
    """SFT examples; with `student` = (system prompt, observation chars), each conversation is first
    shown as the student will see it at run time: its system prompt (any decision guide kept) and
    tool observations cut to its budget."""
    from ..protocol import split_guide
    from .sequences import sft_example
    out = []
    for record in records:
        if student is not None:
            prompt, chars = student
            msgs = []
            for i, m in enumerate(record.get("messages") or []):
                if isinstance(m, dict) and i == 0 and m.get("role") == "system":
                    m = {"role": "system", "content": prompt + split_guide(str(m.get("content") or ""))[1]}
                elif isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                    m = {"role": "user", "content": cut_observation(m["content"], chars)}
                msgs.append(m)
            record = {**record, "messages": msgs}
        out.append(sft_example(tokenizer, record, end_ids=end_ids or (), max_length=max_length,
                               where=record.get("_where", "record")))
    return out


def shared_prefix_length(input_ids: Any, attention_mask: Any, labels: Any, minimum: int = 32) -> int:
    """The untrained prefix all rows of a right-padded batch share (sequences.untrained_common_prefix);
    0 for a single row, where sharing gains nothing."""
    from .sequences import untrained_common_prefix
    if input_ids.shape[0] < 2:
        return 0
    rows = [ids[:int(m.sum())].tolist() for ids, m in zip(input_ids, attention_mask)]
    first = [int(t.nonzero()[0]) if t.any() else len(t) for t in labels != -100]
    return untrained_common_prefix(rows, first, minimum)


def prefix_shared_token_loss(model: Any, input_ids: Any, attention_mask: Any, labels: Any,
                             prefix: int) -> dict[str, Any]:
    """Summed negative log-likelihood of the learnt tokens (`labels` != -100, next-token), with the
    first `prefix` tokens, the same in every row, run once and their keys/values shared by the rows.
    Also returns the number of learnt tokens, how many were the top-1 choice and their summed entropy
    (detached), the figures TRL logs."""
    import torch
    rows = input_ids.shape[0]
    head = model(input_ids=input_ids[:1, :prefix], attention_mask=attention_mask[:1, :prefix],
                 use_cache=True, logits_to_keep=1)
    cache = head.cache
    cache.batch_repeat_interleave(rows)
    tail = model(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, cache=cache, use_cache=True)
    target = labels[:, prefix + 1:]
    keep = target != -100
    logp = torch.log_softmax(tail.logits[:, :-1][keep].float(), dim=-1)
    wanted = target[keep]
    nll = -logp.gather(1, wanted[:, None]).sum()
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum()
        top1 = (logp.argmax(-1) == wanted).sum()
    return {"nll": nll, "tokens": int(keep.sum()), "top1": int(top1), "entropy": float(entropy)}


def _prefix_sharing(trainer_class: Any) -> Any:
    """TRL's SFTTrainer with `prefix_shared_token_loss` for training batches that share a prefix, on
    one process (several forwards before one backward do not mix with DDP or DeepSpeed) and without
    activation checkpointing (which turns the keys/values cache off); elsewhere the plain loss runs."""
    import torch

    class PrefixSharingSFTTrainer(trainer_class):
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            prefix = 0
            if model.training and not return_outputs and self.accelerator.num_processes == 1 \
                    and not self.args.activation_checkpointing and "attention_mask" in inputs and "labels" in inputs:
                prefix = shared_prefix_length(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            if not prefix:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            out = prefix_shared_token_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"], prefix)
            count = out["tokens"] if num_items_in_batch is None else num_items_in_batch
            loss = out["nll"] / torch.as_tensor(count).clamp(min=1)
            # The figures TRL's own loss logs, so both paths write the same metrics. They live in
            # SFTTrainer's private fields (TRL 1.16, pinned); a TRL without them only loses the figures.
            logged = getattr(self, "_metrics", None)
            if isinstance(logged, dict) and "train" in logged and hasattr(self, "_total_train_tokens"):
                learnt = max(out["tokens"], 1)
                logged["train"]["entropy"].append(out["entropy"] / learnt)
                logged["train"]["mean_token_accuracy"].append(out["top1"] / learnt)
                self._total_train_tokens += int(inputs["attention_mask"].sum())
                logged["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

    return PrefixSharingSFTTrainer


def train_sft(config: SFTConfig) -> dict[str, Any]:
    """Run (or resume) SFT; writes run dir/{config.json, metrics.jsonl, curves.png, checkpoints/, model/}."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    from .base_models import resolve_model
    from .sequences import end_of_turn_ids
    from .weights import save_policy

    if config.data is None:
        raise ValueError("no SFT data given")
    if config.threads:
        torch.set_num_threads(int(config.threads))
    run = Path(config.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "config.json", config.to_dict())
    base = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    student = student_view(config.policy_options) if config.system_prompt == "student" else None
    examples = tokenize_records(read_sft_records(config.data), tokenizer, max_length=config.max_length,
                                student=student, end_ids=end_of_turn_ids(tokenizer, model.generation_config))
    dataset = Dataset.from_list(examples)
    from accelerate import PartialState
    world = PartialState().num_processes      # the processes an accelerate/torchrun launcher started
    accumulation = max(config.batch_size // (config.per_device_batch * world), 1)
    peft_config = None
    if config.lora_r > 0:
        from peft import LoraConfig
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    args = TRLConfig(output_dir=str(run / "checkpoints"), num_train_epochs=config.epochs, max_steps=config.max_steps,
                     learning_rate=config.learning_rate, lr_scheduler_type=config.lr_schedule,
                     warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay,
                     per_device_train_batch_size=config.per_device_batch, gradient_accumulation_steps=accumulation,
                     max_length=None, bf16=config.bf16, use_cpu=not torch.cuda.is_available(), seed=config.seed,
                     save_steps=config.save_steps, save_total_limit=config.keep_checkpoints, logging_steps=1,
                     activation_checkpointing=config.activation_checkpointing,
                     report_to="none", dataloader_num_workers=0, disable_tqdm=True,
                     # rows of like length share a batch, so little of it is padding
                     train_sampling_strategy="group_by_length" if config.group_by_length else "random")
    metrics = MetricsLog(run)

    class WriteMetrics(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and state.is_world_process_zero:
                metrics.write({"step": state.global_step, "epoch": state.epoch, **logs,
                               "train_seconds": round(metrics.train_seconds(), 3)})

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            limit = config.time_limit_minutes
            if limit is not None and metrics.train_seconds() > limit * 60:
                control.should_training_stop = control.should_save = True

    trainer_class = _prefix_sharing(SFTTrainer) if config.share_prefix else SFTTrainer
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[WriteMetrics()])
    resume = any((run / "checkpoints").glob("checkpoint-*"))
    if resume:
        last = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))
        metrics.truncate_after(last)
    metrics.start_clock()                 # from here (loading excluded), on from a resumed run's time
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    metrics.close()
    plot_curves(metrics.records(), run / "curves.png", title=f"SFT {config.model}")
    save_policy(trainer.model, tokenizer, run / "model", base=base,
                note={"trainer": "sft", "steps": trainer.state.global_step, "records": len(examples),
                      "config": config.to_dict()})
    # the data's sizes, and how much of it the steps run went through
    return {"steps": trainer.state.global_step, "train_loss": result.training_loss, "records": len(examples),
            "epochs_run": trainer.state.epoch,
            "records_seen": trainer.state.global_step * config.per_device_batch * accumulation * world,
            "tokens": sum(len(e["input_ids"]) for e in examples),
            "assistant_tokens": sum(sum(1 for t in e["labels"] if t != -100) for e in examples)}
