"""The offline renderer, checked from the pixels it draws: placement by colour centroids, counts by
connected components, quoted text by OCR (RapidOCR), aspect, determinism and reference errors."""

from __future__ import annotations

import asyncio
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from genevolve.generators import GeneratorError, make_generator
from genevolve.generators import offline
from genevolve.generators.imageio import output_size
from genevolve.generators.offline import OfflineRenderer
from genevolve.generators.offline_layout import parse_layout
from genevolve.program import Program, Reference

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def ocr():
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    return rapidocr.RapidOCR()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    paths = {
        "cat": root / "chelsea.png",          # 451 x 300 photo
        "astronaut": root / "astronaut.jpg",  # 512 x 512 photo
        "red": root / "red.png",
        "blue": root / "blue.png",
        "corrupt": root / "corrupt.jpg",
    }
    Image.fromarray(skimage_data.chelsea()).save(paths["cat"])
    Image.fromarray(skimage_data.astronaut()).save(paths["astronaut"], quality=92)
    Image.new("RGB", (300, 200), (255, 0, 0)).save(paths["red"])
    Image.new("RGB", (200, 300), (0, 0, 255)).save(paths["blue"])
    paths["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG " * 20)
    return paths


@pytest.fixture(scope="module")
def renderer():
    return OfflineRenderer()


def program(gen_prompt: str, *paths) -> Program:
    return Program(gen_prompt, [Reference(f"IMG_{i:03d}", local_path=str(p)) for i, p in enumerate(paths, 1)])


def colour_mask(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 40) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return (np.abs(pixels - np.array(rgb)).max(axis=2) <= tolerance).astype(np.uint8)


def components(mask: np.ndarray, min_area: int = 200) -> int:
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return int(sum(1 for label in range(1, n) if stats[label, cv2.CC_STAT_AREA] >= min_area))


def read_text(ocr, image: Image.Image, tmp_path) -> list[tuple[str, float]]:
    """OCR the image; each hit as (text without spaces, upper case) and its centre y as a fraction of height."""
    path = tmp_path / "ocr.png"
    small = image.copy()
    small.thumbnail((640, 640), Image.Resampling.LANCZOS)   # titles stay > 30 px; detection gets 2.5x cheaper
    small.save(path)
    result, _ = ocr(str(path))
    return [(re.sub(r"\s+", "", text).upper(), float(np.mean([p[1] for p in box])) / small.height)
            for box, text, _score in (result or [])]


# ---- the parse step, on its own ----------------------------------------------------------------

def test_parse_places_references_by_nearest_spatial_word():
    for prompt in ("The first reference image on the left and the second reference image on the right.",
                   "On the left, the first reference image; on the right, the second reference image."):
        layout = parse_layout(prompt, 2)
        assert [(p.ref, p.role, p.region) for p in layout.placements] == [(1, "subject", "left"),
                                                                           (2, "subject", "right")]
    layout = parse_layout("Put reference image 2 at the top left and the first reference image at the bottom.", 2)
    assert {p.ref: p.region for p in layout.placements} == {1: "bottom", 2: "top-left"}


def test_parse_relations_roles_and_defaults():
    layout = parse_layout("The second reference image next to the first reference image.", 2)
    assert {p.ref: p.region for p in layout.placements} == {1: "left", 2: "right"}
    layout = parse_layout("The cat from the first reference image in front of the second reference image.", 2)
    assert {p.ref: (p.role, p.region) for p in layout.placements} == {1: ("subject", "foreground"),
                                                                      2: ("background", "full")}
    layout = parse_layout("The tower from the first reference image in the style of the second reference image.", 2)
    assert {p.ref: p.role for p in layout.placements} == {1: "subject", 2: "style"}
    layout = parse_layout("The first reference image as the background, with two balloons above.", 1)
    assert layout.placements[0].role == "background"
    assert (layout.shapes[0].count, layout.shapes[0].shape, layout.shapes[0].region) == (2, "circle", "top")
    layout = parse_layout("The first reference image on the left.", 2)     # the unnamed one goes opposite
    assert {p.ref: (p.region, p.mentioned) for p in layout.placements} == {1: ("left", True), 2: ("right", False)}
    layout = parse_layout("The third reference image on top.", 1)
    assert layout.notes and "reference 3" in layout.notes[0]


def test_parse_counts_texts_and_looks():
    layout = parse_layout("Three cats from the first reference image on a sofa.", 1)
    assert layout.placements[0].count == 3 and not layout.shapes
    assert parse_layout("The first reference image, repeated 4 times.", 1).placements[0].count == 4
    assert parse_layout("9 jack-o'-lanterns from the first reference image.", 1).placements[0].count == 9
    layout = parse_layout("Three red squares, 5 apples and a pair of blue shoes, watercolor, at sunset, neon.", 0)
    assert [(s.count, s.noun, s.shape, s.colour) for s in layout.shapes] == [
        (3, "square", "square", "red"), (5, "apple", "circle", "red"), (2, "shoe", "circle", "blue")]
    assert layout.styles == ["watercolor"] and layout.lighting == ["sunset", "neon"] and layout.colours == []
    layout = parse_layout("A poster of the cat's hat with 'RED ALERT' at the bottom, “Sale” as the title "
                          "and a sign reading \"OPEN\". Pastel green, black and white.", 0)
    assert [(t.text, t.position) for t in layout.texts] == [("RED ALERT", "bottom"), ("Sale", "top"),
                                                            ("OPEN", "sign")]
    assert layout.colours == ["green"] and layout.pastel       # 'RED ALERT' is text, not a colour word
    assert layout.styles == ["poster", "noir"]


