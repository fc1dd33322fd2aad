"""The viewer's web app: read-only routes over the records found under the folders it was given."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from .html import url
from .images import ImageProblem, ThumbnailCache, full_image, placeholder_svg
from .itemview import build_item
from .pages_item import SLOT_RE, ItemContext, compare_item_page, item_page, slot_value
from .pages_run import compare_page, home_page, run_page
from .pages_train import train_page, training_stamp
from .paths import OK, Located, Roots
from .discover import Catalog, discover, refresh_training
from .records import Source

SIZES = {"thumb": 320, "large": 960}
FILTER_KEYS = ("q", "termination", "category", "track", "image", "issue", "failed", "sort", "desc", "page", "per")


class Viewer:
    """The records behind the pages: the catalog of sources, the allowed roots, caches."""

    def __init__(self, paths: Iterable[str | Path], image_roots: Iterable[str | Path] = ()):
        self.paths = [Path(p) for p in paths]
        self.catalog: Catalog = discover(self.paths)
        self.roots = Roots([*self.catalog.roots, *image_roots])
        self.thumbnails = ThumbnailCache()
        self._items: OrderedDict[tuple, ItemContext] = OrderedDict()
        self._lock = threading.Lock()
        self.catalog_lock = threading.Lock()      # held while the catalog grows or is listed

    def rediscover(self) -> None:
        """Pick up runs that appeared under the folders since the start; known ones keep their index."""
        try:
            fresh = discover(self.paths)
        except FileNotFoundError:
            return
        with self.catalog_lock:
            for key, source in fresh.sources.items():
                self.catalog.sources.setdefault(key, source)
            for key, run in fresh.training.items():
                self.catalog.training.setdefault(key, run)

    def source(self, key: str) -> Source:
        source = self.catalog.sources.get(key)
        if source is None:
            raise HTTPException(404, f"no source named {key!r}")
        return source

    def item(self, key: str, item_id: str) -> ItemContext:
        source = self.source(key)
        cache_key = (key, item_id, source.stamp)
        with self._lock:
            if cache_key in self._items:
                self._items.move_to_end(cache_key)
                return self._items[cache_key]
        loaded = source.load(item_id)
        if not loaded.records:
            raise HTTPException(404, f"no item {item_id!r} in {source.title}")
        view = build_item(loaded.main)
        located: dict[str, Located] = {}

        def locate(slot: str) -> Located:
            if slot not in located:
                value, bases = slot_value(loaded, view, slot, source.folder)
                located[slot] = self.roots.locate(value, bases)
            return located[slot]

        ctx = ItemContext(source, item_id, loaded, view, locate)
        with self._lock:
            self._items[cache_key] = ctx
            while len(self._items) > 64:
                self._items.popitem(last=False)
        return ctx


def create_app(paths: Iterable[str | Path], image_roots: Iterable[str | Path] = ()) -> FastAPI:
    """The app over these files and folders; images are also served from `image_roots`."""
    viewer = Viewer(paths, image_roots)
    app = FastAPI(title="GenEvolve view", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.viewer = viewer
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    @app.middleware("http")
    async def read_only(request: Request, call_next):
        if request.method not in ("GET", "HEAD"):
            return Response("read-only", status_code=405)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.get("/", response_class=HTMLResponse)
    def home():
        viewer.rediscover()
        sources = list(viewer.catalog.sources.values())
        if len(sources) == 1 and not viewer.catalog.training:
            only = sources[0]
            if only.kind == "result" and only.entries():
                return RedirectResponse(url("/item", src=only.key, id=only.entries()[0].id), 302)
            return RedirectResponse(url("/run", src=only.key), 302)
        if len(viewer.catalog.training) == 1 and all(s.parent for s in sources):
            return RedirectResponse(url("/train", key=next(iter(viewer.catalog.training))), 302)
        with viewer.catalog_lock:
            return home_page(viewer.catalog)

    @app.get("/run", response_class=HTMLResponse)
    def run(request: Request, src: str):
        filters = {k: request.query_params.get(k, "") for k in FILTER_KEYS}
        for key in ("page", "per"):
            if filters[key] and not filters[key].isdigit():
                raise HTTPException(400, f"{key} must be a whole number")
        return run_page(viewer.source(src), filters)

    @app.get("/item", response_class=HTMLResponse)
    def item(src: str, id: str):
        ctx = viewer.item(src, id)
        entries = ctx.source.entries()
        ids = [e.id for e in entries]
        at = ids.index(id) if id in ids else -1
        neighbours = (ids[at - 1] if at > 0 else None, ids[at + 1] if 0 <= at < len(ids) - 1 else None)
        return item_page(ctx, neighbours)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, a: str, b: str):
        filters = {k: request.query_params.get(k, "") for k in ("metric", "order", "page")}
        if filters["page"] and not filters["page"].isdigit():
            raise HTTPException(400, "page must be a whole number")
        return compare_page(viewer.source(a), viewer.source(b), filters)

    @app.get("/compare/item", response_class=HTMLResponse)
    def compare_item(a: str, b: str, id: str):
        return compare_item_page(viewer.item(a, id), viewer.item(b, id))

    @app.get("/train", response_class=HTMLResponse)
    def train(key: str, page: int = 1):
        run = viewer.catalog.training.get(key)
        if run is None:
            raise HTTPException(404, f"no training run named {key!r}")
        with viewer.catalog_lock:
            refresh_training(viewer.catalog, run)
            return train_page(viewer.catalog, run, page)

    @app.get("/img")
    def image(src: str, id: str, slot: str, size: str = "thumb"):
        if not SLOT_RE.match(slot) or size not in (*SIZES, "full"):
            raise HTTPException(400, "bad image slot or size")
        located = viewer.item(src, id).locate(slot)
        if located.status != OK or located.path is None:
            return _placeholder(located.status, located.name, 404)
        try:
            if size == "full":
                data, media_type = full_image(located.path)
            else:
                data, media_type = viewer.thumbnails.get(located.path, SIZES[size]), "image/webp"
        except ImageProblem as exc:
            return _placeholder(str(exc), located.name, 422)
        return Response(data, media_type=media_type, headers={"Cache-Control": "max-age=60"})

    @app.get("/api/stamp")
    def stamp(src: list[str] = Query(...)):
        stamps = []
        for key in src:
            if key.startswith("train:") and key[6:] in viewer.catalog.training:
                stamps.append(training_stamp(viewer.catalog.training[key[6:]]))
            else:
                stamps.append(viewer.source(key).stamp)
        return {"stamp": "|".join(stamps)}

    @app.get("/api/items")
    def items(src: str, offset: int = 0, limit: int = 100):
        entries = viewer.source(src).entries()
        limit = max(1, min(limit, 1000))
        return {"total": len(entries), "offset": offset,
                "items": [e.summary for e in entries[max(offset, 0): max(offset, 0) + limit]]}

    @app.get("/api/item")
    def item_json(src: str, id: str):
        loaded = viewer.item(src, id).loaded
        return JSONResponse({"id": id, "records": loaded.records,
                             "files": {k: str(v) for k, v in loaded.files.items()}})

    return app


def _placeholder(reason: str, name: str, status: int) -> Response:
    return Response(placeholder_svg(reason, name), status_code=status, media_type="image/svg+xml",
                    headers={"X-Placeholder": reason.encode("ascii", "replace").decode("ascii"),
                             "Cache-Control": "no-store"})
