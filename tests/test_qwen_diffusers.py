"""Qwen-Image-Edit end to end on the CPU with a tiny randomly initialised QwenImageEditPlusPipeline
(tests/fakes/qwen_tiny.py: the real diffusers/transformers classes with tiny configs, built offline):
the local generator, the FastAPI service (in a thread and as `genevolve serve` in a subprocess, loading
a saved checkpoint folder) and the HTTP client, which must all give the same pixels."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("fastapi")

from fakes.qwen_tiny import build_tiny_pipeline, save_tiny_pipeline  # noqa: E402
from genevolve.generators.base import GeneratorError  # noqa: E402
from genevolve.generators.qwen_image_edit import QwenImageEditGenerator  # noqa: E402
from genevolve.generators.qwen_service import QwenImageEditServiceGenerator  # noqa: E402
from genevolve.program import Program, Reference  # noqa: E402
from genevolve.serve.qwen_app import ServiceLimits, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Turn the first reference image into a watercolour postcard"
TINY = dict(steps=2, long_side=64)          # 64x48 output from a 4:3 reference, 2 denoising steps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_pipe():
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    path = tmp_path_factory.mktemp("refs") / "ref.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
    return Reference("IMG_001", "the scene", local_path=str(path))


@pytest.fixture(scope="module")
def direct(tiny_pipe, reference):
    """The reference render: the local generator over the in-memory tiny pipeline."""
    gen = QwenImageEditGenerator(pipeline=tiny_pipe, **TINY)
    return asyncio.run(gen.render(Program(PROMPT, [reference])))


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


@contextmanager
def serve_in_thread(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def b64_png(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ----------------------------------------------------------------------------- local generator

def test_local_generator_renders_with_the_paper_settings(direct, reference):
    assert direct.image.size == (64, 48)                      # long side 64, aspect of the 120x90 reference
    assert pixels(direct.image).std() > 1                     # a real decoded picture, not a flat fill
    meta = direct.metadata
    assert meta["backend"] == "qwen-image-edit" and meta["model"] == "Qwen/Qwen-Image-Edit-2511"
    assert (meta["seed"], meta["steps"], meta["true_cfg_scale"], meta["guidance_scale"]) == (0, 2, 4.0, 1.0)
    assert meta["negative_prompt"] == " " and meta["n_references"] == 1
    assert (meta["width"], meta["height"], meta["requested_size"]) == (64, 48, [64, 48])
    assert meta["timings"]["render_s"] > 0 and meta["device"] == "cpu"


def test_zero_references_is_an_error_unless_blank_canvas(tiny_pipe):
    gen = QwenImageEditGenerator(pipeline=tiny_pipe, **TINY)
    with pytest.raises(GeneratorError, match="needs at least one reference image"):
        asyncio.run(gen.render(Program("A red bicycle")))
    blank = QwenImageEditGenerator(pipeline=tiny_pipe, blank_canvas=True, steps=1, long_side=48)
    result = asyncio.run(blank.render(Program("A red bicycle")))
    assert result.image.size == (48, 48)
    assert result.metadata["text_only_fallback"] == "blank_canvas" and result.metadata["n_references"] == 0


def test_bad_options_and_missing_reference_files(tiny_pipe, tmp_path):
    with pytest.raises(ValueError, match="cpu_offload"):
        QwenImageEditGenerator(cpu_offload="gpu")
    with pytest.raises(ValueError, match="dtype"):
        QwenImageEditGenerator(dtype="int8")
    gen = QwenImageEditGenerator(pipeline=tiny_pipe, **TINY)
    missing = Reference("IMG_004", local_path=str(tmp_path / "nope.jpg"))
    with pytest.raises(GeneratorError, match=r"reference 1 \(IMG_004\): file not found"):
        asyncio.run(gen.render(Program(PROMPT, [missing])))
    offload = QwenImageEditGenerator(model=str(tmp_path), device="cpu", cpu_offload="model")
    with pytest.raises(GeneratorError, match="needs an accelerator"):
        offload.load()


# ----------------------------------------------------------------------------- the service in a thread

def test_service_validates_requests_with_field_names(tiny_pipe):
    gen = QwenImageEditGenerator(pipeline=tiny_pipe, **TINY)
    limits = ServiceLimits(max_images=2, max_image_pixels=10_000, max_body_bytes=200_000)
    good = b64_png(Image.new("RGB", (40, 30), (9, 9, 9)))
    cases = [
        ({}, {"prompt", "images"}),
        ({"prompt": "   ", "images": [good]}, {"prompt"}),
        ({"prompt": "x", "images": []}, {"images"}),
        ({"prompt": "x", "images": ["%%%"]}, {"images.0"}),
        ({"prompt": "x", "images": [good, base64.b64encode(b"<html></html>").decode()]}, {"images.1"}),
        ({"prompt": "x", "images": [good] * 3}, {"images"}),
        ({"prompt": "x", "images": [b64_png(Image.new("RGB", (200, 200)))]}, {"images.0"}),
        ({"prompt": "x", "images": [good], "num_inference_steps": 0}, {"num_inference_steps"}),
        ({"prompt": "x", "images": [good], "height": 50, "width": 64}, {"height"}),
        ({"prompt": "x", "images": [good], "height": 64}, {"body"}),
        ({"prompt": "x", "images": [good], "steps": 3}, {"steps"}),
        # the released client's shape: errors name its fields
        ({"prompt": "x", "image_urls": ["https://example.org/a.png"]}, {"image_urls.0"}),
        ({"prompt": "x", "image_urls": [good, "data:image/png,rawbytes"]}, {"image_urls.1"}),
        ({"prompt": "x", "image_urls": []}, {"image_urls"}),
        ({"prompt": "x", "image_urls": [good], "images": [good]}, {"body"}),
        ({"prompt": "x", "image_urls": [good], "num_images_per_prompt": 2}, {"num_images_per_prompt"}),
    ]
    with serve_in_thread(create_app(gen, limits)) as url, httpx.Client(base_url=url, timeout=30) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["queue_depth"] == 0 and health["queue_size"] == 8
        for body, fields in cases:
            r = client.post("/generate", json=body)
            assert r.status_code == 422, body
            err = r.json()["error"]
            assert {f["field"] for f in err["fields"]} == fields, (body, err)
            assert err["message"].startswith("invalid request: ")
            assert "%%%" not in err["message"] and good not in err["message"]   # inputs are not echoed
        messages = {f["field"]: f["message"] for body, _ in cases[3:7]
                    for f in client.post("/generate", json=body).json()["error"]["fields"]}
        assert "not valid base64" in messages["images.0"] or "over the limit" in messages["images.0"]
        assert "not a readable image" in messages["images.1"]
        r = client.post("/generate", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
        r = client.post("/generate", json={"prompt": "x", "images": ["A" * 300_000]})
        assert r.status_code == 413 and "over the limit" in r.json()["error"]["message"]
        r = client.get("/nowhere")
        assert r.status_code == 404 and r.json() == {"success": False, "error": {"message": "Not Found"}}
        missing = client.post("/generate", json={"prompt": "x"}).json()["error"]["fields"][0]
        assert missing["field"] == "images" and "image_urls" in missing["message"]   # both shapes named
        assert client.get("/health").json()["renders_ok"] == 0              # nothing reached the pipeline


def test_service_queue_limit_and_client_give_the_local_pixels(tiny_pipe, reference, direct):
    gen = QwenImageEditGenerator(pipeline=tiny_pipe, **TINY)
    app = create_app(gen, ServiceLimits(queue_size=1))
    with serve_in_thread(app) as url:
        client = QwenImageEditServiceGenerator(urls=url, retries=0, steps=2, long_side=64)

        async def scenario():
            render = asyncio.create_task(client.render(Program(PROMPT, [reference])))
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                for _ in range(500):                          # wait until the render holds the only slot
                    if (await http.get("/health")).json()["running"] == 1:
                        break
                    await asyncio.sleep(0.02)
                busy = await http.get("/health")
                refused = await http.post("/generate", json={"prompt": "x", "images": [b64_png(Image.new(
                    "RGB", (32, 32)))]})
                result = await render
                after = (await http.get("/health")).json()
            await client.aclose()
            return busy.json(), refused, result, after

        busy, refused, result, after = asyncio.run(scenario())
    assert busy["running"] == 1 and busy["queue_depth"] == 0
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert "queue is full" in refused.json()["error"]["message"]
    assert after["renders_ok"] == 1 and after["running"] == 0

    assert result.image.size == (64, 48)
    assert np.array_equal(pixels(result.image), pixels(direct.image))      # same pixels as the local render
    meta = result.metadata
    assert meta["backend"] == "qwen-image-edit-service" and meta["server"] == url
    assert (meta["seed"], meta["num_inference_steps"], meta["width"], meta["height"]) == (0, 2, 64, 48)
    assert {"render_s", "queue_s", "request_s"} <= set(meta["timings"])


def test_service_accepts_the_published_request_and_our_older_one(tiny_pipe, reference, direct):
    """The released client's request (image_urls as data URIs, every field given) and ours (images as
    plain base64, settings left to the server) both render the local pixels, and both replies carry
    success: true and the image as plain base64."""
    gen = QwenImageEditGenerator(pipeline=tiny_pipe, **TINY)
    with Image.open(reference.local_path) as im:
        ref = b64_png(im)
    published = {"prompt": PROMPT, "image_urls": ["data:image/png;base64," + ref], "seed": 0, "width": 64,
                 "height": 48, "num_inference_steps": 2, "true_cfg_scale": 4.0, "guidance_scale": 1.0,
                 "negative_prompt": " ", "num_images_per_prompt": 1}
    ours = {"prompt": PROMPT, "images": [ref]}
    with serve_in_thread(create_app(gen)) as url, httpx.Client(base_url=url, timeout=60) as client:
        replies = [client.post("/generate", json=body) for body in (published, ours)]
    for reply in replies:
        assert reply.status_code == 200, reply.text
        data = reply.json()
        assert data["success"] is True and not data["image"].startswith("data:")
        image = Image.open(io.BytesIO(base64.b64decode(data["image"], validate=True)))
        assert image.size == (64, 48) and data["num_inference_steps"] == 2
        assert np.array_equal(pixels(image), pixels(direct.image))


def test_service_reports_a_model_that_failed_to_load(tmp_path):
    gen = QwenImageEditGenerator(model=str(tmp_path / "no-such-checkpoint"), device="cpu", dtype="float32")
    with serve_in_thread(create_app(gen)) as url, httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(500):
            health = http.get("/health").json()
            if health["status"] != "loading":
                break
            time.sleep(0.02)
        assert health["status"] == "error" and "cannot load" in health["error"]["message"]
        r = http.post("/generate", json={"prompt": "x", "images": [b64_png(Image.new("RGB", (32, 32)))]})
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------- `genevolve serve` subprocess

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_genevolve_serve_loads_a_saved_checkpoint(tiny_pipe, reference, direct, tmp_path):
    model_dir = save_tiny_pipeline(tiny_pipe, tmp_path / "tiny-qwen-image-edit")
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]       # laid out like the real one
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "GENEVOLVE_CONFIG": os.devnull}
    cmd = [sys.executable, "-c", "import sys; from genevolve.cli import main; sys.exit(main())",
           "serve", "qwen-image-edit", "--model", str(model_dir), "--device", "cpu", "--steps", "2",
           "--long-side", "64", "--port", str(port), "--queue-size", "2", "--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        health = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"{url}/health", timeout=2).json()
                if health["status"] != "loading":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        assert health and health["status"] == "ok", log.read_text()[-3000:]
        assert health["model"] == str(model_dir) and health["device"] == "cpu"

        client = QwenImageEditServiceGenerator(urls=url, retries=1, backoff=0.2, steps=2, long_side=64)
        result = asyncio.run(client.render(Program(PROMPT, [reference])))
        assert result.image.size == (64, 48)
        # from_pretrained of the saved weights in another process: the same picture
        assert np.abs(pixels(result.image) - pixels(direct.image)).max() <= 1
        assert result.metadata["model"] == str(model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
