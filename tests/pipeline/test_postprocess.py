"""NMS and candidate selection: vectorised code against a plain loop, tables, and Ultralytics."""

from __future__ import annotations

import numpy as np
import pytest

from detseg.pipeline.postprocess import batched_nms, iou_one_to_many, nms, select
from tests.pipeline.ultralytics_env import import_ultralytics


def _iou_loop(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_loop(boxes, scores, classes, iou):
    """Textbook greedy NMS, one pair at a time, boxes of other classes never compared."""
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])  # sorted() is stable
    keep = []
    for i in order:
        if all(classes[i] != classes[k] or _iou_loop(boxes[i], boxes[k]) <= iou for k in keep):
            keep.append(i)
    return keep


def _random_boxes(rng, n, extent=100.0):
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(1, extent / 3, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


# (boxes, scores, classes, iou, expected kept indices)
TABLE = [
    ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], [0, 0], 0.5, [0]),  # IoU 0.68 > 0.5
    ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], [0, 1], 0.5, [0, 1]),  # other class
    ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.7, 0.8], [0, 0], 0.5, [1, 0]),  # IoU 1/3 kept, by score
    ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.7, 0.8], [0, 0], 0.3, [1]),  # IoU 1/3 > 0.3
    ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5], [2, 2], 0.99, [0]),  # tie: first wins
    ([[0, 0, 10, 10], [0, 0, 5, 10]], [0.5, 0.6], [0, 0], 0.5, [1, 0]),  # IoU == 0.5: not > 0.5
    ([[0, 0, 10, 10], [0, 0, 5, 10]], [0.5, 0.6], [0, 0], 0.49, [1]),
    ([[0, 0, 0, 0], [0, 0, 0, 0]], [0.5, 0.6], [0, 0], 0.5, [1, 0]),  # empty boxes never overlap
    ([], [], [], 0.5, []),
]


@pytest.mark.parametrize("boxes,scores,classes,iou,expected", TABLE)
def test_nms_table(boxes, scores, classes, iou, expected):
    b = np.array(boxes, np.float32).reshape(-1, 4)
    got = batched_nms(b, np.array(scores), np.array(classes), iou).tolist()
    assert got == expected
    assert got == _nms_loop(b.tolist(), scores, classes, iou)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.65, 0.9])
def test_batched_nms_equals_plain_loop(seed, iou):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    boxes = _random_boxes(rng, n)
    scores = rng.random(n)
    classes = rng.integers(0, 4, n)
    assert batched_nms(boxes, scores, classes, iou).tolist() == _nms_loop(
        boxes, scores, classes, iou
    )


def test_max_keep_is_a_prefix():
    rng = np.random.default_rng(3)
    boxes, scores = _random_boxes(rng, 200), rng.random(200)
    full = nms(boxes, scores, 0.5)
    assert nms(boxes, scores, 0.5, max_keep=7).tolist() == full[:7].tolist()


def test_iou_one_to_many_equals_loop():
    rng = np.random.default_rng(4)
    boxes = _random_boxes(rng, 50)
    got = iou_one_to_many(boxes[0], boxes)
    np.testing.assert_allclose(got, [_iou_loop(boxes[0], b) for b in boxes])
    assert got[0] == pytest.approx(1.0)


def test_nms_matches_torchvision():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(5)
    boxes, scores = (
        _random_boxes(rng, 500, 300).astype(np.float32),
        rng.random(500).astype(np.float32),
    )
    ref = tv.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.45).numpy()
    assert nms(boxes, scores, 0.45).tolist() == ref.tolist()


def test_select_best_class_and_threshold():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.25, 0.3]], np.float32)
    sel = select(boxes, scores, conf=0.25, iou=0.5, max_det=10)
    # box 0 -> class 1, box 1 -> class 0 (different classes: both kept); box 2 best 0.3 > 0.25
    assert sel.index.tolist() == [0, 1, 2]
    assert sel.class_ids.tolist() == [1, 0, 1]
    np.testing.assert_allclose(sel.scores, [0.9, 0.8, 0.3])
    assert select(boxes, scores, conf=0.3, iou=0.5, max_det=10).index.tolist() == [0, 1]  # > not >=
    assert select(boxes, scores, conf=0.25, iou=0.5, max_det=1).index.tolist() == [0]
    assert select(boxes[:0], scores[:0], 0.1, 0.5, 10).index.shape == (0,)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "conf,iou,max_det", [(0.25, 0.45, 300), (0.01, 0.7, 50), (0.001, 0.65, 100)]
)
@pytest.mark.parametrize("agnostic", [False, True])
def test_select_matches_ultralytics_non_max_suppression(seed, conf, iou, max_det, agnostic):
    """Same kept boxes, scores, classes as Ultralytics' NMS on the same raw (1, 4 + nc, N) output,
    class-aware and class-agnostic (``agnostic_nms``)."""
    import_ultralytics()
    import torch
    from ultralytics.utils.nms import non_max_suppression

    rng = np.random.default_rng(seed)
    n, nc = 2000, 6
    xy = rng.uniform(0, 320, (n, 2))
    wh = rng.uniform(4, 80, (n, 2))
    cls = rng.random((n, nc)) ** 4  # mostly low scores, some high
    pred = np.concatenate([xy, wh, cls], axis=1).T[None].astype(np.float32)
    [ref] = non_max_suppression(
        torch.from_numpy(pred), conf, iou, max_det=max_det, agnostic=agnostic
    )
    ref = ref.numpy()

    from detseg.pipeline.heads import ultralytics_candidates

    cand = ultralytics_candidates(pred[0], 0, conf)
    sel = select(cand.boxes, cand.class_scores, conf, iou, max_det, agnostic=agnostic)
    assert len(sel.index) == len(ref) > 0
    np.testing.assert_allclose(cand.boxes[sel.index], ref[:, :4], atol=1e-3)
    np.testing.assert_allclose(sel.scores, ref[:, 4], rtol=1e-6)
    assert sel.class_ids.tolist() == ref[:, 5].astype(int).tolist()


@pytest.mark.parametrize("seed", range(4))
def test_agnostic_select_equals_plain_loop(seed):
    """Class-agnostic NMS: the textbook loop with every box in one class; it keeps fewer
    boxes than class-aware NMS on overlapping boxes of different classes."""
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 300).astype(np.float32)
    class_scores = (rng.random((300, 4)) ** 3).astype(np.float32)
    best = class_scores.max(axis=1)
    cand = [i for i in range(300) if best[i] > 0.05]
    loop = _nms_loop([boxes[i] for i in cand], [best[i] for i in cand], [0] * len(cand), 0.5)
    sel = select(boxes, class_scores, 0.05, 0.5, 1000, agnostic=True)
    assert sel.index.tolist() == [cand[k] for k in loop]
    aware = select(boxes, class_scores, 0.05, 0.5, 1000)
    assert len(aware.index) > len(sel.index)
