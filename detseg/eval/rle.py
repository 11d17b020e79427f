"""COCO masks for evaluation, never handing pycocotools' C code an input or a call shape it
mishandles.

- `check_segmentations`: polygons and RLE checked as pycocotools will read them (field-naming
  `InputError`s); `to_rles`: the checked masks as compressed RLE, as ``COCO.annToRLE`` makes them.
- `rle_strings_check`: compressed RLE strings decoded and checked in numpy before pycocotools
  parses them (a malformed string makes its C parser read past the end of the string).
- `rle_area_bbox`: ``mask.area`` and ``mask.toBbox`` in chunks of at most 255 masks
  (pycocotools 2.0.11's ``area`` overflows a uint8 on a list longer than 255).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detseg.errors import InputError

# pycocotools 2.0.11 sizes ``area``'s output with np.array((n,), dtype=np.uint8): n <= 255.
_PYCOCO_CHUNK = 255


# value of a one-character count: 5 bits, bit 0x10 the sign (x |= -1 << 5 when set)
_ONE_CHAR = np.array([(c & 0x1F) - (32 if c & 0x10 else 0) for c in range(64)], np.int64)


def _decode(c: np.ndarray, lens: np.ndarray) -> tuple[int, str, np.ndarray, np.ndarray]:
    """The (delta) values of all counts of the joined strings.

    Args:
        c: (C,) uint8 characters minus 48; lens: (S,) int64 length of each string.
    Returns:
        (-1, "", x, ntok): x (T,) int64 the decoded values in order, ntok (S,) values per
        string; or (index of the first bad string, reason, empty, empty).
    """
    empty = np.zeros(0, np.int64)
    ends_s = np.cumsum(lens)
    if (c > 63).any():  # '0'..'o' only; c is uint8, so characters below '0' wrap above 63
        i = int(np.flatnonzero(c > 63)[0])
        return int(np.searchsorted(ends_s, i, "right")), "characters outside '0'..'o'", empty, empty
    more = c >= 32  # bit 0x20: another character of this count follows
    nonempty = lens > 0
    if more[ends_s[nonempty] - 1].any():
        j = int(np.flatnonzero(more[ends_s[nonempty] - 1])[0])
        return int(np.flatnonzero(nonempty)[j]), "the last count is cut off", empty, empty
    # Nearly every count is one character: decode all as one character from their last
    # character, then redo the few longer ones.
    x = _ONE_CHAR[c[~more]]
    mpos = np.flatnonzero(more)  # continuation characters (few)
    n_more = np.bincount(np.searchsorted(ends_s, mpos, "right"), minlength=lens.shape[0])
    ntok = lens - n_more
    if mpos.size:
        tok = mpos - np.arange(mpos.shape[0])  # the count each continuation character belongs to
        run = np.flatnonzero(np.r_[True, tok[1:] != tok[:-1]])
        k = np.arange(mpos.shape[0]) - np.repeat(run, np.diff(np.r_[run, mpos.shape[0]]))
        t_ids = tok[run]
        t_len = np.diff(np.r_[run, mpos.shape[0]]) + 1  # characters of each long count
        if (t_len > 6).any():
            j = int(np.flatnonzero(t_len > 6)[0])
            return int(np.searchsorted(ends_s, mpos[run[j]], "right")), "a count with more than 6 characters", empty, empty
        val = np.zeros(t_ids.shape[0], np.int64)
        np.add.at(val, np.repeat(np.arange(t_ids.shape[0]), t_len - 1),
                  (c[mpos] & 0x1F).astype(np.int64) << (5 * k))
        last_c = c[mpos[run] + t_len - 1]
        val |= (last_c & 0x1F).astype(np.int64) << (5 * (t_len - 1))
        neg = (last_c & 0x10) != 0
        val[neg] -= np.int64(1) << (5 * t_len[neg])
        x[t_ids] = val
    return -1, "", x, ntok


def rle_strings_check(counts: Sequence[str | bytes], areas: Sequence[int] | np.ndarray
                      ) -> tuple[int, str]:
    """Check COCO compressed RLE strings without trusting pycocotools' C parser.

    pycocotools' ``rleFrString`` reads past the end of a string whose last character says
    "more follows" and wraps negative counts to huge unsigned ones. This decodes all strings
    at once with numpy (the same 6-bit groups, sign bit and delta rule: count ``m > 2`` adds
    count ``m - 2``) and checks that the counts are in [0, 2**32) and sum to height*width.

    Args:
        counts: S strings (ASCII str or bytes).
        areas: (S,) height*width of each mask.
    Returns:
        (index of the first bad string, reason) or (-1, "").
    """
    n = len(counts)
    area = np.asarray(areas, np.int64).reshape(-1)
    if n == 0:
        return -1, ""
    try:
        joined = "".join(counts)  # TypeError when some are bytes
    except TypeError:
        joined = None
    if joined is not None:
        if not joined.isascii():
            i = next(i for i, s in enumerate(counts) if not s.isascii())
            return i, "characters outside '0'..'o'"
        raw = joined.encode("ascii")
    else:
        parts = [s.encode("ascii", "replace") if isinstance(s, str) else bytes(s) for s in counts]
        raw = b"".join(parts)
        counts = parts
    lens = np.fromiter(map(len, counts), np.int64, n)
    c = np.frombuffer(raw, np.uint8) - np.uint8(48)
    bad, why, x, ntok = _decode(c, lens)
    if bad >= 0:
        return bad, why
    # Count m of a string is x[m] + count m - 2 for m > 2: a running sum along each parity
    # (m = 1, 3, 5, ... and m = 2, 4, ...). With global value index g and the string's
    # first index f, count g = (sum of x over g' = g mod 2, f < g' <= g), or x[f] at g = f.
    first = np.cumsum(ntok) - ntok
    has = ntok > 0
    pe = np.cumsum(x[0::2])  # pe[k]: sum of x[0], x[2], ..., x[2k]
    po = np.cumsum(x[1::2])  # po[k]: sum of x[1], x[3], ..., x[2k + 1]
    f = first[has]
    base_e = np.zeros(n, np.int64)
    base_o = np.zeros(n, np.int64)
    base_e[has] = pe[f // 2]
    fo = (f - 1) // 2
    base_o[has] = np.where(fo >= 0, po[np.maximum(fo, 0)] if po.size else 0, 0)
    # values of each string at even / odd global indices (for the repeats of the bases)
    end = first + ntok
    n_even = (end + 1) // 2 - (first + 1) // 2
    cnts = np.empty_like(x)
    cnts[0::2] = pe - np.repeat(base_e, n_even)
    cnts[1::2] = po - np.repeat(base_o, ntok - n_even)
    cnts[f] = x[f]
    if cnts.size and (cnts.min() < 0 or cnts.max() >= 2**32):
        out_of_range = (cnts < 0) | (cnts >= 2**32)
        g = int(np.flatnonzero(out_of_range)[0])
        return int(np.searchsorted(np.cumsum(ntok), g, "right")), "a negative or huge count"
    total = np.zeros(n, np.int64)
    total[has] = np.add.reduceat(cnts, f) if f.size else 0
    wrong = np.flatnonzero(total != area)
    if wrong.size:
        j = int(wrong[0])
        return j, f"counts sum to {int(total[j])}, expected {int(area[j])}"
    return -1, ""


def rle_area_bbox(rles: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' ``mask.area`` and ``mask.toBbox`` of compressed RLEs, in safe chunks.

    Args:
        rles: N RLE dicts (``counts`` compressed, str or bytes) that pycocotools can parse.
    Returns:
        area (N,) float64 (pixels) and bbox (N, 4) float64 COCO ``[x, y, w, h]``.
    """
    from pycocotools import mask as mask_utils

    n = len(rles)
    area = np.zeros(n, np.float64)
    bbox = np.zeros((n, 4), np.float64)
    for lo in range(0, n, _PYCOCO_CHUNK):
        part = list(rles[lo:lo + _PYCOCO_CHUNK])
        area[lo:lo + len(part)] = np.asarray(mask_utils.area(part), np.float64).reshape(-1)
        bbox[lo:lo + len(part)] = np.asarray(mask_utils.toBbox(part), np.float64).reshape(-1, 4)
    return area, bbox


