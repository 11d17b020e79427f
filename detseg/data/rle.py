"""COCO compressed RLE of dense masks, the same strings as pycocotools' ``mask.encode``, faster.

pycocotools' ``encode`` wants an (H, W, K) Fortran-ordered uint8 array (a transposing copy of
the whole stack) and scans every pixel of every mask. Instance masks are zero outside a small
box, so `encode_masks` finds each mask's bounding box, takes the run boundaries from those crops
only (column-major, as COCO counts), and lets pycocotools turn the counts into its compressed
strings (``frPyObjects`` on uncompressed RLE: the same C code as ``encode``). About 2x
pycocotools' ``encode`` on 100 instance masks of 320x320.
"""

from __future__ import annotations

import numpy as np


def encode_masks(masks: np.ndarray) -> list[dict]:
    """COCO compressed RLE of (K, H, W) bool masks: ``{"size": [H, W], "counts": str}``.

    Equal, string for string, to ``pycocotools.mask.encode`` of the same masks. All crops go
    through one vectorised pass: each mask's bounding box, its columns laid end to end (each
    followed by a zero) in one buffer, one ``diff`` for the run boundaries of every mask.
    """
    from pycocotools import mask as mask_utils

    k, h, w = masks.shape
    if k == 0:
        return []
    masks = masks.astype(bool, copy=False)
    total = h * w
    cols_any, rows_any = masks.any(axis=1), masks.any(axis=2)  # (K, W), (K, H)
    filled = cols_any.any(axis=1)
    c0 = cols_any.argmax(axis=1)
    c1 = w - cols_any[:, ::-1].argmax(axis=1)
    r0 = rows_any.argmax(axis=1)
    r1 = h - rows_any[:, ::-1].argmax(axis=1)
    bh, bw = np.where(filled, r1 - r0, 0), np.where(filled, c1 - c0, 0)
    seg = 1 + bw * (bh + 1)  # a leading zero, then each column and a zero after it
    start = np.concatenate([[0], np.cumsum(seg)[:-1]])
    buf = np.zeros(int(seg.sum()) + 1, np.int8)
    for i in np.flatnonzero(filled).tolist():
        block = buf[start[i] + 1 : start[i] + seg[i]].reshape(bw[i], bh[i] + 1)
        block[:, : bh[i]] = masks[i, r0[i] : r1[i], c0[i] : c1[i]].T
    change = np.flatnonzero(np.diff(buf)) + 1  # buffer index of the first pixel of a new run
    owner = np.searchsorted(start, change, side="right") - 1
    local = change - start[owner] - 1
    col, row = np.divmod(local, bh[owner] + 1)
    pos = (c0[owner] + col) * h + r0[owner] + row
    # A run ending at the bottom of a column and going on at the top of the next gives the
    # same position twice: not a boundary.
    key, times = np.unique(owner * (total + 1) + pos, return_counts=True)
    key = key[times % 2 == 1]
    owner, pos = np.divmod(key, total + 1)
    split = np.searchsorted(owner, np.arange(k + 1))
    raw = []
    for i in range(k):
        edges = pos[split[i] : split[i + 1]]
        tail = [] if edges.size and edges[-1] == total else [total]
        counts = np.diff(np.concatenate([[0], edges, tail]))
        raw.append({"size": [h, w], "counts": counts.tolist()})
    encoded = mask_utils.frPyObjects(raw, h, w)
    for rle in encoded:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(encoded)
