"""`detseg eval --protocol lvis`: identical to the lvis package (0.5.3) on seeded problems.

The package still uses ``np.float`` (removed in numpy 1.24); it runs here with the shim
``np.float = float`` (the same Python float it used to alias), set only inside these tests.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detseg.errors import InputError
from detseg.eval.loader import load_ground_truth, load_results
from detseg.eval.lvis import MAX_DETS, RESULT_NAMES, evaluate_lvis, top_per_image
from tests.eval.lvis_problem import make_lvis_problem


@pytest.fixture(scope="module")
def lvis_api():
    lvis = pytest.importorskip("lvis", reason="the reference needs the bench extra (lvis 0.5.3)")
    if not hasattr(np, "float"):
        np.float = float  # the package's alias, gone from numpy >= 1.24
    logging.getLogger("lvis").setLevel(logging.ERROR)
    return lvis


def _reference(lvis_api, gt_path: Path, results: list[dict], iou_type: str):
    gt = lvis_api.LVIS(str(gt_path))
    res = lvis_api.LVISResults(gt, copy.deepcopy(results))
    ev = lvis_api.LVISEval(gt, res, iou_type)
    ev.run()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_identical_to_the_lvis_package(lvis_api, tmp_path, seed, iou_type):
    gt, res = make_lvis_problem(seed, n_images=25 if iou_type == "segm" else 40,
                                segm=iou_type == "segm")
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(gt))
    ref = _reference(lvis_api, path, res, iou_type)
    ours = evaluate_lvis(path, copy.deepcopy(res), iou_type)
    assert list(ours.results) == list(ref.results) == list(RESULT_NAMES)
    for key, value in ref.results.items():
        assert abs(ours.results[key] - value) <= 1e-12, key
    np.testing.assert_allclose(ours.precision, ref.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.recall, ref.eval["recall"], rtol=0, atol=1e-12)
    assert ours.freq_groups == ref.freq_groups


def test_problems_exercise_what_lvis_does_differently(lvis_api, tmp_path):
    # Otherwise the equality above would say little: the cut, the federated filter and the
    # not-exhaustive rule must each change the result.
    gt, res = make_lvis_problem(5, n_images=40)
    g = load_ground_truth(gt)
    r = load_results(res, g)
    assert len(top_per_image(r)) < len(r)  # some images have more than 300 detections
    ev = evaluate_lvis(gt, res)
    assert len(ev.kept) < len(top_per_image(r))  # detections of unjudged categories dropped
    relaxed = copy.deepcopy(gt)
    for im in relaxed["images"]:
        im["not_exhaustive_category_ids"] = []
    assert evaluate_lvis(relaxed, res).results["AP"] != ev.results["AP"]
    ref = _reference(lvis_api, _dump(tmp_path, relaxed), res, "bbox")
    assert evaluate_lvis(relaxed, res).results["AP"] == pytest.approx(ref.results["AP"], abs=1e-12)


def _dump(tmp_path: Path, gt: dict) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_top_300_per_image_equals_a_plain_loop():
    gt, res = make_lvis_problem(3, n_images=12, many_dets_images=4)
    g = load_ground_truth(gt)
    r = load_results(res, g)
    expected = []
    for img in np.unique(r.img):
        idx = [i for i in range(len(r)) if r.img[i] == img]
        if len(idx) > MAX_DETS:  # the package: sorted(..., key=score, reverse=True)[:300]
            idx = sorted(idx, key=lambda i: r.score[i], reverse=True)[:MAX_DETS]
        expected += idx
    assert top_per_image(r).tolist() == sorted(expected)


@pytest.mark.parametrize("mutate, message", [
    (lambda gt: gt["categories"][0].pop("frequency"), r"categories\[0\]: field 'frequency'"),
    (lambda gt: gt["categories"][1].update(frequency="x"), "expected one of 'r', 'c', 'f'"),
    (lambda gt: gt["images"][2].pop("neg_category_ids"), r"images\[2\]: field 'neg_category_ids'"),
    (lambda gt: gt["images"][0]["not_exhaustive_category_ids"].append(99999),
     "unknown category id 99999"),
])
def test_bad_lvis_fields_are_named(tmp_path, mutate, message):
    gt, res = make_lvis_problem(1, n_images=5)
    mutate(gt)
    path = _dump(tmp_path, gt)
    with pytest.raises(InputError, match=message) as info:
        evaluate_lvis(path, res)
    assert str(path) in str(info.value)


def test_cli_protocol_lvis(lvis_api, tmp_path):
    gt, res = make_lvis_problem(2, n_images=20)
    gt_path = _dump(tmp_path, gt)
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(res))
    out = tmp_path / "lvis_stats.json"
    proc = subprocess.run([sys.executable, "-m", "detseg", "eval", "--protocol", "lvis", "--gt",
                           str(gt_path), "--pred", str(res_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ref = _reference(lvis_api, gt_path, res, "bbox")
    written = json.loads(out.read_text())["results"]
    assert written == pytest.approx(dict(ref.results), abs=1e-12)
    assert "catIds=  r]" in proc.stdout and len(proc.stdout.strip().splitlines()) == 13
    refused = subprocess.run([sys.executable, "-m", "detseg", "eval", "--protocol", "lvis",
                              "--data", str(gt_path)], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--protocol lvis" in refused.stderr


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_zero_area_annotations_and_detections_are_left_out_as_the_package_does(
        lvis_api, tmp_path, iou_type):
    # LVIS.get_ann_ids keeps 0 < area only: such ground truth neither counts nor makes its
    # category "present" in the image, and such detections are dropped after the 300 cut.
    # (Found at 300 segm images, where tiny polygons rasterise to 0 pixels.)
    gt, res = make_lvis_problem(11, n_images=30, segm=iou_type == "segm")
    rng = np.random.default_rng(0)
    for i in rng.choice(len(gt["annotations"]), 12, replace=False):
        gt["annotations"][i]["area"] = 0.0
    for i in rng.choice(len(res), 40, replace=False):
        res[i]["bbox"][2] = 0.0
    path = _dump(tmp_path, gt)
    ref = _reference(lvis_api, path, res, iou_type)
    ours = evaluate_lvis(path, copy.deepcopy(res), iou_type)
    for key, value in ref.results.items():
        assert abs(ours.results[key] - value) <= 1e-12, key
    np.testing.assert_allclose(ours.precision, ref.eval["precision"], rtol=0, atol=1e-12)
