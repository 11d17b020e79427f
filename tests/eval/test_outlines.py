"""Mask outlines: traced from every COCO segmentation form, they enclose the mask itself."""

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detseg.eval.outlines import draw_outline, segmentation_outlines


def _ring_mask(h: int = 60, w: int = 80) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[10:40, 20:60] = 1
    m[18:30, 30:44] = 0  # a hole
    m[45:55, 5:12] = 1  # a second part
    return m


def _refill(polys: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """Even-odd fill of the outlines (outer borders minus holes), borders included."""
    out = np.zeros((h, w), np.uint8)
    pts = [np.rint(p).astype(np.int32) for p in polys]
    cv2.fillPoly(out, pts, 1)
    for p in pts:  # a hole's border pixels belong to the mask
        cv2.polylines(out, [p], True, 1, 1)
    holes = np.zeros_like(out)
    for p in pts:
        one = np.zeros_like(out)
        cv2.fillPoly(one, [p], 1)
        holes ^= one
    return (out & (holes | _borders(pts, h, w))).astype(bool)


def _borders(pts, h, w):
    b = np.zeros((h, w), np.uint8)
    cv2.polylines(b, pts, True, 1, 1)
    return b


def _uncompressed(m: np.ndarray) -> dict:
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, flat.size])
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": list(m.shape), "counts": counts}


@pytest.mark.parametrize("form", ["compressed-str", "compressed-bytes", "uncompressed"])
def test_rle_outlines_enclose_exactly_the_mask(form: str) -> None:
    m = _ring_mask()
    rle = mask_utils.encode(np.asfortranarray(m))
    seg = {"compressed-str": {"size": rle["size"], "counts": rle["counts"].decode()},
           "compressed-bytes": rle, "uncompressed": _uncompressed(m)}[form]
    polys = segmentation_outlines(seg, *m.shape)
    assert len(polys) == 3  # two outer borders and one hole
    assert np.array_equal(_refill(polys, *m.shape), m.astype(bool))


def test_polygons_are_returned_as_they_are() -> None:
    seg = [[1, 2, 10, 2, 10, 10.5], [20, 20, 30, 20, 30, 30, 20, 30]]
    polys = segmentation_outlines(seg, 60, 80)
    assert [p.tolist() for p in polys] == [[[1, 2], [10, 2], [10, 10.5]],
                                           [[20, 20], [30, 20], [30, 30], [20, 30]]]


@pytest.mark.parametrize("seg", [None, {}, {"size": [4, 4]}, "x", [[1, 2]]])
def test_nothing_to_draw_gives_no_outline(seg) -> None:
    assert segmentation_outlines(seg, 4, 4) == []


def test_dashed_outline_is_a_broken_solid_outline() -> None:
    m = _ring_mask()
    polys = segmentation_outlines(mask_utils.encode(np.asfortranarray(m)), *m.shape)
    solid, dashed = (np.zeros((60, 80, 3), np.uint8) for _ in range(2))
    draw_outline(solid, polys, (255, 0, 0), 1)
    draw_outline(dashed, polys, (255, 0, 0), 1, dashed=True)
    s, d = solid[..., 0] > 0, dashed[..., 0] > 0
    assert 0.3 * s.sum() < d.sum() < 0.8 * s.sum()
    # every dash lies on the solid outline (anti-aliasing may widen it by a pixel)
    near = cv2.dilate(s.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert not (d & ~near).any()
