"""Generators by name. Each is imported only when chosen, so heavy backends cost nothing until used."""

from __future__ import annotations

from typing import Any

from ..registry import load_class, make
from .base import Generator, GeneratorError, RenderResult

GENERATORS = {
    "offline": "genevolve.generators.offline:OfflineRenderer",
    "qwen-image-edit": "genevolve.generators.qwen_image_edit:QwenImageEditGenerator",
    "qwen-image-edit-service": "genevolve.generators.qwen_service:QwenImageEditServiceGenerator",
    "nano-banana-pro": "genevolve.generators.gemini:NanoBananaProGenerator",
    "openai-images": "genevolve.generators.openai_images:OpenAIImagesGenerator",
}


def make_generator(name: str, **options: Any) -> Generator:
    return make(GENERATORS, "generator backend", name, **options)


__all__ = ["Generator", "GeneratorError", "RenderResult", "GENERATORS", "make_generator", "load_class"]
