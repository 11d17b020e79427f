"""Confidence filtering and class-aware non-maximum suppression, in numpy.

Semantics follow Ultralytics' ``non_max_suppression`` with ``multi_label=False``:
each candidate keeps its best class only; candidates whose best class score is not above
``conf`` are dropped; at most ``max_nms`` highest-scoring candidates enter NMS; NMS is greedy
and per class (a box only suppresses boxes of its own class; with ``agnostic=True`` any box,
as Ultralytics' ``agnostic_nms`` and YOLOX's ONNX demo's ``class_agnostic``) with suppression
when ``IoU > iou``; at most ``max_det`` boxes are kept, highest score first.

Boxes are (N, 4) xyxy float arrays in any one pixel frame; IoU uses areas
``(x2 - x1) * (y2 - y1)`` (no +1), like torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Selection:
    """Result of `select`: which candidates were kept, best first.

    Attributes:
        index: (K,) int64 indices into the candidate arrays given to `select`.
        scores: (K,) float32 score of the kept class.
        class_ids: (K,) int64 kept class.
    """

    index: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) xyxy box with (N, 4) xyxy boxes -> (N,) float64."""
    xx1 = np.maximum(box[0], boxes[:, 0])
    yy1 = np.maximum(box[1], boxes[:, 1])
    xx2 = np.minimum(box[2], boxes[:, 2])
    yy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou: float, max_keep: int | None = None
) -> np.ndarray:
    """Greedy NMS over (N, 4) xyxy ``boxes`` and (N,) ``scores``.

    Returns (K,) int64 indices of kept boxes in descending score order (ties keep input order).
    Stops once ``max_keep`` boxes are kept (the result is then the same prefix).
    """
    boxes = np.asarray(boxes, np.float64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, j]) for j in range(4))
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    limit = len(order) if max_keep is None else max_keep
    while order.size and len(keep) < limit:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        if not rest.size:
            break
        # `iou_one_to_many`, with the coordinates and areas split out once for all rounds.
        inter = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        inter *= np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        union = areas[i] + areas[rest] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = np.where(union > 0, inter / union, 0.0)
        order = rest[overlap <= iou]
    return np.asarray(keep, np.int64)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou: float,
    max_keep: int | None = None,
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    One `nms` per class (each compares a box only with its own class's candidates, so a round
    costs the class's share of the candidates, not all of them), then the kept boxes of all
    classes best first (ties in input order) and the first ``max_keep``: the same boxes, in
    the same order, as one NMS over classes shifted apart in the plane (torchvision's
    ``batched_nms``, Ultralytics' class offset).
    """
    boxes = np.asarray(boxes, np.float64)
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    class_ids = np.asarray(class_ids)
    scores = np.asarray(scores, np.float64)
    kept = []
    for c in np.unique(class_ids):
        members = np.flatnonzero(class_ids == c)
        kept.append(members[nms(boxes[members], scores[members], iou, max_keep)])
    index = np.concatenate(kept)
    index = index[np.lexsort((index, -scores[index]))]
    return index if max_keep is None else index[:max_keep]


def select(
    boxes: np.ndarray,
    class_scores: np.ndarray,
    conf: float,
    iou: float,
    max_det: int,
    max_nms: int = 30000,
    agnostic: bool = False,
) -> Selection:
    """Best class per candidate, confidence filter, NMS, at most ``max_det``.

    Args:
        boxes: (N, 4) xyxy candidate boxes.
        class_scores: (N, C) per-class scores (already including objectness if any).
        conf: keep candidates whose best class score is > conf.
        iou: NMS IoU threshold (suppress when IoU > iou).
        max_det: maximum number of boxes kept.
        max_nms: maximum number of candidates entering NMS (highest scores first).
        agnostic: NMS across classes (a box suppresses overlapping boxes of any class) instead
            of per class.
    """
    n = class_scores.shape[0]
    if n == 0 or max_det <= 0:
        return _empty_selection()
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(n), class_ids]
    cand = np.flatnonzero(scores > conf)
    if cand.size == 0:
        return _empty_selection()
    if cand.size > max_nms:
        cand = cand[np.argsort(-scores[cand], kind="stable")[:max_nms]]
    if agnostic:
        kept = nms(boxes[cand], scores[cand], iou, max_keep=max_det)
    else:
        kept = batched_nms(boxes[cand], scores[cand], class_ids[cand], iou, max_keep=max_det)
    index = cand[kept]
    return Selection(
        index.astype(np.int64), scores[index].astype(np.float32), class_ids[index].astype(np.int64)
    )


def _empty_selection() -> Selection:
    return Selection(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
