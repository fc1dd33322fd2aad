"""A loopback Serper: POST /search and POST /images with the X-API-KEY header, as google.serper.dev.

Normal behaviour: a request with the right key gets `num` organic results (or image results)
made from the query. An image URL containing "{slug}" gets the query's slug there, so each query
can point at its own URLs (no download is shared between two queries). A wrong or missing key gets Serper's 401 body. Script anything else (429,
malformed JSON, an empty list) with `queue`.
"""

from __future__ import annotations

import json
import re

from . import FakeServer, RecordedRequest, Reply


class SerperFake(FakeServer):
    def __init__(self, api_key: str = "test-serper-key", image_urls: list[str] | None = None, **kw):
        super().__init__(**kw)
        self.api_key = api_key
        self.image_urls = list(image_urls or [])   # what /images reports as imageUrl, in rank order

    def handle(self, request: RecordedRequest) -> Reply:
        if request.method != "POST" or request.path not in ("/search", "/images"):
            return Reply(404, b'{"message": "Not found"}', {"Content-Type": "application/json"})
        if request.headers.get("x-api-key") != self.api_key:
            return Reply.json({"message": "Unauthorized.", "statusCode": 401}, status=401)
        try:
            body = request.json()
            query, num = str(body["q"]), int(body.get("num", 10))
        except (ValueError, KeyError, TypeError):
            return Reply.json({"message": "Invalid body", "statusCode": 400}, status=400)
        slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")
        params = {"q": query, "type": "search" if request.path == "/search" else "images",
                  "num": num, "engine": "google"}
        if request.path == "/search":
            organic = [{"title": f"{query} - result {i}", "link": f"https://example.org/{slug}/{i}",
                        "snippet": f"Facts about {query}, entry {i}.", "position": i}
                       for i in range(1, num + 1)]
            return Reply.json({"searchParameters": params, "organic": organic, "credits": 1})
        urls = [u.replace("{slug}", slug) for u in self.image_urls[:num]]
        images = [{"title": f"{query} picture {i}", "imageUrl": url, "imageWidth": 64, "imageHeight": 48,
                   "thumbnailUrl": url, "source": "Example", "domain": "example.org",
                   "link": f"https://example.org/{slug}/page{i}", "position": i}
                  for i, url in enumerate(urls, 1)]
        return Reply.json({"searchParameters": params, "images": images, "credits": 1})


def malformed_json() -> Reply:
    return Reply(200, b'{"organic": [{"title": "cut off', {"Content-Type": "application/json"})


def rate_limited(retry_after: str = "0") -> Reply:
    return Reply(429, json.dumps({"message": "Too many requests", "statusCode": 429}).encode(),
                 {"Content-Type": "application/json", "Retry-After": retry_after})
