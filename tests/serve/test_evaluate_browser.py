"""The Evaluate tab in a real browser (Debian's chromium, driven by Playwright): the page opens
on the evaluation given at start-up, filters, browses, shows A and B side by side, and takes
an upload. Screenshots go to test-artifacts/evaluate_*.png (also on failure)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from detseg.eval import browse
from tests.serve import evaluate_data, test_browser

pytestmark = pytest.mark.browser

files, evalset, eval_served = evaluate_data.files, evaluate_data.evalset, evaluate_data.eval_served
browser = test_browser.browser
ARTIFACTS, TIMEOUT_MS = test_browser.ARTIFACTS, test_browser.TIMEOUT_MS


def _loaded(page, elem_id: str) -> None:
    page.wait_for_function(
        "id => { const i = document.querySelector('#' + id + ' img');"
        " return i && i.complete && i.naturalWidth > 0; }", arg=elem_id)


def _text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text()


def _wait_text_change(page, elem_id: str, before: str) -> str:
    page.wait_for_function(
        "([id, t]) => { const e = document.querySelector('#' + id);"
        " return e && e.innerText.trim().length > 0 && e.innerText !== t"
        " && /images match/.test(e.innerText); }", arg=[elem_id, before])
    return _text(page, elem_id)


def _new_page(browser, height: int):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    return page


def _open(page, url: str) -> None:
    """The page, opened on the Evaluate tab filled from --gt/--pred (11 COCO images)."""
    page.goto(url)
    page.get_by_text("11 images, all found on disk").first.wait_for()


def _choose(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=value, exact=True).click()


def test_open_filter_browse_and_compare(eval_served, evalset, browser) -> None:
    page = _new_page(browser, 1600)
    shot = "evaluate_open.png"
    try:
        # the page opens on the Evaluate tab, filled from --gt/--pred
        _open(page, eval_served)
        page.locator("#eval-position").get_by_text("Image 1 of").wait_for()
        _loaded(page, "eval-view-a")
        _loaded(page, "eval-view-b")
        _loaded(page, "eval-pr")
        assert page.get_by_role("tab", name="Evaluate").get_attribute("aria-selected") == "true"
        a, b = (page.locator(f"#eval-view-{k} img") for k in "ab")
        assert a.is_visible() and b.is_visible()
        pa, pb = (test_browser._element_pixels(x) for x in (a, b))
        assert pa.shape == pb.shape and np.abs(pa - pb).max(axis=2).mean() > 1  # A and B differ
        assert "yolox_nano: TP" in _text(page, "eval-position") and "yolox_shifted: TP" in _text(page, "eval-position")
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)

        # filter: class person, false positives
        shot = "evaluate_filter.png"
        note = _text(page, "eval-list-note")
        _choose(page, "eval-class", "person")
        note = _wait_text_change(page, "eval-list-note", note)
        _choose(page, "eval-error", "FP")
        note = _wait_text_change(page, "eval-list-note", note)
        person = evalset.cat_names.index("person")
        want = np.union1d(*[browse.select_images(r.outcomes, evalset.gt.cat, 0.3, person, "FP")
                            for r in evalset.runs])
        assert re.search(r"(\d+) images match", note).group(1) == str(want.size)  # the library's
        page.locator("#eval-position").get_by_text(f"Image 1 of {want.size}").wait_for()
        objects = page.locator("#eval-objects").inner_text()
        assert "person" in objects and "chair" not in objects
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)

        # browse: Next moves to the second image, and the picture changes
        shot = "evaluate_browse.png"
        src = a.get_attribute("src")
        page.locator("#eval-next").click()
        page.locator("#eval-position").get_by_text(f"Image 2 of {want.size}").wait_for()
        page.wait_for_function(
            "s => { const i = document.querySelector('#eval-view-a img');"
            " return i && i.src !== s && i.complete && i.naturalWidth > 0; }", arg=src)
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
        page.locator("#eval-prev").click()
        page.locator("#eval-position").get_by_text(f"Image 1 of {want.size}").wait_for()
        shot = None
    finally:
        if shot:  # a failure: the picture shows what the page looked like
            page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
        page.close()


def test_upload_files_in_the_page(eval_served, files, browser) -> None:
    page = _new_page(browser, 1400)
    try:
        _open(page, eval_served)
        page.get_by_text("Evaluate results files").click()  # the accordion
        page.locator("#eval-gt input[type=file]").set_input_files(str(files["syn_gt"]))
        page.locator("#eval-a input[type=file]").set_input_files(str(files["syn_res"]))
        page.locator("#eval-a").get_by_text("res.json").first.wait_for()
        page.locator("#eval-load").click()
        page.get_by_text("Images are missing: none of the 300 images was found").first.wait_for()
        page.locator("#eval-position").get_by_text("image not found on disk").wait_for()
        _loaded(page, "eval-view-a")
        assert not page.locator("#eval-view-b img").is_visible()  # one results file: no B
    finally:
        page.screenshot(path=str(ARTIFACTS / "evaluate_upload.png"), full_page=True)
        page.close()


OUTPUT_IDS = ("eval-summary", "eval-classes", "eval-pr", "eval-images", "eval-list-note",
              "eval-class", "eval-view-a", "eval-view-b", "eval-objects", "eval-position")


def _settled(page) -> None:
    """Wait until no output of the tab shows Gradio's "processing" tracker."""
    page.wait_for_function(
        "ids => ids.every(id => { const e = document.querySelector('#' + id);"
        " return !e || !/processing/.test(e.innerText); })", arg=list(OUTPUT_IDS))


