"""A real browser (Debian's chromium, driven by Playwright) uses the page like a person would.

It loads the page, uploads an image, clicks on an object and checks that a mask appears;
the screenshot is saved under test-artifacts/. Playwright never downloads a browser here: the
test uses /usr/bin/chromium and skips, saying so, when it is absent.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path(os.environ.get("DETSEG_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = int(os.environ.get("DETSEG_BROWSER_TIMEOUT_MS", "120000"))  # a 2-core machine shared with other jobs; generous, not a benchmark

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _element_pixels(locator) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(np.int16)


def _click_image_at(page, img, x: float, y: float) -> None:
    """Click image pixel (x, y) of an <img> shown with object-fit: contain."""
    box = img.bounding_box()
    nw, nh = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    s = min(box["width"] / nw, box["height"] / nh)
    ox, oy = (box["width"] - nw * s) / 2, (box["height"] - nh * s) / 2
    page.mouse.click(box["x"] + ox + x * s, box["y"] + oy + y * s)


def test_upload_click_and_see_a_mask(served: str, browser, coco_images) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(served)
        page.get_by_text("Click on an object").first.wait_for()
        image = coco_images[0]  # 000000000139.jpg: a living room, a TV on the left
        page.locator("#image-in input[type=file]").set_input_files(str(image))
        canvas = page.locator("#sam-canvas img")
        canvas.wait_for(state="visible")
        page.wait_for_function(
            "() => { const i = document.querySelector('#sam-canvas img');"
            " return i && i.complete && i.naturalWidth > 0; }"
        )
        page.get_by_text(image.name).first.wait_for()  # the status line
        before = _element_pixels(canvas)
        src = canvas.get_attribute("src")

        _click_image_at(page, canvas, 80, 215)  # on the TV
        page.locator("#candidates input[type=radio]").first.wait_for()
        page.wait_for_function(
            "src => { const i = document.querySelector('#sam-canvas img');"
            " return i && i.src !== src && i.complete && i.naturalWidth > 0; }",
            arg=src,
        )
        page.wait_for_timeout(500)  # let the new image paint before the screenshot
        after = _element_pixels(canvas)

        assert page.locator("#candidates input[type=radio]").count() == 3
        assert before.shape == after.shape
        changed = np.abs(after - before).max(axis=2) > 40
        assert changed.mean() > 0.005, "no mask drawn on the canvas after the click"
        summary = page.locator("#sam-summary").inner_text()
        assert "scores" in summary and "80" in summary and "215" in summary  # the click, in pixels

        # choose another candidate: the canvas changes again
        chosen = page.locator("#candidates input[type=radio]:checked").get_attribute("value")
        other = page.locator("#candidates input[type=radio]:not(:checked)").first
        src = canvas.get_attribute("src")
        other.check()
        page.wait_for_function(
            "src => document.querySelector('#sam-canvas img').src !== src", arg=src
        )
        now = page.locator("#candidates input[type=radio]:checked").get_attribute("value")
        assert now != chosen
    finally:
        # on failure too: the picture shows what the page looked like
        page.screenshot(path=str(ARTIFACTS / "serve_browser.png"), full_page=True)
        page.close()


def test_pick_a_sample_and_see_detections(served: str, browser) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(served)
        page.get_by_text("shapes 1", exact=True).click()
        page.get_by_text("shapes_sample_1.png").first.wait_for()  # the status line
        page.get_by_role("tab", name="Detect & segment").click()
        page.wait_for_function(
            "() => { const i = document.querySelector('#det-image img');"
            " return i && i.complete && i.naturalWidth > 0; }"
        )
        page.locator("#det-table").get_by_text("score").first.wait_for()
        page.get_by_role("button", name="Segment every detection with SAM").click()
        page.wait_for_timeout(1500)
        assert page.locator("#det-file").get_by_text(".json").count() >= 1
    finally:
        page.screenshot(path=str(ARTIFACTS / "serve_browser_detect.png"), full_page=True)
        page.close()


def test_a_bad_upload_shows_a_message(served: str, browser, tmp_path: Path) -> None:
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is a text file, not a PNG")
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(served)
        page.get_by_text("Click on an object").first.wait_for()
        page.locator("#image-in input[type=file]").set_input_files(str(bad))
        page.get_by_text("holiday.png: ").first.wait_for()  # the error toast names the file
        page.screenshot(path=str(ARTIFACTS / "serve_browser_bad_upload.png"))
        page.get_by_text("Loaded").first.wait_for(state="detached")  # no image was loaded
    finally:
        page.close()
