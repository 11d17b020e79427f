"""Checks on COCO compressed RLE strings, done in numpy before pycocotools' C code sees them."""

from __future__ import annotations

import numpy as np


def rle_strings_check(counts: list, areas: list[int]) -> tuple[int, str]:
    """Check COCO compressed RLE strings without trusting pycocotools' C parser.

    pycocotools' ``rleFrString`` reads past the end of a string whose last character says
    "more follows" and wraps negative counts to huge unsigned ones; both crash the process.
    This decodes all strings at once with numpy (the same 6-bit groups, sign bit and delta
    rule) and checks that the counts are non-negative and sum to height*width.

    Returns (index of the first bad string, reason) or (-1, "").
    """
    enc = [c.encode("ascii") if isinstance(c, str) else bytes(c) for c in counts]
    lens = np.fromiter(map(len, enc), np.int64, len(enc))
    area = np.asarray(areas, np.int64)
    n_chars = int(lens.sum())
    if n_chars == 0:
        bad = np.flatnonzero(area != 0)
        return (int(bad[0]), "no counts") if bad.size else (-1, "")
    c = np.frombuffer(b"".join(enc), np.uint8).astype(np.int64) - 48
    sid = np.repeat(np.arange(len(enc)), lens)
    bad_char = (c < 0) | (c > 63)
    if bad_char.any():
        return int(sid[np.flatnonzero(bad_char)[0]]), "characters outside '0'..'o'"
    more = (c & 0x20) != 0
    ends = np.cumsum(lens) - 1
    unfinished = lens > 0
    unfinished[lens > 0] = more[ends[lens > 0]]
    if unfinished.any():
        return int(np.flatnonzero(unfinished)[0]), "the last count is cut off"
    start = np.r_[True, ~more[:-1]]
    tok = np.cumsum(start) - 1
    starts = np.flatnonzero(start)
    k = np.arange(n_chars) - starts[tok]
    if (k >= 6).any():
        return int(sid[np.flatnonzero(k >= 6)[0]]), "a count with more than 6 characters"
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    tlen = np.diff(np.r_[starts, n_chars])
    neg = (c[starts + tlen - 1] & 0x10) != 0
    x = np.where(neg, x - (np.int64(1) << (5 * tlen)), x)
    t_sid = sid[starts]
    t_first = np.searchsorted(t_sid, np.arange(len(enc)))
    m = np.arange(x.shape[0]) - t_first[t_sid]  # index of each count in its string
    # cnts[m] = x[m] + cnts[m-2] for m > 2: cumulative sums along each parity from m = 1 / 2
    chain = np.where(m == 0, -1, t_sid * 2 + (m % 2))
    o = np.lexsort((m, chain))
    xs, ch = x[o], chain[o]
    cs = np.cumsum(xs)
    first = np.r_[True, ch[1:] != ch[:-1]]
    base = np.maximum.accumulate(np.where(first, np.arange(xs.size), 0))
    cnts = np.empty_like(x)
    cnts[o] = cs - (cs[base] - xs[base])
    cnts = np.where(m == 0, x, cnts)
    out_of_range = (cnts < 0) | (cnts >= 2**32)
    if out_of_range.any():
        return int(t_sid[np.flatnonzero(out_of_range)[0]]), "a negative or huge count"
    total = np.bincount(t_sid, weights=cnts.astype(np.float64), minlength=len(enc))
    wrong = np.flatnonzero(total != area)
    if wrong.size:
        j = int(wrong[0])
        return j, f"counts sum to {int(total[j])}, expected {int(area[j])}"
    return -1, ""
