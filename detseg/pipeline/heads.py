"""Decoders that turn raw model outputs into candidate boxes (and masks) in input pixels.

Output formats (one image of the batch at a time; B is the batch axis):

- Ultralytics detect: ``(B, 4 + nc, N)``: rows ``cx, cy, w, h`` in model-input pixels, then
  ``nc`` class scores (already sigmoid). Segment adds ``nm`` (32) mask coefficients after the
  class rows, and a second output of prototypes ``(B, nm, mh, mw)`` (mh = H / 4).
- Ultralytics end-to-end (NMS-free, ``end2end`` metadata): ``(B, max_det, 6 [+ nm])``:
  ``x1, y1, x2, y2, score, class`` [+ coefficients], already selected.
- YOLOX: ``(B, N, 5 + nc)`` raw grid output, N = sum over strides 8, 16, 32 of
  ``(H / s) * (W / s)``: ``cx, cy`` relative to the cell (``(xy + grid) * stride``), ``log w,
  log h`` (``exp(wh) * stride``), objectness, then class scores (sigmoid). Score = objectness x
  class score.

Masks follow Ultralytics' predictor with ``retina_masks=False`` (``process_mask(...,
upsample=True)`` then ``scale_masks`` to the original image): logits = coeffs @ protos;
bilinear upsample to the input size; ``> 0``; crop to the box in input pixels
(``x1 <= col < x2``); drop instances whose mask is empty there (a mask lying only in the
padding is kept, and comes out empty); crop the letterbox padding; bilinear resize to the
original size; ``> 0.5``. Both resizes reproduce torch's ``F.interpolate`` arithmetic exactly
(binary masks interpolate to exactly 0.5 often, so "close" is not enough).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from detseg.errors import ModelError
from detseg.pipeline.preprocess import LetterboxTransform

YOLOX_STRIDES = (8, 16, 32)


@dataclass
class Candidates:
    """Candidate detections of one image before NMS.

    Attributes:
        boxes: (N, 4) float32 xyxy in model-input pixels.
        class_scores: (N, C) float32 per-class scores.
        coeffs: (N, nm) float32 mask coefficients, or None for detect models.
    """

    boxes: np.ndarray
    class_scores: np.ndarray
    coeffs: np.ndarray | None = None


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """(N, 4) center-x, center-y, width, height -> (N, 4) x1, y1, x2, y2 (float32)."""
    xy, half = xywh[:, :2], xywh[:, 2:4] / 2
    return np.concatenate([xy - half, xy + half], axis=1).astype(np.float32, copy=False)


def ultralytics_candidates(pred: np.ndarray, nm: int, conf: float) -> Candidates:
    """Candidates from one Ultralytics output ``(4 + nc + nm, N)`` whose best score is > conf.

    Filtering before the transpose keeps the work proportional to the candidates, not to N.
    """
    if pred.ndim != 2 or pred.shape[0] <= 4 + nm:
        raise ModelError(
            f"ultralytics head: expected an output (4 + nc + {nm}, N), found {pred.shape}"
        )
    nc = pred.shape[0] - 4 - nm
    keep = np.flatnonzero(pred[4 : 4 + nc].max(axis=0) > conf)
    sel = pred[:, keep].T  # (K, 4 + nc + nm)
    return Candidates(
        boxes=xywh_to_xyxy(sel[:, :4]),
        class_scores=np.ascontiguousarray(sel[:, 4 : 4 + nc], dtype=np.float32),
        coeffs=np.ascontiguousarray(sel[:, 4 + nc :], dtype=np.float32) if nm else None,
    )


@functools.lru_cache(maxsize=8)
def yolox_grid(
    input_size: tuple[int, int], strides: tuple[int, ...] = YOLOX_STRIDES
) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell offsets (N, 2) as (x, y) and strides (N, 1), rows in YOLOX output order."""
    grids, expanded = [], []
    H, W = input_size
    for s in strides:
        hs, ws = H // s, W // s
        yv, xv = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
        grids.append(np.stack([xv, yv], axis=2).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), s))
    grid, stride = (
        np.concatenate(grids).astype(np.float32),
        np.concatenate(expanded).astype(np.float32),
    )
    grid.flags.writeable = stride.flags.writeable = False  # cached: shared between calls
    return grid, stride


def yolox_candidates(pred: np.ndarray, input_size: tuple[int, int], conf: float) -> Candidates:
    """Candidates from one YOLOX output ``(N, 5 + nc)`` whose best obj x class score is > conf."""
    grid, strides = yolox_grid(input_size)
    if pred.ndim != 2 or pred.shape[1] <= 5 or pred.shape[0] != grid.shape[0]:
        raise ModelError(
            f"yolox head: expected an output ({grid.shape[0]}, 5 + nc) for a "
            f"{input_size[0]}x{input_size[1]} input (strides {YOLOX_STRIDES}), found {pred.shape}"
        )
    best = pred[:, 5:].max(axis=1) * pred[:, 4]
    keep = np.flatnonzero(best > conf)
    sel = pred[keep].astype(np.float32, copy=False)
    xy = (sel[:, :2] + grid[keep]) * strides[keep]
    wh = np.exp(sel[:, 2:4]) * strides[keep]
    return Candidates(
        boxes=xywh_to_xyxy(np.concatenate([xy, wh], axis=1)),
        class_scores=sel[:, 5:] * sel[:, 4:5],
    )


