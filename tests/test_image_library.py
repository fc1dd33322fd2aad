"""The offline image library: the bundled build, search quality, user folders, the CLI.

The bundled library (about 3,900 images) is built once into the shared default cache and reused
by every test here; user-folder tests write to temporary library folders that link to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from genevolve.cli import main as cli_main
from genevolve.tools import ImageSearchTool, ToolContext, make_image_search_backend
from genevolve.tools import image_library_build
from genevolve.tools.image_library import (ImageLibrary, ImageLibraryBackend, LibraryError, TextIndex,
                                           collect_builds, default_library_dir, ensure_builtin,
                                           find_emoji_font, read_manifest, user_manifest_path)
from genevolve.tools.image_library_build import fetch_flags, flag_entries
from genevolve.tools.image_library_labels import Namer, flag_code
from genevolve.tools.image_library_user import DEFAULT_MAX_PIXELS, add_folder, open_checked

AUSTRALIA = "emoji-1f1e6-1f1fa"


def flag_ids(emoji_id: str) -> set[str]:
    """An emoji flag's id plus the id of the same flag's flat render (present after fetch-flags)."""
    if not emoji_id.startswith("emoji-"):
        return {emoji_id}
    code = flag_code("".join(chr(int(h, 16)) for h in emoji_id.split("-")[1:]))
    return {emoji_id, f"flag-{code.lower()}"} if code else {emoji_id}


@pytest.fixture(scope="session")
def builtin_dir() -> Path:
    return ensure_builtin(default_library_dir())


@pytest.fixture(scope="session")
def library(builtin_dir: Path) -> ImageLibrary:
    lib = ImageLibrary(builtin_dir.parent, include_user=False)
    lib.index()
    return lib


@pytest.fixture
def tmp_library(tmp_path: Path, builtin_dir: Path) -> Path:
    """An empty library folder that shares the bundled build (no 3,900-image rebuild)."""
    root = tmp_path / "library"
    root.mkdir()
    (root / builtin_dir.name).symlink_to(builtin_dir, target_is_directory=True)
    if (builtin_dir.parent / "vendor").is_dir():        # fetched flags are part of the build key
        (root / "vendor").symlink_to(builtin_dir.parent / "vendor", target_is_directory=True)
    return root


def ids(hits) -> list[str]:
    return [entry.id for entry, _, _ in hits]


# ----------------------------------------------------------------------------- bundled library

def test_bundled_library_is_large_and_well_formed(library: ImageLibrary, builtin_dir: Path) -> None:
    entries = library.entries()
    assert len(entries) >= 3000
    assert len({e.id for e in entries}) == len(entries)
    sources = {e.source for e in entries}
    assert {"noto-emoji", "scikit-image", "matplotlib"} <= sources      # (+ svg-country-flags if fetched)
    build = json.loads((builtin_dir / "BUILD.json").read_text())
    assert build["entries"] == len(entries) and build["build_seconds"] > 0
    flags = [e for e in entries if e.title.startswith("Flag of ")]
    assert len(flags) >= 250          # every country and territory, plus subdivisions
    for e in entries:
        assert e.title and e.labels and e.width > 0 and e.height > 0, e.id


def test_every_bundled_file_is_a_valid_image(library: ImageLibrary) -> None:
    entries = library.entries()
    checked = [e for e in entries if e.is_photo] + entries[::25]
    for e in checked:
        path = library.path_of(e)
        with Image.open(path) as im:
            assert im.format in ("PNG", "JPEG"), path
            assert im.size == (e.width, e.height), path
            im.load()
    emoji = Image.open(library.path_of(next(e for e in entries if e.id == AUSTRALIA))).convert("RGB")
    assert emoji.getpixel((0, 0)) == (255, 255, 255)            # flattened on pure white
    assert len(emoji.getcolors(maxcolors=1 << 16)) > 20                        # real artwork, not a blank tile


@pytest.mark.parametrize("query", ["flag of Australia", "Australian flag", "Australia flag",
                                   "australian flags", "flag of the country whose capital is Canberra"])
def test_australian_flag_comes_first(library: ImageLibrary, query: str) -> None:
    found = ids(library.search(query, 5))
    assert found[0] in flag_ids(AUSTRALIA)
    assert AUSTRALIA in found[:2]           # the emoji, right after the flat render when fetched


@pytest.mark.parametrize("query,expected", [
    ("flag of the United States", "emoji-1f1fa-1f1f8"), ("American flag", "emoji-1f1fa-1f1f8"),
    ("US flag", "emoji-1f1fa-1f1f8"), ("Norwegian flag", "emoji-1f1f3-1f1f4"),
    ("flag of France", "emoji-1f1eb-1f1f7"), ("flag of South Korea", "emoji-1f1f0-1f1f7"),
    ("Ivory Coast flag", "emoji-1f1e8-1f1ee"),
    ("Scottish flag", "emoji-1f3f4-e0067-e0062-e0073-e0063-e0074-e007f"),
    ("flag of Hawaii", "emoji-1f3f4-e0075-e0073-e0068-e0069-e007f"),
    ("pizza", "emoji-1f355"), ("cup of coffee", "photo-coffee"), ("rocket launch", "photo-rocket"),
])
def test_named_subjects_come_first(library: ImageLibrary, query: str, expected: str) -> None:
    assert ids(library.search(query, 5))[0] in flag_ids(expected)


def test_cat_finds_the_emoji_and_the_photo(library: ImageLibrary) -> None:
    found = ids(library.search("cat", 10))
    assert set(found[:2]) == {"emoji-1f408", "photo-chelsea"}     # the cat emoji and the cat photo
    assert "emoji-1f431" in found                                  # cat face
    assert ids(library.search("cats", 10)) == found    # plurals fold


def test_search_edge_cases(library: ImageLibrary) -> None:
    assert library.search("qwzxv", 5) == []
    assert library.search("   ", 5) == []
    assert library.search("the of and", 5) == []
    assert len(library.search("flag", 3)) == 3
    assert ids(library.search("  FLAG   OF   australia!!  ", 1))[0] in flag_ids(AUSTRALIA)
    assert ids(library.search("x" * 10_000 + " flag of Australia", 1)) == []   # cut, not crashed


def test_backend_and_tool_give_file_hits(builtin_dir: Path) -> None:
    backend = make_image_search_backend("offline", library_dir=str(builtin_dir.parent), include_user="false")
    assert isinstance(backend, ImageLibraryBackend)
    hits = asyncio.run(backend.search_images("Australian flag", 3))
    emoji = next(h for h in hits if h.key == AUSTRALIA)
    assert emoji.source == "noto-emoji" and emoji.title == "Flag of Australia (emoji)"
    assert Path(emoji.local_path).is_file()
    assert emoji.url == Path(emoji.local_path).resolve().as_uri()
    ctx = ToolContext()
    result = asyncio.run(ImageSearchTool(backend).call({"query": "flag of Australia", "top_k": 2}, ctx))
    assert result.error is None
    assert "[IMG_001] Flag of Australia (" in result.text and "[IMG_002] Flag of Australia (" in result.text
    assert ctx.images.references["IMG_001"].local_path == hits[0].local_path


def test_flat_flag_renders_are_named_like_the_emoji(tmp_path: Path, library: ImageLibrary) -> None:
    # A folder laid out like the npm package, made of real PNGs (transparent corners included).
    vendor = tmp_path / "vendor"
    (vendor / "png1000px").mkdir(parents=True)
    (vendor / "countries.json").write_text('{"AU": "Australia", "GB-SCT": "Scotland"}')
    Image.new("RGBA", (1000, 500), (0, 0, 139, 255)).save(vendor / "png1000px" / "au.png")
    Image.new("RGBA", (1000, 600), (0, 94, 184, 0)).save(vendor / "png1000px" / "gb-sct.png")
    dest = tmp_path / "build"
    (dest / "files" / "flags").mkdir(parents=True)
    entries = {e.id: e for e in flag_entries(vendor, dest, Namer())}
    assert set(entries) == {"flag-au", "flag-gb-sct"}
    au = entries["flag-au"]
    assert au.title == "Flag of Australia (flat, 1000 px)" and (au.width, au.height) == (1000, 500)
    assert {"Australian", "AUS"} <= set(au.labels) and "capital: Canberra" in au.caption
    assert entries["flag-gb-sct"].title == "Flag of Scotland (flat, 1000 px)"
    with Image.open(dest / entries["flag-gb-sct"].path) as im:
        assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)     # flattened on white
    index = TextIndex(list(entries.values()))
    assert index.search("Australian flag", 1)[0][0].id == "flag-au"


def test_a_finished_build_is_reused_not_rebuilt(tmp_library: Path, builtin_dir: Path, monkeypatch) -> None:
    build_json = builtin_dir / "BUILD.json"
    before = build_json.stat()

    def tripwire(*args, **kwargs):
        raise AssertionError("the bundled library was rebuilt")

    monkeypatch.setattr(image_library_build, "build_builtin", tripwire)
    lib = ImageLibrary(tmp_library)
    index = lib.index()
    assert lib.builtin_dir == tmp_library / builtin_dir.name
    assert ids(lib.search("flag of Australia", 1))[0] in flag_ids(AUSTRALIA)
    assert lib.index() is index                      # nothing changed on disk: the same index object
    assert ensure_builtin(tmp_library) == lib.builtin_dir
    after = build_json.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_fetch_flags_without_npm_says_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))          # no npm on this PATH
    with pytest.raises(RuntimeError, match="needs the npm client"):
        fetch_flags(tmp_path / "library", log=lambda msg: None)


# ----------------------------------------------------------------------------- a cache shared by processes

_READER = """
import sys
from PIL import Image
from genevolve.tools.image_library import ImageLibrary
lib = ImageLibrary(sys.argv[1], include_user=False, build=False)     # finds this environment's build
entry, path, _ = lib.search("flag of Australia", 1)[0]
print(lib.builtin_dir.name, path, flush=True)
sys.stdin.readline()                     # meanwhile another environment builds and collects
with Image.open(path) as im:
    im.load()
