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


def _random_mask(seed: int, specks: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(20, 90, 2)
    m = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 5)):  # rectangles, some cut by the image's edge
        y, x = rng.integers(-10, h), rng.integers(-10, w)
        m[max(0, y):y + rng.integers(3, 30), max(0, x):x + rng.integers(3, 30)] = 1
    if specks:
        m[rng.random((h, w)) < 0.02] ^= 1  # specks and pinholes
    return m


@pytest.mark.parametrize("seed", range(8))
def test_only_the_mask_columns_are_decoded_exactly_as_pycocotools(seed: int) -> None:
    from detseg.eval.outlines import _columns, _counts

    m = _random_mask(seed, specks=True)
    h, w = m.shape
    rle = mask_utils.encode(np.asfortranarray(m))
    ref = mask_utils.decode(rle).T  # (w, h): columns as rows
    cols = np.flatnonzero(ref.any(axis=1))
    for counts in (rle["counts"], rle["counts"].decode(), _uncompressed(m)["counts"]):
        got, x0 = _columns(_counts(counts), h, w)
        assert x0 == cols[0] and got.shape == (cols[-1] + 1 - cols[0], h)
        assert np.array_equal(got, ref[cols[0]:cols[-1] + 1])


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_touching_the_borders(seed: int) -> None:
    m = _random_mask(seed, specks=False)
    h, w = m.shape
    rle = mask_utils.encode(np.asfortranarray(m))
    for seg in (rle, {"size": rle["size"], "counts": rle["counts"].decode()}, _uncompressed(m)):
        assert np.array_equal(_refill(segmentation_outlines(seg, h, w), h, w), m.astype(bool))


def test_an_empty_or_broken_rle_has_no_outline() -> None:
    empty = mask_utils.encode(np.zeros((5, 7), np.uint8, order="F"))
    assert segmentation_outlines(empty, 5, 7) == []
    assert segmentation_outlines({"size": [5, 7], "counts": "0{"}, 5, 7) == []


def test_simplified_outlines_keep_exact_points_within_the_tolerance() -> None:
    from detseg.eval.outlines import mask_outlines

    yy, xx = np.mgrid[:120, :160]
    m = (((xx - 80) / 60.0) ** 2 + ((yy - 60) / 35.0) ** 2 <= 1).astype(np.uint8)  # staircase edges
    exact, simple = mask_outlines(m), mask_outlines(m, tolerance=1.0)
    assert len(exact) == len(simple) == 1
    e, s = exact[0], simple[0]
    assert len(s) < len(e) / 2
    assert {tuple(p) for p in s} <= {tuple(p) for p in e}
    # every exact point lies within the tolerance of the simplified closed polyline
    a, b = s, np.roll(s, -1, axis=0)
    ab = b - a
    t = np.clip(((e[:, None] - a) * ab).sum(-1) / np.maximum((ab ** 2).sum(-1), 1e-9), 0, 1)
    dist = np.linalg.norm(e[:, None] - (a + t[..., None] * ab), axis=-1).min(1)
    assert dist.max() <= 1.0 + 1e-9


def test_many_counts_decode_as_one_by_one() -> None:
    from detseg.eval.outlines import _counts, counts_many

    strings = []
    for seed in range(40):
        m = _random_mask(seed, specks=seed % 2 == 0)
        strings.append(mask_utils.encode(np.asfortranarray(m))["counts"])
    strings.append(mask_utils.encode(np.zeros((3, 4), np.uint8, order="F"))["counts"])  # one run
    strings.append(mask_utils.encode(np.ones((300, 300), np.uint8, order="F"))["counts"])  # long counts
    mixed = [s.decode() if i % 3 else s for i, s in enumerate(strings)]
    for batch in (mixed, mixed[:1], mixed + ["0{"], mixed + [[0, 5, 7]]):
        got = counts_many(batch)
        want = [_counts(s) for s in batch]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert (g is None and w is None) or np.array_equal(g, w)