def _fmt(value: object) -> str:
    return f"{value!r:.80}"


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _polygon_error(s: list) -> str | None:
    """Why pycocotools cannot read ``s`` as polygons (None if it can).

    ``frPyObjects`` reads a list whose first item has exactly 4 numbers as *boxes*, and then
    fails (``Argument 'bb' has incorrect type``); later polygons of 2 points are fine.
    """
    if not s or not all(isinstance(p, list) for p in s):
        return "expected polygons (a list of [x1, y1, x2, y2, ...] lists) or an RLE object"
    for j, p in enumerate(s):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 1e6
                   for v in p):  # abs(nan) <= 1e6 is False: NaN and inf fail here too
            return f"polygon {j}: expected finite numbers with |x|, |y| <= 1e6"
        if len(p) % 2:
            return f"polygon {j}: expected x, y pairs, found {len(p)} numbers"
        if len(p) < (6 if j == 0 else 4):
            return (f"polygon {j}: expected at least {3 if j == 0 else 2} x, y points, found "
                    f"{len(p)} numbers" + (" (pycocotools reads a first polygon of 4 numbers as a "
                                           "box and fails)" if len(p) == 4 else ""))
    return None


def _check_record(s: object, where: str, i: int) -> None:
    """Types and values of one segmentation, as parsed by the json module (any types)."""
    if isinstance(s, dict):
        size, counts = s.get("size"), s.get("counts")
        if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(map(_is_count, size)):
            raise InputError(f"{where}[{i}]: field 'segmentation.size': expected [height, width], found {_fmt(size)}")
        if not isinstance(counts, (str, bytes, list)) or (
                isinstance(counts, list) and not all(map(_is_count, counts))):
            raise InputError(f"{where}[{i}]: field 'segmentation.counts': expected an RLE string or a list of counts, found {_fmt(counts)}")
    elif not isinstance(s, list):
        raise InputError(f"{where}[{i}]: field 'segmentation': expected polygons or an RLE object, found {_fmt(s)}")