print("still readable", flush=True)
sys.stdin.readline()                     # killed here
"""

# Another environment: its own emoji font path gives it another build key. Its build is kept small
# (40 glyphs, no flat flags): what is under test is where builds live and when they are collected.
_BUILDER = """
import sys
from genevolve.tools import image_library_build as build
from genevolve.tools.image_library import ensure_builtin
glyphs = build.emoji_glyphs
build.emoji_glyphs = lambda font: glyphs(font)[:40]
build.flag_entries = lambda folder, dest, namer: []
print(ensure_builtin(__import__("pathlib").Path(sys.argv[1]), emoji_font=sys.argv[2]).name, flush=True)
"""


def test_a_build_in_use_by_another_process_is_not_collected(tmp_path: Path, builtin_dir: Path) -> None:
    font = find_emoji_font()
    if font is None:
        pytest.skip("no Noto Color Emoji font on this machine")
    root = tmp_path / "shared"
    root.mkdir()
    if (builtin_dir.parent / "vendor").is_dir():        # fetched flags are part of the build key
        (root / "vendor").symlink_to(builtin_dir.parent / "vendor", target_is_directory=True)
    # Environment A's build: the shared one, hard-linked in (a real folder, no 3,900-image rebuild).
    shutil.copytree(builtin_dir, root / builtin_dir.name, copy_function=os.link,
                    ignore=shutil.ignore_patterns(".holders"))
    # A build nobody uses any more, with the lock file of a process that has exited.
    abandoned = root / "builtin-000000000000"
    (abandoned / ".holders").mkdir(parents=True)
    (abandoned / "BUILD.json").write_text("{}")
    (abandoned / ".holders" / "gone-1-0.lock").write_text("")
    (tmp_path / "fonts").mkdir()
    (tmp_path / "fonts" / font.name).symlink_to(font)

    reader = subprocess.Popen([sys.executable, "-c", _READER, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        name, path = reader.stdout.readline().split()
        assert name == builtin_dir.name and Path(path).is_file()
        built = subprocess.run([sys.executable, "-c", _BUILDER, str(root), str(tmp_path / "fonts" / font.name)],
                               capture_output=True, text=True, timeout=300)
        assert built.returncode == 0, built.stderr
        other = built.stdout.strip()
        assert other.startswith("builtin-") and other != name
        assert sorted(p.name for p in root.glob("builtin-*")) == sorted([name, other])   # abandoned one collected
        assert Path(path).is_file()
        reader.stdin.write("go on\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "still readable"
    finally:
        reader.kill()                        # kill -9: the kernel drops its lock, its file stays behind
        reader.wait()
    # With its reader gone, A's build is collected by the next collection.
    assert collect_builds(root, keep=root / other) == [root / name]
    assert [p.name for p in root.glob("builtin-*")] == [other] and not list(root.glob(".trash-*"))


def test_a_forced_rebuild_replaces_files_in_place(tmp_path: Path, monkeypatch) -> None:
    glyphs = image_library_build.emoji_glyphs
    monkeypatch.setattr(image_library_build, "emoji_glyphs", lambda font: glyphs(font)[:20])   # a small build
    root = tmp_path / "library"
    first = ensure_builtin(root)
    folder, manifest = first.stat().st_ino, (first / "manifest.jsonl").stat().st_ino
    assert ensure_builtin(root, force=True) == first
    assert first.stat().st_ino == folder                        # never moved away, so no path goes missing
    assert (first / "manifest.jsonl").stat().st_ino != manifest  # each file replaced by a rename
    assert [p.name for p in root.iterdir() if p.name.startswith(("builtin-", ".building-", ".trash-"))] == [first.name]
    assert json.loads((first / "BUILD.json").read_text())["entries"] == len(read_manifest(first / "manifest.jsonl"))


# ----------------------------------------------------------------------------- user folders

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _declared_png(width: int, height: int) -> bytes:
    """A few hundred bytes on disk that claim width x height pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