# ---- rendering, checked from the pixels --------------------------------------------------------

def test_references_are_placed_where_the_prompt_says(renderer, images):
    for prompt, red_left in (
        ("The first reference image on the left and the second reference image on the right.", True),
        ("On the left, the second reference image; on the right, the first reference image.", False),
    ):
        result = renderer.render_sync(program(prompt, images["red"], images["blue"]))
        width = result.image.width
        red, blue = colour_mask(result.image, (255, 0, 0)), colour_mask(result.image, (0, 0, 255))
        assert red.sum() > 0.05 * red.size and blue.sum() > 0.05 * blue.size
        red_x, blue_x = np.nonzero(red)[1].mean(), np.nonzero(blue)[1].mean()
        assert (red_x < width / 2 < blue_x) if red_left else (blue_x < width / 2 < red_x)
        regions = {p["ref"]: p["region"] for p in result.metadata["layout"]["placements"]}
        assert regions == ({1: "left", 2: "right"} if red_left else {1: "right", 2: "left"})


def test_counts_are_drawn_as_separate_instances(renderer, images):
    result = renderer.render_sync(program("The first reference image three times, side by side.", images["red"]))
    assert components(colour_mask(result.image, (255, 0, 0))) == 3
    result = renderer.render_sync(program("Five blue circles on a plain backdrop."))
    assert components(colour_mask(result.image, (35, 85, 225))) == 5
    result = renderer.render_sync(program("Three cats from the first reference image and a pair of red squares "
                                          "on the right.", images["blue"]))
    assert components(colour_mask(result.image, (0, 0, 255))) == 3
    assert components(colour_mask(result.image, (225, 30, 30))) == 2


def test_quoted_text_is_legible_and_placed(renderer, images, ocr, tmp_path):
    result = renderer.render_sync(program("The cat from the first reference image, with the title 'CAT CAFE' at "
                                          "the top and the caption \"Open daily\" at the bottom.", images["cat"]))
    hits = read_text(ocr, result.image, tmp_path)
    top = [y for text, y in hits if text == "CATCAFE"]
    bottom = [y for text, y in hits if text == "OPENDAILY"]
    assert top and top[0] < 0.3, hits
    assert bottom and bottom[0] > 0.7, hits

    result = renderer.render_sync(program("A watercolor street at sunset with a shop sign that says “BAKERY”."))
    assert any(text == "BAKERY" for text, _ in read_text(ocr, result.image, tmp_path))
    assert result.metadata["effects"] == ["lighting: sunset", "style: watercolor"]

    long_title = "The quick brown fox jumps over the lazy dog again"    # must wrap to fit
    result = renderer.render_sync(program(f"The first reference image with the title '{long_title}'.",
                                          images["astronaut"]))
    read = "".join(text for text, _ in read_text(ocr, result.image, tmp_path))
    assert re.sub(r"\s+", "", long_title).upper() in read, read


def test_output_size_follows_the_first_reference(images):
    assert output_size((451, 300), 1024, max_aspect=4.0) == (1024, 688)
    assert output_size((300, 451), 1024, max_aspect=4.0) == (688, 1024)
    assert output_size((4000, 100), 1024, max_aspect=4.0) == (1024, 256)     # clamped to 4:1
    assert output_size(None, 1024, max_aspect=4.0) == (1024, 1024)
    small = OfflineRenderer(long_side=512)
    cat = small.render_sync(program("The first reference image and the second reference image.",
                                    images["cat"], images["blue"]))
    assert cat.image.size == (512, 336) and cat.metadata["size"] == [512, 336]
    portrait = small.render_sync(program("The first reference image.", images["blue"]))
    assert portrait.image.size == (336, 512)
    assert small.render_sync(program("A red sunset.")).image.size == (512, 512)


