"""Policies by name; each is imported only when chosen."""

from __future__ import annotations

from typing import Any

from ..generators import load_class
from .base import Policy, PolicyError, PolicyReply, Sampling

POLICIES = {
    "openai": "genevolve.policies.openai_compat:OpenAICompatPolicy",
    "local": "genevolve.policies.local:LocalGGUFPolicy",
    "scripted": "genevolve.policies.scripted:ScriptedPolicy",
}


def make_policy(name: str, **options: Any) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy '{name}' (choose from {', '.join(POLICIES)})")
    return load_class(POLICIES[name])(**options)


__all__ = ["Policy", "PolicyError", "PolicyReply", "Sampling", "POLICIES", "make_policy"]
