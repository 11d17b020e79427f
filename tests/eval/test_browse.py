"""Per-image TP/FP/FN and per-detection error types (detseg.eval.browse), checked against
pycocotools' own per-image matches (``COCOeval.evalImgs``), TIDE's counts and prf_at."""

from __future__ import annotations

import numpy as np
import pytest

from detseg.errors import InputError
from detseg.eval import browse, evaluate
from detseg.eval.analysis import prf_at
from detseg.eval.error_analysis import tide_errors
from tests.eval.reference import pycoco_eval
from tests.eval.synthetic import make_problem


@pytest.fixture(scope="module")
def problem():
    # > 255 images and thousands of records: user sizes, crowd, ties, id 0, empty images
    gt, res = make_problem(seed=5, n_images=300, n_cats=6, dets_per_image=14)
    return gt, res, evaluate(gt, res, "bbox")


def reference_counts(gt: dict, res: list, iou: float, score: float, cat_id: int | None,
                     iou_type: str = "bbox") -> dict[int, tuple[int, int, int]]:
    """{image_id: (TP, FP, FN)} read from pycocotools' evalImgs (area "all", maxDets 100)."""
    ref = pycoco_eval(gt, res, iou_type)
    t = int(np.flatnonzero(np.isclose(ref.params.iouThrs, iou))[0])
    out: dict[int, list[int]] = {int(i["id"]): [0, 0, 0] for i in gt["images"]}
    for e in ref.evalImgs:
        if e is None or e["aRng"] != ref.params.areaRng[0] or e["maxDet"] != 100:
            continue
        if cat_id is not None and e["category_id"] != cat_id:
            continue
        c = out[e["image_id"]]
        score_of = dict(zip(e["dtIds"], e["dtScores"], strict=True))
        for d_match, d_ign, s in zip(e["dtMatches"][t], e["dtIgnore"][t], e["dtScores"], strict=True):
            if s < score or d_ign:
                continue
            c[0 if d_match > 0 else 1] += 1
        for g_match, g_ign in zip(e["gtMatches"][t], e["gtIgnore"], strict=True):
            if not g_ign and not (g_match > 0 and score_of[int(g_match)] >= score):
                c[2] += 1
    return {k: tuple(v) for k, v in out.items()}


@pytest.mark.parametrize(("iou", "score", "by_cat"), [(0.5, 0.0, False), (0.75, 0.4, False),
                                                     (0.5, 0.3, True)])
def test_image_counts_match_pycocotools_eval_imgs(problem, iou, score, by_cat):
    gt, res, ev = problem
    k = 1 if by_cat else None
    cat_id = int(ev.gt.cat_ids[k]) if by_cat else None
    o = browse.outcomes(ev, iou)
    got = browse.image_counts(o, ev.gt.cat, score, k)
    want = reference_counts(gt, res, iou, score, cat_id)
    assert {int(i): tuple(int(v) for v in got[j]) for j, i in enumerate(ev.gt.image_ids)} == want
    assert got.sum() > (200 if by_cat else 1000) and got[:, 1].sum() > 0 and got[:, 2].sum() > 0  # a real test
    # one image at a time gives the same counts
    for j in range(0, len(ev.gt.image_ids), 7):
        assert browse.image_view(ev, o, j, score, k).counts == tuple(got[j])


def test_segm_counts_and_error_types(tmp_path):
    gt, res = make_problem(seed=9, n_images=60, n_cats=4, dets_per_image=10, segm=True)
    ev = evaluate(gt, res, "segm")
    o = browse.outcomes(ev, 0.5)
    got = browse.image_counts(o, ev.gt.cat, 0.2)
    want = reference_counts(gt, res, 0.5, 0.2, None, "segm")
    assert {int(i): tuple(int(v) for v in got[j]) for j, i in enumerate(ev.gt.image_ids)} == want
    tide = tide_errors(ev, t_f=0.5)["counts"]
    assert {n: int((o.det_error == i).sum()) for i, n in enumerate(browse.FP_TYPES)} == {
        k: v for k, v in tide.items() if k != "missed"}
    assert int(o.gt_missed.sum()) == tide["missed"]