def _no_error_markers(page) -> None:
    for elem_id in OUTPUT_IDS:
        text = page.locator(f"#{elem_id}").inner_text()
        assert "Error" not in text.split(), f"#{elem_id} still shows an Error marker: {text!r}"


def test_iou_threshold_and_a_refused_upload(eval_served, evalset, browser, tmp_path) -> None:
    page = _new_page(browser, 1600)
    shot = "evaluate_iou.png"
    try:
        _open(page, eval_served)
        page.locator("#eval-position").get_by_text("Image 1 of").wait_for()
        note = _text(page, "eval-list-note")
        assert "at IoU 0.50" in note
        # the IoU threshold: typed in the slider's box, applied when the box is left
        page.locator("#eval-iou input[type=number]").fill("0.75")
        page.locator("#eval-iou input[type=number]").press("Tab")
        page.locator("#eval-list-note").get_by_text("at IoU 0.75").wait_for()
        _settled(page)
        note = _text(page, "eval-list-note")
        page.locator("#eval-summary").get_by_text("IoU 0.75").first.wait_for()
        want = np.union1d(*[browse.select_images(r.at(0.75), evalset.gt.cat, 0.3, None, "any")
                            for r in evalset.runs])
        assert re.search(r"(\d+) images match", note).group(1) == str(want.size)
        pos = _text(page, "eval-position")
        image_id = int(re.search(r"· id (\d+) ·", pos).group(1))
        j = int(np.flatnonzero(evalset.gt.image_ids == image_id)[0])
        counts = browse.image_view(evalset.runs[0].ev, evalset.runs[0].at(0.75), j, 0.3).counts
        assert "yolox_nano: TP {} FP {} FN {}".format(*counts) in pos  # the drawn image's, at 0.75
        _loaded(page, "eval-view-a")
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)

        # a ground truth that is not JSON: refused, said under the Evaluate button, the view stays
        shot = "evaluate_refused.png"
        bad = tmp_path / "notes.json"
        bad.write_text("these are notes, not JSON")
        page.get_by_text("Evaluate results files").click()  # the accordion
        page.locator("#eval-gt input[type=file]").set_input_files(str(bad))
        page.locator("#eval-a input[type=file]").set_input_files(str(evalset.runs[0].path))
        page.locator("#eval-a").get_by_text("yolox_nano.json").first.wait_for()
        page.locator("#eval-load").click()
        page.locator("#eval-load-status").get_by_text("notes.json: malformed JSON").wait_for()
        assert _text(page, "eval-load-status").startswith("Error:")
        page.wait_for_timeout(500)  # the redraw lands
        _settled(page)
        assert "11 images, all found on disk" in _text(page, "eval-summary")
        assert _text(page, "eval-position") == pos and _text(page, "eval-list-note") == note
        _no_error_markers(page)
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
        # the next action that works clears the message
        page.locator("#eval-next").click()
        page.locator("#eval-position").get_by_text(f"Image 2 of {want.size}").wait_for()
        page.wait_for_function("() => !document.querySelector('#eval-load-status').innerText.trim()")
        shot = None
    finally:
        if shot:
            page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
        page.close()


