"""Generator backends that talk HTTP (Gemini, OpenAI images, the Qwen-Image-Edit service client) against
loopback fakes that speak each protocol, and `genevolve render` over a results file."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import socket
from pathlib import Path

import pytest
from PIL import Image

from fakes import Reply
from fakes.gemini import GeminiFake, blocked_prompt, error_reply, image_safety
from fakes.openai_images import OpenAIImagesFake, moderation_blocked, url_only
from fakes.qwen_service import PUBLISHED_FIELDS, QwenServiceFake, failed_render
from fakes.qwen_service import error_reply as qwen_error
from genevolve.cli import main as cli_main
from genevolve.generators import make_generator
from genevolve.generators.base import GeneratorError
from genevolve.generators.gemini import NanoBananaProGenerator, nearest_aspect_ratio
from genevolve.generators.imageio import decode_image_b64, output_size
from genevolve.generators.openai_images import OpenAIImagesGenerator
from genevolve.generators.qwen_service import QwenImageEditServiceGenerator
from genevolve.program import Program, Reference

GEMINI_KEY = "AIza-test-SECRET-gemini-0123456789"
OPENAI_KEY = "sk-test-SECRET-openai-0123456789"


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GEMINI_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL",
                 "QWEN_EDIT_URLS", "GENEVOLVE_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("GENEVOLVE_CONFIG", str(tmp_path / "empty.toml"))     # ignore any user config
    monkeypatch.setenv("GENEVOLVE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def refs(tmp_path: Path) -> list[Reference]:
    """Two reference files: a 64x48 opaque PNG and a 30x60 RGBA PNG with a transparent half."""
    first = tmp_path / "first.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(first)
    second = tmp_path / "second.png"
    im = Image.new("RGBA", (30, 60), (0, 120, 0, 255))
    im.paste((0, 0, 0, 0), (0, 0, 30, 30))
    im.save(second)
    return [Reference("IMG_001", "the red card", local_path=str(first)),
            Reference("IMG_002", "the green tag", local_path=str(second))]


def program_with(refs: list[Reference]) -> Program:
    return Program("Put the card from the first reference image on a table", refs)


def b64_image(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


# ----------------------------------------------------------------------------- shared helpers

def test_output_size_follows_the_first_reference():
    assert output_size((800, 600)) == (1024, 768)
    assert output_size((600, 800)) == (768, 1024)
    assert output_size((1000, 1000)) == (1024, 1024)
    assert output_size(None) == (1024, 1024)
    assert output_size((4000, 10)) == (1024, 16)              # never below one multiple
    w, h = output_size((1920, 1080))
    assert (w, h) == (1024, 576) and w % 16 == 0 and h % 16 == 0
    assert output_size((64, 48), long_side=64) == (64, 48)


def test_decode_rejects_bad_base64_and_oversized_images():
    with pytest.raises(GeneratorError, match="not valid base64"):
        decode_image_b64("!!!not base64!!!")
    with pytest.raises(GeneratorError, match="not a readable image"):
        decode_image_b64(base64.b64encode(b"<html>nope</html>").decode())
    buf = io.BytesIO()
    Image.new("RGB", (200, 200)).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    assert decode_image_b64("data:image/png;base64," + data).size == (200, 200)
    with pytest.raises(GeneratorError, match="over the limit"):
        decode_image_b64(data, max_pixels=10_000)
    truncated = base64.b64encode(buf.getvalue()[:60]).decode()
    with pytest.raises(GeneratorError, match="not a readable image"):
        decode_image_b64(truncated)


# ----------------------------------------------------------------------------- Gemini

@pytest.fixture
def gemini():
    with GeminiFake(api_key=GEMINI_KEY) as fake:
        fake.options = {"api_key": GEMINI_KEY, "base_url": fake.url}    # what the CLI passes from the environment
        yield fake


def test_gemini_sends_text_then_inline_jpeg_references(gemini: GeminiFake, refs):
    gen = make_generator("nano-banana-pro", **gemini.options, retries=0)
    result = asyncio.run(gen.render(program_with(refs), seed=7))

    (req,) = gemini.requests
    assert req.path == "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert req.headers["x-goog-api-key"] == GEMINI_KEY
    assert "key" not in req.query                           # the key rides in the header only
    body = req.json()
    parts = body["contents"][0]["parts"]
    assert body["contents"][0]["role"] == "user"
    assert parts[0] == {"text": program_with(refs).gen_prompt}
    sent = [b64_image(p["inline_data"]["data"]) for p in parts[1:]]
    assert [p["inline_data"]["mime_type"] for p in parts[1:]] == ["image/jpeg", "image/jpeg"]
    assert [im.format for im in sent] == ["JPEG", "JPEG"]
    assert [im.size for im in sent] == [(64, 48), (30, 60)]
    # the transparent half of the second reference is flattened onto white, not black
    assert min(sent[1].convert("RGB").getpixel((15, 10))) > 240
    assert body["generationConfig"]["responseModalities"] == ["TEXT", "IMAGE"]
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "4:3"}   # nearest to 64x48

    assert result.image.size == (64, 48)                    # the fake sizes its reply by the ratio
    assert result.image.getpixel((5, 5)) == (30, 144, 255)
    meta = result.metadata
    assert meta["backend"] == "nano-banana-pro" and meta["model"] == "gemini-3-pro-image-preview"
    assert (meta["width"], meta["height"], meta["n_references"], meta["seed"]) == (64, 48, 2, 7)
    assert meta["finish_reason"] == "STOP" and meta["text"] == "Here is the image."
    assert GEMINI_KEY not in json.dumps(meta)


def test_gemini_without_references_is_text_to_image(gemini: GeminiFake):
    gen = NanoBananaProGenerator(**gemini.options, retries=0, model="gemini-2.5-flash-image")
    result = asyncio.run(gen.render(Program("A lighthouse at dusk")))
    body = gemini.requests[0].json()
    assert gemini.requests[0].path.endswith("/gemini-2.5-flash-image:generateContent")
    assert body["contents"][0]["parts"] == [{"text": "A lighthouse at dusk"}]
    assert "imageConfig" not in body["generationConfig"]
    assert result.image.size == (64, 64)


def test_gemini_reads_snake_case_inline_data(refs):
    with GeminiFake(api_key=GEMINI_KEY, snake_case=True) as fake:
        gen = NanoBananaProGenerator(api_key=GEMINI_KEY, base_url=fake.url, retries=0, aspect_ratio="16:9",
                                     image_size="2K")
        result = asyncio.run(gen.render(program_with(refs)))
        config = fake.requests[0].json()["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert result.image.size == (64, 36)


def test_gemini_safety_blocks_and_error_payloads_become_clear_errors(gemini: GeminiFake, refs):
    path = gemini.path_for("gemini-3-pro-image-preview")
    gemini.queue("POST", path, blocked_prompt(), image_safety(),
                 error_reply(400, "Request contains an invalid argument.", "INVALID_ARGUMENT"))
    gen = NanoBananaProGenerator(**gemini.options, retries=0)
    with pytest.raises(GeneratorError, match=r"no image \(prompt blocked: SAFETY"):
        asyncio.run(gen.render(program_with(refs)))
    with pytest.raises(GeneratorError, match=r"finishReason IMAGE_SAFETY; model said: I can't create") as info:
        asyncio.run(gen.render(program_with(refs)))
    with pytest.raises(GeneratorError, match=r"HTTP 400: Request contains an invalid argument") as info:
        asyncio.run(gen.render(program_with(refs)))
    assert GEMINI_KEY not in str(info.value)


def test_gemini_wrong_key_and_retry_after_429(gemini: GeminiFake, refs):
    path = gemini.path_for("gemini-3-pro-image-preview")
    gemini.queue("POST", path, Reply.json({"error": {"code": 429, "message": "Resource exhausted",
                                                     "status": "RESOURCE_EXHAUSTED"}}, 429, {"Retry-After": "0"}))
    gen = NanoBananaProGenerator(**gemini.options, retries=2, backoff=0.01)
    result = asyncio.run(gen.render(program_with(refs)))
    assert result.image.size == (64, 48) and len(gemini.requests) == 2

    wrong = NanoBananaProGenerator(**{**gemini.options, "api_key": "AIza-wrong-key"}, retries=0)
    with pytest.raises(GeneratorError, match="API key not valid") as info:
        asyncio.run(wrong.render(program_with(refs)))
    assert "AIza-wrong-key" not in str(info.value)


def test_gemini_needs_a_key():
    with pytest.raises(ValueError, match="GOOGLE_API_KEY or GEMINI_API_KEY"):
        NanoBananaProGenerator()


def test_nearest_aspect_ratio():
    assert nearest_aspect_ratio((1920, 1080)) == "16:9"
    assert nearest_aspect_ratio((1000, 1000)) == "1:1"
    assert nearest_aspect_ratio((600, 900)) == "2:3"
    assert nearest_aspect_ratio((3000, 1200)) == "21:9"


# ----------------------------------------------------------------------------- OpenAI images

@pytest.fixture
def openai_images():
    with OpenAIImagesFake(api_key=OPENAI_KEY) as fake:
        fake.options = {"api_key": OPENAI_KEY, "base_url": fake.url + "/v1"}
        yield fake


def test_openai_edits_upload_every_reference_as_multipart(openai_images: OpenAIImagesFake, refs):
    gen = make_generator("openai-images", **openai_images.options, size="1536x1024", quality="high", retries=0)
    result = asyncio.run(gen.render(program_with(refs)))

    (req,) = openai_images.requests
    assert req.path == "/v1/images/edits"
    assert req.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    (form,) = openai_images.forms
    assert form["fields"] == {"model": "gpt-image-1", "prompt": program_with(refs).gen_prompt, "n": "1",
                              "size": "1536x1024", "quality": "high"}
    files = form["files"]
    assert [f["name"] for f in files] == ["image[]", "image[]"]
    assert [f["content_type"] for f in files] == ["image/png", "image/png"]
    assert [Image.open(io.BytesIO(f["content"])).size for f in files] == [(64, 48), (30, 60)]
    assert Image.open(io.BytesIO(files[0]["content"])).convert("RGB").getpixel((3, 3)) == (200, 30, 30)

    assert result.image.size == (96, 64)
    meta = result.metadata
    assert meta["endpoint"] == "edits" and meta["n_references"] == 2 and (meta["width"], meta["height"]) == (96, 64)
    assert meta["usage"]["total_tokens"] == 322
    assert OPENAI_KEY not in json.dumps(meta)


def test_openai_without_references_uses_generations(openai_images: OpenAIImagesFake):
    gen = OpenAIImagesGenerator(**openai_images.options, retries=0)
    result = asyncio.run(gen.render(Program("A bowl of ramen, top view")))
    (req,) = openai_images.requests
    assert req.path == "/v1/images/generations"
    assert req.json() == {"model": "gpt-image-1", "prompt": "A bowl of ramen, top view", "n": 1, "size": "auto"}
    assert result.image.size == (64, 64) and result.metadata["endpoint"] == "generations"


def test_openai_refuses_url_replies_and_reports_moderation(openai_images: OpenAIImagesFake, refs):
    openai_images.queue("POST", "/v1/images/edits", url_only(openai_images.url + "/files/out.png"),
                        moderation_blocked())
    gen = OpenAIImagesGenerator(**openai_images.options, retries=0)
    with pytest.raises(GeneratorError, match="gives a URL instead of b64_json"):
        asyncio.run(gen.render(program_with(refs)))
    assert openai_images.requests_to("/files/out.png") == []          # never fetched
    with pytest.raises(GeneratorError, match="HTTP 400: Your request was rejected as a result of our safety"):
        asyncio.run(gen.render(program_with(refs)))


def test_openai_server_errors_are_retried_then_reported(openai_images: OpenAIImagesFake, refs):
    openai_images.queue("POST", "/v1/images/edits", *[Reply.json({"error": {"message": "overloaded"}}, 500)] * 2)
    with pytest.raises(GeneratorError, match=r"failed after 2 attempts: HTTP 500"):
        gen = OpenAIImagesGenerator(**openai_images.options, retries=1, backoff=0.01)
        asyncio.run(gen.render(program_with(refs)))
    assert len(openai_images.requests) == 2


def test_openai_reply_over_the_pixel_limit_is_rejected(openai_images: OpenAIImagesFake, refs):
    gen = OpenAIImagesGenerator(**openai_images.options, retries=0, max_image_pixels=1000)
    with pytest.raises(GeneratorError, match="over the limit of 1000"):
        asyncio.run(gen.render(program_with(refs)))


def test_openai_error_that_echoes_the_key_is_redacted(openai_images: OpenAIImagesFake, refs):
    openai_images.queue("POST", "/v1/images/edits", Reply.json(
        {"error": {"message": f"Key {OPENAI_KEY} has no access to gpt-image-1"}}, 403))
    with pytest.raises(GeneratorError, match=r"HTTP 403: Key \[key\] has no access") as info:
        asyncio.run(OpenAIImagesGenerator(**openai_images.options, retries=0).render(program_with(refs)))
    assert OPENAI_KEY not in str(info.value)


def test_openai_needs_a_key():
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIImagesGenerator()


# ----------------------------------------------------------------------------- Qwen service client

def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def published_body(**changes) -> dict:
    """A request as the released client sends it, for probing the fake service directly."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(buf, format="PNG")
    body = {"prompt": "The first reference image at dusk",
            "image_urls": ["data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()],
            "seed": 0, "width": 64, "height": 48, "num_inference_steps": 40, "true_cfg_scale": 4.0,
            "guidance_scale": 1.0, "negative_prompt": " ", "num_images_per_prompt": 1}
    return {**body, **changes}


@pytest.mark.parametrize("field", PUBLISHED_FIELDS)
def test_the_fake_service_rejects_a_request_missing_any_published_field(field):
    import httpx

    with QwenServiceFake() as fake:
        good = httpx.post(fake.url + "/generate", json=published_body())
        assert good.status_code == 200 and good.json()["success"] is True
        body = published_body()
        del body[field]
        r = httpx.post(fake.url + "/generate", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field]
        # our older request shape is not the published one
        old = {"prompt": "x", "images": [published_body()["image_urls"][0].split(",", 1)[1]], "seed": 0}
        assert httpx.post(fake.url + "/generate", json=old).status_code == 422


def test_service_client_sends_the_published_request_round_robin(refs):
    with QwenServiceFake() as a, QwenServiceFake() as b:
        gen = make_generator("qwen-image-edit-service", urls=f"{a.url}, {b.url}/", slots_per_server=2)
        assert gen.urls == [a.url, b.url] and gen.max_concurrency == 4

        async def four():
            try:
                return await asyncio.gather(*(gen.render(program_with(refs), seed=s) for s in range(4)))
            finally:
                await gen.aclose()

        results = asyncio.run(four())
        urls = {a.url, b.url}
        assert len(a.requests) == 2 and len(b.requests) == 2
        body = a.requests[0].json()
        assert set(body) == set(PUBLISHED_FIELDS)
        # the paper's settings; 1024 on the long side at the first reference's 4:3 aspect
        assert {k: body[k] for k in ("num_inference_steps", "true_cfg_scale", "guidance_scale", "negative_prompt",
                                     "num_images_per_prompt", "width", "height")} == {
            "num_inference_steps": 40, "true_cfg_scale": 4.0, "guidance_scale": 1.0, "negative_prompt": " ",
            "num_images_per_prompt": 1, "width": 1024, "height": 768}
        assert body["prompt"] == program_with(refs).gen_prompt
        assert all(u.startswith("data:image/png;base64,") for u in body["image_urls"])
        sent = [b64_image(u.split(",", 1)[1]) for u in body["image_urls"]]
        assert [(im.format, im.size) for im in sent] == [("PNG", (64, 48)), ("PNG", (30, 60))]
        assert sent[0].convert("RGB").getpixel((0, 0)) == (200, 30, 30)       # lossless upload
        assert a.requests[0].headers.get("x-request-id")
    assert [r.image.size for r in results] == [(1024, 768)] * 4
    assert sorted(r.metadata["seed"] for r in results) == [0, 1, 2, 3]
    assert {r.metadata["server"] for r in results} == urls
    assert results[0].metadata["backend"] == "qwen-image-edit-service"
    assert results[0].metadata["requested_size"] == [1024, 768] and "success" not in results[0].metadata
    assert "request_s" in results[0].metadata["timings"]


def test_service_client_size_and_settings_are_options(refs):
    tall = [refs[1], refs[0]]                                   # a 30x60 first reference
    with QwenServiceFake() as fake:
        gen = QwenImageEditServiceGenerator(urls=[fake.url], long_side=64, steps=8, true_cfg_scale=2.5,
                                            guidance_scale=3.0, negative_prompt="blurry", seed=7)
        result = asyncio.run(gen.render(program_with(tall)))
        body = fake.requests[0].json()
    assert (body["width"], body["height"]) == (32, 64) and result.image.size == (32, 64)
    assert (body["num_inference_steps"], body["true_cfg_scale"], body["guidance_scale"]) == (8, 2.5, 3.0)
    assert (body["negative_prompt"], body["seed"]) == ("blurry", 7)
    with pytest.raises(ValueError, match="long_side"):
        QwenImageEditServiceGenerator(urls="http://x", long_side=8)


def test_service_client_reads_the_image_base64_field_and_tolerates_a_reply_without_success(refs):
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(png, format="PNG")
    encoded = base64.b64encode(png.getvalue()).decode()
    with QwenServiceFake() as fake:
        gen = QwenImageEditServiceGenerator(urls=fake.url, retries=0)
        fake.queue("POST", "/generate", Reply.json({"success": True, "image_base64": encoded}),
                   Reply.json({"image": encoded}))              # our service before it said "success"
        assert asyncio.run(gen.render(program_with(refs))).image.size == (16, 16)
        assert asyncio.run(gen.render(program_with(refs))).image.size == (16, 16)
        fake.queue("POST", "/generate", Reply.json({"success": True}))
        with pytest.raises(GeneratorError, match="no 'image' field"):
            asyncio.run(gen.render(program_with(refs)))


def test_service_client_fails_over_to_a_live_server(refs):
    dead = closed_port_url()
    with QwenServiceFake() as live:
        gen = QwenImageEditServiceGenerator(urls=[dead, live.url], retries=1, backoff=0.01, long_side=64)
        results = [asyncio.run(gen.render(program_with(refs))) for _ in range(2)]
        assert [r.metadata["server"] for r in results] == [live.url, live.url]
    # the render that tried the dead server first says so
    failed_over = [r.metadata.get("failed_over") for r in results]
    assert sum(1 for f in failed_over if f) == 1
    assert "ConnectError" in next(f for f in failed_over if f)[0]


def test_a_failed_render_reply_moves_on_to_the_next_server(refs):
    with QwenServiceFake() as a, QwenServiceFake() as b:
        gen = QwenImageEditServiceGenerator(urls=[a.url, b.url], retries=0, long_side=64)
        a.queue("POST", "/generate", failed_render("CUDA out of memory"))
        result = asyncio.run(gen.render(program_with(refs)))        # a fails, b serves
        assert result.metadata["server"] == b.url
        assert "service reported a failed render: CUDA out of memory" in result.metadata["failed_over"][0]
        a.queue("POST", "/generate", failed_render("CUDA out of memory"))
        b.queue("POST", "/generate", failed_render("the pipeline is not loaded"))
        with pytest.raises(GeneratorError, match=r"every server failed: .*not loaded.* \| .*CUDA out of memory"):
            asyncio.run(gen.render(program_with(refs)))             # b first this time (round-robin), then a
        assert (len(a.requests), len(b.requests)) == (2, 2)         # a failed render is not retried in place


def test_service_client_reports_the_servers_message(refs):
    with QwenServiceFake() as fake:
        gen = QwenImageEditServiceGenerator(urls=fake.url, retries=2, backoff=0.01, long_side=64)
        fake.queue("POST", "/generate", *[qwen_error(500, "CUDA out of memory. Tried to allocate 2.00 GiB")] * 3)
        with pytest.raises(GeneratorError, match=r"after 3 attempts: CUDA out of memory"):
            asyncio.run(gen.render(program_with(refs)))
        assert len(fake.requests) == 3

        fake.queue("POST", "/generate", qwen_error(503, "the render queue is full", {"Retry-After": "0"}))
        assert asyncio.run(gen.render(program_with(refs))).image.size == (64, 48)    # retried, then served

        fake.queue("POST", "/generate", qwen_error(422, "invalid request: image_urls.0: not a readable image"))
        before = len(fake.requests)
        with pytest.raises(GeneratorError, match=r"HTTP 422: invalid request: image_urls.0"):
            asyncio.run(gen.render(program_with(refs)))
        assert len(fake.requests) == before + 1                                      # a 4xx is not retried

        fake.queue("POST", "/generate", Reply.json({"detail": [{"loc": ["body", "width"], "msg": "Field required",
                                                                "type": "missing"}]}, status=422))
        with pytest.raises(GeneratorError, match=r"HTTP 422: width: Field required"):   # FastAPI's own shape
            asyncio.run(gen.render(program_with(refs)))

        fake.queue("POST", "/generate", Reply(200, b'{"success": true, "image": "%%%"}',
                                              {"Content-Type": "application/json"}))
        with pytest.raises(GeneratorError, match="not valid base64"):
            asyncio.run(gen.render(program_with(refs)))


def test_service_client_timeout_and_zero_references(refs):
    with QwenServiceFake() as fake:
        fake.queue("POST", "/generate", Reply(200, b"{}", {"Content-Type": "application/json"}, delay=1.5))
        gen = QwenImageEditServiceGenerator(urls=fake.url, timeout=0.3, retries=0)
        with pytest.raises(GeneratorError, match="ReadTimeout"):
            asyncio.run(gen.render(program_with(refs)))
        n = len(fake.requests)
        with pytest.raises(GeneratorError, match="at least one reference"):
            asyncio.run(gen.render(Program("A cat")))
        assert len(fake.requests) == n                         # refused before any request


def test_service_client_needs_urls_and_reads_no_environment(monkeypatch):
    monkeypatch.setenv("QWEN_EDIT_URLS", "http://127.0.0.1:9")      # the CLI's business, not the library's
    with pytest.raises(ValueError, match="QWEN_EDIT_URLS"):
        QwenImageEditServiceGenerator()
    with pytest.raises(ValueError, match="not an http"):
        QwenImageEditServiceGenerator(urls="ftp://x")


# ----------------------------------------------------------------------------- genevolve render

def write_results(path: Path, refs: list[Reference], tmp_path: Path) -> list[dict]:
    rows = [
        {"id": "a/1", "prompt": "card on table", "gen_prompt": "The card from the first reference image on a table",
         "reference_images": [refs[0].to_dict()], "termination": "answer", "category": "objects"},
        {"id": "b2", "prompt": "two things", "gen_prompt": "The first reference image beside the second one",
         "reference_images": [refs[0].to_dict(), refs[1].to_dict()], "termination": "answer"},
        {"id": "c3", "prompt": "failed run", "gen_prompt": "", "reference_images": [], "termination": "error",
         "error": "policy server down"},
        {"id": "d4", "prompt": "missing file", "gen_prompt": "The first reference image, framed",
         "reference_images": [{"img_id": "IMG_009", "local_path": str(tmp_path / "gone.jpg")}]},
    ]
    path.write_text(json.dumps(rows))
    return rows


def test_render_command_renders_resumes_and_keeps_input_fields(tmp_path: Path, refs, capsys):
    results = tmp_path / "run" / "results.json"
    results.parent.mkdir()
    write_results(results, refs, tmp_path)
    out = tmp_path / "rendered"
    with QwenServiceFake() as fake:
        argv = ["render", "--input", str(results), "--output-dir", str(out), "--backend", "qwen-image-edit-service",
                "--backend-opt", f"urls={fake.url}", "--backend-opt", "retries=0", "--backend-opt", "long_side=64",
                "--quiet"]
        assert cli_main(argv) == 1                          # one row's reference file is missing
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary | {"seconds": 0} == {
            "output_dir": str(out), "backend": "qwen-image-edit-service", "total": 4, "rendered_now": 4,
            "already_done": 0, "ok": 2, "errors": 1, "skipped_no_program": 1, "parallel": 1, "seconds": 0}
        assert len(fake.requests) == 2

        rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
        assert list(rows) == ["a/1", "b2", "c3", "d4"]                     # input order
        assert rows["a/1"]["image_status"] == "ok" and rows["a/1"]["category"] == "objects"
        a_path = Path(rows["a/1"]["output_path"])
        assert a_path.parent == out / "images" and a_path.name.startswith("a_1-") and a_path.suffix == ".png"
        assert Image.open(a_path).size == (64, 48)
        assert rows["b2"]["output_path"] == str(out / "images" / "b2.png")
        assert rows["b2"]["render"]["n_references"] == 2
        assert rows["c3"]["image_status"] == "skipped: no program" and rows["c3"]["output_path"] is None
        assert rows["d4"]["image_status"].startswith("error: reference 1 (IMG_009): file not found")
        assert len((out / "results.jsonl").read_text().splitlines()) == 4
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

        # Rerun after the missing file appears: only d4 renders again.
        Image.new("RGB", (32, 64), (0, 0, 200)).save(tmp_path / "gone.jpg", format="JPEG")
        assert cli_main(argv) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (summary["rendered_now"], summary["already_done"], summary["ok"], summary["errors"]) == (1, 3, 3, 0)
        assert len(fake.requests) == 3
        rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
        assert Image.open(rows["d4"]["output_path"]).size == (32, 64)
        assert len((out / "results.jsonl").read_text().splitlines()) == 4    # one line per id


def test_render_command_jsonl_relative_paths_and_parallel_limit(tmp_path: Path, refs, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "cache").mkdir(parents=True)
    Image.open(refs[0].local_path).save(run_dir / "cache" / "IMG_001.png")
    rows = [{"id": f"r{i}", "gen_prompt": "The first reference image at night",
             "reference_images": [{"img_id": "IMG_001", "local_path": "cache/IMG_001.png"}]} for i in range(6)]
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    out = tmp_path / "out"
    together = threading.Barrier(2)         # a render on one service waits for one on the other
    with QwenServiceFake(rendezvous=together) as a, QwenServiceFake(rendezvous=together) as b:
        code = cli_main(["render", "--input", str(run_dir / "results.jsonl"), "--output-dir", str(out),
                         "--backend", "qwen-image-edit-service", "--backend-opt", f"urls={a.url},{b.url}",
                         "--backend-opt", "long_side=64",
                         "--parallel", "16", "--quiet"])
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["parallel"] == 2                     # capped at 2 servers x 1 slot
        assert code == 1 and summary["ok"] == 6 and summary["errors"] == 1     # the broken line
        assert len(a.requests) == 3 and len(b.requests) == 3
        assert a.max_in_flight == 1 and b.max_in_flight == 1                   # one slot per server,
        # and both busy at once: every render met one on the other service at the rendezvous
    records = json.loads((out / "results.json").read_text())
    assert records[0]["id"] == "line_7" and "not valid JSON" in records[0]["image_status"]


def test_render_command_offline_backend_and_bad_options(tmp_path: Path, refs, capsys):
    results = tmp_path / "results.json"
    write_results(results, refs, tmp_path)
    out = tmp_path / "offline"
    code = cli_main(["render", "--input", str(results), "--output-dir", str(out), "--backend", "offline",
                     "--backend-opt", "long_side=128", "--quiet"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and summary["ok"] == 2
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
    assert Image.open(rows["b2"]["output_path"]).size == (128, 96)

    assert cli_main(["render", "--input", str(results), "--output-dir", str(out), "--backend",
                     "qwen-image-edit-service"]) == 2
    assert "QWEN_EDIT_URLS" in capsys.readouterr().err
    assert cli_main(["render", "--input", str(tmp_path / "nope.json"), "--output-dir", str(out)]) == 2
    assert "cannot read the input file" in capsys.readouterr().err


def test_agent_then_render_with_serper_and_the_qwen_service(tmp_path: Path, capsys, monkeypatch):
    """The issue's acceptance path: `genevolve run --search serper --image-search serper` against the
    Serper and image-host fakes, then `genevolve render --backend qwen-image-edit-service`."""
    from fakes.image_host import GOOD_SIZE, ImageHostFake
    from fakes.openai_chat import answer, tool_call
    from fakes.serper import SerperFake

    script = [tool_call("search", {"queries": ["Sydney Opera House architect"]}),
              tool_call("image_search", {"query": "Sydney Opera House"}),
              answer("A watercolour of the building in the first reference image at sunrise", ["IMG_001"])]
    (tmp_path / "script.json").write_text(json.dumps(script))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "opera", "prompt": "A watercolour of the Sydney Opera House at sunrise",
                                   "category": "architecture"}) + "\n")
    with ImageHostFake() as host, SerperFake(api_key="serper-key", image_urls=[host.url + "/good.jpg"]) as serper, \
            QwenServiceFake() as qwen:
        monkeypatch.setenv("SERPER_API_KEY", "serper-key")
        monkeypatch.setenv("SERPER_BASE_URL", serper.url)
        assert cli_main(["run", "--input", str(prompts), "--output-dir", str(tmp_path / "agent"), "--policy",
                         "scripted", "--script", str(tmp_path / "script.json"), "--search", "serper",
                         "--image-search", "serper", "--allow-download-host", host.host_port, "--quiet"]) == 0
        capsys.readouterr()
        monkeypatch.setenv("QWEN_EDIT_URLS", qwen.url)
        assert cli_main(["render", "--input", str(tmp_path / "agent" / "results.json"), "--output-dir",
                         str(tmp_path / "render"), "--backend", "qwen-image-edit-service", "--quiet"]) == 0
        sent = b64_image(qwen.requests[0].json()["image_urls"][0].split(",", 1)[1])
        image_url = host.url + "/good.jpg"
    (row,) = json.loads((tmp_path / "render" / "results.json").read_text())
    assert row["id"] == "opera" and row["category"] == "architecture" and row["termination"] == "answer"
    assert row["reference_images"][0]["url"] == image_url
    assert row["image_status"] == "ok"
    assert Image.open(row["output_path"]).size == (1024, 768)               # 320x240 reference, long side 1024
    assert sent.size == GOOD_SIZE                                            # the downloaded picture was sent
