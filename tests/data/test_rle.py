"""`encode_masks` against pycocotools' ``mask.encode``: the same strings, mask for mask."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detseg.data.rle import encode_masks


def _reference(masks: np.ndarray) -> list[dict]:
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [dict(r, counts=r["counts"].decode("ascii")) for r in encoded]


def _masks(shape: tuple[int, int], k: int, seed: int) -> np.ndarray:
    """Boxes, noise, empty, full and edge-touching masks (runs that cross column ends)."""
    h, w = shape
    rng = np.random.default_rng(seed)
    m = np.zeros((k, h, w), bool)
    m[0] = rng.random((h, w)) < 0.5
    m[2] = True
    m[3, :, 0] = True
    m[4, -1, -1] = True
    m[5, 0, 0] = True
    if w > 3:
        m[6, -1, 2] = m[6, 0, 3] = True  # one run across a column end
    for i in range(7, k):
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[i, y : y + rng.integers(1, h + 1), x : x + rng.integers(1, w + 1)] = True
        m[i] &= rng.random((h, w)) < rng.choice([1.0, 0.9, 0.3])
    return m


@pytest.mark.parametrize("shape", [(320, 320), (480, 640), (7, 5), (1, 1), (2, 300)])
def test_same_strings_as_pycocotools(shape):
    masks = _masks(shape, 300, seed=shape[0] * 1000 + shape[1])  # > 255 masks: user sizes
    assert encode_masks(masks) == _reference(masks)


def test_empty_stack():
    assert encode_masks(np.zeros((0, 4, 6), bool)) == []


def test_decodes_back():
    masks = _masks((64, 48), 20, seed=1)
    rles = [dict(r, counts=r["counts"].encode("ascii")) for r in encode_masks(masks)]
    np.testing.assert_array_equal(mask_utils.decode(rles).transpose(2, 0, 1).astype(bool), masks)
