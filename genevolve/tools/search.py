"""The `search` and `image_search` tools: one output format over any backend."""

from __future__ import annotations

import asyncio
from typing import Any

from .base import (ImageSearchBackend, SearchBackend, Tool, ToolContext, ToolResult, hit_dicts,
                   validate_arguments)

MAX_SNIPPET_CHARS = 600
MIN_SNIPPET_CHARS = 120
HIT_OVERHEAD_CHARS = 110       # number, title and source line around each snippet


class SearchTool(Tool):
    name = "search"
    description = ("Look up text facts (names, dates, places, what something looks like). "
                   "Takes several short queries at once; returns the top results for each.")
    parameters = {
        "type": "object",
        "properties": {
            "queries": {"type": "array", "items": {"type": "string", "minLength": 1},
                        "minItems": 1, "maxItems": 5,
                        "description": "One or more short, specific search queries."},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
        },
        "required": ["queries"],
    }

    def __init__(self, backend: SearchBackend):
        self.backend = backend

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if ctx.layout == "released":
            return await self._call_released(arguments)
        args = validate_arguments(self.parameters, arguments)
        queries = [q.strip() for q in args["queries"]]
        results = await asyncio.gather(*(self.backend.search(q, args["top_k"]) for q in queries),
                                       return_exceptions=True)
        # A small observation budget shows fewer hits rather than snippets too short to use.
        fit = max(1, ctx.observation_chars // (len(queries) * (HIT_OVERHEAD_CHARS + MIN_SNIPPET_CHARS)))
        results = [h[:fit] if isinstance(h, list) else h for h in results]
        blocks, data, errors = [], [], []
        n_hits = sum(len(h) for h in results if isinstance(h, list)) or 1
        per_hit = ctx.observation_chars // n_hits - HIT_OVERHEAD_CHARS
        snippet_chars = max(MIN_SNIPPET_CHARS, min(MAX_SNIPPET_CHARS, per_hit))
        for q, hits in zip(queries, results):
            lines = [f"--- search result for [{q}] ---"]
            if isinstance(hits, BaseException):
                lines.append(f"Search failed: {hits}")
                errors.append(f"{q}: {hits}")
                data.append({"query": q, "error": str(hits)})
            elif not hits:
                lines.append("No results.")
                data.append({"query": q, "hits": []})
            else:
                for i, h in enumerate(hits, 1):
                    snippet = _shorten(" ".join(h.snippet.split()), snippet_chars)
                    source = f"\n   Source: {h.url}" if h.url else ""
                    lines.append(f"{i}. {h.title or h.url}{source}\n   {snippet}")
                data.append({"query": q, "hits": hit_dicts(hits)})
            blocks.append("\n".join(lines))
        return ToolResult(text="\n\n".join(blocks), data={"backend": self.backend.name, "results": data},
                          error="; ".join(errors) if errors and len(errors) == len(queries) else None)

    async def _call_released(self, arguments: Any) -> ToolResult:
        """As the released runtime calls search: no schema, a lone query string becomes a list,
        blank queries are skipped, `top_k` is any number (0 or missing: 5)."""
        args = arguments if isinstance(arguments, dict) else {}
        queries = args.get("queries") or []
        queries = [queries] if isinstance(queries, str) else queries
        top_k = _released_count(args.get("top_k"))
        if not isinstance(queries, list) or not queries:
            return ToolResult(text="[search] empty queries", data={"backend": self.backend.name, "results": []})
        queries = [q for q in (_released_text(q, "queries") for q in queries) if q]
        results = await asyncio.gather(*(self.backend.search(q, top_k) for q in queries), return_exceptions=True)
        return self._released(queries, results, top_k)

    def _released(self, queries: list[str], results: list[Any], top_k: int) -> ToolResult:
        """The released runtime's layout: numbered `title:`/`url:`/`snippet:` lines per query,
        each block closed by an end marker, no trimming."""
        blocks, data = [], []
        for q, hits in zip(queries, results):
            if isinstance(hits, BaseException):
                blocks.append(f"--- search error for [{q}]: {hits} ---")
                data.append({"query": q, "error": str(hits)})
                continue
            lines = [f"--- search result for [{q}] ---"]
            for i, h in enumerate(hits[:top_k], 1):
                lines.append(f"{i}. title: {h.title.strip()}")
                if h.url:
                    lines.append(f"  url: {h.url.strip()}")
                if h.snippet:
                    lines.append(f"  snippet: {h.snippet.strip()}")
            lines.append("--- end of search result ---")
            blocks.append("\n".join(lines))
            data.append({"query": q, "hits": hit_dicts(hits[:top_k])})
        return ToolResult(text="\n".join(blocks) or "[search] no results",
                          data={"backend": self.backend.name, "results": data})

    async def aclose(self) -> None:
        await self.backend.aclose()


def _released_count(value: Any) -> int:
    """`top_k` as the released runtime reads it: any number, 0 or missing meaning 5 (a value that is
    not a number raises, which the agent shows as a tool error)."""
    return int(value or 5)


def _released_text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be text, got {type(value).__name__}")
    return value.strip()


def _shorten(text: str, limit: int) -> str:
    """Cut at a word boundary and mark the cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " …"


class ImageSearchTool(Tool):
    name = "image_search"
    description = ("Find reference images of one concrete subject. Each image found gets an id "
                   "IMG_### that you can select in your answer.")
    parameters = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1,
                      "description": "One subject to find pictures of, e.g. 'flag of Peru'."},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
        },
        "required": ["query"],
    }

    def __init__(self, backend: ImageSearchBackend):
        self.backend = backend

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        released = ctx.layout == "released"
        if released:        # as the released runtime calls it: no schema, any top_k, a blank query finds nothing
            args = arguments if isinstance(arguments, dict) else {}
            query, top_k = _released_text(args.get("query"), "query"), _released_count(args.get("top_k"))
            if not query:
                return self._released(query, [], ctx)
        else:
            args = validate_arguments(self.parameters, arguments)
            query, top_k = args["query"].strip(), args["top_k"]
        try:
            hits = await (self.backend.search_images_released(query, top_k) if released else
                          self.backend.search_images(query, top_k))
        except Exception as exc:  # a failed search is an observation, not the end of the run
            if released:          # the released runtime shows a failed search as an empty one
                hits = []
            else:
                return ToolResult(text=f"--- image search result for [{query}] ---\nImage search failed: {exc}",
                                  data={"backend": self.backend.name, "query": query}, error=str(exc))
        if released:
            return self._released(query, [h for h in hits if h.local_path], ctx)
        lines = [f"--- image search result for [{query}] ---"]
        found = []
        for h in hits:
            img_id = ctx.images.register(h)
            found.append({"img_id": img_id, **hit_dicts([h])[0]})
            parts = [f"[{img_id}] {h.title}"]
            if h.url and not h.url.startswith("file:"):     # a file URL only repeats local_path
                parts.append(f"   url: {h.url}")
            if h.page_url:
                parts.append(f"   page: {h.page_url}")
            # The local path stays in the record only: the policy picks images by id.
            lines.append("\n".join(parts))
        if not hits:
            lines.append("No images found. Try a shorter or more general query.")
        return ToolResult(text="\n".join(lines),
                          data={"backend": self.backend.name, "query": query, "images": found})

    def _released(self, query: str, hits: list[Any], ctx: ToolContext) -> ToolResult:
        """The released runtime's layout: `IMG_###: title: …` then url, local_path and page_url
        lines per image (only images it has on disk), closed by an end marker."""
        lines = [f"--- image search result for [{query}] ---"]
        found = []
        for h in hits:
            img_id = ctx.images.register(h)
            found.append({"img_id": img_id, **hit_dicts([h])[0]})
            lines.append(f"{img_id}: title: {h.title}")
            lines += [f"  {label}: {value}" for label, value in
                      (("url", h.url), ("local_path", h.local_path), ("page_url", h.page_url)) if value]
        lines.append("--- end of image search result ---")
        return ToolResult(text="\n".join(lines), data={"backend": self.backend.name, "query": query, "images": found})

    async def aclose(self) -> None:
        await self.backend.aclose()
