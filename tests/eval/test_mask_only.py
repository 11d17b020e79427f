"""Mask-only results (no ``bbox``) of any length, and polygons pycocotools cannot read.

pycocotools 2.0.11's ``mask.area`` overflows on a list of more than 255 masks; ``loadRes``
calls it once per record, so pycocotools itself is the reference here.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from detseg.errors import InputError
from detseg.eval.metrics import evaluate
from detseg.eval.rle import rle_area_bbox
from tests.eval.reference import assert_identical, pycoco_eval
from tests.eval.synthetic import make_large_segm_problem, make_problem


def _mask_only(results: list) -> list:
    out = copy.deepcopy(results)
    for r in out:
        del r["bbox"]
    return out


@pytest.fixture(scope="module")
def problem300():
    """> 255 mask-only records (compressed RLE, counts as str)."""
    gt, res = make_problem(21, n_images=30, n_cats=3, dets_per_image=12, segm=True)
    res = _mask_only(res)
    assert len(res) > 255
    return gt, res


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_mask_only_over_255_records_equals_pycocotools(problem300, iou_type):
    gt, res = problem300
    assert_identical(evaluate(gt, res, iou_type), pycoco_eval(gt, res, iou_type))


def test_mask_only_from_a_file(problem300, tmp_path):
    gt, res = problem300
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    ours = evaluate(tmp_path / "gt.json", tmp_path / "res.json", "segm")
    assert_identical(ours, pycoco_eval(gt, res, "segm"))


def test_areas_and_boxes_equal_pycocotools_per_record(problem300):
    from pycocotools import mask as mask_utils

    _, res = problem300
    rles = [r["segmentation"] for r in res]
    area, bbox = rle_area_bbox(rles)
    assert area.tolist() == [float(mask_utils.area(r)) for r in rles]
    assert bbox.tolist() == [mask_utils.toBbox(r).tolist() for r in rles]


def test_uncompressed_rle_results_equal_their_compressed_form(problem300):
    """pycocotools' loadRes reads only compressed RLE without a box; detseg converts
    uncompressed RLE first, so it must score exactly as the compressed masks do."""
    from pycocotools import mask as mask_utils

    gt, res = problem300
    unc = copy.deepcopy(res)
    for r in unc[::3]:
        m = mask_utils.decode(r["segmentation"]).ravel(order="F")
        change = np.flatnonzero(np.diff(m)) + 1
        runs = np.diff(np.r_[0, change, m.size]).tolist()
        r["segmentation"] = {"size": r["segmentation"]["size"], "counts": runs if m[0] == 0 else [0] + runs}
    assert_identical(evaluate(gt, unc, "segm"), pycoco_eval(gt, res, "segm"))


@pytest.mark.slow
def test_mask_only_over_10000_records_cli_equals_pycocotools(tmp_path):
    """The acceptance command on > 10,000 mask-only records."""
    gt, res = make_large_segm_problem(seed=5, n_images=105, n_cats=20, dets_per_image=100,
                                      with_bbox=False)
    assert len(res) > 10_000 and "bbox" not in res[0]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "detseg", "eval", "--gt", tmp_path / "gt.json",
                           "--pred", tmp_path / "res.json", "--iou-type", "segm", "--json", out,
                           "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ref = pycoco_eval(gt, res, "segm")
    assert json.loads(out.read_text())["stats"] == np.asarray(ref.stats).tolist()
    assert ref.stats[0] > 0.1  # a problem with real matches


@pytest.mark.parametrize("where", ["results", "ground truth"])
def test_polygon_of_four_numbers_is_a_clear_error(where, tmp_path):
    """pycocotools reads a first polygon of exactly 4 numbers as a box and fails
    (``Argument 'bb' has incorrect type``): detseg names the record and field instead."""
    gt, res = make_problem(22, n_images=4, n_cats=2, dets_per_image=3, segm=True)
    if where == "results":
        res[1]["segmentation"] = [[10.0, 10.0, 20.0, 20.0]]
        pattern = r"results\[1\]: field 'segmentation': polygon 0: expected at least 3 x, y points, found 4 numbers"
    else:
        i = next(i for i, a in enumerate(gt["annotations"]) if isinstance(a["segmentation"], list))
        gt["annotations"][i]["segmentation"] = [[10.0, 10.0, 20.0, 20.0]]
        pattern = rf"annotations\[{i}\]: field 'segmentation': polygon 0: expected at least 3 x, y points"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    with pytest.raises(InputError, match=pattern):
        evaluate(tmp_path / "gt.json", tmp_path / "res.json", "segm")


def test_later_polygon_of_two_points_is_read_as_pycocotools_reads_it():
    gt, res = make_problem(23, n_images=4, n_cats=2, dets_per_image=3, segm=True)
    res = [dict(r, segmentation=[[10.0, 10.0, 40.0, 12.0, 30.0, 35.0], [5.0, 5.0, 8.0, 9.0]])
           for r in res]
    assert_identical(evaluate(gt, res, "segm"), pycoco_eval(gt, res, "segm"))
