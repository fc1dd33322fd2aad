"""The viewer in a real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium).

The browser runs with no network access of its own beyond the loopback viewer: no first-run
pages, no component or background updates, a fresh profile. Each test looks at what the page
shows (element text, images that loaded) and at the screenshot it takes.

Set GENEVOLVE_VIEW_SCREENSHOTS=DIR to keep the item-page screenshot (the README's picture).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genevolve.config import cache_dir
from genevolve.view import ViewServer
from test_view_records import ROWS, build_world, write_jsonl

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 30            # how long to wait for the page to get somewhere (not a speed requirement)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver (./setup.sh --test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000", "--force-device-scale-factor=1",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    world = build_world(tmp_path_factory.getbasetemp())
    server = ViewServer([world["root"]], image_roots=[cache_dir() / "images"]).start()
    yield server, world
    server.stop()


def wait(driver, condition, message: str):
    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message)


def screenshot(driver, path: Path, full_page: bool = True) -> Image.Image:
    """Save the page (grown to its full height) and return the picture for checking."""
    if full_page:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(max(height, 600), 5000))
    driver.save_screenshot(str(path))
    img = Image.open(path).convert("RGB")
    assert img.width >= 1000 and img.height >= 500
    return img


def region(img: Image.Image, element) -> Image.Image:
    r = element.rect
    return img.crop((int(r["x"]), int(r["y"]), int(r["x"] + r["width"]), int(r["y"] + r["height"])))


def busy(img: Image.Image) -> float:
    """Spread of grey levels: a blank or failed image is flat."""
    return float(np.asarray(img.convert("L"), dtype=float).std())


def images_loaded(driver) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll('img[data-state=ok]')].map(i => ({slot: i.dataset.slot, "
        "complete: i.complete, width: i.naturalWidth}))")


def test_open_a_run_filter_it_and_open_an_item(browser, site, tmp_path):
    server, world = site
    browser.get(server.url)
    browser.find_element(By.LINK_TEXT, "world/runs/b").click()
    wait(browser, lambda d: d.find_elements(By.ID, "n-items"), "the run table")
    assert browser.find_element(By.ID, "n-items").text == str(len(ROWS))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#items tr[data-id]")) == len(ROWS)
    shot = screenshot(browser, tmp_path / "run.png")
    assert busy(region(shot, browser.find_element(By.ID, "items"))) > 5

    Select(browser.find_element(By.NAME, "termination")).select_by_value("error")   # submits on change
    wait(browser, lambda d: "termination=error" in d.current_url and d.find_element(By.ID, "n-shown").text == "1",
         "the filtered table")
    assert [r.get_attribute("data-id") for r in browser.find_elements(By.CSS_SELECTOR, "#items tr[data-id]")] == ["empty"]

    browser.get(server.url)
    browser.find_element(By.LINK_TEXT, "world/runs/a").click()
    wait(browser, lambda d: d.find_elements(By.LINK_TEXT, "flag_ma"), "the item link")
    browser.find_element(By.LINK_TEXT, "flag_ma").click()
    wait(browser, lambda d: d.find_elements(By.ID, "turns"), "the item page")
    tools = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#turns .tool-name")]
    assert tools == ["search", "image_search"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#turns section.turn")) == 3
    wait(browser, lambda d: all(i["complete"] for i in images_loaded(d)), "images to load")
    loaded = {i["slot"]: i["width"] for i in images_loaded(browser)}
    assert loaded["output"] > 0 and loaded["gt"] > 0 and loaded["img:IMG_001"] > 0
    assert "img_id_replaced" in browser.find_element(By.ID, "issues").text
    browser.set_window_size(1400, 1000)
    browser.execute_script("window.scrollTo(0, 0)")
    shot = screenshot(browser, tmp_path / "item.png")
    rendered = browser.find_element(By.CSS_SELECTOR, 'img[data-slot="output"]')
    assert busy(region(shot, rendered)) > 5, "the rendered image shows in the screenshot"
    assert busy(region(shot, browser.find_element(By.CSS_SELECTOR, 'img[data-slot="gt"]'))) > 5
    keep = os.environ.get("GENEVOLVE_VIEW_SCREENSHOTS")
    if keep:                                 # the README's picture: images, judge, program, first turns
        browser.set_window_size(1280, 1800)
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(tmp_path / "readme.png"))
        Image.open(tmp_path / "readme.png").convert("RGB").quantize(colors=128).save(
            Path(keep) / "view-item.png", optimize=True)


def test_missing_and_corrupt_images_show_a_placeholder(browser, site, tmp_path):
    server, world = site
    src = next(k for k, s in server.app.state.viewer.catalog.sources.items() if s.title == "world/hostile")
    browser.get(f"{server.url}item?src={src}&id=missing")
    box = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '.placeholder[data-slot="output"]'), "a placeholder")[0]
    assert "image missing" in box.text and "gone.png" in box.text
    browser.get(f"{server.url}item?src={src}&id=corrupt")
    img = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'img[data-slot="output"]'), "the image")[0]
    wait(browser, lambda d: d.execute_script("return arguments[0].complete", img), "the placeholder to load")
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 240   # the placeholder picture
    shot = screenshot(browser, tmp_path / "corrupt.png", full_page=False)
    assert busy(region(shot, img)) > 1


def test_compare_two_runs(browser, site, tmp_path):
    server, world = site
    browser.get(server.url)
    Select(browser.find_element(By.NAME, "a")).select_by_visible_text("world/runs/a")
    Select(browser.find_element(By.NAME, "b")).select_by_visible_text("world/runs/b")
    browser.find_element(By.CSS_SELECTOR, "form[action='/compare'] button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "n-shared"), "the comparison")
    assert browser.find_element(By.ID, "n-shared").text == str(len(ROWS))
    diffs = [float(c.text) for c in browser.find_elements(By.CSS_SELECTOR, "#compare td:last-child")
             if c.text not in ("–", "")]
    assert diffs and diffs == sorted(diffs, reverse=True)
    screenshot(browser, tmp_path / "compare.png")
    browser.find_elements(By.CSS_SELECTOR, "#compare tr[data-id] a")[0].click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".column")) == 2, "two columns")
    wait(browser, lambda d: all(i["complete"] for i in images_loaded(d)), "images to load")
    widths = [i["width"] for i in images_loaded(browser) if i["slot"] in ("output", "gt")]
    assert len(widths) >= 2 and all(w > 0 for w in widths)


def test_training_page(browser, site, tmp_path):
    server, world = site
    browser.get(server.url)
    browser.find_element(By.LINK_TEXT, "world/train/grpo-ved").click()
    wait(browser, lambda d: d.find_elements(By.ID, "curves"), "the curves")
    charts = browser.find_elements(By.CSS_SELECTOR, "#curves svg.chart")
    assert [c.get_attribute("aria-label") for c in charts][:2] == ["reward", "answer rate"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#curves polyline")) >= 10
    assert "Resolve the capital to its country first" in browser.find_element(By.CSS_SELECTOR, ".guide-text").text
    assert "look the country up" in browser.page_source
    shot = screenshot(browser, tmp_path / "train.png")
    assert busy(region(shot, charts[0])) > 5


def test_a_run_still_writing_refreshes_itself(browser, tmp_path):
    journal = write_jsonl(tmp_path / "live" / "results.jsonl", [{"id": "i1", "prompt": "one", "termination": "answer"}])
    server = ViewServer([tmp_path / "live"]).start()
    try:
        browser.get(server.url)
        wait(browser, lambda d: d.find_elements(By.ID, "n-items"), "the run table")
        assert browser.find_element(By.ID, "n-items").text == "1"
        marker = browser.find_element(By.TAG_NAME, "body").get_attribute("data-stamp")
        with open(journal, "a") as f:
            f.write(json.dumps({"id": "i2", "prompt": "two", "termination": "answer"}) + "\n")
        wait(browser, lambda d: d.find_element(By.ID, "n-items").text == "2", "the page to refresh itself")
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-stamp") != marker
        assert len(browser.find_elements(By.CSS_SELECTOR, "#items tr[data-id]")) == 2
    finally:
        server.stop()
