"""Policies by name; each is imported only when chosen."""

from __future__ import annotations

from typing import Any

from ..registry import load_class
from .base import Policy, PolicyError, PolicyReply, Sampling, TurnContext

POLICIES = {
    "openai": "genevolve.policies.openai_compat:OpenAICompatPolicy",
    "local": "genevolve.policies.local:LocalGGUFPolicy",
    "scripted": "genevolve.policies.scripted:ScriptedPolicy",
    "hf": "genevolve.policies.hf:HFPolicy",            # a transformers checkpoint, in this process
    "expert": "genevolve.policies.expert:ExpertPolicy",  # the data pipeline's scripted teacher
}


def make_policy(name: str, **options: Any) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy '{name}' (choose from {', '.join(POLICIES)})")
    return load_class(POLICIES[name])(**options)


__all__ = ["Policy", "PolicyError", "PolicyReply", "Sampling", "TurnContext", "POLICIES", "make_policy"]
