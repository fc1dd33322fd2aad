"""`genevolve export gguf DIR`: a trained policy to a GGUF file the embedded runtime loads."""

from __future__ import annotations

import argparse
import json

from .common import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained policy (gguf)",
                       description="Convert a policy directory written by `genevolve train` (run/model, or a "
                                   "checkpoint) with llama.cpp's converters, fetched once from the "
                                   "llama-cpp-python source distribution. Full weights give a model GGUF "
                                   "(run it with --policy local --model-path FILE); a LoRA adapter gives an "
                                   "adapter GGUF to apply over the base model's GGUF.")
    kinds = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    g = kinds.add_parser("gguf", help="to GGUF")
    g.add_argument("dir", help="policy directory (config.json, or adapter_config.json for LoRA)")
    g.add_argument("--out", default=None, help="output file (default: inside DIR)")
    g.add_argument("--outtype", default="f16", choices=["f16", "bf16", "q8_0", "f32"],
                   help="tensor type (default f16; q8_0 is smaller and near-lossless)")
    g.add_argument("--base", default=None, help="base checkpoint directory of a LoRA adapter "
                   "(default: the one the adapter names)")
    g.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..train.export import ExportError, export_gguf
    try:
        path = export_gguf(args.dir, args.out, outtype=args.outtype, base=args.base)
    except ExportError as exc:
        return fail(str(exc))
    print(json.dumps({"gguf": str(path), "bytes": path.stat().st_size}))
    return 0
