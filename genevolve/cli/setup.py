"""`genevolve setup`: assemble and verify the embedded model, and build the offline indexes now
rather than on the first request."""

from __future__ import annotations

import argparse
import asyncio
import time

from .common import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("setup", help="prepare the offline world: model file, search index, image library")
    p.add_argument("--no-model", action="store_true", help="skip the embedded model")
    p.add_argument("--no-indexes", action="store_true", help="skip the search index and image library")
    p.add_argument("--model-path", default=None, help="check this GGUF instead of the pinned model")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..models import ModelError, ensure_model

    if not args.no_model:
        t0 = time.perf_counter()
        try:
            path = ensure_model(args.model_path)
        except ModelError as exc:
            return fail(str(exc))
        print(f"model: {path} ({time.perf_counter() - t0:.1f}s)")
    if not args.no_indexes:
        from ..tools import make_image_search_backend, make_search_backend

        async def warm() -> None:
            for label, backend, call in (
                    ("search index", make_search_backend("offline"), "search"),
                    ("image library", make_image_search_backend("offline"), "search_images")):
                t0 = time.perf_counter()
                await getattr(backend, call)("warm up", 1)    # the first query builds or loads it
                await backend.aclose()
                print(f"{label}: ready ({time.perf_counter() - t0:.1f}s)")
        asyncio.run(warm())
    return 0
