"""Drawing detections: boxes land on their pixels, masks tint only their pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detseg.detections import Detections
from detseg.errors import InputError
from detseg.pipeline.draw import color_for, draw_detections, label_for, save_annotated


def _det(masks=None) -> Detections:
    return Detections(
        boxes=np.array([[20, 30, 60, 70]], np.float32), scores=np.array([0.9], np.float32),
        class_ids=np.array([2]), masks=masks, class_names={2: "car"}, image_size=(100, 120),
    )


def test_box_is_drawn_on_its_edges_and_input_is_untouched() -> None:
    image = np.zeros((100, 120, 3), np.uint8)
    out = draw_detections(image, _det())
    assert not image.any()  # a copy is returned
    assert tuple(out[50, 20]) == color_for(2)  # left edge, away from the label
    assert not out[50, 40].any()  # inside the box, no mask: untouched
    assert not out[90, 110].any()


def test_mask_tints_only_its_pixels() -> None:
    image = np.full((100, 120, 3), 200, np.uint8)
    masks = np.zeros((1, 100, 120), bool)
    masks[0, 40:60, 30:50] = True
    out = draw_detections(image, _det(masks), mask_alpha=0.5)
    expected = (200 * 0.5 + np.array(color_for(2)) * 0.5).astype(np.uint8)
    assert np.array_equal(out[50, 40], expected)
    assert np.array_equal(out[50, 55], [200, 200, 200])  # inside the box, outside the mask
    # RLE masks draw the same
    rle = _det(masks).masks_as_rle()
    assert np.array_equal(draw_detections(image, _det(rle), mask_alpha=0.5), out)


@pytest.mark.parametrize(
    ("image", "det", "message"),
    [
        (np.zeros((100, 120), np.uint8), _det(), "expected \\(H, W, 3\\) uint8"),
        (np.zeros((100, 120, 3), np.float32), _det(), "expected \\(H, W, 3\\) uint8"),
        (np.zeros((50, 60, 3), np.uint8), _det(np.zeros((1, 100, 120), bool)), "to match the image"),
    ],
)
def test_bad_inputs(image, det, message) -> None:
    with pytest.raises(InputError, match=message):
        draw_detections(image, det)


def test_labels_and_saving(tmp_path: Path) -> None:
    assert label_for(2, 0.5, {2: "car"}) == "car 0.50"
    assert label_for(7, None, {2: "car"}) == "7"
    path = save_annotated(tmp_path / "a" / "x.png", np.zeros((100, 120, 3), np.uint8), _det())
    saved = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert tuple(saved[50, 20]) == color_for(2)
    with pytest.raises(InputError, match="could not write"):
        save_annotated(tmp_path / "x.unknownext", np.zeros((10, 10, 3), np.uint8), _det()[[]])
