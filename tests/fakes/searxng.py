"""A loopback SearXNG instance: GET /search?q=...&format=json&categories=general|images.

With `json_enabled=False` it answers format=json with 403, as an instance whose settings.yml
does not list json among its formats does.
"""

from __future__ import annotations

import re

from . import FakeServer, RecordedRequest, Reply


class SearxngFake(FakeServer):
    def __init__(self, image_urls: list[str] | None = None, results_per_page: int = 12,
                 json_enabled: bool = True, **kw):
        super().__init__(**kw)
        self.image_urls = list(image_urls or [])
        self.results_per_page = results_per_page
        self.json_enabled = json_enabled

    def handle(self, request: RecordedRequest) -> Reply:
        if request.method != "GET" or request.path != "/search":
            return Reply(404, b"Not Found", {"Content-Type": "text/html"})
        query = request.param("q") or ""
        if request.param("format") != "json":
            return Reply(200, b"<html><body>results page</body></html>", {"Content-Type": "text/html"})
        if not self.json_enabled:
            return Reply(403, b"Forbidden", {"Content-Type": "text/html"})
        slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")
        if request.param("categories") == "images":
            results = [{"template": "images.html", "title": f"{query} image {i}", "url":
                        f"https://example.org/{slug}/page{i}", "img_src": url, "thumbnail_src": url,
                        "engine": "bing images", "engines": ["bing images"], "category": "images"}
                       for i, url in enumerate(self.image_urls, 1)]
        else:
            results = [{"title": f"{query} - hit {i}", "url": f"https://example.org/{slug}/{i}",
                        "content": f"What {query} is, part {i}.", "engine": "duckduckgo",
                        "engines": ["duckduckgo"], "category": "general", "score": 1.0 / i}
                       for i in range(1, self.results_per_page + 1)]
        return Reply.json({"query": query, "number_of_results": len(results), "results": results,
                           "answers": [], "corrections": [], "infoboxes": [], "suggestions": [],
                           "unresponsive_engines": []})
