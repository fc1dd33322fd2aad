"""The caps of genevolve/limits.py at each edge where outside input comes in: each is a clear error
for that item, naming the field and the cap, or a cut that the record shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fakes.openai_chat import FakeChatServer, answer
from genevolve import limits
from genevolve.answer import resolve_answer
from genevolve.program import Reference

OVER_PIXELS = (9_000, 8_000)            # 72 megapixels: over the 64-megapixel cap, under Pillow's own guard


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    monkeypatch.setenv("GENEVOLVE_CONFIG", str(cfg))
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "GENEVOLVE_BACKEND", "GENEVOLVE_POLICY", "GENEVOLVE_SEARCH",
                "GENEVOLVE_IMAGE_SEARCH"):
        monkeypatch.delenv(var, raising=False)


def cli(argv: list[str]) -> int:
    from genevolve.cli import main
    return main(argv)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def found(n: int = 3) -> dict[str, Reference]:
    return {f"IMG_{i:03d}": Reference(img_id=f"IMG_{i:03d}", local_path=f"/nowhere/{i}.png", title=f"image {i}")
            for i in range(1, n + 1)}


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """72 megapixels in a few kilobytes (one bit per pixel, all black): a decompression bomb."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", OVER_PIXELS).save(path)
    return path


# ------------------------------------------------------------------ requests

