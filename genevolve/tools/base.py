"""The tool interface, the per-trajectory image registry, and search backend interfaces.

A tool is a small object with a name, a description, a JSON schema for its arguments and one
async `call`. It returns text for the policy plus structured data for the trajectory record.
`search` and `image_search` are thin tools over swappable backends (offline corpus, Serper,
SearXNG, ...), so every backend shares one output format and one IMG id scheme.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from ..program import Reference


class ToolArgumentError(ValueError):
    """The policy called a tool with arguments that do not fit its schema."""


@dataclass
class ToolResult:
    text: str                                   # what the policy sees inside <tool_response>
    data: dict[str, Any] = field(default_factory=dict)   # what the record keeps
    error: str | None = None                    # set when the call failed; text then explains it


@dataclass
class SearchHit:
    title: str
    url: str
    snippet: str
    source: str = ""          # e.g. "wikipedia", "serper", "searxng"


@dataclass
class ImageHit:
    """An image a backend found. `key` identifies the image across searches (URL or file)."""

    title: str
    local_path: str | None = None
    url: str | None = None
    page_url: str | None = None
    key: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.url or self.local_path or self.title


class ImageRegistry:
    """Gives each distinct image of one trajectory a stable id IMG_001, IMG_002, ..."""

    def __init__(self) -> None:
        self._by_key: dict[str, str] = {}
        self.references: dict[str, Reference] = {}

    def register(self, hit: ImageHit) -> str:
        if hit.key in self._by_key:
            return self._by_key[hit.key]
        img_id = f"IMG_{len(self._by_key) + 1:03d}"
        self._by_key[hit.key] = img_id
        self.references[img_id] = Reference(img_id=img_id, local_path=hit.local_path, url=hit.url,
                                             title=hit.title, page_url=hit.page_url)
        return img_id


@dataclass
class ToolContext:
    """State a tool may read or extend during one trajectory."""

    request: str = ""
    images: ImageRegistry = field(default_factory=ImageRegistry)
    # How much text one observation may hold; tools that return lists trim each item to fit.
    observation_chars: int = 12_000
    # How observations are laid out: "default" (ours) or "released" (the released runtime's, which
    # its checkpoint was trained to read: every image with its local path, end-of-result markers).
    layout: str = "default"
    # Skill texts that replace ours (the released runtime's own, read from the user's copy).
    skill_texts: dict[str, str] = field(default_factory=dict)


class Tool(ABC):
    name: str
    description: str
    parameters: dict[str, Any]      # JSON schema of the arguments object

    def schema(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    @abstractmethod
    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult: ...

    async def aclose(self) -> None:
        """Release sessions, files or models the tool holds."""


class SearchBackend(ABC):
    name: str

    @abstractmethod
    async def search(self, query: str, top_k: int) -> list[SearchHit]: ...

    async def aclose(self) -> None:
        pass


class ImageSearchBackend(ABC):
    name: str

    @abstractmethod
    async def search_images(self, query: str, top_k: int) -> list[ImageHit]: ...

    async def search_images_released(self, query: str, top_k: int) -> list[ImageHit]:
        """The images as the released runtime's search returns them (a web backend asks for exactly
        `top_k` candidates and keeps those it can download); the same as `search_images` here."""
        return await self.search_images(query, top_k)

    async def aclose(self) -> None:
        pass


_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
               "array": list, "object": dict}


def validate_arguments(schema: dict[str, Any], args: Any, where: str = "arguments") -> dict[str, Any]:
    """Check `args` against the small JSON-schema subset our tools use; fill defaults.

    Raises ToolArgumentError naming the field, so the policy can read what went wrong.
    """
    if not isinstance(args, dict):
        raise ToolArgumentError(f"{where} must be a JSON object, got {type(args).__name__}")
    props = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in args:
            raise ToolArgumentError(f"{where}.{name} is required")
    out: dict[str, Any] = {}
    for name, value in args.items():
        if name not in props:
            if schema.get("additionalProperties", True) is False:
                raise ToolArgumentError(f"{where}.{name} is not an accepted argument "
                                        f"(accepted: {', '.join(props)})")
            continue
        out[name] = _check_value(props[name], value, f"{where}.{name}")
    for name, spec in props.items():
        if name not in out and "default" in spec:
            out[name] = spec["default"]
    return out


def _check_value(spec: dict[str, Any], value: Any, where: str) -> Any:
    kind = spec.get("type")
    if kind == "integer" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)          # small models often quote numbers; accept that one slip
    if kind == "array" and isinstance(value, str) and spec.get("items", {}).get("type") == "string":
        value = [value]             # a single query where a list was asked for
    if kind in _JSON_TYPES:
        ok = isinstance(value, _JSON_TYPES[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
        if not ok:
            raise ToolArgumentError(f"{where} must be of type {kind}, got {type(value).__name__}")
    if "enum" in spec and value not in spec["enum"]:
        raise ToolArgumentError(f"{where} must be one of {spec['enum']}, got {value!r}")
    if kind == "integer":
        lo, hi = spec.get("minimum"), spec.get("maximum")
        if lo is not None and value < lo or hi is not None and value > hi:
            raise ToolArgumentError(f"{where} must be between {lo} and {hi}, got {value}")
    if kind == "string" and spec.get("minLength") and len(value.strip()) < spec["minLength"]:
        raise ToolArgumentError(f"{where} must not be empty")
    if kind == "array":
        if spec.get("minItems") and len(value) < spec["minItems"]:
            raise ToolArgumentError(f"{where} needs at least {spec['minItems']} item(s)")
        if spec.get("maxItems") and len(value) > spec["maxItems"]:
            raise ToolArgumentError(f"{where} takes at most {spec['maxItems']} items")
        item_spec = spec.get("items", {})
        value = [_check_value(item_spec, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def hit_dicts(hits: list[Any]) -> list[dict[str, Any]]:
    return [asdict(h) for h in hits]
