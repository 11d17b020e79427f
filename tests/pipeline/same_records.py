"""Equality of two COCO results lists up to order and float noise (engine comparisons).

Same records after a canonical sort: same image ids and categories, boxes within 1e-3 px,
scores within 1e-5, masks (RLE) identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _key(r: dict) -> tuple:
    return (str(r["image_id"]), r["category_id"], -round(r["score"], 4), *np.round(r["bbox"], 2))


def assert_same_records(a: list[dict] | Path, b: list[dict] | Path) -> None:
    a = json.loads(Path(a).read_text()) if isinstance(a, Path) else a
    b = json.loads(Path(b).read_text()) if isinstance(b, Path) else b
    assert len(a) == len(b), f"{len(a)} records vs {len(b)}"
    for ra, rb in zip(sorted(a, key=_key), sorted(b, key=_key), strict=True):
        assert ra["image_id"] == rb["image_id"] and ra["category_id"] == rb["category_id"], (ra, rb)
        np.testing.assert_allclose(ra["bbox"], rb["bbox"], atol=1e-3, rtol=0)
        assert abs(ra["score"] - rb["score"]) <= 1e-5, (ra["score"], rb["score"])
        assert ra.get("segmentation") == rb.get("segmentation")
        assert set(ra) == set(rb)
