"""Letterbox pre-processing against the references: Ultralytics LetterBox and YOLOX preproc."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detseg.errors import InputError
from detseg.pipeline.preprocess import (
    boxes_to_original,
    letterbox,
    letterbox_params,
    preprocess_batch,
)
from tests.pipeline.ultralytics_env import import_ultralytics

SIZES = [
    (480, 640),
    (640, 480),
    (427, 640),
    (333, 500),
    (1080, 810),
    (720, 1280),
    (37, 1000),
    (1000, 3),
    (320, 320),
    (100, 100),
    (1, 1),
    (5, 4000),
]


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _yolox_preproc(img, input_size):
    """YOLOX's own preproc (yolox/data/data_augment.py), without the channel swap."""
    padded = np.ones((input_size[0], input_size[1], 3), dtype=np.uint8) * 114
    r = min(input_size[0] / img.shape[0], input_size[1] / img.shape[1])
    resized = cv2.resize(
        img, (int(img.shape[1] * r), int(img.shape[0] * r)), interpolation=cv2.INTER_LINEAR
    )
    padded[: int(img.shape[0] * r), : int(img.shape[1] * r)] = resized
    return padded, r


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("input_size", [(320, 320), (640, 640), (256, 320)])
def test_center_matches_ultralytics_letterbox(size, input_size):
    import_ultralytics()
    from ultralytics.data.augment import LetterBox

    img = _image(*size)
    ref = LetterBox(input_size, auto=False, stride=32)(image=img)
    out, t = letterbox(img, input_size, "center")
    np.testing.assert_array_equal(out, ref)
    assert t.orig_size == size and t.input_size == input_size


@pytest.mark.parametrize("size", SIZES)
def test_topleft_matches_yolox_preproc(size):
    img = _image(*size)
    if (
        int(size[0] * min(416 / size[0], 416 / size[1])) == 0
        or int(size[1] * min(416 / size[0], 416 / size[1])) == 0
    ):
        # YOLOX's preproc would ask cv2 for a zero side and fail; detseg keeps one pixel.
        out, t = letterbox(img, (416, 416), "topleft")
        assert min(t.resized) == 1 and out.shape == (416, 416, 3)
        return
    ref, r = _yolox_preproc(img, (416, 416))
    out, t = letterbox(img, (416, 416), "topleft")
    np.testing.assert_array_equal(out, ref)
    assert t.gain == (r, r) and t.pad == (0, 0)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("input_size", [(320, 320), (640, 480)])
def test_boxes_to_original_matches_ultralytics_scale_boxes(size, input_size):
    import_ultralytics()
    import torch
    from ultralytics.utils.ops import scale_boxes

    rng = np.random.default_rng(1)
    xy = rng.uniform(-20, max(input_size) + 20, (50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 200, (50, 2))], axis=1).astype(np.float32)
    ref = scale_boxes(input_size, torch.from_numpy(boxes.copy()), size).numpy()
    t = letterbox_params(size, input_size, "center")
    np.testing.assert_allclose(boxes_to_original(boxes, t), ref, rtol=1e-5, atol=1e-3)


def test_topleft_boxes_divide_by_ratio():
    t = letterbox_params((480, 640), (416, 416), "topleft")
    boxes = np.array([[10, 20, 100, 200], [0, 0, 416, 416]], np.float32)
    r = 416 / 640
    np.testing.assert_allclose(boxes_to_original(boxes, t)[0], boxes[0] / r, rtol=1e-6)
    np.testing.assert_allclose(boxes_to_original(boxes, t)[1], [0, 0, 640, 480])  # clipped


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 2000),
    w=st.integers(1, 2000),
    H=st.sampled_from([320, 416, 640]),
    placement=st.sampled_from(["center", "topleft"]),
)
def test_box_round_trip(h, w, H, placement):
    """A box over the whole image maps to the resized region and back to the whole image."""
    t = letterbox_params((h, w), (H, H), placement)
    (left, top), (nh, nw) = t.pad, t.resized
    assert 0 <= left and left + nw <= H and 0 <= top and top + nh <= H
    inp = np.array([[left, top, left + nw, top + nh]], np.float32)
    back = boxes_to_original(inp, t)
    if placement == "center":  # gains come from the rounded size: exact
        np.testing.assert_allclose(back[0], [0, 0, w, h], rtol=1e-5, atol=1e-3)
    else:  # YOLOX truncates the size: off by less than one input pixel / r
        assert np.abs(back[0] - [0, 0, w, h]).max() <= 1 / min(t.gain) + 1e-3


def test_batch_tensor_layout_channels_and_scale():
    a, b = _image(100, 200, 1), _image(300, 100, 2)
    tensor, ts = preprocess_batch([a, b], (64, 64), "center", 114, "RGB", 1 / 255)
    assert tensor.shape == (2, 3, 64, 64) and tensor.dtype == np.float32
    for i, im in enumerate([a, b]):
        canvas, t = letterbox(im, (64, 64), "center")
        assert t == ts[i]
        np.testing.assert_allclose(
            tensor[i], canvas.transpose(2, 0, 1) / np.float32(255), rtol=1e-6
        )
    bgr, _ = preprocess_batch([a], (64, 64), "topleft", 114, "BGR", 1.0)
    canvas, _ = letterbox(a, (64, 64), "topleft")
    np.testing.assert_array_equal(bgr[0], canvas[:, :, ::-1].transpose(2, 0, 1).astype(np.float32))
    assert bgr[0, 0, -1, -1] == 114  # padding value, unscaled


