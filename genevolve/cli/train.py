"""`genevolve train sft|grpo`: flags are the trainer config's fields (help text from the dataclass)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from typing import Any

from ..secrets import register as register_secrets
from .common import fail, parse_options

SKIP = {"preset", "policy_options"}


def _add_config_flags(p: argparse.ArgumentParser, config_cls: type) -> None:
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in SKIP:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args else kind
        default_text = f" (default {f.default})" if f.default is not None else ""
        help_text = f.metadata.get("help", "") + default_text
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, type=base if base in (int, float, str) else str, default=None, help=help_text)
    p.add_argument("--preset", choices=["cpu", "gpu"], default=None,
                   help="hyperparameter preset; explicit flags win")
    p.add_argument("--policy-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="budget of the in-process policy (tool_call_budget, observation_chars, max_think_chars, "
                        "...), as for the local policy")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..train.config import GRPOConfig, SFTConfig

    p = sub.add_parser("train", help="train the agent policy: SFT cold start, then GRPO",
                       description="Train the agent's policy in this process (transformers; TRL for SFT). "
                                   "A run directory holds config.json, metrics.jsonl, curves.png, checkpoints/ "
                                   "and model/ (load it with --policy hf:DIR, export it with `genevolve export "
                                   "gguf DIR`). Rerunning the same command resumes from the last checkpoint.")
    kinds = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    sft = kinds.add_parser("sft", help="supervised fine-tuning on teacher trajectories (assistant tokens only)")
    _add_config_flags(sft, SFTConfig)
    sft.set_defaults(func=main_sft)
    grpo = kinds.add_parser("grpo", help="GRPO with multi-turn tool rollouts through the agent runtime")
    _add_config_flags(grpo, GRPOConfig)
    grpo.add_argument("--until", type=int, default=None, help="stop after this step (resume later)")
    grpo.set_defaults(func=main_grpo)


def _settings(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(config_cls)} - SKIP
    settings = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    options = parse_options(args.policy_opt, "--policy-opt")
    if options:
        settings["policy_options"] = options
    return settings


def main_sft(args: argparse.Namespace) -> int:
    from ..train.config import SFTConfig
    from ..train.sft import train_sft
    try:
        config = SFTConfig.build(args.preset, **_settings(args, SFTConfig))
        result = train_sft(config)
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    print(json.dumps({"output_dir": config.output_dir, **result}))
    return 0


def main_grpo(args: argparse.Namespace) -> int:
    from ..train.config import GRPOConfig
    from ..train.grpo import GRPOTrainer
    from ..train.rollout_backends import RolloutBackendError
    try:
        config = GRPOConfig.build(args.preset, **_settings(args, GRPOConfig))
        # The summariser's and the rollout server's keys come only from the environment (never a
        # flag or a file).
        key = os.environ.get("GENEVOLVE_SUMMARIZER_API_KEY") or os.environ.get("OPENAI_API_KEY", "")
        rollout_key = os.environ.get("GENEVOLVE_ROLLOUT_API_KEY") or os.environ.get("OPENAI_API_KEY", "")
        register_secrets(key, rollout_key)
        records = GRPOTrainer(config, ved_api_key=key if config.ved else "",
                              rollout_api_key=rollout_key if config.rollouts == "vllm" else "").train(until=args.until)
    except (ValueError, OSError, RolloutBackendError) as exc:
        return fail(str(exc))
    last = records[-1] if records else {}
    print(json.dumps({"output_dir": config.output_dir, "steps_run": len(records),
                      "last": {k: last.get(k) for k in ("step", "reward_mean", "answer_rate", "loss")}}))
    return 0
