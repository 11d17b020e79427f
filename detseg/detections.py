"""The one type that carries detections from the pipeline to eval and serve.

Inside detseg boxes are always xyxy in absolute pixels of the original image (x to the right,
y down, a box covers ``x1 <= x < x2``). COCO's xywh exists only at the JSON boundary
(`Detections.to_coco` / `Detections.from_coco`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detseg.errors import InputError

# A COCO compressed RLE: {"size": [height, width], "counts": str}.
Rle = dict


def _check_array(name: str, value: Any, ndim: int, last: int | None, n: int | None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != ndim or (last is not None and arr.shape[-1] != last) or (
        n is not None and arr.shape[0] != n
    ):
        want = ["N" if n is None else str(n)] + (["*"] * (ndim - 1))
        if last is not None:
            want[-1] = str(last)
        raise InputError(
            f"Detections.{name}: expected shape ({', '.join(want)}), found {arr.shape}"
        )
    return arr


@dataclass
class Detections:
    """Detections of one image.

    Attributes:
        boxes: (N, 4) float32, xyxy in pixels of the original image.
        scores: (N,) float32 confidence in [0, 1].
        class_ids: (N,) int64 class indices of the model (or COCO category ids after
            `from_coco`).
        masks: optional instance masks, either an (N, H, W) bool array at the original
            image resolution or a list of N COCO compressed RLE dicts.
        class_names: optional mapping class id -> name.
        image_size: optional (height, width) of the original image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    masks: np.ndarray | list[Rle] | None = None
    class_names: Mapping[int, str] | None = field(default=None, repr=False)
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        boxes = _check_array("boxes", self.boxes, 2, 4, None)
        n = boxes.shape[0]
        self.boxes = boxes.astype(np.float32, copy=False)
        self.scores = _check_array("scores", self.scores, 1, None, n).astype(np.float32, copy=False)
        self.class_ids = _check_array("class_ids", self.class_ids, 1, None, n).astype(
            np.int64, copy=False
        )
        if not np.isfinite(self.boxes).all():
            raise InputError("Detections.boxes: expected finite values, found NaN or inf")
        if self.masks is not None:
            if isinstance(self.masks, np.ndarray):
                masks = _check_array("masks", self.masks, 3, None, n)
                if masks.dtype != bool:
                    raise InputError(
                        f"Detections.masks: expected a bool array, found dtype {masks.dtype}"
                    )
                if self.image_size is not None and masks.shape[1:] != tuple(self.image_size):
                    raise InputError(
                        f"Detections.masks: expected (N, {self.image_size[0]}, "
                        f"{self.image_size[1]}) to match image_size, found {masks.shape}"
                    )
                self.masks = masks
            else:
                masks = list(self.masks)
                if len(masks) != n:
                    raise InputError(
                        f"Detections.masks: expected {n} RLE dicts, found {len(masks)}"
                    )
                for i, m in enumerate(masks):
                    if not isinstance(m, Mapping) or "size" not in m or "counts" not in m:
                        raise InputError(
                            f"Detections.masks[{i}]: expected an RLE dict with 'size' and "
                            f"'counts', found {type(m).__name__}"
                        )
                self.masks = masks
        if self.image_size is not None:
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def empty(
        cls,
        image_size: tuple[int, int] | None = None,
        with_masks: bool = False,
        class_names: Mapping[int, str] | None = None,
    ) -> Detections:
        """No detections. ``with_masks`` gives a (0, H, W) mask array (needs image_size)."""
        masks = None
        if with_masks:
            h, w = image_size if image_size is not None else (0, 0)
            masks = np.zeros((0, h, w), dtype=bool)
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            masks=masks,
            class_names=class_names,
            image_size=image_size,
        )

    @classmethod
    def merge(cls, items: Sequence[Detections]) -> Detections:
        """Concatenate detections of the same image."""
        if not items:
            return cls.empty()
        masks: Any = None
        if all(d.masks is not None for d in items):
            if all(isinstance(d.masks, np.ndarray) for d in items):
                masks = np.concatenate([d.masks for d in items], axis=0)
            else:
                masks = [m for d in items for m in d.masks_as_rle()]
        return cls(
            boxes=np.concatenate([d.boxes for d in items]),
            scores=np.concatenate([d.scores for d in items]),
            class_ids=np.concatenate([d.class_ids for d in items]),
            masks=masks,
            class_names=items[0].class_names,
            image_size=items[0].image_size,
        )

    # ---- container protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: Any) -> Detections:
        """Boolean mask, integer array or slice over detections; always returns Detections."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        idx = np.arange(len(self))[index]
        masks: Any = None
        if isinstance(self.masks, np.ndarray):
            masks = self.masks[idx]
        elif self.masks is not None:
            masks = [self.masks[i] for i in np.atleast_1d(idx)]
        return Detections(
            boxes=self.boxes[idx],
            scores=self.scores[idx],
            class_ids=self.class_ids[idx],
            masks=masks,
            class_names=self.class_names,
            image_size=self.image_size,
        )

    # ---- masks ----------------------------------------------------------------------------
    def masks_as_rle(self) -> list[Rle]:
        """Masks as COCO compressed RLE dicts with ``counts`` as str (JSON-ready)."""
        if self.masks is None:
            raise InputError("Detections.masks: expected masks, found None (a detect-only model?)")
        if not isinstance(self.masks, np.ndarray):
            return list(self.masks)
        from detseg.data.rle import encode_masks  # pycocotools' strings, from the masks' boxes

        return encode_masks(self.masks)

    def masks_as_array(self) -> np.ndarray:
        """Masks as an (N, H, W) bool array."""
        if self.masks is None:
            raise InputError("Detections.masks: expected masks, found None (a detect-only model?)")
        if isinstance(self.masks, np.ndarray):
            return self.masks
        from pycocotools import mask as mask_utils

        if len(self) == 0:
            h, w = self.image_size or (0, 0)
            return np.zeros((0, h, w), dtype=bool)
        rles = [dict(m, counts=m["counts"].encode("ascii")) if isinstance(m["counts"], str) else m
                for m in self.masks]
        return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)

    # ---- COCO boundary ------------------------------------------------------------------
    def to_coco(
        self,
        image_id: int | str,
        category_ids: Sequence[int] | Mapping[int, int] | None = None,
        with_masks: bool = True,
    ) -> list[dict]:
        """COCO results records: ``bbox`` as xywh, ``segmentation`` as compressed RLE.

        ``category_ids`` maps class ids to COCO category ids (a sequence indexed by class id
        or a mapping); without it the class id is written as the category id. The COCO
        boundary's one conversion and rounding rule (`detseg.data.coco.detections_to_records`).
        """
        from detseg.data.coco import detections_to_records

        return detections_to_records(self, image_id, category_ids, with_masks)

    @classmethod
    def from_coco(
        cls,
        records: Sequence[Mapping[str, Any]],
        image_size: tuple[int, int] | None = None,
        class_names: Mapping[int, str] | None = None,
    ) -> Detections:
        """Detections from COCO results (or annotation) records of one image.

        ``class_ids`` become the records' ``category_id``. Annotations without a score get
        score 1. Masks are kept as RLE when every record has a ``segmentation`` (polygons are
        converted, which needs ``image_size``).
        """
        from detseg.data.coco import xywh_to_xyxy

        n = len(records)
        xywh = np.zeros((n, 4), np.float64)
        for i, r in enumerate(records):
            try:
                xywh[i] = [float(v) for v in r["bbox"]]
            except (KeyError, TypeError, ValueError):
                raise InputError(
                    f"record {i}: field 'bbox': expected [x, y, width, height], "
                    f"found {r.get('bbox')!r}"
                ) from None
        boxes = xywh_to_xyxy(xywh).astype(np.float32)
        scores = np.array([float(r.get("score", 1.0)) for r in records], np.float32)
        class_ids = np.array([int(r["category_id"]) for r in records], np.int64)
        masks = None
        if n and all("segmentation" in r for r in records):
            masks = [_to_rle(r["segmentation"], image_size, i) for i, r in enumerate(records)]
        return cls(boxes, scores, class_ids, masks, class_names, image_size)


def _to_rle(segm: Any, image_size: tuple[int, int] | None, i: int) -> Rle:
    from pycocotools import mask as mask_utils

    if isinstance(segm, Mapping) and isinstance(segm.get("counts"), str):
        return dict(segm)
    if image_size is None:
        raise InputError(
            f"record {i}: field 'segmentation': polygons and uncompressed RLE need the image "
            "size, found image_size=None"
        )
    h, w = image_size
    if isinstance(segm, Mapping):  # uncompressed RLE (counts as a list)
        rle = mask_utils.frPyObjects(dict(segm), h, w)
    else:
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
