"""Shared test pieces: small in-memory search backends over real image files.

They stand in for the search corpora only where the code under test is the agent runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from genevolve.tools.base import ImageHit, ImageSearchBackend, SearchBackend, SearchHit  # noqa: E402


class ListSearchBackend(SearchBackend):
    name = "list"

    def __init__(self, docs: list[SearchHit]):
        self.docs = docs
        self.queries: list[str] = []

    async def search(self, query: str, top_k: int) -> list[SearchHit]:
        self.queries.append(query)
        words = set(query.lower().split())
        return [d for d in self.docs if words & set((d.title + " " + d.snippet).lower().split())][:top_k]


class FolderImageBackend(ImageSearchBackend):
    """Finds image files whose name shares a word with the query."""

    name = "folder"

    def __init__(self, folder: Path):
        self.folder = folder
        self.queries: list[str] = []

    async def search_images(self, query: str, top_k: int) -> list[ImageHit]:
        self.queries.append(query)
        words = set(query.lower().split())
        hits = []
        for path in sorted(self.folder.glob("*.png")):
            if words & set(path.stem.lower().split("_")):
                hits.append(ImageHit(title=path.stem.replace("_", " "), local_path=str(path),
                                     url=f"https://example.org/{path.name}", page_url=None))
        return hits[:top_k]


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    colours = {"flag_australia": (0, 0, 139), "flag_peru": (200, 16, 46), "red_apple": (220, 20, 20),
               "green_apple": (20, 200, 20), "sydney_opera_house": (240, 240, 240)}
    for name, rgb in colours.items():
        Image.new("RGB", (60, 40), rgb).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def tools(image_folder: Path):
    from genevolve.tools import default_tools

    docs = [SearchHit("Australia", "https://en.wikipedia.org/wiki/Australia",
                      "Australia is a country whose capital is Canberra.", "test"),
            SearchHit("Peru", "https://en.wikipedia.org/wiki/Peru", "Peru's capital is Lima.", "test")]
    return default_tools(ListSearchBackend(docs), FolderImageBackend(image_folder))
