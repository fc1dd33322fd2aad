"""SFT cold start: assistant-token-only loss over multi-turn trajectories, on TRL's SFTTrainer.

What is ours: turning each SFT record (`messages`, optional `completion_ids`) into `input_ids`
and `labels` with everything but the assistant's tokens masked (train/sequences.py: system, user
and tool-observation tokens never get gradient; each assistant turn's end-of-turn token is learnt,
so the model learns to stop), optionally with the student's own system prompt in place of the
teacher's. Everything else is TRL/transformers: batching, bf16 autocast, the cosine schedule,
gradient accumulation, checkpoints and resume (`checkpoints/checkpoint-N`), and multi-GPU or
DeepSpeed when launched with `accelerate launch`.
"""

from __future__ import annotations

import json
import os
import time
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
                     report_to="none", dataloader_num_workers=0, disable_tqdm=True)
    metrics = MetricsLog(run)

    started = time.monotonic()

    class WriteMetrics(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and state.is_world_process_zero:
                metrics.write({"step": state.global_step, "epoch": state.epoch, **logs})

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            limit = config.time_limit_minutes
            if limit is not None and time.monotonic() - started > limit * 60:
                control.should_training_stop = control.should_save = True

    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[WriteMetrics()])
    resume = any((run / "checkpoints").glob("checkpoint-*"))
    if resume:
        last = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))
        metrics.truncate_after(last)
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    metrics.close()
    plot_curves(metrics.records(), run / "curves.png", title=f"SFT {config.model}")
    save_policy(trainer.model, tokenizer, run / "model", base=base,
                note={"trainer": "sft", "steps": trainer.state.global_step, "records": len(examples),
                      "config": config.to_dict()})
    return {"steps": trainer.state.global_step, "train_loss": result.training_loss, "records": len(examples),
            "tokens": sum(len(e["input_ids"]) for e in examples),
            "trained_tokens": sum(sum(1 for t in e["labels"] if t != -100) for e in examples)}
