"""The `genevolve` command. Every module in this package adds one subcommand.

A subcommand module defines `add_parser(subparsers)`, which registers its parser and sets
`func` to a handler taking the parsed arguments and returning an exit code. A handler checks its
flags and calls one function (the stages live in `genevolve.pipeline`). Modules import heavy
libraries inside their handlers so that `genevolve --help` stays fast. Bad settings or a stage that
cannot start end the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genevolve",
                                     description="A self-evolving image-generation agent.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "common":
            continue
        importlib.import_module(f"{__name__}.{info.name}").add_parser(sub)
    return parser


class _ScrubSecrets(logging.Filter):
    """Takes configured keys and credential-shaped text out of every log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ..secrets import scrub
        record.msg, record.args = scrub(record.getMessage()), None
        return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..config import ConfigError
    from ..pipeline.batch import StageError
    from .common import say

    handler = logging.StreamHandler()
    handler.addFilter(_ScrubSecrets())
    logging.basicConfig(level=logging.WARNING, format="genevolve: %(levelname)s %(name)s: %(message)s",
                        handlers=[handler])
    try:
        return int(args.func(args) or 0)
    except (ConfigError, StageError) as exc:
        say(str(exc))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
