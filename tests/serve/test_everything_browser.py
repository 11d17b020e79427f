"""Segment everything in a real browser: press the button, see the masks, pick one, download.

Uses test_browser's chromium fixtures (skipped, saying why, without /usr/bin/chromium).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.serve.conftest import builtin_sam
from tests.serve.test_browser import (  # noqa: F401 - fixtures
    ARTIFACTS,
    _element_pixels,
    _no_error_markers,
    _status,
    _wait_new_image,
    browser,
    page,
)

pytestmark = pytest.mark.browser


@pytest.fixture()
def pick_calls(monkeypatch) -> list:
    """The indices that `everything.pick` was called with (the app runs in-process)."""
    from detseg.serve import everything

    calls: list = []
    real = everything.pick

    def counting(ctx, session, index):
        calls.append(index)
        return real(ctx, session, index)

    monkeypatch.setattr(everything, "pick", counting)
    return calls


def test_segment_everything_then_pick_a_mask_and_download_it(page, pick_calls) -> None:  # noqa: F811
    if builtin_sam() is None:
        pytest.skip("the embedded SAM is not packaged: a random-weight SAM finds no shapes")
    page.get_by_text("shapes 1", exact=True).click()
    page.locator("#status").get_by_text("shapes_sample_1.png").wait_for()
    _wait_new_image(page, "sam-canvas")
    canvas = page.locator("#sam-canvas img")
    before, src = _element_pixels(canvas), canvas.get_attribute("src")

    page.get_by_role("button", name="Segment everything").click()
    page.locator("#sam-status").get_by_text(re.compile(r"\d+ masks")).wait_for()
    _wait_new_image(page, "sam-canvas", src)
    page.wait_for_timeout(500)
    n = int(re.search(r"(\d+) masks", _status(page, "sam-status")).group(1))
    assert n >= 1 and "16x16 points" in _status(page, "sam-status")
    after = _element_pixels(canvas)
    assert (np.abs(after - before).max(axis=2) > 40).mean() > 0.01, "no masks drawn"
    page.screenshot(path=str(ARTIFACTS / "serve_segment_everything.png"), full_page=True)

    src = canvas.get_attribute("src")
    page.locator("#everything-masks input").click()
    options = page.get_by_role("option")
    assert options.count() == n
    page.get_by_role("option", name=re.compile(rf"^#{n - 1}\s")).click()
    page.locator("#sam-status").get_by_text("1 positive click").wait_for()
    _wait_new_image(page, "sam-canvas", src)
    assert page.locator("#candidates input[type=radio]").count() == 3
    page.get_by_role("button", name="Download mask").click()
    page.locator("#sam-tools").get_by_text(".png").wait_for()  # the name is shortened
    _no_error_markers(page)
    assert pick_calls == [n - 1]  # one choice in the dropdown, one decoder run
