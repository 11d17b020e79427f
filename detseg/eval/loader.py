"""Read and check COCO ground truth and results into flat arrays for evaluation.

Everything here fails with an `InputError` that names the file (or ``<memory>``), the record,
the field and the value, so that a bad results file never ends in a traceback from numpy or
pycocotools. Checks are vectorised (one pass of list comprehensions, then numpy) so that
reading 500k detections costs a fraction of a second; a slow per-record scan runs only to
find the culprit once something is known to be wrong.

Conventions match pycocotools exactly, because the numbers must: boxes stay in COCO's
``[x, y, width, height]`` (float64, as pycocotools' C code reads them), ground-truth ``area``
comes from the file, detection ``area`` follows ``COCO.loadRes`` (box area when the first
record carries a non-empty ``bbox``, mask area otherwise).
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from detseg.data.coco import (
    RleRecord,
    check_ids,
    read_json,
    read_results_records,
    results_from_detections,
)
from detseg.errors import InputError
from detseg.eval.rle import check_segmentations, rle_area_bbox, to_rles

MEMORY = "<memory>"
IOU_TYPES = ("bbox", "segm")


@dataclass
class GroundTruth:
    """COCO ground truth as arrays. Annotations keep the file order (it decides ties).

    Attributes:
        source: file name for messages, or ``<memory>``.
        image_ids: (I,) image ids in ascending order (pycocotools' ``params.imgIds``).
        image_hw: (I, 2) int64 height, width of each image (0 where the file has none).
        cat_ids: (K,) category ids in ascending order.
        cat_names: K category names, in ``cat_ids`` order.
        img, cat: (N,) int64 indices into ``image_ids`` / ``cat_ids``.
        ids: (N,) int64 annotation ids.
        bbox: (N, 4) float64 COCO ``[x, y, w, h]``.
        area: (N,) float64 the file's ``area`` field.
        crowd: (N,) bool ``iscrowd``.
        segmentation: the N raw ``segmentation`` fields (None where absent).
    """

    source: str
    image_ids: np.ndarray
    image_hw: np.ndarray
    cat_ids: np.ndarray
    cat_names: list[str]
    img: np.ndarray
    cat: np.ndarray
    ids: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    crowd: np.ndarray
    segmentation: list
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class Results:
    """Detection results as arrays, in file order (detection ``id`` = position + 1).

    Attributes:
        img, cat: (M,) int64 indices into the ground truth's ``image_ids`` / ``cat_ids``.
        bbox: (M, 4) float64 COCO ``[x, y, w, h]``.
        area: (M,) float64 as ``COCO.loadRes`` sets it.
        score: (M,) float64.
        segmentation: M raw ``segmentation`` fields, or None for box results.
    """

    source: str
    img: np.ndarray
    cat: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    score: np.ndarray
    segmentation: list | None
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.score.shape[0])


# ---- helpers ---------------------------------------------------------------------------------
def _source(obj: Any, what: str) -> tuple[str, Any]:
    """(name for messages, parsed data): reads the JSON when ``obj`` is a path."""
    if isinstance(obj, (str, Path)):
        return str(obj), read_json(obj, what)
    return MEMORY, obj


def _fmt(value: Any) -> str:
    return f"{value!r:.80}"


def _as_float64(values: list, width: int | None) -> np.ndarray | None:
    """Numbers (or rows of ``width`` numbers) -> float64 array; None if any entry is not.

    ``array.array("d")`` takes Python numbers (and numpy scalars) and rejects strings, None
    and nested lists, in one pass and much faster than ``np.array`` on a list of lists.
    """
    n = len(values)
    try:
        if width is None:
            flat = array.array("d", values)
        else:
            if n and not (np.fromiter(map(len, values), np.intp, n) == width).all():
                return None
            flat = array.array("d", itertools.chain.from_iterable(values))
    except (TypeError, ValueError, OverflowError):
        return None
    arr = np.frombuffer(flat, np.float64) if n else np.zeros(0)
    return arr.reshape((n,) if width is None else (n, width))


def _numeric(values: list, where: str, fieldname: str, width: int | None) -> np.ndarray:
    """Lists of numbers -> float64 array, or an InputError naming the first bad entry."""
    arr = _as_float64(values, width)
    if arr is None:
        for i, v in enumerate(values):
            items = [v] if width is None else (v if isinstance(v, (list, tuple)) else None)
            ok = items is not None and (width is None or len(items) == width) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in items
            )
            if not ok:
                want = "a number" if width is None else f"a list of {width} numbers"
                raise InputError(f"{where}[{i}]: field '{fieldname}': expected {want}, found {_fmt(v)}")
        raise InputError(f"{where}: field '{fieldname}': expected numbers, found values numpy cannot read")
    return arr


def _column(records: list, where: str, key: str, default: Any = ...) -> list:
    try:
        if default is ...:
            return [r[key] for r in records]
        return [r.get(key, default) for r in records]
    except (KeyError, TypeError, AttributeError):
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise InputError(f"{where}[{i}]: expected an object, found {type(r).__name__} {_fmt(r)}") from None
            if default is ... and key not in r:
                raise InputError(f"{where}[{i}]: missing field '{key}'") from None
        raise


def _lookup(values: list, lut: dict, where: str, key: str, known: str) -> np.ndarray:
    """Index of each id in ``lut`` (id -> index, ids ascending); unknown ids are an error."""
    keys = np.array(list(lut)) if lut else np.zeros(0, np.int64)
    try:
        arr = np.array(values) if values else np.zeros(0, np.int64)
    except (ValueError, TypeError, OverflowError):
        arr = np.zeros((0, 0))
    if arr.ndim == 1 and arr.dtype.kind in "iu" and keys.dtype.kind in "iu" and keys.size:
        # vectorised for the usual integer ids (bools are not ints here: dtype kind 'b')
        lo, hi = int(keys[0]), int(keys[-1])
        if hi - lo <= max(4 * arr.size, 1 << 20) and arr.size and lo <= arr.min() and arr.max() <= hi:
            table = np.full(hi - lo + 1, -1, np.int64)  # a dense table: one gather, no search
            table[keys - lo] = np.arange(keys.size)
            idx = table[arr - lo]
            if (idx >= 0).all():
                return idx
        idx = np.minimum(np.searchsorted(keys, arr), max(keys.size - 1, 0))
        if keys.size and (keys[idx] == arr).all():
            return idx.astype(np.int64)
    try:
        return np.fromiter((lut[v] for v in values), np.int64, len(values))
    except (KeyError, TypeError):
        for i, v in enumerate(values):
            try:
                lut[v]
            except (KeyError, TypeError):
                raise InputError(
                    f"{where}[{i}]: field '{key}': unknown {known} {_fmt(v)} (not in the ground truth)"
                ) from None
        raise


def _check_boxes(bbox: np.ndarray, where: str) -> None:
    if np.isfinite(bbox).all() and (bbox[:, 2:] >= 0).all():
        return  # the usual case; the per-box scan below only names the first bad box
    bad = ~np.isfinite(bbox).all(axis=1) | (bbox[:, 2] < 0) | (bbox[:, 3] < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        b = bbox[i].tolist()
        what = "NaN or infinite values" if not np.isfinite(bbox[i]).all() else "a negative width or height"
        raise InputError(
            f"{where}[{i}]: field 'bbox': expected [x, y, w, h] with finite values and w, h >= 0, "
            f"found {b} ({what})"
        )


# ---- ground truth ----------------------------------------------------------------------------
def load_ground_truth(gt: str | Path | Mapping, iou_type: str = "bbox") -> GroundTruth:
    """Read a COCO instances file (path or parsed dict) and check what evaluation relies on."""
    source, data = _source(gt, "ground-truth file")
    if not isinstance(data, Mapping):
        raise InputError(f"{source}: expected a COCO object with 'images', 'annotations', 'categories', found {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{source}: field '{key}': expected a list, found {_fmt(data.get(key))}")
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    img_ids = check_ids(images, f"{source}: images")
    cat_ids = check_ids(cats, f"{source}: categories")
    check_ids(anns, f"{source}: annotations", (int,))
    warnings: list[str] = []
    try:
        order = sorted(range(len(img_ids)), key=img_ids.__getitem__)
        corder = sorted(range(len(cat_ids)), key=cat_ids.__getitem__)
    except TypeError:
        raise InputError(f"{source}: image and category ids must all be integers (or all strings)") from None
    image_ids = [img_ids[i] for i in order]
    hw = np.zeros((len(images), 2), np.int64)
    for j, i in enumerate(order):
        for c, key in enumerate(("height", "width")):
            v = images[i].get(key, 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{source}: images[{i}]: field '{key}': expected a non-negative integer, found {_fmt(v)}")
            hw[j, c] = v
    names = [str(cats[i].get("name", cat_ids[i])) for i in corder]
    where = f"{source}: annotations"
    img_lut = {v: j for j, v in enumerate(image_ids)}
    cat_lut = {cat_ids[i]: j for j, i in enumerate(corder)}
    img = _lookup(_column(anns, where, "image_id"), img_lut, where, "image_id", "image id")
    cat = _lookup(_column(anns, where, "category_id"), cat_lut, where, "category_id", "category id")
    bbox = _numeric(_column(anns, where, "bbox"), where, "bbox", 4)
    _check_boxes(bbox, where)
    crowd_raw = _column(anns, where, "iscrowd", 0)
    for i, v in enumerate(crowd_raw):
        if v not in (0, 1):  # True/False compare equal to 1/0
            raise InputError(f"{where}[{i}]: field 'iscrowd': expected 0 or 1, found {_fmt(v)}")
    crowd = np.array(crowd_raw, dtype=bool).reshape(-1)
    area_raw = _column(anns, where, "area", None)
    missing = [i for i, v in enumerate(area_raw) if v is None]
    segs = _column(anns, where, "segmentation", None)
    if iou_type == "segm":
        absent = [i for i, s in enumerate(segs) if s is None]
        if absent:
            raise InputError(f"{where}[{absent[0]}]: missing field 'segmentation' (needed to evaluate masks, IoU type segm; evaluate boxes with IoU type bbox)")
        check_segmentations(segs, where, hw, img)
    if missing:
        warnings.append(
            f"{source}: {len(missing)} annotation(s) have no 'area' (first: annotations[{missing[0]}]); "
            "used the box area w*h instead (pycocotools would fail on them)"
        )
        for i in missing:
            area_raw[i] = float(bbox[i, 2] * bbox[i, 3])
    area = _numeric(area_raw, where, "area", None)
    bad = ~np.isfinite(area) | (area < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}[{i}]: field 'area': expected a finite number >= 0, found {area_raw[i]!r}")
    ids = np.array([a["id"] for a in anns], dtype=np.int64) if anns else np.zeros(0, np.int64)
    return GroundTruth(
        source, np.array(image_ids), hw, np.array([cat_ids[i] for i in corder]), names,
        img, cat, ids, bbox, area, crowd, segs, warnings,
    )


# ---- results ---------------------------------------------------------------------------------
def detections_to_records(dets: Mapping[Any, Any]) -> list[dict]:
    """``{image_id: Detections}`` (class_ids = category ids) -> COCO results records, with the
    COCO boundary's conversion and rounding (`detseg.data.coco.results_from_detections`), so
    that detections score the same in memory and from the file `detseg predict` writes."""
    return results_from_detections(dets)


def _require_masks(segs: list, where: str, iou_type: str) -> None:
    absent = [i for i, s in enumerate(segs) if s is None]
    if absent:
        raise InputError(
            f"{where}[{absent[0]}]: missing field 'segmentation'"
            + (" (--iou-type segm needs a mask for every detection)" if iou_type == "segm" else
               " (records without 'bbox' need a mask)")
        )


def _mask_branch(segs: list, img: np.ndarray, gt: GroundTruth, boxes: list, where: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``COCO.loadRes`` for results whose first record has no box: (area, bbox).

    ``area`` is the mask area of every record; ``bbox`` the record's own box where it has one
    (pycocotools keeps it), else the mask's bounding box (``mask.toBbox``). pycocotools reads
    only compressed RLE here; detseg converts polygons and uncompressed RLE first, as
    evaluation does. Areas and boxes are computed in chunks pycocotools handles.
    """
    area, mbox = rle_area_bbox(to_rles(segs, img, gt.image_hw))
    own = [i for i, b in enumerate(boxes) if b is not None and not (isinstance(b, list) and b == [])]
    if own:
        rows = mbox.tolist()
        for i in own:
            rows[i] = boxes[i]
        mbox = _numeric(rows, where, "bbox", 4)
        _check_boxes(mbox, where)
    return area, mbox


def _typed_results(source: str, recs: list, gt: GroundTruth, iou_type: str) -> Results | None:
    """`load_results` for records that msgspec parsed and type-checked (`ResultRecord`).

    Returns None when something needs the general path (no records, a record without the
    box or mask its branch needs): that path then names the culprit. Field values are
    checked here with the same messages.
    """
    n = len(recs)
    if n == 0:
        return None
    where = f"{source}: results"
    img = _lookup(list(map(attrgetter("image_id"), recs)),
                  {v: j for j, v in enumerate(gt.image_ids.tolist())}, where, "image_id", "image id")
    cat = _lookup(list(map(attrgetter("category_id"), recs)),
                  {v: j for j, v in enumerate(gt.cat_ids.tolist())}, where, "category_id", "category id")
    score = np.fromiter(map(attrgetter("score"), recs), np.float64, n)
    if not np.isfinite(score).all():
        i = int(np.flatnonzero(~np.isfinite(score))[0])
        raise InputError(f"{where}[{i}]: field 'score': expected a finite number, found {recs[i].score!r}")
    box_branch = recs[0].bbox is not None
    segs = None
    if iou_type == "segm" or not box_branch:
        segs = [{"size": list(s.size), "counts": s.counts} if type(s) is RleRecord else s
                for s in map(attrgetter("segmentation"), recs)]
        if any(s is None for s in segs):
            return None
        check_segmentations(segs, where, gt.image_hw, img, typed=True)
    boxes = list(map(attrgetter("bbox"), recs))
    if box_branch:
        try:
            flat = array.array("d", itertools.chain.from_iterable(boxes))
        except TypeError:  # a record without a box
            return None
        del boxes
        bbox = np.frombuffer(flat, np.float64).reshape(n, 4)
        _check_boxes(bbox, where)
        area = bbox[:, 2] * bbox[:, 3]
    else:
        area, bbox = _mask_branch(segs, img, gt, [b and list(b) for b in boxes], where)
    return Results(source, img, cat, bbox, area, score, segs, [])


def load_results(results: str | Path | Sequence | Mapping, gt: GroundTruth,
                 iou_type: str = "bbox") -> Results:
    """Read COCO results (path, list of records, or ``{image_id: Detections}``) against ``gt``."""
    if iou_type not in IOU_TYPES:
        raise InputError(f"iou_type: expected one of {', '.join(IOU_TYPES)}, found {iou_type!r}")
    if isinstance(results, (str, Path)):
        typed = read_results_records(results)
        if typed is not None:
            fast = _typed_results(str(results), typed, gt, iou_type)
            if fast is not None:
                return fast
            del typed
    source, recs = _source(results, "results file")
    if isinstance(recs, Mapping) and source == MEMORY:
        recs = detections_to_records(recs)
    if not isinstance(recs, list):
        raise InputError(f"{source}: expected a JSON list of result objects, found {type(recs).__name__}")
    where = f"{source}: results"
    warnings: list[str] = []
    if not recs:
        warnings.append(f"{source}: no detections in the results; every metric is 0 (or -1 where the ground truth has no objects)")
    img = _lookup(_column(recs, where, "image_id"), {v: j for j, v in enumerate(gt.image_ids.tolist())},
                  where, "image_id", "image id")
    cat = _lookup(_column(recs, where, "category_id"), {v: j for j, v in enumerate(gt.cat_ids.tolist())},
                  where, "category_id", "category id")
    score = _numeric(_column(recs, where, "score"), where, "score", None)
    if not np.isfinite(score).all():
        i = int(np.flatnonzero(~np.isfinite(score))[0])
        raise InputError(f"{where}[{i}]: field 'score': expected a finite number, found {recs[i]['score']!r}")
    # COCO.loadRes: a non-empty 'bbox' on the first record decides the branch for every record.
    box_branch = bool(recs) and "bbox" in recs[0] and recs[0]["bbox"] != []
    segs = None
    if iou_type == "segm" or not box_branch:
        segs = _column(recs, where, "segmentation", None)
        _require_masks(segs, where, iou_type)
        check_segmentations(segs, where, gt.image_hw, img)
    if box_branch:
        bbox = _numeric(_column(recs, where, "bbox"), where, "bbox", 4)
        _check_boxes(bbox, where)
        area = bbox[:, 2] * bbox[:, 3]
    else:
        area, bbox = _mask_branch(segs, img, gt, [r.get("bbox") for r in recs], where)
    return Results(source, img, cat, bbox, area, score, segs, warnings)
