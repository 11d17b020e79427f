"""detseg.eval.metrics against pycocotools: every stat and array element, 0 difference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detseg.eval.metrics import STAT_NAMES, EvalParams, evaluate
from tests.eval.reference import assert_identical, jitter_gt, pycoco_eval
from tests.eval.synthetic import make_problem


@pytest.mark.parametrize("seed", range(12))
def test_bbox_identical_to_pycocotools(seed):
    gt, res = make_problem(seed, n_images=30 + seed, n_cats=3 + seed % 5,
                           score_decimals=None if seed % 4 == 3 else 2)
    assert_identical(evaluate(gt, res, "bbox"), pycoco_eval(gt, res, "bbox"))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_segm_problem_identical_to_pycocotools(seed, iou_type):
    # results carry both bbox and a mask: pycocotools then uses the box area for the
    # detection's area range even in segm mode, and so must we.
    gt, res = make_problem(100 + seed, n_images=20, segm=True)
    assert_identical(evaluate(gt, res, iou_type), pycoco_eval(gt, res, iou_type))


def test_segm_results_without_bbox_use_mask_area():
    gt, res = make_problem(7, n_images=20, segm=True)
    for r in res:
        del r["bbox"]
    for iou_type in ("segm", "bbox"):
        assert_identical(evaluate(gt, res, iou_type), pycoco_eval(gt, res, iou_type))


CUSTOM = [
    {"iouThrs": np.array([0.1, 0.5, 0.75, 1.0])},
    {"maxDets": [1, 5, 20]},  # stats[0] uses maxDets=100 literally: -1, as pycocotools
    {"maxDets": [2, 30, 100]},
    {"areaRng": [[0, 1e10], [0, 400], [400, 1e10]], "areaRngLbl": ["all", "small", "large"]},
    {"areaRng": [[0, 1e10], [100, 2000]], "areaRngLbl": ["all", "mid"]},
    {"recThrs": np.linspace(0, 1, 11)},
]


@pytest.mark.parametrize("custom", CUSTOM, ids=lambda c: ",".join(c))
def test_custom_params_identical(custom):
    gt, res = make_problem(3, n_images=40)
    p = EvalParams(
        iou_thrs=custom.get("iouThrs", EvalParams().iou_thrs),
        rec_thrs=custom.get("recThrs", EvalParams().rec_thrs),
        max_dets=custom.get("maxDets", (1, 10, 100)),
        area_rng=custom.get("areaRng", EvalParams().area_rng),
        area_lbl=custom.get("areaRngLbl", EvalParams().area_lbl),
    )
    assert_identical(evaluate(gt, res, "bbox", p), pycoco_eval(gt, res, "bbox", custom))


def test_images_and_categories_without_anything():
    gt, res = make_problem(5, n_images=15, n_cats=4)
    gt["images"].append({"id": 999999, "file_name": "x.jpg", "height": 10, "width": 10})
    gt["categories"].append({"id": 500, "name": "never"})
    assert_identical(evaluate(gt, res), pycoco_eval(gt, res))


def test_only_crowd_ground_truth_and_score_ties():
    gt = {"images": [{"id": 1, "height": 100, "width": 100, "file_name": "a"}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50],
                           "area": 2500, "iscrowd": 1},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                           "area": 400, "iscrowd": 0}]}
    res = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.5}] * 3 + \
          [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.5}]
    assert_identical(evaluate(gt, res), pycoco_eval(gt, res))


def test_real_coco11_bbox_and_segm(coco11):
    gt = json.loads(coco11.read_text())
    for seed, iou_type in ((0, "bbox"), (1, "segm")):
        res = jitter_gt(gt, seed, segm=iou_type == "segm")
        assert_identical(evaluate(coco11, res, iou_type), pycoco_eval(gt, res, iou_type))


def test_perfect_detections_give_ap_one(coco11):
    gt = json.loads(coco11.read_text())
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
            "score": 1.0} for a in gt["annotations"] if not a["iscrowd"]]
    ev = evaluate(gt, res)
    assert ev.stats[0] == pytest.approx(1.0)
    assert_identical(ev, pycoco_eval(gt, res))


def test_empty_results_give_zero_with_warning():
    gt, _ = make_problem(1, n_images=10)
    with pytest.warns(UserWarning, match="no detections"):
        ev = evaluate(gt, [])
    assert set(ev.stats.tolist()) <= {0.0, -1.0}
    assert ev.stats[0] == 0.0
    assert any("no detections" in w for w in ev.warnings)


def test_detections_in_memory_equal_records():
    from detseg.detections import Detections

    gt, res = make_problem(2, n_images=12, score_decimals=None)
    by_image: dict = {}
    for r in res:
        by_image.setdefault(r["image_id"], []).append(r)
    dets = {}
    for image_id, recs in by_image.items():
        xywh = np.array([r["bbox"] for r in recs], np.float32)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        dets[image_id] = Detections(xyxy, np.array([r["score"] for r in recs], np.float32),
                                    np.array([r["category_id"] for r in recs]))
    ev = evaluate(gt, dets)
    # the same float32 boxes and scores written as records, with the COCO boundary's one
    # rounding rule (boxes 3 decimals, scores 5: what `detseg predict` writes), give the same numbers
    records = []
    for image_id, d in dets.items():
        for i in range(len(d)):
            b = d.boxes[i].astype(np.float64).tolist()
            records.append({"image_id": image_id, "category_id": int(d.class_ids[i]),
                            "bbox": [round(v, 3) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])],
                            "score": round(float(d.scores[i]), 5)})
    assert_identical(ev, pycoco_eval(gt, records))


def test_summary_lines_match_pycocotools(capsys):
    gt, res = make_problem(4, n_images=20)
    ev = evaluate(gt, res)
    capsys.readouterr()
    ref = pycoco_eval(gt, res)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ref.summarize()
    assert "\n".join(ev.summary_lines()) == buf.getvalue().rstrip("\n")
    assert list(ev.stats_dict) == list(STAT_NAMES)


@pytest.mark.parametrize("rec_thrs", [EvalParams().rec_thrs, np.linspace(-0.2, 1.3, 77),
                                      np.random.default_rng(0).random(40)])
def test_need_equals_pycocotools_searchsorted(rec_thrs):
    from detseg.eval.metrics import _need

    counts = np.arange(0, 3000)
    got = _need(counts, rec_thrs)
    assert (got[0] == 0).all()
    for n in counts[1:]:  # pycocotools: np.searchsorted(tp / npig, recThrs, side="left")
        assert (got[n] == np.searchsorted(np.arange(n + 1) / n, rec_thrs, side="left")).all(), n


def test_suffix_max_at_equals_a_plain_loop():
    from detseg.eval.metrics import _suffix_max_at

    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 9, 50)
    x = rng.random(lengths.sum()).round(2)  # ties on purpose
    end = np.cumsum(lengths)
    n_r = 6
    need = np.sort(rng.integers(0, 10, (50, n_r)), axis=1)
    inside = (need <= lengths[:, None]) & (lengths[:, None] > 0)
    at = np.where(inside, (end - lengths)[:, None] + np.maximum(need - 1, 0), 0)
    got = _suffix_max_at(x, at, inside, end)
    for g in range(50):
        for r in range(n_r):
            want = x[at[g, r]:end[g]].max() if inside[g, r] else 0.0
            assert got[g, r] == want, (g, r)


def test_descending_key_sorts_like_negated_floats():
    from detseg.eval.match import descending_key

    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1e3, 2000), rng.integers(-3, 3, 2000).astype(float),
                        [0.0, -0.0, 5e-324, -5e-324, 1e308, -1e308, np.inf, -np.inf]])
    x = x[rng.permutation(x.size)]
    want = np.argsort(-x, kind="stable")
    assert (np.argsort(descending_key(x), kind="stable") == want).all()
