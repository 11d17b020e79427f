"""Ground truth against predictions on one image, readable when crowded.

Pure functions on arrays: images are (H, W, 3) uint8 **RGB**; boxes are xyxy float in pixels
of that image (`Detections` boxes). Ground truth is drawn **dashed** with a "GT name" label on
a dark tag; predictions **solid** with "name score | IoU" on a tag of the class colour. The
boxes an example is about are drawn thick, the rest thin. Each class has its own colour
(hues spread by the golden ratio, so neighbouring class ids differ). Labels are placed
greedily, most important first, at the first of several spots around the box where they
overlap no label placed before; a label with no free spot is left out rather than drawn
over another. Masks (segm evaluations) are drawn as their outlines in the same styles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from detseg.detections import Detections
from detseg.errors import InputError
from detseg.eval.outlines import draw_outline

_FONT = cv2.FONT_HERSHEY_SIMPLEX


@lru_cache(maxsize=4096)
def class_color(k: int) -> tuple[int, int, int]:
    """A distinct RGB colour for class index ``k`` (golden-ratio hue steps, two brightness
    levels so that classes 1 and 1 + ~1.6 hue turns apart still differ)."""
    h = (int(k) * 0.618033988749895) % 1.0
    s, v = (0.85, 0.98) if int(k) % 2 == 0 else (0.65, 0.80)
    hsv = np.array([[[h * 180, s * 255, v * 255]]], np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


@dataclass
class _Label:
    text: str
    box: tuple[float, float, float, float]
    fill: tuple[int, int, int]
    ink: tuple[int, int, int]
    priority: int


def _ink_for(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    lum = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if lum > 140 else (255, 255, 255)


def _dashed_rect(img: np.ndarray, p1: tuple[int, int], p2: tuple[int, int],
                 color: tuple[int, int, int], thickness: int, dash: int = 6) -> None:
    (x1, y1), (x2, y2) = p1, p2
    corners = np.array([(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)], np.float64)
    segs = []
    for a, b in zip(corners[:-1], corners[1:], strict=True):
        n = max(1, int(np.abs(b - a).max()) // dash)
        t0 = np.arange(0, n, 2, dtype=np.float64)[:, None] / n
        t1 = np.minimum(1.0, t0 + 1 / n)
        seg = np.empty((t0.shape[0], 2, 2))
        seg[:, 0] = a + (b - a) * t0
        seg[:, 1] = a + (b - a) * t1
        segs.append(seg)
    cv2.polylines(img, list(np.rint(np.concatenate(segs)).astype(np.int32)), False, color, thickness,
                  cv2.LINE_AA)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(boxes: np.ndarray, sizes: np.ndarray, image_wh: tuple[int, int],
                 taken: Sequence[tuple[int, int, int, int]] = ()) -> list[tuple[int, int] | None]:
    """Top-left corners for label rectangles that do not overlap each other.

    Args:
        boxes: (N, 4) xyxy of the boxes the labels belong to, in priority order.
        sizes: (N, 2) width, height of each label.
        image_wh: labels stay inside the image.
        taken: rectangles (x0, y0, x1, y1) already occupied.
    Returns:
        N corners (x, y), or None for a label that found no free spot.
    """
    w_img, h_img = image_wh
    placed = list(taken)
    out: list[tuple[int, int] | None] = []
    for (x1, y1, x2, y2), (tw, th) in zip(np.asarray(boxes, float), np.asarray(sizes, int), strict=True):
        x1, y1, x2, y2 = int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2))
        spots = [(x1, y1 - th), (x1, y1), (x1, y2), (x1, y2 - th), (x2 - tw, y1 - th),
                 (x2 - tw, y2), (x2, y1), (x1 - tw, y1)]
        found = None
        for sx, sy in spots:
            sx = min(max(sx, 0), max(0, w_img - tw))
            sy = min(max(sy, 0), max(0, h_img - th))
            rect = (sx, sy, sx + tw, sy + th)
            if not any(_overlap(rect, r) for r in placed):
                found = (sx, sy)
                placed.append(rect)
                break
        out.append(found)
    return out


def draw_gt_vs_pred(
    image: np.ndarray,
    gt: Detections,
    pred: Detections,
    names: Mapping[int, str] | None = None,
    *,
    pred_iou: np.ndarray | None = None,
    focus_gt: Sequence[int] = (),
    focus_pred: Sequence[int] = (),
    crop: Sequence[float] | None = None,
    max_side: int = 320,
    label_all: bool = True,
    gt_outlines: Sequence[Sequence[np.ndarray] | None] | None = None,
    pred_outlines: Sequence[Sequence[np.ndarray] | None] | None = None,
) -> np.ndarray:
    """``image`` (or a crop of it) scaled to ``max_side``, with ground truth and predictions.

    Args:
        image: (H, W, 3) uint8 RGB.
        gt: ground truth boxes (xyxy, image pixels) and class ids; scores are ignored.
        pred: predictions (xyxy, image pixels), scores and class ids.
        names: class id -> name for labels (default ``pred.class_names`` or the id).
        pred_iou: (len(pred),) IoU written beside each prediction's score (NaN: not written).
        focus_gt, focus_pred: indices drawn thick and labelled first.
        crop: xyxy region of the image to show (default: all of it).
        max_side: the longer side of the result in pixels (never upscaled past 2x).
        label_all: label every box (False: only the focus boxes, for small thumbnails).
        gt_outlines, pred_outlines: per box, the mask's outline to draw instead of the box
            (`outlines.segmentation_outlines`: (K, 2) x, y polylines in image pixels), or None
            / empty to draw the box; labels stay placed by the boxes.
    Returns:
        (h, w, 3) uint8 RGB.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image: expected (H, W, 3) uint8 RGB, found {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    cx0, cy0, cx1, cy1 = (0, 0, w, h) if crop is None else (
        max(0, int(np.floor(crop[0]))), max(0, int(np.floor(crop[1]))),
        min(w, int(np.ceil(crop[2]))), min(h, int(np.ceil(crop[3]))))
    cx1, cy1 = max(cx1, cx0 + 1), max(cy1, cy0 + 1)
    region = image[cy0:cy1, cx0:cx1]
    scale = min(2.0, max_side / max(region.shape[:2]))
    out_w, out_h = max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale))
    step = int(1 / scale / 2) if scale < 0.5 else 1
    if step > 1:  # subsample first: an area resize of a big region costs more than the drawing
        region = region[::step, ::step]
    # area averaging only where it matters (a strong reduction); it is slow at odd ratios
    interp = cv2.INTER_AREA if out_w * 2 < region.shape[1] else cv2.INTER_LINEAR
    out = np.ascontiguousarray(cv2.resize(region, (out_w, out_h), interpolation=interp))
    names = names if names is not None else (pred.class_names or gt.class_names or {})

    def to_view(b: np.ndarray) -> np.ndarray:
        b = np.asarray(b, np.float64).reshape(-1, 4)
        return (b - [cx0, cy0, cx0, cy0]) * scale

    def outline(polys: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        return [(np.asarray(p, np.float64).reshape(-1, 2) - [cx0, cy0]) * scale for p in polys or ()]

    def visible(b: np.ndarray) -> np.ndarray:
        return (b[:, 2] > 0) & (b[:, 0] < out_w) & (b[:, 3] > 0) & (b[:, 1] < out_h)

    gb, pb = to_view(gt.boxes), to_view(pred.boxes)
    gi, pi = np.rint(gb).astype(np.int64), np.rint(pb).astype(np.int64)
    fg, fp = set(int(i) for i in focus_gt), set(int(i) for i in focus_pred)
    thin, thick = 1, 3 if max_side >= 200 else 2
    font = 0.38 if max_side < 400 else 0.45
    labels: list[_Label] = []
    # thin boxes first, focus boxes last so they stay on top
    vis_g, vis_p = np.flatnonzero(visible(gb)).tolist(), np.flatnonzero(visible(pb)).tolist()
    order_g = [i for i in vis_g if i not in fg] + [i for i in vis_g if i in fg]
    order_p = [i for i in vis_p if i not in fp] + [i for i in vis_p if i in fp]
    g_cls, p_cls = gt.class_ids.tolist(), pred.class_ids.tolist()
    for i in order_g:
        k = g_cls[i]
        col = class_color(k)
        x1, y1, x2, y2 = gi[i].tolist()
        focus = i in fg
        poly = outline(gt_outlines[i]) if gt_outlines is not None else []
        if poly:
            if focus:
                draw_outline(out, poly, (0, 0, 0), thick + 2, dashed=True)
            draw_outline(out, poly, col, thick if focus else thin, dashed=True)
        else:
            if focus:  # a dark halo keeps a thick dashed line visible on any background
                _dashed_rect(out, (x1, y1), (x2, y2), (0, 0, 0), thick + 2)
            _dashed_rect(out, (x1, y1), (x2, y2), col, thick if focus else thin)
        if label_all or focus:
            labels.append(_Label(f"GT {names.get(k, k)}", tuple(gb[i]), (30, 30, 30), col,
                                 0 if focus else 2))
    scores = pred.scores.tolist()
    for i in order_p:
        k = p_cls[i]
        col = class_color(k)
        x1, y1, x2, y2 = pi[i].tolist()
        focus = i in fp
        poly = outline(pred_outlines[i]) if pred_outlines is not None else []
        if poly:
            if focus:
                draw_outline(out, poly, (255, 255, 255), thick + 2)
            draw_outline(out, poly, col, thick if focus else thin)
        elif focus:
            cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), thick + 2, cv2.LINE_AA)
            cv2.rectangle(out, (x1, y1), (x2, y2), col, thick, cv2.LINE_AA)
        else:
            cv2.rectangle(out, (x1, y1), (x2, y2), col, thin, cv2.LINE_8)
        if label_all or focus:
            text = f"{names.get(k, k)} {scores[i]:.2f}"
            if pred_iou is not None and np.isfinite(pred_iou[i]):
                text += f" | IoU {float(pred_iou[i]):.2f}"
            labels.append(_Label(text, tuple(pb[i]), col, _ink_for(col), 0 if focus else 3))
    labels.sort(key=lambda lb: lb.priority)  # stable: focus ground truth, focus prediction, rest
    sizes = []
    for lb in labels:
        (tw, th), base = cv2.getTextSize(lb.text, _FONT, font, 1)
        sizes.append((tw + 4, th + base + 3))
    spots = place_labels(np.array([lb.box for lb in labels]).reshape(-1, 4),
                         np.array(sizes).reshape(-1, 2), (out_w, out_h))
    for lb, (tw, th), spot in zip(labels, sizes, spots, strict=True):
        if spot is None:
            continue
        x, y = spot
        cv2.rectangle(out, (x, y), (x + tw - 1, y + th - 1), lb.fill, -1)
        cv2.putText(out, lb.text, (x + 2, y + th - 4), _FONT, font, lb.ink, 1, cv2.LINE_AA)
    return out


def encode_jpeg(image: np.ndarray, quality: int = 72) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InputError(f"image: could not encode a {image.shape} thumbnail as JPEG")
    return buf.tobytes()
