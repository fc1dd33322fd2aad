"""The viewer's routes over real HTTP on loopback, and its confinement to the folders it was given."""

from __future__ import annotations

import io
import json
import re
from urllib.parse import quote

import httpx
import pytest
from PIL import Image

from genevolve.cli.common import warn_unless_loopback
from genevolve.config import cache_dir
from genevolve.view import ViewServer, open_result
from genevolve.view.paths import MISSING, NOT_IMAGE, OK, OUTSIDE, Roots
from test_view_records import ROWS, build_world, write_jsonl


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return build_world(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def site(world):
    """The viewer over the whole world on a free loopback port, and an HTTP client for it."""
    # found images live in the image library's cache, which `genevolve view` allows by default
    server = ViewServer([world["root"]], image_roots=[cache_dir() / "images"]).start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield server, client
    server.stop()


def key_of(server: ViewServer, title: str) -> str:
    return next(k for k, s in server.app.state.viewer.catalog.sources.items() if s.title == title)


def text_of(html: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', html)
    assert m, f"no element #{element_id}"
    return m.group(1)


def test_home_lists_every_kind_of_record(site):
    server, client = site
    page = client.get("/")
    assert page.status_code == 200
    for title in ("world/runs/a", "world/runs/b", "world/runs/old", "world/bench/rows.jsonl", "world/single/out.json",
                  "world/train/grpo-ved", "compare two runs"):
        assert title in page.text


def test_run_table_counts_filters_sorts_and_pages(site):
    server, client = site
    src = key_of(server, "world/runs/b")
    page = client.get("/run", params={"src": src}).text
    assert text_of(page, "n-items") == str(len(ROWS)) == text_of(page, "n-shown")
    errors = client.get("/run", params={"src": src, "termination": "error"}).text
    assert text_of(errors, "n-shown") == "1" and 'data-id="empty"' in errors and 'data-id="apple"' not in errors
    quality = client.get("/run", params={"src": src, "track": "quality"}).text
    assert re.findall(r'<tr data-id="([^"]+)"', quality) == ["apple", "sign", "empty"]
    issues = client.get("/run", params={"src": src, "issue": "references_reordered"}).text
    assert int(text_of(issues, "n-shown")) >= 1 and 'data-id="empty"' not in issues
    ordered = client.get("/run", params={"src": src, "sort": "id"}).text
    assert re.findall(r'<tr data-id="([^"]+)"', ordered) == sorted(r["id"] for r in ROWS)
    paged = client.get("/run", params={"src": src, "sort": "id", "per": 2, "page": 2}).text
    assert re.findall(r'<tr data-id="([^"]+)"', paged) == sorted(r["id"] for r in ROWS)[2:4]
    assert "page 2 of 3" in paged
    failed = client.get("/run", params={"src": src, "failed": "1"}).text
    assert 'data-id="empty"' in failed                      # no image, so the judge could not score it
    assert client.get("/run", params={"src": src, "page": "x"}).status_code == 400
    assert client.get("/run", params={"src": "nope"}).status_code == 404


def test_item_page_shows_turns_images_program_and_judge(site, world):
    server, client = site
    src = key_of(server, "world/runs/a")
    page = client.get("/item", params={"src": src, "id": "flag_ma"}).text
    assert '<span class="tool-name">image_search</span>' in page and '<span class="tool-name">search</span>' in page
    assert text_of(page, "n-calls") == "2"
    assert "Rabat capital country" in page                   # a tool call's arguments
    assert "--- image search result" in page                 # its observation
    assert 'data-slot="img:IMG_001" data-state="ok"' in page    # a found image's thumbnail
    assert 'data-slot="output" data-state="ok"' in page and 'data-slot="gt" data-state="ok"' in page
    assert "img_id_replaced" in page and "<del>IMG_001,</del>" in page     # the repair, named and shown
    assert "visual correctness" in page and "Required:" in page             # judge scores and rationale
    assert "tokens written" in page and "policy " in page                   # tokens and seconds per turn
    confined = ViewServer([world["a"]]).start()         # without the library's folder: a placeholder
    try:
        alone = httpx.get(confined.url + "item", params={"src": "a", "id": "flag_ma"}, timeout=30).text
        assert 'data-slot="img:IMG_001" data-state="outside"' in alone
    finally:
        confined.stop()
    returned = client.get("/item", params={"src": key_of(server, "world/runs/b"), "id": "flag_ma"}).text
    assert "format_error" in returned and "answer_returned" in returned and "references_reordered" in returned


def test_sft_record_item_page(site):
    server, client = site
    page = client.get("/item", params={"src": key_of(server, "world/data/sft.jsonl"), "id": "flag_ma"}).text
    assert '<span class="tool-name">image_search</span>' in page
    assert 'data-slot="img:IMG_001" data-state="ok"' in page     # the record's images, mapped to their ids
    assert 'data-slot="output"' not in page                      # nothing was rendered for a data row


def test_schema_1_item_page(site):
    server, client = site
    page = client.get("/item", params={"src": key_of(server, "world/runs/old"), "id": "old_001"}).text
    assert '<span class="tool-name">image_search</span>' in page
    assert "The flag shown in IMG_001, centered." in page and "img_id_replaced" in page
    assert 'data-slot="img:IMG_002" data-state="ok"' in page     # found by a relative path


def test_images_come_as_thumbnails_and_full_size(site, world):
    server, client = site
    params = {"src": key_of(server, "world/runs/a"), "id": "flag_ma", "slot": "output"}
    thumb = client.get("/img", params={**params, "size": "thumb"})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 320
    full = client.get("/img", params={**params, "size": "full"})
    assert full.headers["content-type"] == "image/png"
    assert full.content == (world["a"] / "render" / "images" / "flag_ma.png").read_bytes()
    gt = client.get("/img", params={**params, "slot": "gt", "size": "full"})
    assert gt.content == (world["bench"] / "images" / "flag_ma.png").read_bytes()


def test_compare_sorts_shared_ids_by_the_difference(site):
    server, client = site
    a, b = key_of(server, "world/runs/a"), key_of(server, "world/runs/b")
    page = client.get("/compare", params={"a": a, "b": b}).text
    assert text_of(page, "n-shared") == str(len(ROWS))
    diffs = [float(d) for d in re.findall(r'<td class="num (?:up|down|)">([+-][0-9.]+)</td>', page)]
    assert diffs == sorted(diffs, reverse=True)
    worst = client.get("/compare", params={"a": a, "b": b, "order": "worst"}).text
    assert [float(d) for d in re.findall(r'<td class="num (?:up|down|)">([+-][0-9.]+)</td>', worst)] == sorted(diffs)
    side = client.get("/compare/item", params={"a": a, "b": b, "id": "apple"}).text
    assert 'data-run="A"' in side and 'data-run="B"' in side and 'data-slot="gt"' in side


def test_training_page_has_curves_guides_and_memory(site):
    server, client = site
    key = next(iter(server.app.state.viewer.catalog.training))
    page = client.get("/train", params={"key": key}).text
    titles = re.findall(r'<svg class="chart"[^>]*aria-label="([^"]+)"', page)
    assert titles == ["reward", "answer rate", "tool calls", "skill calls", "loss terms", "seconds per phase"]
    assert "Resolve the capital to its country first" in page
    assert "<h3>best" in page and "<h3>worst" in page and "reward_gap" in page
    assert "look the country up before image_search" in page
    assert "step_00001" in page and "step_00004" in page
    rollouts = next(k for k, s in server.app.state.viewer.catalog.sources.items() if s.kind == "rollouts")
    listing = client.get("/run", params={"src": rollouts}).text
    assert "reward" in listing and "#2" in listing


def test_live_stamp_changes_when_a_journal_grows(tmp_path):
    journal = write_jsonl(tmp_path / "live" / "results.jsonl", [{"id": "i1", "prompt": "one", "termination": "answer"}])
    server = ViewServer([tmp_path / "live"]).start()
    try:
        with httpx.Client(base_url=server.url) as client:
            src = next(iter(server.app.state.viewer.catalog.sources))
            before = client.get("/api/stamp", params={"src": src}).json()["stamp"]
            with open(journal, "a") as f:
                f.write(json.dumps({"id": "i2", "prompt": "two", "termination": "answer"}) + "\n")
            assert client.get("/api/stamp", params={"src": src}).json()["stamp"] != before
            assert client.get("/api/items", params={"src": src}).json()["total"] == 2
            home = client.get("/", follow_redirects=True)      # one run: the home page leads to it
            assert home.status_code == 200 and home.url.path == "/run"
    finally:
        server.stop()


def test_open_result_shows_one_generate_result(world):
    server, address = open_result(world["single"], open_browser=False)
    try:
        page = httpx.get(address, timeout=30)
        assert page.status_code == 200 and "The flag of Morocco" in page.text
        assert '<span class="tool-name">image_search</span>' in page.text
        assert 'data-slot="output" data-state="ok"' in page.text
        assert httpx.get(server.url, follow_redirects=True).url == httpx.URL(address)
    finally:
        server.stop()


# -- confinement ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile(world):
    server = ViewServer([world["hostile"]]).start()
    with httpx.Client(base_url=server.url) as client:
        yield next(iter(server.app.state.viewer.catalog.sources)), client
    server.stop()


@pytest.mark.parametrize("item_id,status,reason", [
    ("good", 200, None), ("missing", 404, "missing"), ("corrupt", 422, "corrupt image"),
    ("outside", 404, "outside"), ("dotdot", 404, "outside"), ("symlink", 404, "outside"),
    ("text", 404, "not an image"), ("../../etc/passwd", 200, None),
])
def test_only_images_inside_the_given_folders_are_served(hostile, world, item_id, status, reason):
    src, client = hostile
    secret = (world["outside"] / "secret.png").read_bytes()
    for size in ("thumb", "full"):
        reply = client.get("/img", params={"src": src, "id": item_id, "slot": "output", "size": size})
        assert reply.status_code == status, (item_id, size)
        assert reply.content != secret and b"do not serve" not in reply.content
        if reason:
            assert reply.headers["content-type"] == "image/svg+xml" and reason in reply.headers["x-placeholder"]
            assert reason.encode() in reply.content          # the placeholder says what is wrong


def test_item_pages_show_placeholders_for_bad_images(hostile):
    src, client = hostile
    for item_id, state in (("missing", "missing"), ("outside", "outside"), ("symlink", "outside"),
                           ("text", "not an image"), ("good", "ok")):
        page = client.get("/item", params={"src": src, "id": item_id}).text
        assert f'data-slot="output" data-state="{state}"' in page, item_id
    # a corrupt file passes the page's quick check; the image route then answers with a placeholder
    assert 'data-slot="output" data-state="ok"' in client.get("/item", params={"src": src, "id": "corrupt"}).text


def test_paths_never_come_from_the_browser(hostile):
    src, client = hostile
    assert client.get("/img", params={"src": src, "id": "good", "slot": "../../etc/passwd"}).status_code == 400
    assert client.get("/img", params={"src": src, "id": "good", "slot": "output", "size": "huge"}).status_code == 400
    assert client.get("/img", params={"src": "../" + src, "id": "good", "slot": "output"}).status_code == 404
    assert client.get("/img", params={"src": src, "id": "../good", "slot": "output"}).status_code == 404
    for path in ("/static/../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2fapp.py",
                 "/" + quote("/etc/passwd")):
        reply = client.get(path)
        assert reply.status_code == 404 and "root:" not in reply.text, path
    assert client.post("/run", params={"src": src}).status_code == 405      # read-only
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]


def test_roots_resolve_relative_paths_and_refuse_the_rest(tmp_path):
    inside = tmp_path / "run"
    (inside / "render" / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(inside / "render" / "images" / "x.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    roots = Roots([inside])
    bases = [inside / "render"]
    # written from another working folder: "run/render/images/x.png", found from the record's folder up
    assert roots.locate("run/render/images/x.png", bases).status == OK
    assert roots.locate("images/x.png", bases).status == OK
    assert roots.locate("/moved/elsewhere/images/x.png", bases).status == OK     # a stale absolute path
    assert roots.locate(f"file://{inside}/render/images/x.png", bases).status == OK
    assert roots.locate(str(tmp_path / "outside.png"), bases).status == OUTSIDE
    assert roots.locate("../../outside.png", bases).status == OUTSIDE
    assert roots.locate("images/none.png", bases).status == MISSING
    assert roots.locate("/etc/passwd", bases).status == NOT_IMAGE
    assert roots.locate("https://example.org/a.png", bases).status != OK


def test_only_non_loopback_addresses_get_a_warning(capsys):
    for host in ("127.0.0.1", "localhost", "::1"):
        warn_unless_loopback(host, "records are readable")
    assert capsys.readouterr().err == ""
    for host in ("0.0.0.0", "192.168.1.4"):
        warn_unless_loopback(host, "records are readable")
    assert capsys.readouterr().err.count("warning: serving on") == 2
