"""One class loader for every registry of backends (generators, policies, tools, judges).

A registry maps a short name to "module:Class"; the module is imported only when that name is
chosen, so a heavy backend (torch, diffusers, a VLM client) costs nothing until it is used.
"""

from __future__ import annotations

import importlib
from typing import Any


def load_class(spec: str) -> Any:
    """The object named by "package.module:Name"."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"class spec {spec!r} must look like 'package.module:Name'")
    return getattr(importlib.import_module(module), attr)


def make(registry: dict[str, str], kind: str, name: str, **options: Any) -> Any:
    """An instance of the `kind` registered as `name`; ValueError listing the choices otherwise."""
    if name not in registry:
        raise ValueError(f"unknown {kind} '{name}' (choose from {', '.join(registry)})")
    return load_class(registry[name])(**options)
