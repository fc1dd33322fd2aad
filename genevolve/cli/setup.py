"""`genevolve setup`: assemble and verify the embedded model, and build the offline indexes now
rather than on the first request."""

from __future__ import annotations

import argparse
import asyncio
import time

from .common import command_settings, fail, flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("setup", help="prepare the offline world: model file, search index, image library")
    p.add_argument("--no-model", action="store_true", help="skip the embedded model")
    p.add_argument("--no-indexes", action="store_true", help="skip the search index and image library")
    flag(p, "--model-path", path="policy.model_path", help="check this GGUF instead of the pinned model "
         "(env GENEVOLVE_MODEL_PATH; [policy] model_path)")
    p.set_defaults(func=main)


def prefill_system_prompt(settings) -> float:
    """Prefill the embedded policy's system prompt and store its KV cache on disk, so that the
    first `generate` on a fresh machine reads it back instead of prefilling ~1,500 tokens (over a
    minute here). Returns the seconds it took."""
    from ..settings import build_agent

    t0 = time.perf_counter()

    async def warm() -> None:
        agent = build_agent(settings)
        try:
            await agent.warm()
        finally:
            await agent.aclose()
    asyncio.run(warm())
    return time.perf_counter() - t0


def main(args: argparse.Namespace) -> int:
    from ..models import ModelError, ensure_model

    settings = command_settings(args)
    if not args.no_model:
        t0 = time.perf_counter()
        try:
            path = ensure_model(settings.policy.model_path)
        except ModelError as exc:
            return fail(str(exc))
        print(f"model: {path} ({time.perf_counter() - t0:.1f}s)")
        if settings.policy.name in (None, "local") and not settings.policy.base_url:
            print(f"system-prompt cache: ready ({prefill_system_prompt(settings):.1f}s)")
    if not args.no_indexes:
        from ..settings import build_image_search_backend, build_search_backend

        async def warm() -> None:
            search = build_search_backend(settings, "offline")
            images = build_image_search_backend(settings, "offline")
            for label, backend, call in (("search index", search, "search"),
                                         ("image library", images, "search_images")):
                t0 = time.perf_counter()
                await getattr(backend, call)("warm up", 1)    # the first query builds or loads it
                await backend.aclose()
                print(f"{label}: ready ({time.perf_counter() - t0:.1f}s)")
        asyncio.run(warm())
    return 0
