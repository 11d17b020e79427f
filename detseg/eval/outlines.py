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


def segmentation_outlines(seg: object, h: int, w: int, tolerance: float = 0.0) -> list[np.ndarray]:
    """Closed polylines of one COCO segmentation.

    Args:
        seg: a raw ``segmentation`` field: a list of polygons ``[x0, y0, x1, y1, ...]``, or an
            RLE dict ``{"size": [h, w], "counts": str | bytes | list[int]}``; None or anything
            else gives no outline.
        h, w: the image size (used for polygons' and uncompressed RLE's size when the RLE
            carries none; an RLE's own ``size`` wins).
        tolerance: simplify traced masks by up to this many pixels (`mask_outlines`); for
            drawing, where a pixel staircase costs points and shows nothing.
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
    size = seg.get("size") or [h, w]
    counts = _counts(seg["counts"])
    if counts is None:
        return []
    mt, x0 = _columns(counts, int(size[0]), int(size[1]))
    # traced on the mask's columns as rows (C-ordered as decoded): x and y swap back below
    return [c[:, ::-1] + [x0, 0] for c in mask_outlines(mt, tolerance)]


def _counts(counts: object) -> np.ndarray | None:
    """RLE run lengths (0s first, column-major) from a list or a compressed COCO string;
    None when the string is not valid compressed RLE (the eval loader reports such records).
    """
    if isinstance(counts, (list, np.ndarray)):
        return np.asarray(counts, np.int64)
    if isinstance(counts, (str, bytes)):
        return counts_many([counts])[0]
    return None


def counts_many(counts: list) -> list[np.ndarray | None]:
    """`_counts` of many RLE ``counts`` fields at once: compressed strings are parsed in one
    vectorised pass (`rle._decode`, the loader's checker), then each count from the fourth on,
    stored as its difference to the count two before it (pycocotools' ``rleFrString``), is
    summed back per string. The result can stand in for the fields: ``{"size": ...,
    "counts": <array>}`` is accepted by `segmentation_outlines`."""
    from detseg.eval.rle import _decode

    strings = [c.encode("ascii", "replace") if isinstance(c, str) else c for c in counts]
    if not strings:
        return []
    if not all(isinstance(b, bytes) for b in strings):
        return [_counts(c) for c in counts]  # lists or arrays among them: one by one
    lens = np.array([len(b) for b in strings], np.int64)
    c = np.frombuffer(b"".join(strings), np.uint8) - np.uint8(48)
    bad, _, x, ntok = _decode(c, lens)
    if bad >= 0:  # some string is bad: find which, one by one
        return [None] if len(strings) == 1 else [counts_many([b])[0] for b in strings]
    start = np.cumsum(ntok) - ntok  # each string's first count
    sid = np.repeat(np.arange(lens.size), ntok)
    pos = np.arange(x.size) - start[sid]
    # a running sum per (string, parity), from position 1 (odd) and 2 (even)
    sel = np.flatnonzero(pos >= 1)
    if not sel.size:  # no string has a second count
        return np.split(x, start[1:])
    order = sel[np.argsort(sid[sel] * 2 + pos[sel] % 2, kind="stable")]
    g_sorted = sid[order] * 2 + pos[order] % 2
    cs = np.cumsum(x[order])
    head = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    x[order] = cs - np.repeat(cs[head] - x[order][head], np.diff(np.r_[head, order.size]))
    return np.split(x, start[1:])


def _columns(counts: np.ndarray, h: int, w: int) -> tuple[np.ndarray, int]:
    """Decode only the columns the mask occupies: ((x1 - x0, h) uint8 C-ordered, the mask's
    columns as rows, and x0). Decoding the whole image cost more than the rest of drawing."""
    bounds = np.minimum(np.concatenate([[0], np.cumsum(counts)]), h * w)
    on = np.flatnonzero(bounds[2::2] > bounds[1:-1:2]) * 2 + 1  # runs of 1s, non-empty
    if not on.size:
        return np.zeros((0, h), np.uint8), 0
    x0, x1 = int(bounds[on[0]] // h), int((bounds[on[-1] + 1] - 1) // h) + 1
    b = np.clip(bounds, x0 * h, x1 * h) - x0 * h
    vals = (np.arange(b.size - 1) % 2).astype(np.uint8)
    return np.repeat(vals, np.diff(b)).reshape(x1 - x0, h), x0


def mask_outlines(mask: np.ndarray, tolerance: float = 0.0) -> list[np.ndarray]:
    """Outer borders and holes of a binary (H, W) mask as (K, 2) float64 x, y polylines.

    tolerance: > 0 simplifies each outline (Douglas-Peucker, ``cv2.approxPolyDP``): the
    points kept are a subset of the exact outline's, and no dropped point is farther than
    ``tolerance`` pixels from the simplified line (a pixel staircase becomes one line).
    """
    m = np.asarray(mask)
    if m.dtype != np.uint8 or not m.flags.c_contiguous:
        m = np.ascontiguousarray(m, np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if tolerance > 0:
        contours = [cv2.approxPolyDP(c, tolerance, True) for c in contours]
    return [c.reshape(-1, 2).astype(np.float64) for c in contours if len(c) >= 2]


def _dashes(pts: np.ndarray, dash: float) -> list[np.ndarray]:
    """The "on" pieces of a closed polyline cut into dash-long pieces along its length:
    resampled every pixel of length (and at each dash's ends), odd pieces dropped."""
    pts = np.concatenate([pts, pts[:1]])
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    total = s[-1]
    if total <= 0:
        return []
    ends = np.arange(0.0, total, dash)
    t = np.union1d(np.concatenate([np.arange(0.0, total, 1.0), ends, [total]]), ends[1:] - 1e-9)
    piece = np.floor(t / dash).astype(np.int64)
    keep = piece % 2 == 0
    t, piece = t[keep], piece[keep]
    xy = np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], axis=1)
    cuts = np.flatnonzero(np.diff(piece)) + 1
    return [p for p in np.split(xy, cuts) if len(p) >= 2]


def draw_outline(img: np.ndarray, polys: Sequence[np.ndarray], color: tuple[int, int, int],
                 thickness: int = 1, dashed: bool = False, dash: float = 6.0,
                 line: int = cv2.LINE_AA) -> None:
    """Draw closed polylines on ``img`` in place.

    Args:
        img: (H, W, 3) uint8 image (its channel order is the colour's).
        polys: (K, 2) x, y arrays in ``img``'s pixels (scale them first when drawing a resized
            or cropped view).
        dashed: dashes of ``dash`` pixels along the outline (the ground truth's style).
        line: OpenCV line type (``cv2.LINE_8`` for thin lines: anti-aliasing one pixel costs
            more than it shows).
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
        cv2.polylines(img, lines, not dashed, color, thickness, line)