def test_an_oversized_request_is_that_rows_error_and_is_never_sent(tmp_path):
    huge = "draw " * (limits.MAX_REQUEST_CHARS // 5 + 1)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "big", "question": huge}, {"id": "ok", "prompt": "a lighthouse"}])
    out = tmp_path / "out"
    with FakeChatServer([answer("a lighthouse at dusk", [])]) as server:
        assert cli(["run", "--input", str(inp), "--base-url", server.base_url, "--output-dir", str(out),
                    "--quiet"]) == 0
        sent = [b["messages"][1]["content"] for b in server.requests]
    assert sent == ["a lighthouse"]
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["big"]["termination"] == "error"
    assert "field 'question'" in rows["big"]["error"] and f"{limits.MAX_REQUEST_CHARS:,}" in rows["big"]["error"]
    assert rows["ok"]["termination"] == "answer"


def test_generate_cuts_a_long_request_at_the_same_cap():
    from genevolve.cli import generate
    assert generate.MAX_REQUEST_CHARS is limits.MAX_REQUEST_CHARS


# ------------------------------------------------------------------ answers

def test_a_huge_gen_prompt_is_cut_and_the_cut_recorded():
    resolved = resolve_answer({"gen_prompt": "a red apple " * 100_000, "reference_images": []}, found())
    assert len(resolved.written.gen_prompt) <= limits.MAX_GEN_PROMPT_CHARS
    assert len(resolved.program.gen_prompt) <= limits.MAX_GEN_PROMPT_CHARS
    cut = [i for i in resolved.issues if i.kind == "gen_prompt_truncated"]
    assert len(cut) == 1 and "1,199,999 characters" in cut[0].detail   # stripped first


def test_ten_thousand_references_make_a_bounded_number_of_issues():
    refs = [{"img_id": f"IMG_{9000 + i}", "note": "x"} for i in range(10_000)] + [{"img_id": "IMG_001"}]
    resolved = resolve_answer({"gen_prompt": "the first reference image", "reference_images": refs}, found())
    assert len(resolved.issues) <= limits.MAX_ANSWER_REFERENCE_ENTRIES + 3
    cut = [i for i in resolved.issues if i.kind == "reference_list_cut"]
    assert len(cut) == 1 and "10,001 entries" in cut[0].detail
    good = [{"img_id": "IMG_002"}, {"img_id": "IMG_001"}] + [{"img_id": "IMG_001"}] * 50
    assert [r.img_id for r in resolve_answer({"gen_prompt": "x", "reference_images": good}, found()).written.references] \
        == ["IMG_001", "IMG_002"]


def test_a_policy_reply_with_a_huge_answer_ends_in_a_bounded_record(tmp_path):
    big_prompt = "the first reference image " * 20_000
    refs = [{"img_id": f"IMG_{i:03d}", "note": "n"} for i in range(1, 5_000)]

    reply = "<answer>" + json.dumps({"gen_prompt": big_prompt, "reference_images": refs}) + "</answer>"
    out = tmp_path / "out"
    with FakeChatServer([reply]) as server:
        assert cli(["run", "--prompt", "the flag of Australia", "--base-url", server.base_url, "--output-dir",
                    str(out), "--answer-retries", "0", "--quiet"]) == 0
    row = json.loads((out / "results.json").read_text())[0]
    assert row["termination"] == "answer"
    assert len(row["gen_prompt"]) <= limits.MAX_GEN_PROMPT_CHARS
    kinds = [i["kind"] for i in row["program_issues"]]
    assert "gen_prompt_truncated" in kinds and "reference_list_cut" in kinds
    assert len(kinds) <= limits.MAX_ANSWER_REFERENCE_ENTRIES + 5


# ------------------------------------------------------------------ the render stage

def test_render_refuses_rows_over_the_program_caps_without_decoding_them(tmp_path):
    Image.new("RGB", (32, 24), (200, 30, 30)).save(tmp_path / "ref.png")
    ok_ref = {"img_id": "IMG_001", "local_path": str(tmp_path / "ref.png")}
    many = [{"img_id": f"IMG_{i:03d}", "local_path": str(tmp_path / f"missing{i}.png")} for i in range(1_000)]
    results = write_jsonl(tmp_path / "results.jsonl", [
        {"id": "many_refs", "gen_prompt": "the first reference image", "reference_images": many},
        {"id": "long_prompt", "gen_prompt": "a lighthouse " * 1_000, "reference_images": [ok_ref]},
        {"id": "fine", "gen_prompt": "the first reference image on a table", "reference_images": [ok_ref]},
    ])
    out = tmp_path / "render"
    assert cli(["render", "--input", str(results), "--output-dir", str(out), "--quiet"]) == 1
    records = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
    assert "1,000 entries" in records["many_refs"]["error"] and "MAX_RENDER_REFERENCES" in records["many_refs"]["error"]
    assert "missing" not in records["many_refs"]["error"]          # no reference file was opened
    assert "gen_prompt has 13,000 characters" in records["long_prompt"]["error"]
    assert records["fine"]["success"] is True


# ------------------------------------------------------------------ image pixels, at every reader

def test_generator_reader_refuses_an_image_over_the_pixel_cap(huge_png):
    from genevolve.generators.base import GeneratorError
    from genevolve.generators.imageio import load_image_file

    with pytest.raises(GeneratorError, match="9000x8000 pixels is over the limit"):
        load_image_file(huge_png, label="reference 1")


def test_judge_reader_refuses_an_image_over_the_pixel_cap(huge_png, tmp_path):
    from genevolve.judges.base import JudgeError
    from genevolve.judges.vlm_client import image_data_url

    with pytest.raises(JudgeError, match="9000x8000 pixels is over the limit of 64,000,000"):
        image_data_url(huge_png)
    Image.new("RGB", (300, 200), (10, 200, 10)).save(tmp_path / "small.png")
    assert image_data_url(tmp_path / "small.png").startswith("data:image/jpeg;base64,")


def test_judge_reader_takes_a_large_jpeg_at_a_reduced_scale(tmp_path):
    from genevolve.judges.vlm_client import image_data_url

    path = tmp_path / "big.jpg"
    Image.new("L", OVER_PIXELS, 128).save(path, quality=50)
    assert image_data_url(path, max_side=1024).startswith("data:image/jpeg;base64,")


def test_viewer_shows_a_placeholder_for_an_image_over_the_pixel_cap(huge_png, tmp_path):
    from genevolve.view.images import ImageProblem, full_image, make_thumbnail

    with pytest.raises(ImageProblem, match="too large to show"):
        make_thumbnail(huge_png)
    with pytest.raises(ImageProblem, match="too large to show"):
        full_image(huge_png)
    Image.new("RGB", (640, 480), (10, 20, 200)).save(tmp_path / "fine.png")
    assert make_thumbnail(tmp_path / "fine.png")[:4] == b"RIFF"


def test_every_reader_uses_the_one_cap():
    from genevolve.generators import imageio, offline
    from genevolve.judges import offline as offline_judge
    from genevolve.tools import image_library_user

    assert imageio.MAX_IMAGE_PIXELS is limits.MAX_IMAGE_PIXELS
    assert image_library_user.DEFAULT_MAX_PIXELS is limits.MAX_IMAGE_PIXELS
    assert offline_judge.MAX_PIXELS is limits.MAX_IMAGE_PIXELS
    assert offline.OfflineRenderer().max_reference_pixels == limits.MAX_IMAGE_PIXELS
