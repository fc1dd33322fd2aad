"""`genevolve view DIR...`: a local web page over runs, data and training records."""

from __future__ import annotations

import argparse
import sys

from .common import fail, warn_unless_loopback


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="browse runs, items, comparisons and training in a local web page",
                       description="Serves a read-only web page over every record found under the given "
                                   "folders (or files): run/render/judge/bench results, data files, training "
                                   "runs and generate results. Images are served only from those folders and "
                                   "the image library cache. Ctrl-C stops it.")
    p.add_argument("paths", nargs="+", metavar="DIR", help="folders or files to show")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="another folder whose images may be shown (repeatable)")
    p.add_argument("--no-library-images", action="store_true",
                   help="do not show images from the image library cache (the references image_search found)")
    p.add_argument("--open", action="store_true", help="open the page in the system browser")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        from ..view import ViewServer
    except ImportError as exc:
        return fail(f"the viewer needs fastapi, uvicorn and msgspec (pip install 'genevolve[view]'): {exc}")
    from ..config import cache_dir

    image_roots = list(args.image_root)
    if not args.no_library_images and (cache_dir() / "images").is_dir():
        image_roots.append(cache_dir() / "images")
    warn_unless_loopback(args.host, "anyone who can reach this address can read the records and images "
                                    "under the given folders")
    try:
        server = ViewServer(args.paths, host=args.host, port=args.port, image_roots=image_roots).start()
    except FileNotFoundError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{exc} (is the port in use? try --port 0)")
    catalog = server.app.state.viewer.catalog
    print(f"genevolve view: {len(catalog.sources)} listings, {len(catalog.training)} training runs; "
          f"open {server.url}  (Ctrl-C stops)", file=sys.stderr, flush=True)
    if args.open:
        import webbrowser
        webbrowser.open(server.url)
    server.wait()
    return 0