def end2end_rows(pred: np.ndarray, conf: float, max_det: int) -> np.ndarray:
    """Rows of an Ultralytics end-to-end output ``(max_det, 6 [+ nm])`` with score > conf."""
    if pred.ndim != 2 or pred.shape[1] < 6:
        raise ModelError(
            f"ultralytics end2end head: expected (max_det, 6 [+ nm]), found {pred.shape}"
        )
    return pred[pred[:, 4] > conf][:max_det]


def process_masks(
    protos: np.ndarray,
    coeffs: np.ndarray,
    boxes_input: np.ndarray,
    transform: LetterboxTransform,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance masks at the original image resolution, as Ultralytics' predictor makes them.

    Args:
        protos: (nm, mh, mw) float32 prototypes of one image.
        coeffs: (K, nm) float32 mask coefficients of the kept detections.
        boxes_input: (K, 4) xyxy boxes in model-input pixels.
        transform: the image's letterbox transform.

    Returns:
        masks (K', H0, W0) bool and keep (K,) bool: which detections have a non-empty mask
        (Ultralytics drops the others; so must the caller).

    Work is proportional to the box areas, not to K full frames: a mask is zero outside its
    box, so each one is upsampled only over its box (`_box_logits`), and resized to the
    original image only where it can be non-zero (`_scale_block`; skipped when the letterbox
    did not scale, as Ultralytics' ``scale_masks`` skips it).
    """
    nm, mh, mw = protos.shape
    H, W = transform.input_size
    h0, w0 = transform.orig_size
    k = coeffs.shape[0]
    left, top = transform.pad
    new_h, new_w = transform.resized
    identity = (new_h, new_w) == (h0, w0)
    up_y, up_x = _torch_linear_indices(mh, H), _torch_linear_indices(mw, W)
    down_y, down_x = _torch_linear_indices(new_h, h0), _torch_linear_indices(new_w, w0)
    coeffs = coeffs.astype(np.float32, copy=False)
    # Channels last, so that a box's window of prototypes is one strided block whose logits
    # are one small product (small enough that BLAS stays on this thread: a full (K, mh*mw)
    # product makes OpenBLAS start threads that fight the inference workers for the cores).
    protos_hwc = np.ascontiguousarray(protos.astype(np.float32, copy=False).transpose(1, 2, 0))
    # crop_mask keeps input pixel (r, c) when y1 <= r < y2 and x1 <= c < x2.
    edges = np.ceil(boxes_input.astype(np.float64)).astype(np.int64)
    edges[:, 0::2] = np.clip(edges[:, 0::2], 0, W)
    edges[:, 1::2] = np.clip(edges[:, 1::2], 0, H)
    keep = np.zeros(k, bool)
    contents: list[tuple[np.ndarray, tuple[int, int]] | None] = []
    for i, (c0, r0, c1, r1) in enumerate(edges.tolist()):
        if r0 >= r1 or c0 >= c1:
            continue
        block = _box_logits(protos_hwc, coeffs[i], (r0, r1), (c0, c1), up_y, up_x) > 0
        if not block.any():
            continue
        # Ultralytics decides on the mask in input space, padding included: a mask that lies
        # only in the padding is kept (and is empty in the original image).
        keep[i] = True
        cr0, cr1 = max(r0, top), min(r1, top + new_h)
        cc0, cc1 = max(c0, left), min(c1, left + new_w)
        if cr0 < cr1 and cc0 < cc1:
            content = block[cr0 - r0 : cr1 - r0, cc0 - c0 : cc1 - c0]
            contents.append((content, (cr0 - top, cc0 - left)))
        else:
            contents.append(None)
    out = np.zeros((len(contents), h0, w0), bool)
    for j, item in enumerate(contents):
        if item is None:
            continue
        block, (r, c) = item
        if identity:
            out[j, r : r + block.shape[0], c : c + block.shape[1]] = block
        else:
            _scale_block(block, (r, c), down_y, down_x, out[j])
    return out, keep


def _box_logits(
    protos_hwc: np.ndarray,
    coeffs: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
    up_y: tuple,
    up_x: tuple,
) -> np.ndarray:
    """Upsampled logits of input pixels ``rows`` x ``cols`` (half-open) of one mask.

    ``protos_hwc`` is (mh, mw, nm) float32, ``coeffs`` (nm,) float32; returns
    (rows, cols) float32 logits ``coeffs @ protos`` bilinearly upsampled to the input size.

    Reads only the prototype window those pixels interpolate from. When the upsampling
    factor is an integer on both axes (Ultralytics' protos are a quarter of the input), the
    window plus a one-cell margin (clamped at the edges, as torch clamps) is resized by
    cv2 with the same half-pixel mapping, weights that are exact in float32 and the same
    order (along x, then y); else with `_bilinear` on torch's indices.
    """
    (r0, r1), (c0, c1) = rows, cols
    mh, mw = protos_hwc.shape[:2]
    py0, py1 = up_y[0][r0], up_y[1][r1 - 1] + 1
    px0, px1 = up_x[0][c0], up_x[1][c1 - 1] + 1
    sy, sx = len(up_y[0]) // mh, len(up_x[0]) // mw
    if sy * mh == len(up_y[0]) and sx * mw == len(up_x[0]) and sy in (2, 4, 8) and sx in (2, 4, 8):
        import cv2

        wy0, wy1 = max(py0 - 1, 0), min(py1 + 1, mh)
        wx0, wx1 = max(px0 - 1, 0), min(px1 + 1, mw)
        window = protos_hwc[wy0:wy1, wx0:wx1] @ coeffs
        if window.shape[0] == 1 or window.shape[1] == 1:  # cv2 needs 2 cells to interpolate
            window = np.pad(window, ((0, window.shape[0] == 1), (0, window.shape[1] == 1)), "edge")
        up = cv2.resize(window, None, fx=sx, fy=sy, interpolation=cv2.INTER_LINEAR)
        return up[r0 - sy * wy0 : r1 - sy * wy0, c0 - sx * wx0 : c1 - sx * wx0]
    window = protos_hwc[py0:py1, px0:px1] @ coeffs
    ys = _shift(up_y, (r0, r1), py0, py1 - py0)
    xs = _shift(up_x, (c0, c1), px0, px1 - px0)
    return _bilinear(window, ys, xs)


def _shift(idx: tuple, span: tuple[int, int], offset: int, size: int) -> tuple[np.ndarray, ...]:
    """Indices/weights of output span [a, b) with source indices made relative to ``offset``
    and clipped to [0, size - 1]."""
    i0, i1, l0, l1 = (a[span[0] : span[1]] for a in idx)
    return np.clip(i0 - offset, 0, size - 1), np.clip(i1 - offset, 0, size - 1), l0, l1


def _bilinear(src: np.ndarray, ys: tuple, xs: tuple) -> np.ndarray:
    """Bilinear resample of ``src`` (h, w) float32 at the given source indices and weights.

    Torch's order of operations: along x first (on the source rows, once each), then along y.
    """
    y0, y1, wy0, wy1 = ys
    x0, x1, wx0, wx1 = xs
    rows = np.unique(np.concatenate([y0, y1]))
    along_x = np.empty((src.shape[0], len(x0)), np.float32)
    along_x[rows] = src[rows][:, x0] * wx0 + src[rows][:, x1] * wx1
    return along_x[y0] * wy0[:, None] + along_x[y1] * wy1[:, None]


def _torch_linear_indices(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """Source indices (i0, i1) and weights (l0, l1) of torch's bilinear, align_corners=False.

    As in ATen's UpSample.h: ``scale = float(n_in) / n_out``; ``src = max(scale * (i + 0.5) - 0.5,
    0)`` rounded once (the compiled kernel fuses the multiply-add); ``i0 = min(floor(src), n_in - 1)``;
    ``l1 = src - i0``. Bilinear results of binary masks often land exactly on 0.5, so the
    arithmetic must be the reference's, not merely close to it.
    """
    f = np.float32
    if n_in == n_out:
        i = np.arange(n_out)
        return i, i, np.ones(n_out, f), np.zeros(n_out, f)
    scale = f(n_in) / f(n_out)
    src = (np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(f)
    src = np.maximum(src, f(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    l1 = np.clip(src - i0.astype(f), f(0), f(1))
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, f(1) - l1, l1


def _scale_block(
    block: np.ndarray, offset: tuple[int, int], ys: tuple, xs: tuple, out: np.ndarray
) -> None:
    """Resize a bool mask that is zero outside ``block`` into ``out`` (H0, W0) with ``> 0.5``.

    ``block`` (bh, bw) sits at ``offset`` (row, col) in the source mask; ``ys``/``xs`` are the
    `_torch_linear_indices` of the full source -> ``out`` resize. Only output pixels whose
    source pixels touch the block are computed (the rest stay 0).
    """
    bh, bw = block.shape
    r0, c0 = offset
    oy = np.flatnonzero((ys[1] >= r0) & (ys[0] < r0 + bh))
    ox = np.flatnonzero((xs[1] >= c0) & (xs[0] < c0 + bw))
    if oy.size == 0 or ox.size == 0:
        return
    rows, cols = (oy[0], oy[-1] + 1), (ox[0], ox[-1] + 1)
    # Zero border around the block: source indices outside it read a zero, as they should.
    padded = np.zeros((bh + 2, bw + 2), np.float32)
    padded[1:-1, 1:-1] = block
    local_y = _shift(ys, rows, r0 - 1, bh + 2)
    local_x = _shift(xs, cols, c0 - 1, bw + 2)
    out[rows[0] : rows[1], cols[0] : cols[1]] = _bilinear(padded, local_y, local_x) > 0.5
