"""Run settings: presets against explicit values, and model class -> dataset category ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detseg.data.coco import load_dataset
from detseg.errors import InputError
from detseg.pipeline.settings import category_map, resolve_settings

NAMES = {0: "cat", 1: "dog", 2: "bird"}


@pytest.mark.parametrize(
    ("preset", "family", "explicit", "expected"),
    [
        (None, None, {}, {"conf": 0.25, "iou": 0.45, "max_det": 300}),
        ("coco-eval", "yolox", {}, {"conf": 0.001, "iou": 0.65, "max_det": 100}),
        ("coco-eval", "ultralytics", {}, {"conf": 0.001, "iou": 0.7, "max_det": 100}),
        ("coco-eval", None, {"iou": 0.5}, {"conf": 0.001, "iou": 0.5, "max_det": 100}),
        (None, "yolox", {"conf": 0.0, "max_det": 1}, {"conf": 0.0, "iou": 0.45, "max_det": 1}),
    ],
)
def test_resolve_settings(preset, family, explicit, expected) -> None:
    assert resolve_settings(preset, family, **explicit) == expected


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"conf": 1.5}, "--conf"), ({"iou": 0.0}, "--iou"), ({"max_det": 0}, "--max-det"),
     ({"preset": "fast"}, "unknown preset")],
)
def test_bad_settings_are_refused(kw, message) -> None:
    preset = kw.pop("preset", None)
    with pytest.raises(InputError, match=message):
        resolve_settings(preset, None, **kw)


def _dataset(tmp_path: Path, categories: list[dict]):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "categories": categories, "annotations": []}))
    return load_dataset(path)


@pytest.mark.parametrize(
    ("categories", "expected"),
    [
        # names match (order, case and '_' differ): by name
        ([{"id": 9, "name": "Bird"}, {"id": 4, "name": "cat"}, {"id": 5, "name": "dog"}],
         {0: 4, 1: 5, 2: 9}),
        # names differ, counts match: class i -> sorted(ids)[i] (COCO-80 convention)
        ([{"id": 30, "name": "x"}, {"id": 10, "name": "y"}, {"id": 20, "name": "z"}],
         {0: 10, 1: 20, 2: 30}),
        # a superset holding every name: by name
        ([{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"},
          {"id": 4, "name": "cow"}], {0: 1, 1: 2, 2: 3}),
        # a name twice is ambiguous: by position since the counts match
        ([{"id": 7, "name": "cat"}, {"id": 8, "name": "cat"}, {"id": 6, "name": "bird"}],
         {0: 6, 1: 7, 2: 8}),
    ],
)
def test_category_map(tmp_path: Path, categories, expected) -> None:
    assert category_map(NAMES, _dataset(tmp_path, categories)) == expected
    assert category_map(NAMES, None) is None


def test_category_map_refuses_unrelated_categories(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, [{"id": 1, "name": "car"}])
    with pytest.raises(InputError, match="instances.json: field 'categories': cannot map the "
                                         "model's 3 classes"):
        category_map(NAMES, ds)


def test_coco80_names_map_to_coco_ids(coco11: Path) -> None:
    """The YOLOX asset's class order (COCO-80 names) against the real COCO categories."""
    from detseg.pipeline.meta import COCO80_CATEGORY_IDS, COCO80_NAMES

    ds = load_dataset(coco11)
    assert category_map(dict(enumerate(COCO80_NAMES)), ds) == dict(enumerate(COCO80_CATEGORY_IDS))
