"""`genevolve serve qwen-image-edit`: run the Qwen-Image-Edit render service (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import sys

from .common import fail, warn_unless_loopback


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a service (qwen-image-edit)",
                       description="Run one of the project's HTTP services.")
    services = p.add_subparsers(dest="service", required=True, metavar="SERVICE")
    q = services.add_parser(
        "qwen-image-edit", help="the Qwen-Image-Edit render service used by --backend qwen-image-edit-service",
        description="Serves POST /generate and GET /health with one QwenImageEditPlusPipeline per process; "
                    "renders run one at a time, at most --queue-size requests are admitted (503 + "
                    "Retry-After beyond that). Point clients at it with QWEN_EDIT_URLS=http://HOST:PORT. "
                    "No authentication: keep the default loopback address unless a proxy guards it. "
                    "Run one process per GPU (CUDA_VISIBLE_DEVICES) and list them all in QWEN_EDIT_URLS.")
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, default=8000)
    q.add_argument("--model", default=None, help="model id or local folder (default Qwen/Qwen-Image-Edit-2511)")
    q.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="weights dtype (auto: bfloat16 on a GPU, float32 on the CPU)")
    q.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu or auto (default)")
    q.add_argument("--cpu-offload", default="none", choices=["none", "model", "sequential"],
                   help="offload sub-models (model) or layers (sequential) to the CPU to save GPU memory")
    q.add_argument("--steps", type=int, default=40, help="default denoising steps (default 40)")
    q.add_argument("--long-side", type=int, default=1024,
                   help="default output long side in pixels, rounded to multiples of 16 (default 1024)")
    q.add_argument("--queue-size", type=int, default=8, help="requests admitted at once, running one included")
    q.add_argument("--max-images", type=int, default=4, help="reference images per request (default 4)")
    q.add_argument("--max-image-pixels", type=int, default=16_000_000, help="per reference image")
    q.add_argument("--lazy", action="store_true", help="load the pipeline on the first request, not at start")
    q.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    q.set_defaults(func=serve_qwen)


def serve_qwen(args: argparse.Namespace) -> int:
    import logging

    try:
        import uvicorn

        from ..generators.qwen_image_edit import DEFAULT_MODEL, QwenImageEditGenerator
        from ..serve.qwen_app import ServiceLimits, create_app
    except ImportError as exc:
        return fail(f"the service needs fastapi and uvicorn (pip install 'genevolve[serve,diffusion]'): {exc}")
    try:
        generator = QwenImageEditGenerator(model=args.model or DEFAULT_MODEL, dtype=args.dtype, device=args.device,
                                           cpu_offload=args.cpu_offload, steps=args.steps,
                                           long_side=args.long_side)
        limits = ServiceLimits(queue_size=args.queue_size, max_images=args.max_images,
                               max_image_pixels=args.max_image_pixels)
    except ValueError as exc:
        return fail(str(exc))
    warn_unless_loopback(args.host, "anyone who can reach it can use the GPU")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(generator, limits, load_on_startup=not args.lazy)
    print(f"genevolve: Qwen-Image-Edit service for {generator.model} on http://{args.host}:{args.port} "
          f"(queue {limits.queue_size}, {'lazy load' if args.lazy else 'loading now'})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