def check_segmentations(segs: list, where: str, hw: np.ndarray | None = None,
                        img: np.ndarray | None = None, typed: bool = False) -> None:
    """Check COCO segmentations so that pycocotools can convert every one of them.

    Args:
        segs: N raw segmentations: polygons, uncompressed RLE (counts a list) or compressed
            RLE (counts a str/bytes), each with ``size`` [height, width].
        where: the file and section, for messages (``f"{where}[{i}]"`` names a record).
        hw: (I, 2) int64 image height, width (0, 0 where unknown); img: (N,) index into hw.
        typed: the records were parsed into typed structs (`detseg.data.coco.RleRecord`
            made dicts, polygons lists of floats), so the per-record type checks are skipped.
    Raises:
        InputError naming the first bad record and field.
    """
    if not typed:
        for i, s in enumerate(segs):
            _check_record(s, where, i)
    strings, lists, polys, sizes = [], [], [], []
    for i, s in enumerate(segs):
        if isinstance(s, dict):
            (strings if isinstance(s["counts"], (str, bytes)) else lists).append(i)
            sizes.append(i)
        else:
            polys.append(i)
    for i in polys:
        why = _polygon_error(segs[i])
        if why is not None:
            raise InputError(f"{where}[{i}]: field 'segmentation': {why}, found {_fmt(segs[i])}")
    if sizes:
        size = np.array([tuple(segs[i]["size"]) for i in sizes], np.int64).reshape(-1, 2)
        if (size < 0).any():
            i = sizes[int(np.flatnonzero((size < 0).any(axis=1))[0])]
            raise InputError(f"{where}[{i}]: field 'segmentation.size': expected [height, width], found {_fmt(segs[i]['size'])}")
        if hw is not None and img is not None:
            want = hw[img[np.asarray(sizes)]]
            bad = np.flatnonzero((want != size).any(axis=1) & (want != 0).any(axis=1))
            if bad.size:
                i, (h, w) = sizes[int(bad[0])], want[int(bad[0])].tolist()
                raise InputError(f"{where}[{i}]: field 'segmentation.size': expected the image size [{h}, {w}], found {list(segs[i]['size'])}")
    else:
        size = np.zeros((0, 2), np.int64)
    for i in lists:
        counts, (h, w) = segs[i]["counts"], segs[i]["size"]
        if any(c < 0 for c in counts):
            raise InputError(f"{where}[{i}]: field 'segmentation.counts': expected counts >= 0, found {min(counts)}")
        if any(c >= 2**32 for c in counts):
            raise InputError(f"{where}[{i}]: field 'segmentation.counts': expected counts < 2**32, found {max(counts)}")
        if sum(counts) != h * w:
            raise InputError(f"{where}[{i}]: field 'segmentation.counts': counts sum to {sum(counts)}, expected height*width = {h * w}")
    if hw is not None and img is not None and polys:
        no_size = np.flatnonzero((hw[img[np.asarray(polys)]] == 0).all(axis=1))
        if no_size.size:
            raise InputError(f"{where}[{polys[int(no_size[0])]}]: field 'segmentation': polygons need the image's 'height' and 'width', which the ground truth lacks")
    if strings:
        pos = np.searchsorted(np.asarray(sizes), np.asarray(strings))
        bad, why = rle_strings_check([segs[i]["counts"] for i in strings], size[pos].prod(axis=1))
        if bad >= 0:
            i = strings[bad]
            raise InputError(f"{where}[{i}]: field 'segmentation.counts': not a valid compressed "
                             f"RLE for size {list(segs[i]['size'])} ({why}), found {_fmt(segs[i]['counts'])}")


def to_rles(segs: Sequence, img: np.ndarray, image_hw: np.ndarray) -> list[dict]:
    """Checked COCO segmentations -> compressed RLE, exactly as ``COCO.annToRLE`` converts them.

    Compressed RLE passes through unchanged (pycocotools reads ``counts`` as str or bytes).
    """
    from pycocotools import mask as mask_utils

    out = []
    for s, i in zip(segs, img.tolist(), strict=True):
        if isinstance(s, list):
            h, w = (int(v) for v in image_hw[i])
            rle = mask_utils.merge(mask_utils.frPyObjects(s, h, w))
        elif isinstance(s["counts"], list):
            h, w = (int(v) for v in image_hw[i])
            rle = mask_utils.frPyObjects(s, *((h, w) if (h, w) != (0, 0) else s["size"]))
        else:
            rle = s
        out.append(rle)
    return out
