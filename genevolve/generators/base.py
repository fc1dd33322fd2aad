"""The generator interface: render a program into an image."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..program import Program


class GeneratorError(RuntimeError):
    """Rendering failed; the message says why (no reference, service error, timeout, ...)."""


@dataclass
class RenderResult:
    image: Image.Image
    metadata: dict[str, Any] = field(default_factory=dict)   # backend, model, seed, size, timings


class Generator(ABC):
    name: str = "generator"
    # How many renders may run at once against this backend (a GPU pipeline: 1; an API: more).
    max_concurrency: int = 1

    @abstractmethod
    async def render(self, program: Program, *, seed: int | None = None) -> RenderResult: ...

    async def aclose(self) -> None:
        pass
