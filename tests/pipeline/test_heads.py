"""Head decoders: YOLOX grid decoding and Ultralytics candidates/masks against references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detseg.errors import ModelError
from detseg.pipeline.heads import (
    end2end_rows,
    process_masks,
    ultralytics_candidates,
    xywh_to_xyxy,
    yolox_candidates,
    yolox_grid,
)
from detseg.pipeline.preprocess import letterbox_params
from tests.pipeline.ultralytics_env import import_ultralytics


def _yolox_decode_loop(pred, input_size):
    """YOLOX's demo_postprocess, one row at a time: cell (x, y) per stride, row-major."""
    rows = []
    for s in (8, 16, 32):
        for y in range(input_size[0] // s):
            for x in range(input_size[1] // s):
                rows.append((x, y, s))
    out = []
    for (x, y, s), p in zip(rows, pred, strict=True):
        cx, cy = (p[0] + x) * s, (p[1] + y) * s
        w, h = math.exp(p[2]) * s, math.exp(p[3]) * s
        out.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.array(out)


@pytest.mark.parametrize("input_size", [(416, 416), (320, 256)])
def test_yolox_decode_equals_loop(input_size):
    grid, strides = yolox_grid(input_size)
    n = grid.shape[0]
    assert n == sum((input_size[0] // s) * (input_size[1] // s) for s in (8, 16, 32))
    rng = np.random.default_rng(0)
    pred = np.concatenate([rng.uniform(-1, 1, (n, 4)), rng.random((n, 1)), rng.random((n, 3))], 1)
    cand = yolox_candidates(pred.astype(np.float32), input_size, conf=-1.0)
    np.testing.assert_allclose(
        cand.boxes, _yolox_decode_loop(pred, input_size), rtol=1e-5, atol=1e-3
    )
    np.testing.assert_allclose(cand.class_scores, pred[:, 5:] * pred[:, 4:5], rtol=1e-6)


def test_yolox_conf_filter_uses_objectness_times_class():
    n = yolox_grid((64, 64))[0].shape[0]
    pred = np.zeros((n, 7), np.float32)
    pred[3, 4], pred[3, 5:] = 0.5, (0.9, 0.1)  # 0.45
    pred[7, 4], pred[7, 5:] = 0.9, (0.3, 0.2)  # 0.27
    pred[9, 4], pred[9, 5:] = 1.0, (0.1, 0.2)  # 0.2
    cand = yolox_candidates(pred, (64, 64), conf=0.25)
    np.testing.assert_allclose(cand.class_scores, [[0.45, 0.05], [0.27, 0.18]], rtol=1e-6)


def test_yolox_wrong_shape_is_a_model_error():
    with pytest.raises(
        ModelError, match=r"expected an output \(3549, 5 \+ nc\) for a 416x416 input"
    ):
        yolox_candidates(np.zeros((100, 85), np.float32), (416, 416), 0.1)


def test_ultralytics_candidates_filter_and_layout():
    pred = np.zeros((4 + 3 + 2, 5), np.float32)
    pred[:4, 1] = (50, 60, 20, 10)
    pred[4:7, 1] = (0.1, 0.7, 0.2)
    pred[7:, 1] = (1.5, -2.0)
    pred[4:7, 3] = (0.2, 0.1, 0.05)
    cand = ultralytics_candidates(pred, nm=2, conf=0.25)
    np.testing.assert_allclose(cand.boxes, [[40, 55, 60, 65]])
    np.testing.assert_allclose(cand.class_scores, [[0.1, 0.7, 0.2]])
    np.testing.assert_allclose(cand.coeffs, [[1.5, -2.0]])
    with pytest.raises(ModelError, match=r"expected an output \(4 \+ nc \+ 32, N\)"):
        ultralytics_candidates(np.zeros((30, 10), np.float32), nm=32, conf=0.1)


def test_xywh_to_xyxy():
    np.testing.assert_allclose(
        xywh_to_xyxy(np.array([[10, 20, 4, 6]], np.float32)), [[8, 17, 12, 23]]
    )


def test_end2end_rows():
    pred = np.array([[0, 0, 1, 1, 0.9, 3], [0, 0, 1, 1, 0.1, 1], [0, 0, 2, 2, 0.5, 2]], np.float32)
    assert end2end_rows(pred, 0.25, 300)[:, 5].tolist() == [3, 2]
    assert end2end_rows(pred, 0.25, 1)[:, 5].tolist() == [3]


def _mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


@pytest.mark.parametrize(
    "orig", [(480, 640), (640, 427), (1080, 810), (200, 300), (333, 500), (320, 320), (640, 640)]
)
@pytest.mark.parametrize("input_size", [(320, 320), (640, 640)])
def test_process_masks_matches_ultralytics(orig, input_size):
    """Same masks as Ultralytics' predictor: process_mask(upsample=True) then scale_masks."""
    import_ultralytics()
    import torch
    from ultralytics.utils.ops import process_mask, scale_masks

    rng = np.random.default_rng(sum(orig))
    nm, mh, mw = 32, input_size[0] // 4, input_size[1] // 4
    protos = rng.normal(0, 1, (nm, mh, mw)).astype(np.float32)
    k = 25
    coeffs = rng.normal(0, 1, (k, nm)).astype(np.float32)
    t = letterbox_params(orig, input_size, "center")
    (left, top), (nh, nw) = t.pad, t.resized
    xy = rng.uniform([left, top], [left + nw * 0.8, top + nh * 0.8], (k, 2))
    wh = rng.uniform(3, 150, (k, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    boxes[0] = (left + 1, top + 1, left + 1.5, top + 1.2)  # tiny box: may hold no pixel

    masks, keep = process_masks(protos, coeffs, boxes, t)

    ref = process_mask(
        torch.from_numpy(protos),
        torch.from_numpy(coeffs),
        torch.from_numpy(boxes),
        input_size,
        upsample=True,
    )
    ref_keep = (ref.amax((-2, -1)) > 0).numpy()
    ref = scale_masks(ref[ref_keep][None].float(), orig)[0].numpy() > 0.5
    assert keep.tolist() == ref_keep.tolist()
    assert masks.shape == ref.shape == (int(keep.sum()), *orig) and masks.dtype == bool
    ious = [_mask_iou(a, b) for a, b in zip(masks, ref, strict=True)]
    assert min(ious) >= 0.99, ious
    assert np.mean([(a != b).mean() for a, b in zip(masks, ref, strict=True)]) < 1e-5


@pytest.mark.parametrize("proto_size", [(20, 20), (40, 30), (64, 64), (33, 50)])
def test_process_masks_any_upsampling_factor(proto_size):
    """Prototypes at 1/4 (Ultralytics), 1/8, 1/2 and non-integer factors of the input: both
    upsampling paths (cv2 for integer factors, torch's indices otherwise) match the reference."""
    import_ultralytics()
    import torch
    from ultralytics.utils.ops import process_mask

    input_size = (160, 160)
    rng = np.random.default_rng(proto_size[0] * 7 + proto_size[1])
    protos = rng.normal(0, 1, (32, *proto_size)).astype(np.float32)
    coeffs = rng.normal(0, 1, (40, 32)).astype(np.float32)
    xy = rng.uniform(0, 150, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 160, (40, 2))], 1).astype(np.float32)
    boxes[0] = (0, 0, 160, 160)  # whole frame: both edges of the clamped interpolation
    t = letterbox_params(input_size, input_size, "center")

    masks, keep = process_masks(protos, coeffs, boxes, t)

    ref = process_mask(torch.from_numpy(protos), torch.from_numpy(coeffs),
                       torch.from_numpy(boxes), input_size, upsample=True).numpy().astype(bool)
    assert keep.tolist() == ref.any(axis=(1, 2)).tolist()
    assert (masks != ref[keep]).sum() <= 2  # float rounding at logits within 1e-6 of 0


def test_process_masks_empty():
    t = letterbox_params((100, 200), (64, 64), "center")
    masks, keep = process_masks(
        np.zeros((32, 16, 16), np.float32),
        np.zeros((0, 32), np.float32),
        np.zeros((0, 4), np.float32),
        t,
    )
    assert masks.shape == (0, 100, 200) and keep.shape == (0,)