# ---- segm: mask outlines on the real images ---------------------------------------------------
def segm_results(coco11, out, seed: int = 0):
    """Mask "predictions" made from the 11 images' own polygons: moved by ~8% of the object's
    size, a fifth left out (misses), a tenth with another class, scores random. Polygon
    results, as COCO allows."""
    import json

    rng = np.random.default_rng(seed)
    data = json.loads(coco11.read_text())
    cats = [c["id"] for c in data["categories"]]
    recs = []
    for a in data["annotations"]:
        if a["iscrowd"] or not isinstance(a["segmentation"], list) or rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        dx, dy = rng.normal(0, 0.08) * w, rng.normal(0, 0.08) * h
        polys = [(np.asarray(p, float).reshape(-1, 2) + [dx, dy]).reshape(-1).round(2).tolist()
                 for p in a["segmentation"]]
        cat = int(rng.choice(cats)) if rng.random() < 0.1 else a["category_id"]
        recs.append({"image_id": a["image_id"], "category_id": cat, "segmentation": polys,
                     "bbox": [x + dx, y + dy, w, h], "score": round(float(rng.random()), 4)})
    out.write_text(json.dumps(recs))
    return out


@pytest.fixture(scope="module")
def segm_served(coco11, tmp_path_factory):
    from detseg.serve import evalset as es_mod
    from detseg.serve.app import ServeOptions, build_app, launch, make_context
    from detseg.serve.limits import Limits
    from detseg.serve.models import ModelHub, detector_specs
    from tests.serve.conftest import free_port

    d = tmp_path_factory.mktemp("segm_served")
    es = es_mod.load_evalset(coco11, [segm_results(coco11, d / "masks.json")], "segm")
    ctx = make_context(ModelHub(detector_specs([])), Limits(), d / "out")
    options = ServeOptions(samples=False)
    demo = build_app(ctx, options, es)
    url = launch(demo, ctx, port=free_port(), options=options, block=False, quiet=True)
    try:
        yield url, es
    finally:
        demo.close()


def test_segm_evaluation_shows_mask_outlines(segm_served, browser) -> None:
    """The picture served for a segm evaluation is the outline drawing, not the box one:
    where the two differ, the page's pixels are the outline drawing's."""
    import io

    from PIL import Image

    from detseg.serve import evalset as es_mod

    url, es = segm_served
    page = _new_page(browser, 1600)
    try:
        _open(page, url)
        assert "(segm)" in _text(page, "eval-summary")
        page.locator("#eval-position").get_by_text("Image 1 of").wait_for()
        _loaded(page, "eval-view-a")
        page.screenshot(path=str(ARTIFACTS / "evaluate_segm.png"), full_page=True)
        image_id = int(re.search(r"· id (\d+) ·", _text(page, "eval-position")).group(1))
        src = page.locator("#eval-view-a img").get_attribute("src")
        shown = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"), np.int16)
    finally:
        page.close()
    j = int(np.flatnonzero(es.gt.image_ids == image_id)[0])
    r = es.runs[0]
    v = browse.image_view(r.ev, r.outcomes, j, 0.3)
    image, found = es_mod.read_image_or_blank(es, j)
    g, d = es_mod.view_outlines(es, 0, v)
    masks = es_mod.draw_view(image, v, es.cat_names, gt_outlines=g, det_outlines=d).astype(np.int16)
    boxes = es_mod.draw_view(image, v, es.cat_names).astype(np.int16)
    assert found and shown.shape == masks.shape
    where = np.abs(masks - boxes).sum(axis=2) > 150  # outline or box pixels, not both
    assert where.sum() > 500
    to_masks = np.abs(shown - masks).sum(axis=2)[where].mean()
    to_boxes = np.abs(shown - boxes).sum(axis=2)[where].mean()
    assert to_masks < 0.3 * to_boxes, (to_masks, to_boxes)  # JPEG: close, never equal