@pytest.fixture
def photo_folder(tmp_path: Path, library: ImageLibrary) -> Path:
    folder = tmp_path / "holiday"
    (folder / "beach day").mkdir(parents=True)
    chelsea = Image.open(library.path_of(next(e for e in library.entries() if e.id == "photo-chelsea")))
    exif = Image.Exif()
    exif[0x010E] = "A red kite flying over the dunes"
    exif[0x9C9E] = "kite;windy".encode("utf-16-le")
    exif.get_ifd(0x8769)[0x9286] = b"ASCII\x00\x00\x00taken on a stormy afternoon"
    chelsea.convert("RGB").save(folder / "beach day" / "DSC01234.jpg", exif=exif)
    Image.new("RGB", (64, 48), (250, 120, 30)).save(folder / "sunset.png")
    (folder / "sunset.txt").write_text("Golden sunset over the harbour bridge\n")
    Image.new("RGB", (32, 32), (0, 90, 200)).save(folder / "IMG_0001.jpg")
    (folder / "IMG_0001.json").write_text(json.dumps({"title": "Lighthouse at dusk",
                                                      "keywords": ["lighthouse", "coast"]}))
    Image.new("RGB", (30, 30), "green").save(folder / "meadow.png")
    (folder / "meadow.json").write_text('{"caption": "green meadow",\n "keywords": [1, }')
    jpeg = (folder / "beach day" / "DSC01234.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "notes.jpg").write_text("shopping list: milk, eggs\n")
    (folder / "bomb.png").write_bytes(_declared_png(100_000, 100_000))
    (folder / "big.png").write_bytes(_declared_png(9_000, 9_000))
    (folder / "gone.jpg").symlink_to(folder / "missing-target.jpg")
    (folder / "README.md").write_text("my holiday pictures")
    return folder


def test_add_folder_indexes_good_images_and_reports_bad_ones(tmp_library: Path, photo_folder: Path) -> None:
    lines: list[str] = []
    report = add_folder(tmp_library, photo_folder, log=lines.append)
    assert (report.added, report.updated, report.unchanged) == (4, 0, 0)
    reasons = {Path(f).name: why for f, why in report.skipped}
    assert set(reasons) == {"corrupt.jpg", "notes.jpg", "bomb.png", "big.png", "gone.jpg"}
    assert "damaged or truncated" in reasons["corrupt.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "decompression bomb" in reasons["bomb.png"] and "too large" in reasons["bomb.png"]
    assert reasons["big.png"].startswith("too large: 9000x9000")
    assert "cannot read" in reasons["gone.jpg"]
    assert report.ignored == 1                                  # README.md; sidecars are not counted
    assert any("meadow.json: line 2" in w for w in report.warnings)
    assert sum(str(photo_folder / "bomb.png") in line for line in lines) == 1

    entries = {Path(e.path).name: e for e in read_manifest(user_manifest_path(tmp_library))}
    assert set(entries) == {"DSC01234.jpg", "sunset.png", "IMG_0001.jpg", "meadow.png"}
    kite = entries["DSC01234.jpg"]
    assert "red kite" in kite.caption and "stormy afternoon" in kite.caption
    assert {"kite", "windy", "beach day", "holiday"} <= set(kite.labels)
    assert kite.title.startswith("A red kite")                 # camera file names say nothing
    assert (kite.width, kite.height) == (451, 300)
    assert entries["IMG_0001.jpg"].title == "Lighthouse at dusk"
    assert entries["sunset.png"].caption == "Golden sunset over the harbour bridge"
    assert entries["meadow.png"].title == "meadow"

    lib = ImageLibrary(tmp_library)
    assert ids(lib.search("red kite over the dunes", 1)) == [kite.id]
    assert ids(lib.search("kite", 1)) == ["emoji-1fa81"]             # the kite emoji's title is exact
    assert ids(lib.search("harbour bridge sunset", 1)) == [entries["sunset.png"].id]
    assert ids(lib.search("lighthouse", 1)) == [entries["IMG_0001.jpg"].id]
    assert ids(lib.search("flag of Australia", 1))[0] in flag_ids(AUSTRALIA)   # bundled and user, together


def test_re_adding_is_idempotent_and_tracks_changes(tmp_library: Path, photo_folder: Path) -> None:
    add_folder(tmp_library, photo_folder)
    manifest = user_manifest_path(tmp_library)
    first = manifest.read_bytes()
    again = add_folder(tmp_library, photo_folder)
    assert (again.added, again.updated, again.unchanged, again.removed) == (0, 0, 4, 0)
    assert manifest.read_bytes() == first
    # Same folder under another name: renamed in place, never duplicated.
    renamed = add_folder(tmp_library, str(photo_folder) + "/", name="trip")
    assert renamed.unchanged == 4 and len(read_manifest(manifest)) == 4
    assert {e.collection for e in read_manifest(manifest)} == {"trip"}
    (photo_folder / "sunset.txt").write_text("Purple sky above the old harbour\n")
    stamp = (photo_folder / "sunset.txt").stat().st_mtime_ns + 10**9
    os.utime(photo_folder / "sunset.txt", ns=(stamp, stamp))
    (photo_folder / "meadow.png").unlink()
    changed = add_folder(tmp_library, photo_folder, name="trip")
    assert (changed.updated, changed.removed, changed.unchanged) == (1, 1, 2)
    lib = ImageLibrary(tmp_library, include_builtin=False)
    assert lib.search("purple sky", 1)[0][0].title == "sunset"


def test_images_over_the_pixel_cap(tmp_path: Path) -> None:
    """A JPEG is decoded at a reduced scale until it fits the cap; other formats over it are refused."""
    photo = Image.radial_gradient("L").resize((800, 600)).convert("RGB")
    photo.save(tmp_path / "big.jpg", quality=90)
    photo.save(tmp_path / "big.png")
    with open_checked(tmp_path / "big.jpg", max_pixels=100_000) as im:
        assert im.info["full_size"] == (800, 600)
        assert im.size == (200, 150)              # 1/2 would still be 120,000 pixels: decoded at 1/4
    with open_checked(tmp_path / "big.jpg", max_pixels=10**6, draft_box=(100, 100)) as im:
        assert im.size == (200, 150)              # under the cap, and reduced only while it covers the box
    with open_checked(tmp_path / "big.jpg") as im:
        assert im.size == (800, 600)              # small enough: every pixel decoded
    with pytest.raises(ValueError, match=r"too large: 800x600"):
        open_checked(tmp_path / "big.png", max_pixels=100_000)
    with pytest.raises(ValueError, match=r"too large: 800x600"):            # even 1/8 is over the cap
        open_checked(tmp_path / "big.jpg", max_pixels=5_000)
    (tmp_path / "huge.png").write_bytes(_declared_png(20_000, 20_000))       # 400 MP in a few bytes
    with pytest.raises(ValueError, match="too large"):
        open_checked(tmp_path / "huge.png")
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_add_folder_reads_a_large_jpeg_at_a_reduced_scale(tmp_library: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.new("RGB", (1200, 900), (20, 120, 200)).save(folder / "harbour.jpg")
    Image.new("RGB", (1200, 900), (20, 120, 200)).save(folder / "harbour-copy.png")
    report = add_folder(tmp_library, folder, max_pixels=500_000)
    assert report.added == 1
    assert [(Path(f).name, why.split(" = ")[0]) for f, why in report.skipped] == \
        [("harbour-copy.png", "too large: 1200x900")]
    entry = read_manifest(user_manifest_path(tmp_library))[0]
    assert (Path(entry.path).name, entry.width, entry.height) == ("harbour.jpg", 1200, 900)   # the true size


def test_add_folder_with_ocr_reads_text(tmp_library: Path, tmp_path: Path) -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    folder = tmp_path / "signs"
    folder.mkdir()
    im = Image.new("RGB", (640, 200), "white")
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", 64)
    ImageDraw.Draw(im).text((30, 60), "BAKERY OPEN", fill="black", font=font)
    im.save(folder / "shopfront.png")
    report = add_folder(tmp_library, folder, ocr=True)
    assert report.added == 1
    entry = read_manifest(user_manifest_path(tmp_library))[0]
    assert entry.ocr and "BAKERY" in entry.caption.upper()
    assert ids(ImageLibrary(tmp_library, include_builtin=False).search("bakery", 1)) == [entry.id]


def test_broken_manifest_is_reported_with_file_and_line(tmp_library: Path) -> None:
    manifest = user_manifest_path(tmp_library)
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"id": "user-1", "title": "a", "path": "/x.png", "source": "user:x", '
                        '"width": 1, "height": 1}\n{"id": "user-2", "title": \n')
    with pytest.raises(LibraryError, match=r"manifest\.jsonl:2: not valid JSON"):
        ImageLibrary(tmp_library).index()
    manifest.write_text('{"id": "user-1", "title": "a"}\n')
    with pytest.raises(LibraryError, match=r"manifest\.jsonl:1: field 'path' is missing"):
        ImageLibrary(tmp_library).index()
    manifest.write_text('{"id": "user-1", "title": "a", "path": "/x.png", "source": "user:x", '
                        '"width": "wide", "height": 1}\n')
    with pytest.raises(LibraryError, match=r"manifest\.jsonl:1: field 'width' must be an integer"):
        ImageLibrary(tmp_library).index()


def test_missing_user_files_are_dropped_from_results(tmp_library: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pets"
    folder.mkdir()
    Image.new("RGB", (20, 20), "brown").save(folder / "hamster.png")
    add_folder(tmp_library, folder)
    lib = ImageLibrary(tmp_library, include_builtin=False)
    assert len(lib.search("hamster", 3)) == 1
    (folder / "hamster.png").unlink()
    assert lib.search("hamster", 3) == []


# ----------------------------------------------------------------------------- CLI

def test_cli_add_list_search_remove(tmp_library: Path, photo_folder: Path, capsys) -> None:
    lib = ["images", "--library", str(tmp_library)]
    assert cli_main([*lib, "add", str(photo_folder), "--name", "holiday"]) == 0
    out, err = capsys.readouterr()
    assert "4 added" in out and "5 skipped" in out
    skipped_lines = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped_lines) == 5 and any("notes.jpg: not an image" in line for line in skipped_lines)

    assert cli_main([*lib, "list"]) == 0
    out, _ = capsys.readouterr()
    assert "holiday" in out and "noto-emoji" in out
    assert cli_main([*lib, "list", "--collection", "holiday"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 4 and all(line.startswith("user-") for line in listed)

    assert cli_main([*lib, "stats"]) == 0
    out = capsys.readouterr().out
    assert "user:holiday" in out and "MB on disk" in out and "ms on average" in out

    assert cli_main([*lib, "search", "red kite", "--json", "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["path"].endswith("DSC01234.jpg")

    assert cli_main([*lib, "remove", "holiday"]) == 0
    assert cli_main([*lib, "remove", "holiday"]) == 1
    assert cli_main([*lib, "add", str(photo_folder / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