@pytest.mark.parametrize(
    "bad,message",
    [
        (
            np.zeros((10, 10), np.uint8),
            r"expected an \(H, W, 3\) uint8 RGB array, found \(10, 10\)",
        ),
        (np.zeros((10, 10, 4), np.uint8), r"found \(10, 10, 4\)"),
        (np.zeros((10, 10, 3), np.float32), "expected dtype uint8, found float32"),
        (np.zeros((0, 10, 3), np.uint8), "non-empty"),
        ("image.jpg", "found str"),
    ],
)
def test_bad_images(bad, message):
    with pytest.raises(InputError, match=message):
        preprocess_batch([bad], (64, 64))


def test_empty_batch():
    with pytest.raises(InputError, match="at least one image"):
        preprocess_batch([], (64, 64))


# ---- minimum rectangle (Ultralytics' predictor `rect`, dynamic-size models) -------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("input_size", [(320, 320), (640, 640), (256, 320)])
@pytest.mark.parametrize("stride", [32, 16])
def test_rect_matches_ultralytics_letterbox_auto(size, input_size, stride):
    """Shape, padding and pixels of `LetterBox(auto=True)` (what `pre_transform` uses)."""
    import_ultralytics()
    from ultralytics.data.augment import LetterBox

    img = _image(*size)
    ref = LetterBox(input_size, auto=True, stride=stride)(image=img)
    out, t = letterbox(img, input_size, "center", stride=stride)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)
    assert t.input_size == ref.shape[:2]
    assert all((full - s) % stride == 0 for s, full in zip(t.input_size, input_size, strict=True))
    # Same resized image as the full-size letterbox: only the padding shrinks.
    assert t.resized == letterbox_params(size, input_size, "center").resized


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("input_size", [(320, 320), (640, 640)])
def test_rect_boxes_to_original_matches_ultralytics_scale_boxes(size, input_size):
    """Ultralytics maps boxes back from the rectangle's shape alone (`scale_boxes`)."""
    import_ultralytics()
    import torch
    from ultralytics.utils.ops import scale_boxes

    t = letterbox_params(size, input_size, "center", stride=32)
    rng = np.random.default_rng(2)
    xy = rng.uniform(-20, max(t.input_size) + 20, (50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 200, (50, 2))], axis=1).astype(np.float32)
    ref = scale_boxes(t.input_size, torch.from_numpy(boxes.copy()), size).numpy()
    np.testing.assert_allclose(boxes_to_original(boxes, t), ref, rtol=1e-5, atol=1e-3)


def test_rect_examples():
    """Hand-checked: a 4:3 photo at 640 gets 640x480 (no padding); 426x640 gets 448x640."""
    assert letterbox_params((480, 640), (640, 640), stride=32).input_size == (480, 640)
    t = letterbox_params((426, 640), (640, 640), stride=32)
    assert (t.input_size, t.pad, t.resized) == ((448, 640), (0, 11), (426, 640))
    assert letterbox_params((1080, 810), (320, 320), stride=32).input_size == (320, 256)
    with pytest.raises(InputError, match="stride"):
        letterbox_params((10, 10), (32, 32), stride=0)


def _pixels(tensor):
    """(B, 3, H, W) float RGB / 255 -> (B, H, W, 3) uint8."""
    return np.rint(tensor * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def test_preprocess_batch_rect_as_ultralytics_pre_transform():
    """A batch of one shape -> its rectangle (LetterBox(auto=True) per image); a batch mixing
    rectangles -> the full size (LetterBox(auto=False)), as the predictor's `pre_transform`."""
    import_ultralytics()
    from ultralytics.data.augment import LetterBox

    same = [_image(427, 640, seed) for seed in range(3)]
    tensor, ts = preprocess_batch(same, (640, 640), stride=32)
    ref = np.stack([LetterBox((640, 640), auto=True, stride=32)(image=im) for im in same])
    assert tensor.shape == (3, 3, 448, 640)
    np.testing.assert_array_equal(_pixels(tensor), ref)
    assert all(t.input_size == (448, 640) for t in ts)

    mixed = [_image(427, 640), _image(640, 480), _image(100, 100)]
    tensor, ts = preprocess_batch(mixed, (640, 640), stride=32)
    ref = np.stack([LetterBox((640, 640), auto=False, stride=32)(image=im) for im in mixed])
    np.testing.assert_array_equal(_pixels(tensor), ref)
    assert all(t.input_size == (640, 640) for t in ts)

    # Different shapes that need the same rectangle: each as LetterBox(auto=True) alone.
    near = [_image(427, 640), _image(426, 640), _image(425, 640)]
    tensor, _ = preprocess_batch(near, (640, 640), stride=32)
    ref = np.stack([LetterBox((640, 640), auto=True, stride=32)(image=im) for im in near])
    np.testing.assert_array_equal(_pixels(tensor), ref)
    # Without a stride nothing changes.
    assert preprocess_batch(same, (640, 640))[0].shape == (3, 3, 640, 640)
