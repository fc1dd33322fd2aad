"""Loading a model for training, and saving a trained policy that every runtime can load.

Full fine-tuning keeps fp32 master weights (bf16 autocast does the arithmetic) and rolls out from a
bf16 copy that is refreshed after each optimizer step: decoding under autocast would cast every
weight on every token. LoRA keeps the base in bf16 (it never changes) with fp32 adapters, and rolls
out from the same model.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

POLICY_NOTE = "genevolve_policy.json"


def training_device(name: str = "auto") -> torch.device:
    """`auto`: the first GPU when torch sees one, else the CPU; otherwise the device named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this torch sees no GPU (torch {torch.__version__})")
    return device


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def load_trainable(base: Path, *, lora_r: int = 0, lora_alpha: int = 32, bf16: bool = True,
                   want_ref: bool = False, resume_from: Path | None = None, device: torch.device | str = "cpu",
                   rollout_copy: bool = True) -> tuple[Any, Any, Any, Any]:
    """(trainable model, tokenizer, rollout model, reference model or None), all on `device`.
    `rollout_copy=False` (rollouts sampled outside this process): no bf16 copy, the rollout model
    is the trained one.

    `resume_from` is a checkpoint written by a trainer (full weights, or a LoRA adapter). The
    reference is the starting model (`base`); with LoRA it is None (the adapter is switched off).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resume_from or base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    low = torch.bfloat16 if bf16 else torch.float32
    if lora_r > 0:
        from peft import LoraConfig, PeftModel, get_peft_model
        backbone = AutoModelForCausalLM.from_pretrained(base, dtype=low).to(device)
        if resume_from is not None:
            model = PeftModel.from_pretrained(backbone, resume_from, is_trainable=True)
        else:
            model = get_peft_model(backbone, LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                                        target_modules="all-linear", task_type="CAUSAL_LM"))
        for p in model.parameters():          # adapters train in fp32 under autocast
            if p.requires_grad:
                p.data = p.data.float()
        return model, tokenizer, model, None
    model = AutoModelForCausalLM.from_pretrained(resume_from or base, dtype=torch.float32).to(device)
    rollout = copy.deepcopy(model).to(low) if bf16 and rollout_copy else model
    if rollout is not model:
        rollout.eval()
        for p in rollout.parameters():
            p.requires_grad_(False)
    ref = None
    if want_ref:
        ref = AutoModelForCausalLM.from_pretrained(base, dtype=low).to(device)
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    return model, tokenizer, rollout, ref


def save_policy(model: Any, tokenizer: Any, out_dir: str | os.PathLike, *, base: Path | None = None,
                note: dict[str, Any] | None = None) -> Path:
    """Write a policy directory: full weights in bf16, or a LoRA adapter naming its base; plus the
    tokenizer and a note of how it was trained. `HFPolicy(DIR)` and `genevolve export gguf DIR` read it."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    is_lora = hasattr(model, "peft_config")
    if is_lora:
        model.save_pretrained(tmp)
    else:
        state = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
        model.save_pretrained(tmp, state_dict=state)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["dtype"] = "bfloat16"
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    tokenizer.save_pretrained(tmp)
    (tmp / POLICY_NOTE).write_text(json.dumps({"kind": "lora" if is_lora else "full",
                                               "base": str(base) if base else None, **(note or {})},
                                              indent=1, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def save_checkpoint(folder: Path, step: int, model: Any, tokenizer: Any, state: dict[str, Any],
                    note: dict[str, Any], keep: int = 2) -> Path:
    """`folder/step_XXXXX`: weights (or adapter), tokenizer, trainer state; then `folder/latest`
    names it. Written under a temporary name and renamed, so a crash never leaves a half checkpoint
    as the latest; only the newest `keep` are kept."""
    ckpt = folder / f"step_{step:05d}"
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / "trainer_state.pt")
    (tmp / "genevolve_checkpoint.json").write_text(json.dumps(note, default=str) + "\n")
    if ckpt.exists():
        shutil.rmtree(ckpt)
    os.replace(tmp, ckpt)
    (folder / "latest.tmp").write_text(ckpt.name + "\n")
    os.replace(folder / "latest.tmp", folder / "latest")
    kept = sorted(p for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in kept[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return ckpt


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint `folder/latest` names, if it is complete."""
    pointer = folder / "latest"
    if not pointer.exists():
        return None
    ckpt = folder / pointer.read_text().strip()
    return ckpt if (ckpt / "trainer_state.pt").exists() else None