def test_totals_equal_prf_at_and_error_types_equal_tide(problem):
    _, _, ev = problem
    o = browse.outcomes(ev, 0.5)
    for score in (0.0, 0.5):
        c = browse.image_counts(o, ev.gt.cat, score).sum(axis=0)
        ov = prf_at(ev, 0.5, score)["overall"]
        assert tuple(c) == (ov["tp"], ov["fp"], ov["fn"])
    tide = tide_errors(ev, t_f=0.5)["counts"]
    got = {name: int((o.det_error == i).sum()) for i, name in enumerate(browse.FP_TYPES)}
    got["missed"] = int(o.gt_missed.sum())
    assert got == tide
    assert sum(v > 0 for v in got.values()) >= 5  # most types occur in this problem
    assert ((o.det_error >= 0) == (o.det_state == browse.FP)).all()


def test_a_hand_made_image_gets_each_outcome():
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 200}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100, 0, 40, 40], "area": 1600, "iscrowd": 0},
              {"id": 3, "image_id": 1, "category_id": 1, "bbox": [150, 50, 40, 40], "area": 1600, "iscrowd": 0}]}
    res = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.9},       # TP
           {"image_id": 1, "category_id": 1, "bbox": [2, 0, 40, 40], "score": 0.8},       # duplicate
           {"image_id": 1, "category_id": 1, "bbox": [100, 0, 40, 40], "score": 0.7},     # class
           {"image_id": 1, "category_id": 2, "bbox": [60, 60, 10, 10], "score": 0.6},     # background
           {"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.2}]       # low score
    ev = evaluate(gt, res)
    o = browse.outcomes(ev, 0.5)
    v = browse.image_view(ev, o, 0, score=0.5)
    rows = v.rows(ev.gt.cat_names)
    preds = [(r["state"], r["error"], r["score"]) for r in rows if r["kind"] == "pred"]
    assert preds == [("TP", "", 0.9), ("FP", "duplicate", 0.8), ("FP", "classification", 0.7),
                     ("FP", "background", 0.6)]
    assert [(r["class"], r["state"], r["error"]) for r in rows if r["kind"] == "gt"] == [
        ("cat", "TP", ""), ("dog", "FN", ""), ("cat", "FN", "missed")]
    assert rows[3]["iou"] == 1.0 and rows[3]["box"] == [0.0, 0.0, 40.0, 40.0]  # xyxy
    assert v.counts == (1, 3, 2)
    only_dog = browse.image_view(ev, o, 0, score=0.5, cat=1)
    assert only_dog.counts == (0, 1, 1)
    # filters: this image has every listed kind of error but localisation and both
    for err, has in (("any", True), ("FP", True), ("FN", True), ("duplicate", True),
                     ("classification", True), ("background", True), ("missed", True),
                     ("localisation", False), ("both", False)):
        assert browse.select_images(o, ev.gt.cat, 0.5, None, err).size == int(has), err


def test_select_images_sorts_by_cost_and_checks_its_inputs(problem):
    _, _, ev = problem
    o = browse.outcomes(ev, 0.5)
    counts = browse.image_counts(o, ev.gt.cat, 0.3)
    sel = browse.select_images(o, ev.gt.cat, 0.3, None, "any", counts)
    cost = counts[sel, 1] + counts[sel, 2]
    assert (np.diff(cost) <= 0).all() and len(sel) > 250
    fp = browse.select_images(o, ev.gt.cat, 0.3, None, "FP")
    assert set(fp.tolist()) == set(np.flatnonzero(counts[:, 1] > 0).tolist())
    loc = browse.select_images(o, ev.gt.cat, 0.3, 2, "localisation")
    for j in loc.tolist():
        v = browse.image_view(ev, o, j, 0.3, 2)
        assert (v.det_error == browse.FP_TYPES.index("localisation")).any()
    with pytest.raises(InputError, match="error type: expected one of"):
        browse.select_images(o, ev.gt.cat, 0.3, None, "typo")
    with pytest.raises(InputError, match="score threshold"):
        browse.image_counts(o, ev.gt.cat, 1.5)
    with pytest.raises(InputError, match="image index"):
        browse.image_view(ev, o, 10_000)


def test_class_pr_is_the_precision_array(problem):
    _, _, ev = problem
    rec, p = browse.class_pr(ev, 0, 0.5)
    np.testing.assert_array_equal(rec, ev.params.rec_thrs)
    np.testing.assert_array_equal(p, ev.precision[0, :, 0, 0, -1])
    _, mean_all = browse.class_pr(ev)
    assert np.mean(mean_all) == pytest.approx(ev.stats[0], abs=1e-12)  # AP is its mean
    _, absent = browse.class_pr(ev, len(ev.gt.cat_ids) - 1)  # no ground truth
    assert np.isnan(absent).all()


def reference_matches(gt: dict, res: list, iou: float, iou_type: str = "bbox"
                      ) -> tuple[dict[int, int], dict[int, int]]:
    """pycocotools' evalImgs at IoU ``iou`` (area "all", maxDets 100), per object:
    {result index: matched annotation id (0: FP, -1: ignored)} and {annotation id: matched
    result index (-1: none)} for the non-ignored ground truths."""
    ref = pycoco_eval(gt, res, iou_type)
    t = int(np.flatnonzero(np.isclose(ref.params.iouThrs, iou))[0])
    dets: dict[int, int] = {}
    gts: dict[int, int] = {}
    for e in ref.evalImgs:
        if e is None or e["aRng"] != ref.params.areaRng[0] or e["maxDet"] != 100:
            continue
        for d_id, m, ign in zip(e["dtIds"], e["dtMatches"][t], e["dtIgnore"][t], strict=True):
            dets[int(d_id) - 1] = -1 if ign else int(m)  # loadRes numbers results from 1
        for g_id, m, ign in zip(e["gtIds"], e["gtMatches"][t], e["gtIgnore"], strict=True):
            if not ign:
                gts[int(g_id)] = int(m) - 1 if m > 0 else -1
    return dets, gts


@pytest.mark.parametrize("iou", [0.75, 0.95])
def test_outcomes_at_a_stricter_iou_are_pycocotools_matches(problem, iou):
    """Every detection's state and match, and every ground truth's match, at 0.75 and 0.95
    (the Evaluate tab's IoU control) are pycocotools' evalImgs at that threshold."""
    gt, res, ev = problem
    o = browse.outcomes(ev, iou)
    assert o.iou == iou and o is browse.outcomes(ev, iou)  # cached on the evaluation
    ids = ev.gt.ids
    got_d = {int(d): (-1 if s == browse.IGNORED else int(ids[g]) if s == browse.TP else 0)
             for d, s, g in zip(o.det, o.det_state, o.det_gt, strict=True)}
    got_g = {int(ids[k]): int(o.det[o.gt_det[k]]) if o.gt_det[k] >= 0 else -1
             for k in np.flatnonzero(o.gt_counted)}
    want_d, want_g = reference_matches(gt, res, iou)
    assert got_d == want_d and got_g == want_g
    n_tp = sum(v > 0 for v in got_d.values())
    assert 0 < n_tp < sum(v > 0 for v in reference_matches(gt, res, 0.5)[0].values())  # stricter
    # error types and TIDE's missed follow the threshold (TIDE's foreground IoU)
    tide = tide_errors(ev, t_f=iou)["counts"]
    got = {name: int((o.det_error == i).sum()) for i, name in enumerate(browse.FP_TYPES)}
    got["missed"] = int(o.gt_missed.sum())
    assert got == tide and got["localisation"] > browse.outcomes(ev, 0.5).det_error.tolist().count(1)
