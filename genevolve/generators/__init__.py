"""Generators by name. Each is imported only when chosen, so heavy backends cost nothing until used."""

from __future__ import annotations

import importlib
from typing import Any

from .base import Generator, GeneratorError, RenderResult

GENERATORS = {
    "offline": "genevolve.generators.offline:OfflineRenderer",
    "qwen-image-edit": "genevolve.generators.qwen_image_edit:QwenImageEditGenerator",
    "qwen-image-edit-service": "genevolve.generators.qwen_service:QwenImageEditServiceGenerator",
    "nano-banana-pro": "genevolve.generators.gemini:NanoBananaProGenerator",
    "openai-images": "genevolve.generators.openai_images:OpenAIImagesGenerator",
}


def load_class(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_generator(name: str, **options: Any) -> Generator:
    if name not in GENERATORS:
        raise ValueError(f"unknown generator backend '{name}' (choose from {', '.join(GENERATORS)})")
    return load_class(GENERATORS[name])(**options)


__all__ = ["Generator", "GeneratorError", "RenderResult", "GENERATORS", "make_generator", "load_class"]
