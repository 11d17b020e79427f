"""COCO evaluation piece by piece: `update()` as results arrive, `merge()` shards, `compute()`.

    from detseg.eval.evaluator import CocoEvaluator
    ev = CocoEvaluator("instances.json", "segm")
    for image_id, dets in results_stream:        # a training loop, a batch job ...
        ev.update(image_id, dets)                # Detections (class_ids = category ids) or records
    shard_b = ...                                # filled on another worker (it pickles)
    ev.merge(shard_b)
    result = ev.compute()                        # a CocoEvaluation, as `evaluate()` gives

`compute()` gives exactly what one `detseg.eval.evaluate` over all the results gives, bit for
bit, whatever the split into shards and the order of merging: pycocotools' evaluation depends
on the order of the results only inside an image (ties between equal scores), and each image's
results arrive in one `update()`; across images the accumulation orders them by image, not by
arrival. Results are checked and converted to arrays at `update()` (bad input is reported for
the image that brought it), through the same loader as a results file, so the state is compact
(about 60 bytes per box, plus the RLE string per mask) and merging is a concatenation; the
matching and the accumulation run once, vectorised over everything, in `compute()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from detseg.errors import InputError
from detseg.eval.loader import (
    IOU_TYPES,
    GroundTruth,
    Results,
    detections_to_records,
    load_ground_truth,
    load_results,
)
from detseg.eval.metrics import CocoEvaluation, EvalParams, evaluate

SOURCE = "<evaluator>"


class CocoEvaluator:
    """Streaming, mergeable COCO evaluation (same numbers as `detseg.eval.evaluate`).

    Args:
        gt: COCO instances (path, parsed dict or a loaded `GroundTruth`).
        iou_type: "bbox" or "segm".
        params: thresholds, maxDets and area ranges (pycocotools' defaults when None).
    """

    def __init__(self, gt: str | Path | Mapping | GroundTruth, iou_type: str = "bbox",
                 params: EvalParams | None = None) -> None:
        if iou_type not in IOU_TYPES:
            raise InputError(f"iou_type: expected one of {', '.join(IOU_TYPES)}, found {iou_type!r}")
        self.gt = gt if isinstance(gt, GroundTruth) else load_ground_truth(gt, iou_type)
        self.iou_type = iou_type
        self.params = params or EvalParams()
        self._index = {v: i for i, v in enumerate(self.gt.image_ids.tolist())}
        self._parts: dict[int, Results | None] = {}  # gt image index -> its results (None: none)
        self._box_branch: bool | None = None  # pycocotools' loadRes branch, fixed by the first

    # ---- filling ---------------------------------------------------------------------------
    def update(self, image_id: Any, detections: Any) -> None:
        """Add one image's results.

        Args:
            image_id: an image id of the ground truth; each image is updated once.
            detections: a `Detections` (boxes xyxy in pixels, class_ids holding COCO category
                ids, masks optional) or a list of COCO results records for this image.

        Raises:
            InputError: unknown or already updated image, or bad results (the message names the
                image and the field).
        """
        row = self._row(image_id)
        if row in self._parts:
            raise InputError(f"update(image_id={image_id!r}): this image was already updated; "
                             "give each image's results in one update()")
        if isinstance(detections, list):
            records = detections
            for i, rec in enumerate(records):
                if isinstance(rec, Mapping) and rec.get("image_id", image_id) != image_id:
                    raise InputError(f"update(image_id={image_id!r}): records[{i}]: field "
                                     f"'image_id': expected {image_id!r}, found {rec['image_id']!r}")
        else:
            records = detections_to_records({image_id: detections})
        if not records:
            self._parts[row] = None
            return
        branch = "bbox" in records[0] and records[0]["bbox"] != []
        if self._box_branch is None:
            self._box_branch = branch
        elif branch != self._box_branch:
            have = "with" if self._box_branch else "without"
            raise InputError(f"update(image_id={image_id!r}): records[0]: earlier results came "
                             f"{have} a 'bbox' field and these do not match; a results set is "
                             "either boxes (with optional masks) or masks only")
        try:
            part = load_results(records, self.gt, self.iou_type)
        except InputError as exc:
            raise InputError(f"update(image_id={image_id!r}): {exc}") from None
        self._parts[row] = part

    def update_many(self, results: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> None:
        """`update` for each ``(image_id, detections)`` of a mapping or an iterable of pairs."""
        items = results.items() if isinstance(results, Mapping) else results
        for image_id, dets in items:
            self.update(image_id, dets)

    def merge(self, *others: CocoEvaluator) -> CocoEvaluator:
        """Take in the images of evaluators filled elsewhere (same ground truth); returns self."""
        for other in others:
            if not isinstance(other, CocoEvaluator):
                raise InputError(f"merge: expected a CocoEvaluator, found {type(other).__name__}")
            if other.iou_type != self.iou_type or not _same_gt(other.gt, self.gt):
                raise InputError("merge: the evaluators were made for different ground truth or "
                                 f"iou_type ({self.iou_type!r} vs {other.iou_type!r})")
            both = self._parts.keys() & other._parts.keys()
            if both:
                first = self.gt.image_ids[min(both)]
                raise InputError(f"merge: {len(both)} image(s) were updated in both evaluators "
                                 f"(first: image_id {first!r}); each image belongs to one shard")
            if (other._box_branch is not None and self._box_branch is not None
                    and other._box_branch != self._box_branch):
                raise InputError("merge: one evaluator holds box results, the other mask-only "
                                 "results")
            self._parts.update(other._parts)
            if self._box_branch is None:
                self._box_branch = other._box_branch
        return self

    def reset(self) -> None:
        """Forget every result (keep the ground truth), e.g. between epochs."""
        self._parts.clear()
        self._box_branch = None

    def __len__(self) -> int:
        """Images updated so far."""
        return len(self._parts)

    @property
    def image_ids(self) -> list:
        """The image ids updated so far, in ground-truth order."""
        return [self.gt.image_ids[r].item() for r in sorted(self._parts)]

    # ---- the answer -------------------------------------------------------------------------
    def compute(self) -> CocoEvaluation:
        """Match and accumulate everything updated: `evaluate()` over all the results."""
        parts = [self._parts[r] for r in sorted(self._parts) if self._parts[r] is not None]
        if not parts:
            return evaluate(self.gt, [], self.iou_type, self.params)
        return evaluate(self.gt, _concat(parts), self.iou_type, self.params)

    def _row(self, image_id: Any) -> int:
        key = image_id.item() if isinstance(image_id, np.generic) else image_id
        try:
            return self._index[key]
        except (KeyError, TypeError):
            raise InputError(f"update(image_id={image_id!r}): unknown image id (not in the "
                             f"ground truth {self.gt.source})") from None


def _same_gt(a: GroundTruth, b: GroundTruth) -> bool:
    return a is b or (
        np.array_equal(a.image_ids, b.image_ids) and np.array_equal(a.cat_ids, b.cat_ids)
        and np.array_equal(a.ids, b.ids) and np.array_equal(a.bbox, b.bbox)
    )


def _concat(parts: Sequence[Results]) -> Results:
    segs = None
    if parts[0].segmentation is not None:
        segs = [s for p in parts for s in p.segmentation]
    return replace(
        parts[0], source=SOURCE,
        img=np.concatenate([p.img for p in parts]),
        cat=np.concatenate([p.cat for p in parts]),
        bbox=np.concatenate([p.bbox for p in parts]).reshape(-1, 4),
        area=np.concatenate([p.area for p in parts]),
        score=np.concatenate([p.score for p in parts]),
        segmentation=segs,
        warnings=[w for p in parts for w in p.warnings],
    )
