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


@pytest.mark.parametrize(
    ("shape", "expected"), [((48, 64, 3), 10.0), ((320, 320, 3), 2.0), ((640, 480, 3), 1.0)]
)
def test_small_images_are_enlarged(shape, expected) -> None:
    assert view_scale(shape, 1024, min_side=640) == expected


def test_a_small_image_is_shown_enlarged_with_the_click_in_place() -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    view = sam_view(image, None, Prompt(points=((32.0, 24.0),), labels=(1,)), max_side=1024, min_side=640)
    assert view.shape == (480, 640, 3)
    assert tuple(view[240, 320]) == POSITIVE_RGB


def test_labels_do_not_cover_each_other() -> None:
    from detseg.serve.render import place_labels

    # five boxes starting at the same corner: the naive "above the box" spot is shared
    boxes = np.array([[100, 100, 300 + 10 * i, 260 + 10 * i] for i in range(5)], float)
    rects = place_labels(boxes, [(90, 18)] * 5, 640, 480)
    for i in range(5):
        x1, y1, x2, y2 = rects[i]
        assert 0 <= x1 and x2 <= 640 and 0 <= y1 and y2 <= 480
        for j in range(i):
            a, b = rects[i], rects[j]
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (i, j)


def test_each_instance_has_its_own_colour() -> None:
    from detseg.detections import Detections
    from detseg.serve.render import detections_view, instance_color

    image = np.zeros((200, 300, 3), np.uint8)
    masks = np.zeros((2, 200, 300), bool)
    masks[0, 20:80, 20:80] = True
    masks[1, 120:180, 200:280] = True
    dets = Detections(boxes=np.array([[20, 20, 80, 80], [200, 120, 280, 180]], np.float32),
                      scores=np.array([0.9, 0.8], np.float32), class_ids=np.array([3, 3]),
                      masks=masks, class_names={3: "cat"})
    view = detections_view(image, dets)  # same class, two instances
    c0, c1 = view[50, 50].astype(int), view[160, 240].astype(int)
    assert instance_color(0) != instance_color(1)
    assert np.abs(c0 - np.asarray(instance_color(0)) * 0.45).max() <= 2
    assert np.abs(c1 - np.asarray(instance_color(1)) * 0.45).max() <= 2
