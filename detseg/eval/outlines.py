"""Outlines of COCO segmentations, for drawing masks where boxes would hide what went wrong.

`segmentation_outlines` turns one raw COCO ``segmentation`` field (polygons, uncompressed or
compressed RLE) into closed polylines in image pixels: polygons are used as they are (no
decoding), RLE masks are decoded and traced with OpenCV (outer borders and holes).
`draw_outline` draws such polylines solid or dashed (dashes measured along the outline, so a
traced border of many one-pixel steps still looks dashed).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def segmentation_outlines(seg: object, h: int, w: int) -> list[np.ndarray]:
    """Closed polylines of one COCO segmentation.

    Args:
        seg: a raw ``segmentation`` field: a list of polygons ``[x0, y0, x1, y1, ...]``, or an
            RLE dict ``{"size": [h, w], "counts": str | bytes | list[int]}``; None or anything
            else gives no outline.
        h, w: the image size (used for polygons' and uncompressed RLE's size when the RLE
            carries none; an RLE's own ``size`` wins).
    Returns:
        A list of (K, 2) float64 arrays of x, y in image pixels (pixel centres for traced
        masks), K >= 2; empty when there is nothing to draw.
    """
    if isinstance(seg, list):
        out = []
        for p in seg:
            a = np.asarray(p, np.float64).reshape(-1)
            if a.size >= 4 and a.size % 2 == 0:
                out.append(a.reshape(-1, 2))
        return out
    if not isinstance(seg, dict) or "counts" not in seg:
        return []
    from pycocotools import mask as mask_utils

    size = seg.get("size") or [h, w]
    rle = seg
    if isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, int(size[0]), int(size[1]))
    elif isinstance(seg["counts"], str):
        rle = {"size": [int(size[0]), int(size[1])], "counts": seg["counts"].encode("ascii")}
    m = np.ascontiguousarray(mask_utils.decode(rle))
    if m.ndim == 3:
        m = m[..., 0]
    return mask_outlines(m)


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Outer borders and holes of a binary (H, W) mask as (K, 2) float64 x, y polylines."""
    contours, _ = cv2.findContours((np.asarray(mask) > 0).astype(np.uint8), cv2.RETR_CCOMP,
                                   cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).astype(np.float64) for c in contours if len(c) >= 2]


def _dashes(pts: np.ndarray, dash: float) -> list[np.ndarray]:
    """The "on" pieces of a closed polyline cut into dash-long pieces along its length."""
    pts = np.vstack([pts, pts[:1]])
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.r_[0.0, np.cumsum(seg)]
    total = s[-1]
    if total <= 0:
        return []
    out = []
    for a in np.arange(0.0, total, 2 * dash):
        b = min(total, a + dash)
        inner = np.flatnonzero((s > a) & (s < b))
        ts = np.r_[a, s[inner], b]
        out.append(np.c_[np.interp(ts, s, pts[:, 0]), np.interp(ts, s, pts[:, 1])])
    return out


def draw_outline(img: np.ndarray, polys: Sequence[np.ndarray], color: tuple[int, int, int],
                 thickness: int = 1, dashed: bool = False, dash: float = 6.0) -> None:
    """Draw closed polylines on ``img`` in place.

    Args:
        img: (H, W, 3) uint8 image (its channel order is the colour's).
        polys: (K, 2) x, y arrays in ``img``'s pixels (scale them first when drawing a resized
            or cropped view).
        dashed: dashes of ``dash`` pixels along the outline (the ground truth's style).
    """
    lines = []
    for p in polys:
        p = np.asarray(p, np.float64).reshape(-1, 2)
        if p.shape[0] < 2:
            continue
        if dashed:
            lines.extend(np.rint(d).astype(np.int32) for d in _dashes(p, dash))
        else:
            lines.append(np.rint(p).astype(np.int32))
    if lines:
        cv2.polylines(img, lines, not dashed, color, thickness, cv2.LINE_AA)
