"""The offline judge on real renders of real library images (Noto emoji flags and objects)."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image, ImageFilter

from genevolve.generators.offline import OfflineRenderer
from genevolve.judges.base import DIMENSIONS
from genevolve.judges.offline import (MAX_PIXELS, OfflineJudge, judge_images, load_bgr, normalise_text,
                                      required_texts, substring_distance, text_distance)
from genevolve.program import Program, Reference
from genevolve.tools.image_library import ImageLibrary

ITALY, IRELAND = "emoji-1f1ee-1f1f9", "emoji-1f1ee-1f1ea"
ELEPHANT, GIRAFFE, APPLE, BREAD = "emoji-1f418", "emoji-1f992", "emoji-1f34e", "emoji-1f35e"


@pytest.fixture(scope="module")
def draw(tmp_path_factory):
    """draw(gen_prompt, [library ids], seed=0) -> path of the offline render (shared library cache)."""
    library = ImageLibrary(include_user=False)
    entries = {e.id: e for e in library.entries()}
    folder = tmp_path_factory.mktemp("renders")
    renderer = OfflineRenderer(long_side=768)
    made: dict[tuple, str] = {}

    def render(gen_prompt: str, ids: list[str], seed: int = 0) -> str:
        key = (gen_prompt, tuple(ids), seed)
        if key not in made:
            refs = [Reference(img_id=f"IMG_{i:03d}", local_path=str(library.path_of(entries[x])))
                    for i, x in enumerate(ids, 1)]
            path = folder / f"{len(made):03d}.png"
            renderer.render_sync(Program(gen_prompt, refs), seed=seed).image.save(path)
            made[key] = str(path)
        return made[key]

    return render


def test_right_reference_beats_a_wrong_one_of_the_same_family(draw):
    gt = draw("The flag from the first reference image, centered.", [ITALY])
    layout = "The flag from the first reference image on the left, on a teal backdrop."
    right = judge_images("The flag of Italy.", draw(layout, [ITALY], 5), gt)
    wrong = judge_images("The flag of Italy.", draw(layout, [IRELAND], 5), gt)   # same stripes, other colours
    assert right.scores["visual_correctness"] == 1.0
    assert wrong.scores["visual_correctness"] < right.scores["visual_correctness"]
    assert wrong.extra["visual"]["similarity"] < right.extra["visual"]["similarity"]
    assert right.text_accuracy_na and right.scores["text_accuracy"] == 0.5
    assert set(right.scores) == set(DIMENSIONS)

    gt = draw("The elephant from the first reference image, centered.", [ELEPHANT])
    right = judge_images("An elephant.", draw("The elephant from the first reference image on the right.", [ELEPHANT]), gt)
    wrong = judge_images("An elephant.", draw("The giraffe from the first reference image on the right.", [GIRAFFE]), gt)
    assert right.scores["visual_correctness"] > wrong.scores["visual_correctness"]
    assert right.scores["faithfulness"] > wrong.scores["faithfulness"]


def test_ocr_reads_the_required_text(draw):
    gt = draw('The bread from the first reference image, centered, with the caption "FRESH BREAD DAILY" '
              "at the bottom.", [BREAD])
    request = 'A loaf of bread with the caption "FRESH BREAD DAILY".'
    cand = 'The bread from the first reference image on the left, with the title "{}" at the top.'
    right = judge_images(request, draw(cand.format("FRESH BREAD DAILY"), [BREAD]), gt)
    other = judge_images(request, draw(cand.format("OPEN ALL NIGHT"), [BREAD]), gt)
    misspelt = judge_images(request, draw(cand.format("FRESH BRXAD DAILQ"), [BREAD]), gt)
    assert right.scores["text_accuracy"] == 1.0 and not right.text_accuracy_na
    assert right.extra["text"]["distance"]["FRESH BREAD DAILY"] <= 0.1
    assert other.scores["text_accuracy"] == 0.0
    assert misspelt.scores["text_accuracy"] < 1.0
    assert right.scores["faithfulness"] > other.scores["faithfulness"]     # the text is a required element


def test_count_check_separates_right_and_wrong_counts(draw):
    gt = draw("4 apples from the first reference image.", [APPLE])
    meta = {"meta": {"count": 4, "required_texts": []}}        # a benchmark row: facts nested under meta
    right = judge_images("Exactly four apples.", draw('4 apples from the first reference image, with the caption '
                                                      '"COUNT THEM" at the bottom.', [APPLE], 3), gt, meta)
    wrong = judge_images("Exactly four apples.", draw('5 apples from the first reference image, with the caption '
                                                      '"COUNT THEM" at the bottom.', [APPLE], 3), gt, meta)
    assert right.extra["count"] == {"expected": 4, "found": 4}
    assert wrong.extra["count"] == {"expected": 4, "found": 5}
    assert right.scores["faithfulness"] == 1.0 > wrong.scores["faithfulness"]
    assert right.text_accuracy_na        # meta says no text is required, the caption is extra


def test_swapped_relation_loses_faithfulness(draw):
    prompt = "The {} from the first reference image on the {} and the {} from the second reference image on the {}."
    gt = draw(prompt.format("elephant", "left", "giraffe", "right"), [ELEPHANT, GIRAFFE])
    meta = {"relation": {"left": "elephant", "right": "giraffe"}}
    kept = judge_images("An elephant left of a giraffe.",
                        draw(prompt.format("elephant", "left", "giraffe", "right") + " Navy backdrop.",
                             [ELEPHANT, GIRAFFE], 2), gt, meta)
    swapped = judge_images("An elephant left of a giraffe.",
                           draw(prompt.format("elephant", "right", "giraffe", "left") + " Navy backdrop.",
                                [ELEPHANT, GIRAFFE], 2), gt, meta)
    assert kept.extra["checks"]["relation"] is True
    assert swapped.extra["checks"]["relation"] is False
    assert kept.scores["faithfulness"] > swapped.scores["faithfulness"]


def test_plain_objects_are_matched_by_colour(draw):
    """Coloured squares have almost no keypoints: colour decides identity and position."""
    blue, red, yellow = "emoji-1f7e6", "emoji-1f7e5", "emoji-1f7e8"
    prompt = "The {} square from the first reference image on the {} and the {} square from the second reference image on the {}."
    gt = draw(prompt.format("blue", "left", "red", "right"), [blue, red])
    meta = {"relation": {"left": "blue square", "right": "red square"}}
    kept = judge_images("Blue left, red right.", draw(prompt.format("blue", "left", "red", "right") + " Teal backdrop.",
                                                      [blue, red], 6), gt, meta)
    swapped = judge_images("Blue left, red right.", draw(prompt.format("red", "left", "blue", "right"), [red, blue], 6),
                           gt, meta)
    recoloured = judge_images("Blue left, red right.", draw(prompt.format("yellow", "left", "red", "right"),
                                                            [yellow, red], 6), gt, meta)
    assert kept.extra["checks"]["relation"] is True and kept.scores["faithfulness"] == 1.0
    assert swapped.extra["checks"]["relation"] is False
    assert recoloured.extra["visual"]["similarity"] < kept.extra["visual"]["similarity"]
    assert recoloured.scores["faithfulness"] < kept.scores["faithfulness"]


def test_aesthetics_marks_degraded_images(draw, tmp_path):
    gt = draw("The elephant from the first reference image, centered.", [ELEPHANT])
    clean = draw("The elephant from the first reference image on the left.", [ELEPHANT], 4)
    blurred = tmp_path / "blurred.png"
    Image.open(clean).filter(ImageFilter.GaussianBlur(6)).save(blurred)
    dark = tmp_path / "dark.png"
    Image.open(clean).point(lambda v: v * 0.12).save(dark)
    good = judge_images("An elephant.", clean, gt)
    assert good.scores["aesthetics"] == 1.0
    assert "sharpness" in judge_images("An elephant.", blurred, gt).extra["aesthetics"]["defects"]
    worse = judge_images("An elephant.", dark, gt)
    assert worse.scores["aesthetics"] < 1.0 and "exposure" in worse.extra["aesthetics"]["defects"]


def test_judge_is_repeatable_and_reports_bad_files_as_failures(draw, tmp_path):
    gt = draw("The flag from the first reference image, centered.", [ITALY])
    gen = draw("The flag from the first reference image on the right.", [ITALY], 9)
    judge = OfflineJudge()
    first = asyncio.run(judge.score(request="The flag of Italy.", generated_image=gen, gt_image=gt))
    second = asyncio.run(judge.score(request="The flag of Italy.", generated_image=gen, gt_image=gt))
    assert first.ok and first.to_dict() == second.to_dict()
    assert first.judge == "offline" and first.rubric_version

    missing = asyncio.run(judge.score(request="x", generated_image=tmp_path / "nope.png", gt_image=gt))
    assert not missing.ok and "nope.png" in missing.error and missing.scores == {}
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    bad = asyncio.run(judge.score(request="x", generated_image=broken, gt_image=gt))
    assert not bad.ok and "cannot read" in bad.error


def test_images_over_the_pixel_cap_fail_their_sample(draw, tmp_path):
    gt = draw("The flag from the first reference image, centered.", [ITALY])
    huge = tmp_path / "huge.png"
    Image.new("1", (12_000, 8_000)).save(huge)         # 96 megapixels in a small file
    assert MAX_PIXELS == 64_000_000
    result = asyncio.run(OfflineJudge().score(request="The flag of Italy.", generated_image=huge, gt_image=gt))
    assert not result.ok and "huge.png" in result.error and "too large: 12000x8000" in result.error

    # A JPEG over the cap is decoded at a reduced scale and judged; a PNG over it is refused.
    jpeg = tmp_path / "gt.jpg"
    Image.open(gt).convert("RGB").save(jpeg, quality=95)
    side = max(Image.open(jpeg).size)
    assert max(load_bgr(jpeg, 1024, upscale=False, max_pixels=100_000).shape) == -(-side // 4)
    capped = OfflineJudge(max_pixels=100_000)
    assert asyncio.run(capped.score(request="The flag of Italy.", generated_image=jpeg, gt_image=jpeg)).ok
    refused = asyncio.run(capped.score(request="The flag of Italy.", generated_image=jpeg, gt_image=gt))
    assert not refused.ok and "too large" in refused.error


def test_text_helpers():
    assert normalise_text("Café  Luna - May 12!") == "cafelunamay12"
    assert substring_distance("bread", "freshbreaddaily") == 0
    assert substring_distance("bread", "freshbraeddaily") == 2
    assert substring_distance("abc", "") == 3
    assert text_distance("FRESH BREAD DAILY", ["FRESH BREAD", "DAILY"]) == 0.0    # split over two lines
    assert text_distance("OPEN", []) == 1.0
    assert required_texts('A sign "OPEN" and a “CLOSED” one', None) == ["OPEN", "CLOSED"]
    assert required_texts('A sign "OPEN"', {"required_texts": []}) == []
    assert required_texts("no quotes here", None) == []
