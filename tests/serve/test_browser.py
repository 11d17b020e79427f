"""A real browser (Debian's chromium, driven by Playwright) uses the page like a person would.

Each test does what a person did when the bug was found (upload twice, upload a bad file,
draw a box, use a phone-sized window, refine a detection) and checks what the page shows.
Screenshots go to test-artifacts/ (on failure too). Playwright never downloads a browser
here: the tests use /usr/bin/chromium and skip, saying so, when it is absent.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
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
# the components that actions write to: none may keep a red "Error" marker after a success
OUTPUT_IDS = ("status", "sam-canvas", "sam-status", "candidates", "det-image", "det-status",
              "det-table", "det-file")

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


@pytest.fixture()
def page(browser, served: str, request: pytest.FixtureRequest):
    """A fresh tab on the demo (1400x1000); a full-page screenshot named after the test is
    saved when the test ends, passed or failed."""
    ARTIFACTS.mkdir(exist_ok=True)
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(served)
    pg.get_by_text("Click on an object").first.wait_for()
    try:
        yield pg
    finally:
        name = request.node.name.removeprefix("test_")
        pg.screenshot(path=str(ARTIFACTS / f"serve_{name}.png"), full_page=True)
        pg.close()


@pytest.fixture()
def load_calls(monkeypatch) -> list[str]:
    """The file names that `handlers.load_image` decoded, in order (the app runs in-process)."""
    from detseg.serve import handlers

    calls: list[str] = []
    real = handlers.load_image

    def counting(ctx, session, path, name):
        calls.append(name)
        return real(ctx, session, path, name)

    monkeypatch.setattr(handlers, "load_image", counting)
    return calls


def _element_pixels(locator) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(np.int16)


def _click_image_at(page, img, x: float, y: float) -> None:
    """Click at (x, y) of the picture an <img> shows (object-fit: contain), in its own pixels."""
    box = img.bounding_box()
    nw, nh = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    s = min(box["width"] / nw, box["height"] / nh)
    ox, oy = (box["width"] - nw * s) / 2, (box["height"] - nh * s) / 2
    page.mouse.click(box["x"] + ox + x * s, box["y"] + oy + y * s)


def _wait_new_image(page, elem_id: str, old_src: str | None = None) -> None:
    page.wait_for_function(
        "([id, src]) => { const i = document.querySelector(`#${id} img`);"
        " return i && i.src !== src && i.complete && i.naturalWidth > 0; }",
        arg=[elem_id, old_src],
    )


def _upload(page, path: Path) -> None:
    page.locator("#image-in input[type=file]").first.set_input_files(str(path))


def _status(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text()


def _no_error_markers(page) -> None:
    for elem_id in OUTPUT_IDS:
        if not page.locator(f"#{elem_id}").count():  # on a tab not shown yet
            continue
        text = page.locator(f"#{elem_id}").inner_text()
        assert "Error" not in text.split(), f"#{elem_id} still shows an Error marker: {text!r}"


def test_upload_click_and_see_a_mask(page, coco_images) -> None:
    image = coco_images[0]  # 000000000139.jpg: a living room, a TV on the left
    _upload(page, image)
    canvas = page.locator("#sam-canvas img")
    _wait_new_image(page, "sam-canvas")
    page.locator("#status").get_by_text(image.name).wait_for()
    before = _element_pixels(canvas)
    src = canvas.get_attribute("src")

    _click_image_at(page, canvas, 80, 215)  # on the TV
    page.locator("#candidates input[type=radio]").first.wait_for()
    _wait_new_image(page, "sam-canvas", src)
    page.wait_for_timeout(500)  # let the new image paint before the screenshot
    after = _element_pixels(canvas)

    assert page.locator("#candidates input[type=radio]").count() == 3
    assert before.shape == after.shape
    changed = np.abs(after - before).max(axis=2) > 40
    assert changed.mean() > 0.005, "no mask drawn on the canvas after the click"
    line = _status(page, "sam-status")  # a plain sentence, not JSON
    assert "1 positive click" in line and "pixels" in line and "{" not in line
    # the developer JSON is still there, folded away
    assert not page.locator("#sam-summary").is_visible()
    page.locator("#sam-details").get_by_text("Details (JSON)").click()
    summary = page.locator("#sam-summary").inner_text()
    assert "scores" in summary and "80" in summary and "215" in summary  # the click, in pixels

    # choose another candidate: the canvas changes again
    chosen = page.locator("#candidates input[type=radio]:checked").get_attribute("value")
    other = page.locator("#candidates input[type=radio]:not(:checked)").first
    src = canvas.get_attribute("src")
    other.check()
    _wait_new_image(page, "sam-canvas", src)
    now = page.locator("#candidates input[type=radio]:checked").get_attribute("value")
    assert now != chosen


def test_every_upload_decodes_the_image_once(page, coco_images, load_calls) -> None:
    # a sample, then uploads: each used to run /load_image twice after the first
    page.get_by_text("shapes 1", exact=True).click()
    page.locator("#status").get_by_text("shapes_sample_1.png").wait_for()
    for image in coco_images[:2]:
        src = page.locator("#sam-canvas img").get_attribute("src")
        _upload(page, image)
        page.locator("#status").get_by_text(image.name).wait_for()
        _wait_new_image(page, "sam-canvas", src)
    page.get_by_text("shapes 2", exact=True).click()
    page.locator("#status").get_by_text("shapes_sample_2.png").wait_for()
    page.get_by_role("tab", name="Detect & segment").click()
    page.locator("#det-status").get_by_text(re.compile("detections? by")).wait_for()  # the chained detection ran
    page.wait_for_timeout(2000)  # a duplicate call would come now
    counts = Counter(load_calls)
    assert counts == Counter(["shapes_sample_1.png", coco_images[0].name, coco_images[1].name,
                              "shapes_sample_2.png"]), load_calls


def test_a_refused_upload_leaves_no_image_anywhere(page, coco_images, tmp_path) -> None:
    good = coco_images[0]
    _upload(page, good)
    page.locator("#status").get_by_text(good.name).wait_for()
    page.get_by_role("tab", name="Detect & segment").click()
    page.locator("#det-status").get_by_text(re.compile("detections? by")).wait_for()
    page.get_by_role("tab", name="Segment Anything").click()

    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is a text file, not a PNG")
    _upload(page, bad)
    page.locator("#status").get_by_text("Not loaded").wait_for()
    assert "holiday.png" in _status(page, "status") and good.name not in _status(page, "status")
    # the image box, the SAM canvas and the detections agree: no image
    page.wait_for_function("() => !document.querySelector('#image-in img')")
    assert page.locator("#sam-canvas img").count() == 0
    assert "Upload an image" in _status(page, "sam-status")
    page.get_by_role("tab", name="Detect & segment").click()
    page.locator("#det-status").get_by_text("No image loaded").wait_for()
    assert page.locator("#det-image img").count() == 0
    page.screenshot(path=str(ARTIFACTS / "serve_bad_upload.png"), full_page=True)

    # the next good upload: everything shows it, and no red "Error" marker is left over
    _upload(page, coco_images[1])
    page.locator("#status").get_by_text(coco_images[1].name).wait_for()
    page.locator("#det-status").get_by_text(re.compile("detections? by")).wait_for()
    _wait_new_image(page, "det-image")
    _no_error_markers(page)
    page.get_by_role("tab", name="Segment Anything").click()
    _wait_new_image(page, "sam-canvas")
    _no_error_markers(page)


def test_a_failed_action_leaves_no_error_marker(page, coco_images) -> None:
    _upload(page, coco_images[2])
    page.locator("#status").get_by_text(coco_images[2].name).wait_for()
    page.get_by_role("tab", name="Detect & segment").click()
    page.locator("#det-pick input").fill("999")  # no such detection
    page.get_by_role("button", name="Refine in Segment Anything").click()
    page.get_by_role("tab", name="Segment Anything").click()
    page.locator("#sam-status").get_by_text("Could not do that").wait_for()
    assert "row number" in _status(page, "sam-status")
    _no_error_markers(page)
    src = page.locator("#sam-canvas img").get_attribute("src")
    _click_image_at(page, page.locator("#sam-canvas img"), 200, 200)
    _wait_new_image(page, "sam-canvas", src)
    page.locator("#sam-status").get_by_text("1 positive click").wait_for()
    _no_error_markers(page)


def test_box_mode_says_that_a_second_click_is_awaited(page) -> None:
    page.get_by_text("shapes 3", exact=True).click()
    page.locator("#status").get_by_text("shapes_sample_3.png").wait_for()
    _wait_new_image(page, "sam-canvas")
    page.get_by_label("box (two clicks)").check()
    page.locator("#sam-status").get_by_text("Box mode: click one corner").wait_for()
    canvas = page.locator("#sam-canvas img")
    # shapes samples are 320 px: shown enlarged (640 px) so that they are big enough to click
    assert canvas.evaluate("e => e.naturalWidth") == 640
    src = canvas.get_attribute("src")
    _click_image_at(page, canvas, 40 * 2, 50 * 2)  # view pixels = 2x image pixels
    page.locator("#sam-status").get_by_text("Click the opposite corner").wait_for()
    assert "first corner at (40, 50)" in _status(page, "sam-status")
    _wait_new_image(page, "sam-canvas", src)  # the corner is drawn
    page.screenshot(path=str(ARTIFACTS / "serve_box_first_corner.png"), full_page=True)
    src = canvas.get_attribute("src")
    _click_image_at(page, canvas, 250 * 2, 260 * 2)
    page.locator("#sam-status").get_by_text("Prompts: a box").wait_for()
    _wait_new_image(page, "sam-canvas", src)


def test_on_a_phone_sized_screen_the_tools_stay_beside_the_canvas(page) -> None:
    page.set_viewport_size({"width": 420, "height": 900})
    page.get_by_text("shapes 1", exact=True).click()
    page.locator("#status").get_by_text("shapes_sample_1.png").wait_for()
    _wait_new_image(page, "sam-canvas")
    tools = page.locator("#sam-tools").bounding_box()
    canvas = page.locator("#sam-canvas").bounding_box()
    assert tools["x"] + tools["width"] <= canvas["x"] + 1, (tools, canvas)  # side by side
    assert tools["y"] < canvas["y"] + canvas["height"] and canvas["y"] < tools["y"] + tools["height"]
    assert canvas["width"] >= 180
    assert canvas["x"] + canvas["width"] <= 420  # nothing runs off the screen
    page.locator("#sam-canvas").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "serve_phone_420px_view.png"))


def test_detections_are_readable_and_one_can_be_refined(page, hub, coco_images) -> None:
    _upload(page, coco_images[0])
    page.locator("#status").get_by_text(coco_images[0].name).wait_for()
    page.get_by_role("tab", name="Detect & segment").click()
    _wait_new_image(page, "det-image")
    page.locator("#det-status").get_by_text(re.compile("detections? by")).wait_for()
    assert "classes" in page.locator("#model-info").inner_text()
    assert int(page.locator("#det-status").inner_text().split()[0]) >= 2

    page.get_by_role("button", name="Segment every detection with SAM").click()
    page.locator("#det-status").get_by_text("masks by Segment Anything").wait_for()
    assert page.locator("#det-file").get_by_text("sam_detections").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "serve_detections_sam.png"), full_page=True)

    # select the second row of the table, then send it to Segment Anything
    page.locator("#det-table").get_by_text("1", exact=True).first.click()
    page.wait_for_function("() => document.querySelector('#det-pick input').value === '1'")
    page.get_by_role("button", name="Refine in Segment Anything").click()
    page.locator("#sam-status").get_by_text("Prompts: a box").wait_for()  # the SAM tab is shown
    assert page.locator("#sam-canvas").is_visible()
    _wait_new_image(page, "sam-canvas")
    _no_error_markers(page)

    if "builtin" in hub.names:  # the embedded detector says what it knows
        page.get_by_role("tab", name="Detect & segment").click()
        page.locator("#model input").click()
        page.get_by_role("option", name="builtin").click()
        page.locator("#model-info").get_by_text("trained on synthetic shapes only").wait_for()
        assert "circle" in page.locator("#model-info").inner_text()
