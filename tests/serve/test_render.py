"""Pictures of the demo, checked against plain per-pixel arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from detseg.serve.render import MASK_RGB, POSITIVE_RGB, overlay_mask, sam_view, view_scale
from detseg.serve.state import Prompt


def test_overlay_blends_inside_and_keeps_outside() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:50, 20:60] = True
    out = overlay_mask(image, mask, alpha=0.5)
    inner = np.zeros_like(mask)
    inner[14:46, 24:56] = True  # away from the outline
    expected = image.astype(np.float64) * 0.5 + np.asarray(MASK_RGB) * 0.5
    for y, x in zip(*np.nonzero(inner), strict=True):
        assert np.abs(out[y, x].astype(int) - expected[y, x]).max() <= 1
    far = np.ones_like(mask)
    far[6:54, 16:64] = False
    assert np.array_equal(out[far], image[far])
    assert np.array_equal(overlay_mask(image, np.zeros_like(mask)), image)


@pytest.mark.parametrize(
    ("shape", "max_side", "expected"),
    [((100, 200, 3), 1024, 1.0), ((2048, 1024, 3), 1024, 0.5), ((1000, 4000, 3), 1000, 0.25)],
)
def test_view_scale(shape, max_side, expected) -> None:
    assert view_scale(shape, max_side) == expected


def test_big_images_are_shown_scaled_with_prompts_in_place() -> None:
    image = np.zeros((2000, 3000, 3), np.uint8)
    view = sam_view(image, None, Prompt(points=((1500.0, 1000.0),), labels=(1,)), max_side=1000)
    assert view.shape == (667, 1000, 3)
    assert tuple(view[333, 500]) == POSITIVE_RGB  # the click, drawn at its scaled position
