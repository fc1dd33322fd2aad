"""`genevolve images`: build, inspect and extend the local image library behind offline `image_search`.

    genevolve images build [--force]          build the bundled library now (else: on first search)
    genevolve images fetch-flags              add flat 1000 px flags (npm package; needs npm), rebuild
    genevolve images add DIR [--name NAME] [--ocr]   index a folder of your own images (in place)
    genevolve images remove NAME              forget one added collection (files are not touched)
    genevolve images list [--collection NAME] collections, or the entries of one collection
    genevolve images search QUERY [--top-k N] [--json]
    genevolve images stats                    counts, size on disk, build time, query latency
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from .common import command_settings, flag


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("images", help="manage the local image library used by offline image_search",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag(p, "--library", path="tools.image_library_dir")
    sub = p.add_subparsers(dest="images_command", required=True, metavar="ACTION")

    b = sub.add_parser("build", help="build the bundled library (emoji art, flags, sample photos)")
    b.add_argument("--force", action="store_true", help="rebuild even if a current build exists")
    b.set_defaults(func=_build)

    f = sub.add_parser("fetch-flags", help="add flat 1000 px flag renders (npm package svg-country-flags; "
                       "needs the npm client) and rebuild")
    f.set_defaults(func=_fetch_flags)

    a = sub.add_parser("add", help="index a folder of your own images (referenced in place)")
    a.add_argument("folder", help="folder to index, recursively")
    a.add_argument("--name", default=None, help="collection name (default: the folder's name)")
    a.add_argument("--ocr", action="store_true", help="also index text read from the images "
                   "(rapidocr-onnxruntime; about a second per image on CPU)")
    a.add_argument("--max-megapixels", type=float, default=64.0,
                   help="refuse larger images as possible decompression bombs (default 64)")
    a.set_defaults(func=_add)

    r = sub.add_parser("remove", help="forget one added collection (its files are left alone)")
    r.add_argument("name")
    r.set_defaults(func=_remove)

    ls = sub.add_parser("list", help="list collections, or the entries of one")
    ls.add_argument("--collection", default=None, help="list the entries of this collection "
                    "('builtin' for the bundled images)")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=_list)

    s = sub.add_parser("search", help="search the library as the image_search tool does")
    s.add_argument("query")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--json", action="store_true", help="print the hits as JSON lines")
    s.set_defaults(func=_search)

    st = sub.add_parser("stats", help="counts, size on disk, build time and query latency")
    st.set_defaults(func=_stats)


def _root(args: argparse.Namespace) -> Path:
    from ..tools.image_library import default_library_dir
    folder = command_settings(args).tools.image_library_dir
    return Path(folder) if folder else default_library_dir()


def _emoji_font(args: argparse.Namespace) -> str | None:
    return command_settings(args).tools.emoji_font


def _library(args: argparse.Namespace, build: bool = True):
    from ..tools.image_library import ImageLibrary
    return ImageLibrary(_root(args), build=build, emoji_font=_emoji_font(args))


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _build(args: argparse.Namespace) -> int:
    from ..tools.image_library import ensure_builtin
    start = time.perf_counter()
    folder = ensure_builtin(_root(args), log=_err, force=args.force, emoji_font=_emoji_font(args))
    info = json.loads((folder / "BUILD.json").read_text(encoding="utf-8"))
    print(f"{folder}: {info['entries']} images ({time.perf_counter() - start:.1f} s)")
    return 0


def _fetch_flags(args: argparse.Namespace) -> int:
    from ..tools.image_library import ensure_builtin
    from ..tools.image_library_build import fetch_flags
    try:
        folder = fetch_flags(_root(args), log=_err)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _err(f"error: {exc}")
        return 1
    print(f"flags: {folder}")
    built = ensure_builtin(_root(args), log=_err, emoji_font=_emoji_font(args))
    print(f"library: {built}")
    return 0


def _add(args: argparse.Namespace) -> int:
    from ..tools.image_library import LibraryError
    from ..tools.image_library_user import add_folder
    try:
        report = add_folder(_root(args), args.folder, name=args.name, ocr=args.ocr,
                            max_pixels=int(args.max_megapixels * 1_000_000), log=_err)
    except (NotADirectoryError, LibraryError) as exc:
        _err(f"error: {exc}")
        return 2
    print(report.summary())
    return 0


def _remove(args: argparse.Namespace) -> int:
    from ..tools.image_library_user import remove_collection
    n = remove_collection(_root(args), args.name)
    if not n:
        _err(f"no collection named '{args.name}'")
        return 1
    print(f"removed {n} entries of collection '{args.name}'")
    return 0


def _list(args: argparse.Namespace) -> int:
    entries = _library(args).entries()
    if args.collection:
        chosen = [e for e in entries if e.collection == args.collection]
        if not chosen:
            _err(f"no collection named '{args.collection}'")
            return 1
        for e in chosen[:args.limit]:
            print(f"{e.id}\t{e.title}\t{e.path}")
        if len(chosen) > args.limit:
            print(f"... {len(chosen) - args.limit} more (--limit)")
        return 0
    groups: dict[tuple[str, str], int] = {}
    for e in entries:
        groups[(e.collection, e.source)] = groups.get((e.collection, e.source), 0) + 1
    for (collection, source), n in sorted(groups.items()):
        print(f"{collection:20} {source:24} {n:6d}")
    return 0


def _search(args: argparse.Namespace) -> int:
    library = _library(args)
    library.index()                   # load (or build) first, so the time below is the query's own
    start = time.perf_counter()
    hits = library.search(args.query, args.top_k)
    ms = (time.perf_counter() - start) * 1000
    for entry, path, score in hits:
        if args.json:
            print(json.dumps({"id": entry.id, "title": entry.title, "path": str(path), "score": round(score, 3),
                              "source": entry.source, "caption": entry.caption}, ensure_ascii=False))
        else:
            print(f"{score:7.2f}  {entry.id:28} {entry.title}\n         {path}")
    if not hits:
        _err("no images found")
    _err(f"({len(hits)} hits in {ms:.1f} ms)")
    return 0 if hits else 1


def _stats(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    library = _library(args)
    entries = library.entries()
    load_s = time.perf_counter() - start
    builtin = library.builtin_dir
    info = json.loads((builtin / "BUILD.json").read_text(encoding="utf-8")) if builtin else {}
    disk = sum(f.stat().st_size for f in builtin.rglob("*") if f.is_file()) if builtin else 0
    by_source: dict[str, int] = {}
    for e in entries:
        by_source[e.source] = by_source.get(e.source, 0) + 1
    queries = ["flag of Australia", "Australian flag", "cat", "red heart", "rocket launch",
               "flag of the country whose capital is Canberra", "man playing basketball", "coffee"]
    start = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for q in queries:
            library.search(q, 5)
    per_query_ms = (time.perf_counter() - start) * 1000 / (rounds * len(queries))
    print(f"library:       {library.root}")
    print(f"entries:       {len(entries)}")
    for source, n in sorted(by_source.items()):
        print(f"  {source:22} {n}")
    print(f"bundled build: {builtin} ({disk / 1e6:.1f} MB on disk, built in {info.get('build_seconds', '?')} s)")
    print(f"load + index:  {load_s:.2f} s")
    print(f"query:         {per_query_ms:.2f} ms on average over {rounds * len(queries)} queries")
    return 0
