"""The settings of a training run: one dataclass per trainer, TRL style (each field carries its
help text, and the CLI turns the fields into flags), plus the GPU and CPU presets.

Kept apart from the trainers so that reading or validating a config imports no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


# Hyperparameter presets. GPU: the paper's stage 2 (8 requests x 6 rollouts, lr 1e-6 cosine, no
# warm-up). CPU: what two cores afford in the time budget; lr and group size come from
# `benchmarks/cpu_self_evolution.py --sweep` (the paper's 1e-6 moves nothing in a few dozen steps).
PRESETS: dict[str, dict[str, Any]] = {
    "gpu": {"requests_per_step": 8, "group_size": 6, "learning_rate": 1e-6, "lr_schedule": "cosine",
            "warmup_steps": 0, "temperature": 0.7, "top_p": 0.95, "max_tokens": 4096, "steps": 200,
            "bf16": True},
    "cpu": {"requests_per_step": 2, "group_size": 4, "learning_rate": 1e-5, "lr_schedule": "cosine",
            "warmup_steps": 0, "temperature": 0.7, "top_p": 0.95, "max_tokens": 160, "steps": 30,
            "bf16": True, "threads": 2,
            # a small policy's worse rollouts mostly fail the protocol: those pairs are its lessons
            "ved_exclude_protocol_failures": False},
}


@dataclass
class GRPOConfig:
    """Every knob of a GRPO run; the run dir's config.json is this object."""

    model: str = _f("smollm2-135m", "base model name (smollm2-135m, qwen2.5-coder-0.5b) or checkpoint dir")
    output_dir: str = _f("runs/grpo", "run directory")
    pool: str | None = _f(None, "JSON lines of pool rows (id, question, gt_image, meta)")
    steps: int = _f(30, "optimizer steps (each one batch of rollouts)")
    requests_per_step: int = _f(2, "requests per step")
    group_size: int = _f(6, "rollouts per request (K; the paper uses 6)")
    learning_rate: float = _f(1e-5, "peak learning rate")
    lr_schedule: str = _f("cosine", "cosine | constant")
    warmup_steps: int = _f(0, "linear warm-up steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping (0: off)")
    clip_low: float = _f(0.20, "lower clip of the ratio: 1 - clip_low")
    clip_high: float = _f(0.28, "upper clip of the ratio: 1 + clip_high")
    kl_beta: float = _f(0.0, "weight of the KL to the reference (paper: 1e-3); 0 turns it off")
    adv_eps: float = _f(1e-6, "epsilon in (R - mean) / (std + eps)")
    temperature: float = _f(0.7, "rollout temperature (also divides the logits of the training pass)")
    top_p: float = _f(0.95, "rollout top-p")
    max_tokens: int = _f(160, "tokens per turn")
    epochs_per_step: int = _f(1, "passes over each batch of rollouts")
    minibatches: int = _f(1, "optimizer steps per pass (more than 1 makes the ratio and clipping act)")
    lora_r: int = _f(0, "LoRA rank (0: full fine-tune)")
    lora_alpha: int = _f(32, "LoRA alpha")
    bf16: bool = _f(True, "bf16 autocast (fp32 master weights); rollouts in a bf16 copy")
    share_prefix: bool = _f(True, "run the system prompt every trajectory shares once per minibatch and send "
                                   "the sequences' gradients back through that one pass (exact; a CPU speed-up)")
    threads: int | None = _f(None, "torch threads (default: torch's)")
    device: str = _f("auto", "where the model trains: auto (the GPU when torch sees one, else the CPU) | cpu | "
                             "cuda | cuda:N")
    seed: int = _f(0, "seed of the pool order and of every rollout")
    time_limit_minutes: float | None = _f(None, "stop after the step that passes this much training time, "
                                                "resumed invocations included (a safety net: the schedule "
                                                "still spans `steps`)")
    save_every: int = _f(10, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk")
    max_sequence_tokens: int = _f(8192, "longer trajectories are cut")
    reward_alpha: float = _f(0.5, "R = (1 - alpha) R_img + alpha R_text")
    generator: str = _f("offline", "generator backend that renders programs")
    image_judge: str = _f("offline", "R_img judge: offline")
    text_judge: str = _f("offline", "R_text judge: offline | none")
    render_long_side: int = _f(512, "long side of rendered images")
    agent_protocol: str = _f("default", "agent protocol mode for rollouts")
    policy_options: dict[str, Any] = _f(None, "the rollout policy's budget options (tool_call_budget, ...)")
    rollouts: str = _f("hf", "where rollouts are sampled: hf (in-process transformers) | llama (the embedded "
                             "llama.cpp policy on a GGUF of each step's weights) | vllm (a vLLM server at "
                             "--rollout-url, given each step's LoRA adapter)")
    rollout_url: str | None = _f(None, "vllm: the server's OpenAI base URL (http://HOST:8000/v1)")
    rollout_dir: str | None = _f(None, "folder for each step's rollout weights (vllm: one the server can read; "
                                       "default RUN/rollout_weights)")
    rollout_adapter_name: str = _f("genevolve", "vllm: adapters are loaded as NAME-step-N")
    rollout_grammar: bool = _f(True, "vllm: send the protocol grammar (structured outputs), as the local "
                                     "policies constrain their turns")
    rollout_gguf_type: str = _f("f16", "llama: tensor type of each step's GGUF (f16 | bf16 | q8_0 | f32)")
    # -- Visual Experience Distillation (train/ved.py); the defaults are the paper's
    ved: bool = _f(False, "Visual Experience Distillation: best-vs-worst decision guides, an experience memory, "
                          "and a distillation term toward the same policy reading the guide (--no-ved: plain GRPO)")
    ved_sdl_weight: float = _f(2.0, "lambda in L = L_GRPO + lambda * L_SDL (0: guides and memory only, no "
                                    "distillation: an ablation)")
    ved_min_gap: float = _f(0.20, "a group's best and worst rollouts make a pair when their rewards differ by this much")
    ved_max_pairs: int = _f(8, "pairs summarised per step at most (widest gaps first)")
    ved_exclude_protocol_failures: bool = _f(True, "leave out pairs whose worse rollout failed the protocol "
                                                   "(no answer, empty prompt, ...): they teach format, not strategy")
    ved_summarizer: str = _f("offline", "offline (rules from the recorded actions and judge diagnostics) | "
                                        "endpoint (an OpenAI-compatible model at --ved-summarizer-url)")
    ved_summarizer_url: str | None = _f(None, "base URL of the summariser model (endpoint)")
    ved_summarizer_model: str = _f("default", "model name sent to the summariser endpoint")
    ved_summarizer_attempts: int = _f(3, "summariser replies per pair until one passes the schema checks")
    ved_summarizer_timeout_s: float = _f(90.0, "seconds to wait for a summariser reply")
    ved_rules_per_slot: int = _f(3, "rules per guide slot at most")
    ved_memory_capacity: int = _f(500, "experience memory size (bundles)")
    ved_eviction_window: int = _f(50, "when the memory is full, the smallest-gap entry among this many oldest "
                                      "is evicted (1: plain FIFO)")
    ved_min_similarity: float = _f(0.84, "retrieve the nearest bundle only at this cosine similarity or more")
    ved_embedder: str = _f("minilm", "memory keys: minilm (bundled all-MiniLM-L6-v2, offline) | hash | a "
                                     "sentence-transformers folder")
    ved_same_step: bool = _f(True, "a step's new guides enter the memory before its requests retrieve (a request "
                                   "can meet its own group's guide); off: retrieval sees earlier steps only")
    ved_top_frac: float = _f(0.10, "share of each guided sequence's tokens in the SDL mask, by |log q - log p|")
    ved_k3_clamp: float = _f(10.0, "k3 per token is clamped to [-c, c]")
    ved_ratio_cap: float = _f(2.0, "importance ratio min(p_theta / p_theta_old, cap)")
    ved_token_cap: float | None = _f(None, "optional cap on each token's rho * k3 (not published; off)")
    preset: str | None = _f(None, "gpu | cpu: defaults applied under explicit settings")

    @classmethod
    def build(cls, preset: str | None = None, **settings: Any) -> "GRPOConfig":
        """Preset values, then explicit settings (None means: not given)."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
            values.update(PRESETS[preset])
        names = {f.name for f in fields(cls)}
        unknown = set(settings) - names
        if unknown:
            raise ValueError(f"unknown GRPO setting(s): {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in settings.items() if v is not None})
        values["preset"] = preset
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.group_size < 2:
            raise ValueError("group_size must be at least 2 (advantages compare rollouts of one request)")
        if self.requests_per_step < 1 or self.steps < 1:
            raise ValueError("requests_per_step and steps must be at least 1")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError("clip_low must be in [0, 1) and clip_high >= 0")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError("lr_schedule must be cosine or constant")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 for GRPO rollouts")
        from .export import OUTTYPES
        from .rollout_backends import BACKENDS
        if self.rollouts not in BACKENDS:
            raise ValueError(f"rollouts must be one of {', '.join(BACKENDS)}, not {self.rollouts!r}")
        if self.rollouts == "vllm" and not self.rollout_url:
            raise ValueError("rollouts vllm needs --rollout-url (the server's base URL, e.g. http://HOST:8000/v1)")
        if self.rollouts == "vllm" and self.lora_r <= 0:
            raise ValueError("rollouts vllm passes each step's weights to the server as a LoRA adapter: set "
                             "--lora-r (full weights need vLLM's NCCL/IPC weight transfer, which this trainer "
                             "does not drive)")
        if self.rollout_gguf_type not in OUTTYPES:
            raise ValueError(f"rollout_gguf_type must be one of {', '.join(OUTTYPES)}")
        if not 0 < self.ved_top_frac <= 1:
            raise ValueError("ved_top_frac must be in (0, 1]")
        if self.ved_ratio_cap <= 0 or self.ved_k3_clamp <= 0:
            raise ValueError("ved_ratio_cap and ved_k3_clamp must be > 0")
        if self.ved_max_pairs < 0 or self.ved_memory_capacity < 1 or self.ved_eviction_window < 1:
            raise ValueError("ved_max_pairs must be >= 0, ved_memory_capacity and ved_eviction_window >= 1")
        if not -1 <= self.ved_min_similarity <= 1:
            raise ValueError("ved_min_similarity is a cosine similarity, in [-1, 1]")
        if self.ved_summarizer not in ("offline", "endpoint"):
            raise ValueError("ved_summarizer must be offline or endpoint")
        if self.ved and self.ved_summarizer == "endpoint" and not self.ved_summarizer_url:
            raise ValueError("ved_summarizer=endpoint needs ved_summarizer_url")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



# GPU: the paper's Table 9 (lr 1e-5 cosine, warm-up 0.02, 2 epochs, 32 sequences a step, weight
# decay 1e-6). CPU: the same recipe on what two cores afford: shorter sequences, 8 a step.
SFT_PRESETS: dict[str, dict[str, Any]] = {
    "gpu": {"learning_rate": 1e-5, "lr_schedule": "cosine", "warmup_ratio": 0.02, "epochs": 2.0,
            "batch_size": 32, "per_device_batch": 2, "weight_decay": 1e-6, "max_length": 32768, "bf16": True},
    # measured here: 56 steps of 8 at 1e-4 lift grounding on held-out rows (RESULTS.md); 2e-5 moved
    # nothing in the 15 steps an earlier run afforded
    "cpu": {"learning_rate": 1e-4, "lr_schedule": "cosine", "warmup_ratio": 0.02, "epochs": 2.0,
            "batch_size": 8, "per_device_batch": 4, "weight_decay": 1e-6, "max_length": 4096, "bf16": True,
            "threads": 2, "activation_checkpointing": False, "group_by_length": True},
}


@dataclass
class SFTConfig:
    model: str = _f("smollm2-135m", "base model name or checkpoint dir")
    output_dir: str = _f("runs/sft", "run directory")
    data: str | None = _f(None, "JSON lines of SFT records (messages, images, meta, optional completion_ids)")
    epochs: float = _f(2.0, "passes over the data")
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1: the epochs decide)")
    learning_rate: float = _f(1e-5, "peak learning rate")
    lr_schedule: str = _f("cosine", "a transformers scheduler name (cosine, linear, constant, ...)")
    warmup_ratio: float = _f(0.02, "share of the steps spent warming up")
    weight_decay: float = _f(1e-6, "AdamW weight decay")
    batch_size: int = _f(32, "sequences per optimizer step (all devices)")
    per_device_batch: int = _f(2, "sequences per forward pass on one device")
    max_length: int = _f(32768, "longer sequences are cut")
    lora_r: int = _f(0, "LoRA rank (0: full fine-tune)")
    lora_alpha: int = _f(32, "LoRA alpha")
    bf16: bool = _f(True, "bf16 autocast with fp32 master weights")
    threads: int | None = _f(None, "torch threads")
    seed: int = _f(0, "seed")
    time_limit_minutes: float | None = _f(None, "stop after the optimizer step that passes this much training "
                                                "time, resumed invocations included")
    save_steps: int = _f(50, "checkpoint every N optimizer steps")
    keep_checkpoints: int = _f(2, "checkpoints kept")
    share_prefix: bool = _f(True, "run the tokens all rows of a batch begin with (the system prompt) once per "
                                  "batch; same loss and gradient, faster (one process only)")
    activation_checkpointing: bool = _f(True, "recompute activations in the backward pass (less memory, about a "
                                            "third more compute)")
    group_by_length: bool = _f(False, "batch records of like length together (less padding)")
    system_prompt: str = _f("keep", "keep: the records' own; student: the system prompt and observation budget "
                                    "the trained policy will run with")
    policy_options: dict[str, Any] | None = _f(None, "HFPolicy budget for system_prompt=student")
    preset: str | None = _f(None, "gpu | cpu")

    @classmethod
    def build(cls, preset: str | None = None, **settings: Any) -> "SFTConfig":
        values: dict[str, Any] = dict(SFT_PRESETS[preset]) if preset else {}
        if preset and preset not in SFT_PRESETS:
            raise ValueError(f"unknown preset {preset!r}")
        unknown = set(settings) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown SFT setting(s): {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in settings.items() if v is not None})
        values["preset"] = preset
        cfg = cls(**values)
        if cfg.system_prompt not in ("keep", "student"):
            raise ValueError("system_prompt must be keep or student")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
