"""Tools and their backends by name; backends are imported only when chosen."""

from __future__ import annotations

from typing import Any

from ..registry import load_class
from .base import (ImageHit, ImageRegistry, ImageSearchBackend, SearchBackend, SearchHit, Tool,
                   ToolArgumentError, ToolContext, ToolResult)
from .knowledge import KnowledgeTool
from .search import ImageSearchTool, SearchTool

SEARCH_BACKENDS = {
    "offline": "genevolve.tools.offline_search:OfflineSearchBackend",
    "serper": "genevolve.tools.web_search:SerperSearchBackend",
    "searxng": "genevolve.tools.web_search:SearxngSearchBackend",
}
IMAGE_SEARCH_BACKENDS = {
    "offline": "genevolve.tools.image_library:ImageLibraryBackend",
    "serper": "genevolve.tools.web_search:SerperImageBackend",
    "searxng": "genevolve.tools.web_search:SearxngImageBackend",
}


def make_search_backend(name: str, **options: Any) -> SearchBackend:
    if name not in SEARCH_BACKENDS:
        raise ValueError(f"unknown search backend '{name}' (choose from {', '.join(SEARCH_BACKENDS)})")
    return load_class(SEARCH_BACKENDS[name])(**options)


def make_image_search_backend(name: str, **options: Any) -> ImageSearchBackend:
    if name not in IMAGE_SEARCH_BACKENDS:
        raise ValueError(f"unknown image search backend '{name}' "
                         f"(choose from {', '.join(IMAGE_SEARCH_BACKENDS)})")
    return load_class(IMAGE_SEARCH_BACKENDS[name])(**options)


def default_tools(search: SearchBackend, image_search: ImageSearchBackend) -> list[Tool]:
    """The three tools of the protocol, in the order the system prompt lists them."""
    return [SearchTool(search), ImageSearchTool(image_search), KnowledgeTool()]


__all__ = ["Tool", "ToolResult", "ToolContext", "ToolArgumentError", "ImageRegistry", "SearchHit",
           "ImageHit", "SearchBackend", "ImageSearchBackend", "SearchTool", "ImageSearchTool",
           "KnowledgeTool", "make_search_backend", "make_image_search_backend", "default_tools"]
