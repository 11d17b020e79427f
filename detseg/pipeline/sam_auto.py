"""Segment everything: SAM's automatic mask generation under onnxruntime.

The algorithm and its defaults are segment-anything's `SamAutomaticMaskGenerator`
(`segment_anything/automatic_mask_generator.py`, `utils/amg.py`), step for step, in numpy:

1. crop boxes: the whole image, plus `crop_n_layers` layers of (2^i)^2 overlapping crops;
2. per crop: one encoder run, then a grid of `points_per_side`^2 single positive clicks,
   `points_per_batch` clicks per decoder run (the decoder takes a batch of prompts), three
   masks per click as logits at the crop's resolution;
3. keep masks with predicted IoU > `pred_iou_thresh` and stability score (IoU of the mask
   thresholded at +offset and -offset) >= `stability_score_thresh`; drop masks whose box
   touches a crop edge that is not an image edge; box NMS (`box_nms_thresh`) per crop;
4. across crops, box NMS preferring masks from smaller crops (`crop_nms_thresh`);
5. optionally remove holes and islands smaller than `min_mask_region_area` and run NMS again.

Masks are kept as COCO compressed RLE as soon as they pass the filters, so memory stays at one
decoder batch of logits. Boxes inside follow segment-anything (xyxy with the last pixel's index
as x2/y2, as `batched_mask_to_box`); `GeneratedMasks.to_detections` gives detseg's
convention (x2 = last pixel + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from itertools import product
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from detseg.detections import Detections
from detseg.errors import InputError
from detseg.pipeline.postprocess import nms
from detseg.pipeline.sam import SamPredictor

EVERYTHING_CLASS = "object"  #: the one class-agnostic category of segment-everything results


@dataclass(frozen=True)
class MaskGeneratorSettings:
    """segment-anything's `SamAutomaticMaskGenerator` arguments, with its defaults."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def __post_init__(self) -> None:
        for name, low in (("points_per_side", 1), ("points_per_batch", 1), ("crop_n_layers", 0),
                          ("crop_n_points_downscale_factor", 1), ("min_mask_region_area", 0)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(f"segment everything: {name} must be an integer >= {low}, "
                                 f"found {value!r}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
                     "crop_nms_thresh", "crop_overlap_ratio"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(f"segment everything: {name} must be in [0, 1], found {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class GeneratedMasks:
    """The masks of one image, best first within each crop (as segment-anything returns them).

    rles: N COCO compressed RLE dicts (counts as str) at the image's resolution.
    boxes: (N, 4) float64 xyxy, x2/y2 the index of the last mask pixel (segment-anything's).
    predicted_iou, stability_score: (N,) float32.
    point_coords: (N, 2) float64 xy of the click (image pixels) that produced each mask.
    crop_boxes: (N, 4) int64 xyxy crop each mask came from.
    image_size: (h, w).
    """

    rles: list[dict]
    boxes: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    point_coords: np.ndarray
    crop_boxes: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.rles)

    def areas(self) -> np.ndarray:
        """(N,) int64 mask areas in pixels."""
        return np.asarray(mask_utils.area(_bytes_rles(self.rles)), np.int64).reshape(-1)

    def masks(self) -> np.ndarray:
        """(N, H, W) bool masks (decoded; large for many masks on a large image)."""
        if not self.rles:
            return np.zeros((0, *self.image_size), bool)
        return mask_utils.decode(_bytes_rles(self.rles)).transpose(2, 0, 1).astype(bool)

    def to_detections(self) -> Detections:
        """Class-agnostic `Detections` (class 0 "object"), score = predicted IoU, RLE masks."""
        boxes = self.boxes.astype(np.float32).reshape(-1, 4).copy()
        boxes[:, 2:] += 1.0  # last-pixel index -> exclusive edge (detseg's xyxy)
        return Detections(
            boxes=boxes,
            scores=self.predicted_iou.astype(np.float32),
            class_ids=np.zeros(len(self), np.int64),
            masks=list(self.rles),
            class_names={0: EVERYTHING_CLASS},
            image_size=tuple(self.image_size),
        )


# ---- segment-anything's amg helpers, in numpy -------------------------------------------
def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n^2, 2) float64 xy points evenly spaced in [0, 1]^2 (cell centres), row by row."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (xyxy ints) and their layer: the whole image, then (2^i)^2 per layer i."""
    im_h, im_w = image_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i in range(n_layers):
        n = 2 ** (i + 1)
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w, crop_h = crop_len(im_w, n, overlap), crop_len(im_h, n, overlap)
        x0s = [int((crop_w - overlap) * k) for k in range(n)]
        y0s = [int((crop_h - overlap) * k) for k in range(n)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i + 1)
    return boxes, layers


def stability_score(logits: np.ndarray, threshold: float, offset: float) -> np.ndarray:
    """(N,) float32 IoU of (logits > threshold + offset) and (logits > threshold - offset).

    logits: (N, H, W) float32. The first mask lies inside the second, so IoU = ratio of areas.
    """
    flat = logits.reshape(len(logits), int(np.prod(logits.shape[1:])))
    inter = np.count_nonzero(flat > threshold + offset, axis=1)
    union = np.count_nonzero(flat > threshold - offset, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (inter / union).astype(np.float32)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float64 xyxy of (N, H, W) bool masks, x2/y2 = last pixel; empty mask -> zeros."""
    boxes = np.zeros((len(masks), 4))
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    for i in range(len(masks)):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(ys) and len(xs):
            boxes[i] = (xs[0], ys[0], xs[-1], ys[-1])
    return boxes


def near_crop_edge(
    boxes: np.ndarray, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> np.ndarray:
    """(N,) bool: a side of the box (crop frame) is within `atol` of a crop edge that is not
    an image edge (segment-anything's `is_box_near_crop_edge`)."""
    x0, y0 = crop_box[:2]
    boxes = boxes + np.array([x0, y0, x0, y0])
    near_crop = np.abs(boxes - np.asarray(crop_box, float)[None]) <= atol
    near_image = np.abs(boxes - np.asarray(image_box, float)[None]) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def remove_small_regions(mask: np.ndarray, area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes ("holes") or drop islands ("islands") smaller than `area` pixels in an
    (H, W) bool mask; returns (mask, changed). segment-anything's function, 8-connectivity."""
    import cv2

    holes = mode == "holes"
    working = (holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[:, -1][1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area]
    if not small:
        return mask, False
    fill = [0] + small
    if not holes:
        fill = [i for i in range(n_labels) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def encode_rles(masks: np.ndarray) -> list[dict]:
    """COCO compressed RLE (counts as str) of (N, H, W) bool masks."""
    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in encoded]


def _bytes_rles(rles: list[dict]) -> list[dict]:
    return [dict(r, counts=r["counts"].encode("ascii")) if isinstance(r["counts"], str) else r
            for r in rles]


# ---- the generator ------------------------------------------------------------------------
class SamMaskGenerator:
    """Segment everything in an image with a `SamPredictor` (onnxruntime).

    `generate(image)` is segment-anything's `SamAutomaticMaskGenerator.generate` (same
    algorithm and defaults, see the module docstring); `generate_detections(image)` gives the
    result as class-agnostic `Detections` for the COCO writer, eval and drawing.
    One encoder run per crop; the prompts go through the decoder `points_per_batch` at a time.
    """

    def __init__(self, sam: SamPredictor, settings: MaskGeneratorSettings | None = None,
                 **overrides: Any) -> None:
        self.sam = sam
        base = settings or MaskGeneratorSettings()
        self.settings = MaskGeneratorSettings(**{**base.to_dict(), **overrides})
        s = self.settings
        self.point_grids = [
            build_point_grid(int(s.points_per_side / (s.crop_n_points_downscale_factor ** i)))
            for i in range(s.crop_n_layers + 1)
        ]

    def generate(self, image: np.ndarray) -> GeneratedMasks:
        """All masks of an RGB uint8 (H, W, 3) image."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"segment everything: image must be RGB uint8 (H, W, 3), found "
                             f"{image.dtype} {image.shape}")
        s = self.settings
        size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layers = generate_crop_boxes(size, s.crop_n_layers, s.crop_overlap_ratio)
        parts = [self._process_crop(image, box, layer, size)
                 for box, layer in zip(crop_boxes, layers, strict=True)]
        data = {k: [x for p in parts for x in p[k]] if k == "rles" else
                np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if len(crop_boxes) > 1 and len(data["rles"]):
            crops = data["crop_boxes"].astype(np.float64)
            scores = 1.0 / ((crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1]))
            data = _take(data, nms(data["boxes"], scores, s.crop_nms_thresh))
        if s.min_mask_region_area > 0 and len(data["rles"]):
            data = self._remove_small_regions(data, max(s.box_nms_thresh, s.crop_nms_thresh))
        return GeneratedMasks(image_size=size, **data)

    def generate_detections(self, image: np.ndarray) -> Detections:
        """`generate` as class-agnostic `Detections` (score = predicted IoU, RLE masks)."""
        return self.generate(image).to_detections()

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int,
                      size: tuple[int, int]) -> dict[str, Any]:
        s = self.settings
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        embedding = self.sam.embed(crop)
        crop_h, crop_w = crop.shape[:2]
        points = self.point_grids[layer] * np.array([[crop_w, crop_h]])
        batches = [self._process_batch(points[i:i + s.points_per_batch], embedding, crop_box,
                                       size)
                   for i in range(0, len(points), s.points_per_batch)]
        data = {k: [x for b in batches for x in b[k]] if k == "rles" else
                np.concatenate([b[k] for b in batches]) for k in batches[0]}
        keep = nms(data["boxes"], data["predicted_iou"], s.box_nms_thresh)
        data = _take(data, keep)
        data["boxes"] = data["boxes"] + np.array([x0, y0, x0, y0], np.float64)
        data["point_coords"] = data["point_coords"] + np.array([x0, y0], np.float64)
        data["crop_boxes"] = np.tile(np.asarray(crop_box, np.int64), (len(keep), 1))
        return data

    def _process_batch(self, points: np.ndarray, embedding: Any, crop_box: list[int],
                       size: tuple[int, int]) -> dict[str, Any]:
        s = self.settings
        pred = self.sam.predict_batch(
            point_coords=points[:, None, :], point_labels=np.ones((len(points), 1), np.int64),
            multimask_output=True, embedding=embedding, return_logits=True,
        )
        m = pred.masks.shape[1]
        logits = pred.masks.reshape(-1, *pred.masks.shape[2:])
        iou = pred.scores.reshape(-1)
        pts = np.repeat(points, m, axis=0)
        keep = iou > s.pred_iou_thresh if s.pred_iou_thresh > 0 else np.ones(len(iou), bool)
        logits, iou, pts = logits[keep], iou[keep], pts[keep]
        stability = stability_score(logits, self.sam.mask_threshold, s.stability_score_offset)
        if s.stability_score_thresh > 0:
            keep = stability >= s.stability_score_thresh
            logits, iou, pts, stability = logits[keep], iou[keep], pts[keep], stability[keep]
        masks = logits > self.sam.mask_threshold
        boxes = masks_to_boxes(masks)
        keep = ~near_crop_edge(boxes, crop_box, [0, 0, size[1], size[0]])
        masks, boxes = masks[keep], boxes[keep]
        return {
            "rles": encode_rles(_uncrop(masks, crop_box, size)),
            "boxes": boxes,
            "predicted_iou": iou[keep],
            "stability_score": stability[keep],
            "point_coords": pts[keep],
            "crop_boxes": np.zeros((len(boxes), 4), np.int64),
        }

    def _remove_small_regions(self, data: dict[str, Any], nms_thresh: float) -> dict[str, Any]:
        """segment-anything's `postprocess_small_regions`: clean each mask, then NMS that
        prefers the masks left unchanged."""
        area = self.settings.min_mask_region_area
        cleaned, scores = [], []
        for mask in GeneratedMasks(image_size=(0, 0), **data).masks():
            mask, holes = remove_small_regions(mask, area, "holes")
            mask, islands = remove_small_regions(mask, area, "islands")
            cleaned.append(mask)
            scores.append(float(not (holes or islands)))
        masks = np.stack(cleaned)
        boxes = masks_to_boxes(masks)
        keep = nms(boxes, np.asarray(scores), nms_thresh)
        data = dict(data, rles=list(data["rles"]), boxes=data["boxes"].copy())
        changed = [int(i) for i in keep if scores[i] == 0.0]
        for i, rle in zip(changed, encode_rles(masks[changed]), strict=True):
            data["rles"][i] = rle
            data["boxes"][i] = boxes[i]
        return _take(data, keep)


def _uncrop(masks: np.ndarray, crop_box: list[int], size: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = crop_box
    h, w = size
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return masks
    out = np.zeros((len(masks), h, w), bool)
    out[:, y0:y1, x0:x1] = masks
    return out


def _take(data: dict[str, Any], index: np.ndarray) -> dict[str, Any]:
    return {k: [v[i] for i in index] if k == "rles" else v[index] for k, v in data.items()}


# ---- over many images ---------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentSummary:
    """What `segment_everything_files` did: images done, failures (path, reason), masks written."""

    out: Any
    done: int
    failed: list[tuple[str, str]]
    masks: int

    def format(self) -> str:
        lines = [f"segment everything: {self.done} images, {self.masks} masks -> {self.out}"]
        lines += [f"failed: {p}: {r}" for p, r in self.failed]
        return "\n".join(lines)


def segment_everything_files(
    generator: SamMaskGenerator,
    source: Any,
    out: Any,
    *,
    images_dir: Any = None,
    category_id: int = 1,
    progress: bool = False,
) -> SegmentSummary:
    """Segment everything in each image of SOURCE; write one COCO results JSON.

    source: image, folder, glob or COCO instances JSON (`detseg.pipeline.sources.open_source`).
    Records: ``image_id`` as `detseg predict` writes it, ``category_id`` = `category_id` (one
    class-agnostic category), ``score`` = predicted IoU, ``bbox`` xywh, ``segmentation``
    compressed RLE. A bad image is reported in ``failed`` and skipped.
    """
    import logging
    from pathlib import Path

    from detseg.data.coco import write_results
    from detseg.data.images import read_image
    from detseg.errors import DetsegError
    from detseg.pipeline.sources import open_source

    out = Path(out)
    if out.suffix.lower() != ".json":
        raise InputError(f"--out {out}: expected a .json results file name")
    src = open_source(source, images_dir)
    items = src.items
    if progress:
        from tqdm import tqdm

        items = tqdm(items, unit="img", desc="segment")
    records: list[dict] = []
    failed: list[tuple[str, str]] = []
    done = 0
    for item in items:
        try:
            image = read_image(item.path)
        except DetsegError as exc:
            failed.append((str(item.path), str(exc)))
            logging.getLogger(__name__).warning("skipped %s: %s", item.path, exc)
            continue
        dets = generator.generate_detections(image)
        records += dets.to_coco(item.key, category_ids={0: category_id})
        done += 1
    n = write_results(out, records)
    return SegmentSummary(out=out, done=done, failed=failed, masks=n)