def test_same_program_and_seed_give_identical_pixels(renderer, images):
    prog = program("The first reference image on the left, three golden stars on the right, cartoon, "
                   "warm light, 'HELLO' at the top.", images["astronaut"])
    first = np.asarray(renderer.render_sync(prog, seed=7).image)
    again = np.asarray(asyncio.run(renderer.render(prog, seed=7)).image)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, np.asarray(renderer.render_sync(prog, seed=8).image))
    default_seed = OfflineRenderer(seed=7).render_sync(prog)
    assert default_seed.metadata["seed"] == 7 and np.array_equal(first, np.asarray(default_seed.image))

    other = program("Five blue circles, 'BYE' at the bottom, watercolor.")
    async def both():                      # two renders in parallel threads, as an agent batch would run them
        return await asyncio.gather(renderer.render(prog, seed=7), renderer.render(other, seed=7))
    parallel = asyncio.run(both())
    assert np.array_equal(np.asarray(parallel[0].image), first)
    assert np.array_equal(np.asarray(parallel[1].image), np.asarray(renderer.render_sync(other, seed=7).image))


def test_styles_and_style_references_change_the_picture(renderer, images):
    noir = np.asarray(renderer.render_sync(program("The first reference image, black and white.",
                                                   images["astronaut"])).image).astype(int)
    assert np.abs(noir[..., 0] - noir[..., 1]).max() <= 2 and np.abs(noir[..., 1] - noir[..., 2]).max() <= 2
    plain = renderer.render_sync(program("The cat from the first reference image.", images["cat"], images["blue"]))
    styled = renderer.render_sync(program("The cat from the first reference image in the style of the second "
                                          "reference image.", images["cat"], images["blue"]))
    assert styled.metadata["effects"] == ["colour transfer from reference 2"]
    mean_plain, mean_styled = (np.asarray(r.image).reshape(-1, 3).mean(0) for r in (plain, styled))
    assert mean_styled[2] - mean_styled[0] > mean_plain[2] - mean_plain[0] + 30    # moved towards blue
    sketch = renderer.render_sync(program("A pencil sketch of the first reference image.", images["cat"]))
    assert sketch.metadata["effects"] == ["style: sketch"]


def test_colour_and_lighting_words_set_the_backdrop(renderer):
    def corner_mean(prompt: str) -> np.ndarray:
        pixels = np.asarray(renderer.render_sync(program(prompt)).image).astype(float)
        return pixels[:120, :120].reshape(-1, 3).mean(0)      # top-left corner: background only

    blue = corner_mean("A lighthouse on a blue background.")
    assert blue[2] > blue[0] + 60
    assert corner_mean("A quiet street at night.").mean() < 40
    assert corner_mean("A pastel pink nursery.").mean() > 180


def test_metadata_records_what_was_done(renderer, images):
    result = renderer.render_sync(program("The first reference image at the top, 'SALE' at the bottom.",
                                          images["cat"]), seed=3)
    meta = result.metadata
    assert (meta["backend"], meta["seed"], meta["size"]) == ("offline", 3, [1024, 688])
    assert meta["layout"]["placements"][0]["region"] == "top"
    assert meta["layout"]["texts"] == [{"text": "SALE", "position": "bottom", "cues": ["bottom"]}]
    placed = {p["what"]: p for p in meta["placed"]}
    assert placed["reference 1"]["boxes"][0][3] <= 688 / 2 + 1        # drawn in the upper half
    assert placed["text 'SALE'"]["boxes"][0][1] > 688 / 2
    assert set(meta["timings"]) >= {"parse_s", "load_s", "compose_s", "effects_s", "text_s", "total_s"}
    assert meta["font"].endswith(".ttf")


def test_reference_errors_name_the_file(renderer, images, tmp_path):
    missing = tmp_path / "nowhere.png"
    with pytest.raises(GeneratorError, match=re.escape(str(missing))):
        renderer.render_sync(program("The first reference image.", images["cat"], missing))
    with pytest.raises(GeneratorError, match=r"cannot read image file .*corrupt\.jpg"):
        renderer.render_sync(program("The first reference image.", images["corrupt"]))
    with pytest.raises(GeneratorError, match=r"astronaut\.jpg is 512x512 pixels, over the limit"):
        OfflineRenderer(max_reference_pixels=100_000).render_sync(program("x", images["astronaut"]))
    with pytest.raises(GeneratorError, match="no local_path"):
        renderer.render_sync(Program("x", [Reference("IMG_001", url="https://example.org/a.jpg")]))


def test_registry_and_font_fallback(monkeypatch):
    assert isinstance(make_generator("offline", long_side=256), OfflineRenderer)
    monkeypatch.delenv("GENEVOLVE_FONT", raising=False)
    monkeypatch.setattr(offline, "find_font", lambda names: None)
    with pytest.warns(RuntimeWarning, match="no TrueType"):
        fallback = OfflineRenderer(long_side=256)
    result = fallback.render_sync(program("'HELLO' at the top."))
    assert result.metadata["font"] == "pillow-default" and result.image.size == (256, 256)


def test_apostrophes_inside_single_quotes_and_measurements_are_not_counts():
    from genevolve.generators.offline_layout import parse_layout

    layout = parse_layout("The flag from the first reference image, shot with a 35 mm lens; the words "
                          "'G'DAY MATE' at the top.", 1)
    assert [t.text for t in layout.texts] == ["G'DAY MATE"]
    assert [p.count for p in layout.placements] == [1] and not layout.shapes
