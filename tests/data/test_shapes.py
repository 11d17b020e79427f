"""The synthetic shapes dataset: determinism, COCO validity, masks = visible pixels, YOLO view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detseg.cli import app
from detseg.data.coco import load_dataset
from detseg.data.shapes import (
    CLASSES,
    ShapesSpec,
    generate_shapes,
    mask_polygons,
    merge_parts,
    polygons_to_mask,
    render_image,
)
from detseg.errors import InputError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes40(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "a"
    result = CliRunner().invoke(app, ["data", "shapes", "--out", str(out), "--images", "40",
                                      "--seed", "5", "--yolo"])
    assert result.exit_code == 0, result.output
    return out


def test_same_seed_gives_byte_identical_files(shapes40, tmp_path):
    again = tmp_path / "b"
    result = CliRunner().invoke(app, ["data", "shapes", "--out", str(again), "--images", "40",
                                      "--seed", "5", "--yolo"])
    assert result.exit_code == 0, result.output
    a, b = _files(shapes40), _files(again)
    assert len(a) == 1 + 40 + 40 + 1  # instances.json, images, labels, data.yaml
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_other_seed_gives_other_data(shapes40, tmp_path):
    generate_shapes(tmp_path, 3, seed=6)
    assert (tmp_path / "images/000000.jpg").read_bytes() != (shapes40 / "images/000000.jpg").read_bytes()


def test_processes_do_not_change_the_bytes(tmp_path):
    generate_shapes(tmp_path / "one", 6, seed=9, image_format="png")
    generate_shapes(tmp_path / "two", 6, seed=9, image_format="png", workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_prefix_of_a_larger_set_is_the_same_images(tmp_path):
    # Each image has its own random stream: image i does not depend on how many are made.
    generate_shapes(tmp_path / "small", 2, seed=4)
    generate_shapes(tmp_path / "big", 5, seed=4)
    for name in ("000000.jpg", "000001.jpg"):
        assert (tmp_path / "small/images" / name).read_bytes() == (tmp_path / "big/images" / name).read_bytes()


def test_valid_coco_with_variety(shapes40):
    ds = load_dataset(shapes40 / "instances.json")
    assert [c["name"] for c in ds.categories] == list(CLASSES)
    assert len(ds.images) == 40 and all(im.path.is_file() for im in ds.images)
    anns = ds.annotations
    assert {a["category_id"] for a in anns} == set(range(1, len(CLASSES) + 1))
    assert all(a["iscrowd"] == 0 and a["area"] > 0 and a["segmentation"] for a in anns)
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32**2).any() and (areas > 96**2).any()  # COCO small and large objects
    per_image = np.bincount([a["image_id"] for a in anns])
    assert per_image.max() >= 5
    assert len({a["id"] for a in anns}) == len(anns)


def test_polygons_are_exactly_the_visible_pixels_for_pycocotools(shapes40):
    mask_utils = pytest.importorskip("pycocotools.mask")
    spec = ShapesSpec(n_images=40, seed=5)
    data = json.loads((shapes40 / "instances.json").read_text())
    occluded_pairs = 0
    for im in data["images"][:15]:
        _, labels, classes = render_image(spec, im["id"] - 1)
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        assert len(anns) == len(classes)
        for k, ann in enumerate(anns, start=1):
            visible = labels == k
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 320, 320))
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), visible)
            np.testing.assert_array_equal(polygons_to_mask(ann["segmentation"], 320, 320), visible)
            ys, xs = np.nonzero(visible)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert ann["area"] == visible.sum() == mask_utils.area(rle)
            assert ann["category_id"] == classes[k - 1] + 1
        boxes = [a["bbox"] for a in anns]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                (x0, y0, w0, h0), (x1, y1, w1, h1) = boxes[i], boxes[j]
                if min(x0 + w0, x1 + w1) > max(x0, x1) and min(y0 + h0, y1 + h1) > max(y0, y1):
                    occluded_pairs += 1
    assert occluded_pairs > 0, "no overlapping shapes: occlusion is not exercised"


def test_occlusion_keeps_shapes_usable():
    spec = ShapesSpec(n_images=30, seed=2)
    for index in range(30):
        _, labels, classes = render_image(spec, index)
        counts = np.bincount(labels.ravel(), minlength=len(classes) + 1)
        assert (counts[1:] >= 30).all()


@pytest.mark.parametrize(
    ("mask_box", "expected"),
    [
        ((2, 3, 5, 7), [[2.0, 3.0, 2.0, 7.0, 5.0, 7.0, 5.0, 3.0]]),  # x0, y0, x1, y1 (exclusive)
        ((0, 0, 1, 1), [[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]]),
    ],
)
def test_mask_polygons_follow_pixel_edges(mask_box, expected):
    x0, y0, x1, y1 = mask_box
    mask = np.zeros((10, 10), bool)
    mask[y0:y1, x0:x1] = True
    polys = mask_polygons(mask)
    corners = np.array(polys[0]).reshape(-1, 2)
    want = np.array(expected[0]).reshape(-1, 2)
    # Same corners to within the 1/8 px tracing inset, in some rotation of the outline.
    assert len(polys) == 1 and corners.shape == want.shape
    assert np.abs(np.sort(corners, 0) - np.sort(want, 0)).max() <= 0.125


def test_two_parts_two_polygons_and_merge():
    mask = np.zeros((20, 20), bool)
    mask[2:6, 2:6] = True
    mask[10:15, 12:18] = True
    polys = mask_polygons(mask)
    assert len(polys) == 2
    merged = merge_parts([np.array(p).reshape(-1, 2) for p in polys])
    assert len(merged) == sum(len(p) // 2 for p in polys) + 2
    back = polygons_to_mask([merged.reshape(-1).tolist()], 20, 20)
    # Every pixel kept; the zero-width bridge may touch a few pixel centres on its way.
    assert (back >= mask).all() and (back & ~mask).sum() <= 4


def test_yolo_view_matches_coco(shapes40):
    data = json.loads((shapes40 / "instances.json").read_text())
    yaml = (shapes40 / "data.yaml").read_text()
    assert "train: images" in yaml and "path:" not in yaml
    for i, name in enumerate(CLASSES):
        assert f"  {i}: {name}\n" in yaml
    for im in data["images"][:10]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        lines = (shapes40 / "labels" / (Path(im["file_name"]).stem + ".txt")).read_text().splitlines()
        assert len(lines) == len(anns)
        for line, ann in zip(lines, anns, strict=True):
            values = line.split()
            assert int(values[0]) == ann["category_id"] - 1
            xy = np.array(values[1:], float).reshape(-1, 2)
            assert 0 <= xy.min() and xy.max() <= 1
            back = polygons_to_mask([(xy * 320).reshape(-1).tolist()], 320, 320)
            ref = polygons_to_mask(ann["segmentation"], 320, 320)
            assert (back & ref).sum() / (back | ref).sum() >= 0.97


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_images": 0, "seed": 1}, "--images"),
        ({"n_images": 2, "seed": -1}, "--seed"),
        ({"n_images": 2, "seed": 1, "size": 16}, "--size"),
        ({"n_images": 2, "seed": 1, "image_format": "gif"}, "--format"),
    ],
)
def test_bad_arguments_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(InputError, match=field):
        generate_shapes(tmp_path, **kwargs)


def test_cli_reports_bad_argument(tmp_path):
    result = CliRunner().invoke(app, ["data", "shapes", "--out", str(tmp_path), "--images", "0",
                                      "--seed", "1"])
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
