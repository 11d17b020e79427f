"""The vectorised RLE string check against a plain loop that decodes as pycocotools does."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detseg.eval.rle import rle_area_bbox, rle_strings_check


def _plain_check(s: str, area: int) -> bool:
    """pycocotools' ``rleFrString``, one character at a time, plus the checks: True if valid."""
    cnts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                return False  # the last count is cut off
            c = ord(s[p]) - 48
            if not 0 <= c <= 63 or k >= 6:
                return False
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[-2]
        cnts.append(x)
    return all(0 <= v < 2**32 for v in cnts) and sum(cnts) == area


@pytest.fixture(scope="module")
def strings():
    rng = np.random.default_rng(0)
    masks = np.zeros((30, 40, 60), np.uint8)
    for i in range(60):
        y, x = rng.integers(0, 25), rng.integers(0, 35)
        masks[y:y + rng.integers(1, 10), x:x + rng.integers(1, 30), i] = 1
    masks[:, :, 0] = 0  # empty
    masks[:, :, 1] = 1  # full
    return [r["counts"].decode() for r in mask_utils.encode(np.asfortranarray(masks))]


def test_valid_strings_pass(strings):
    assert rle_strings_check(strings, [30 * 40] * len(strings)) == (-1, "")


def test_first_bad_string_as_a_plain_loop_finds_it(strings):
    rng = random.Random(1)
    alphabet = [chr(c) for c in range(40, 120)]
    for _ in range(400):
        sub = rng.sample(strings, rng.randint(1, 6))
        areas = [30 * 40] * len(sub)
        j, s = rng.randrange(len(sub)), None
        s = sub[j]
        op = rng.randrange(5)
        if op == 0 and s:
            p = rng.randrange(len(s))
            s = s[:p] + rng.choice(alphabet) + s[p + 1:]
        elif op == 1:
            s = s[:rng.randrange(len(s) + 1)]
        elif op == 2:
            p = rng.randrange(len(s) + 1)
            s = s[:p] + "".join(rng.choice("PQRSXYZ`abcdefo") for _ in range(rng.randint(1, 7))) + "1" + s[p:]
        elif op == 3:
            areas[j] += rng.choice([-1, 1])
        sub[j] = s
        want = next((i for i, (t, a) in enumerate(zip(sub, areas, strict=True))
                     if not _plain_check(t, a)), -1)
        assert rle_strings_check(sub, areas)[0] == want, (sub, areas)


def test_area_and_bbox_in_chunks_equal_pycocotools_per_mask(strings):
    rles = [{"size": [30, 40], "counts": s} for s in strings] * 6  # 360 > 255
    area, bbox = rle_area_bbox(rles)
    assert area.tolist() == [float(mask_utils.area(r)) for r in rles]
    assert bbox.tolist() == [mask_utils.toBbox(r).tolist() for r in rles]
