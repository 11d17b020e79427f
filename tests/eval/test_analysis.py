"""Per-class table, P/R/F1 and F1-optimal threshold, confusion matrix, TIDE-style errors."""

from __future__ import annotations

import numpy as np
import pytest

from detseg.eval import analysis, error_analysis
from detseg.eval.metrics import evaluate
from tests.eval.synthetic import make_problem


@pytest.fixture(scope="module")
def ev():
    gt, res = make_problem(21, n_images=50, n_cats=5)
    return evaluate(gt, res)


def test_per_class_ap_averages_to_the_coco_stats(ev):
    rows = analysis.per_class_table(ev)
    aps = [r["AP"] for r in rows if np.isfinite(r["AP"])]
    assert np.mean(aps) == pytest.approx(ev.stats[0], abs=1e-12)
    assert np.nanmean([r["AP50"] for r in rows]) == pytest.approx(ev.stats[1], abs=1e-12)
    assert np.nanmean([r["AR100"] for r in rows]) == pytest.approx(ev.stats[8], abs=1e-12)
    absent = [r for r in rows if r["n_gt"] == 0]
    assert absent and all(np.isnan(r["AP"]) for r in absent)  # make_problem leaves one out
    assert sum(r["n_det"] for r in rows) == len(ev.results)


def test_recall_at_score_zero_is_the_coco_recall(ev):
    t = analysis.iou_index(ev, 0.5)
    prf = analysis.prf_at(ev, 0.5, 0.0)
    for k, row in enumerate(prf["per_class"]):
        coco = ev.recall[t, k, 0, -1]
        if coco > -1:
            assert row["recall"] == pytest.approx(coco, abs=1e-15)


def _plain_best_f1(scores, tp, fp, npig):
    best = (-1.0, None)
    for thr in sorted(set(scores.tolist()), reverse=True):
        keep = scores >= thr
        t, f = tp[keep].sum(), fp[keep].sum()
        p = t / (t + f) if t + f else 0.0
        r = t / npig
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > best[0] + 1e-15:
            best = (f1, thr)
    return best


def test_f1_optimal_threshold_against_a_plain_loop(ev):
    sm = analysis.scored_matches(ev, 0.5)
    curves = analysis.f1_curves(ev, 0.5)
    for k in range(len(ev.gt.cat_ids)):
        sel = sm.cat == k
        if sm.npig[k] == 0 or not sel.any():
            continue
        f1, thr = _plain_best_f1(sm.score[sel], sm.tp[sel], sm.fp[sel], sm.npig[k])
        assert curves["best_f1"][k] == pytest.approx(f1, abs=1e-12)
        assert curves["best_threshold"][k] == thr
    f1, thr = _plain_best_f1(sm.score, sm.tp, sm.fp, sm.npig.sum())
    assert curves["overall_best_f1"] == pytest.approx(f1, abs=1e-12)
    assert curves["overall_best_threshold"] == thr


def test_iou_must_be_an_evaluated_threshold(ev):
    with pytest.raises(Exception, match="expected one of the evaluated IoU thresholds"):
        analysis.prf_at(ev, 0.42, 0.5)


def _tiny(dets):
    gt = {"images": [{"id": 1, "height": 100, "width": 100, "file_name": "a"}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
              {"id": 3, "image_id": 1, "category_id": 2, "bbox": [80, 0, 10, 10], "area": 100, "iscrowd": 0}]}
    res = [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in dets]
    return evaluate(gt, res)


def test_confusion_matrix_by_hand():
    ev = _tiny([(1, [0, 0, 20, 20], 0.9),      # cat found
                (1, [50, 50, 20, 20], 0.8),    # dog called cat
                (2, [30, 30, 5, 5], 0.7),      # nothing there
                (2, [0, 0, 20, 20], 0.1)])     # below the score threshold
    cm = error_analysis.confusion_matrix(ev, 0.5, 0.5)
    # rows: cat, dog, background; columns: cat, dog, background
    assert cm.tolist() == [[1, 0, 0], [1, 0, 1], [0, 1, 0]]


def test_tide_by_hand():
    ev = _tiny([(1, [0, 0, 20, 20], 0.9),      # true positive
                (1, [0, 0, 20, 20], 0.85),     # duplicate
                (1, [50, 50, 20, 20], 0.8),    # classification (dog called cat)
                (2, [80, 0, 16, 16], 0.7),     # localisation (IoU 100/256)
                (2, [30, 30, 5, 5], 0.6)])     # background
    t = error_analysis.tide_errors(ev)
    assert t["counts"] == {"classification": 1, "localisation": 1, "both": 0, "duplicate": 1,
                           "background": 1, "other": 0, "missed": 0}
    assert t["ap"] == pytest.approx(ev.stats[1], abs=1e-12)
    assert all(v >= -1e-12 for v in t["dAP"].values())
    assert t["dAP"]["classification"] > 0 and t["dAP"]["localisation"] > 0


def test_tide_base_ap_is_coco_ap50_and_perfect_has_no_errors(ev):
    t = error_analysis.tide_errors(ev)
    assert t["ap"] == pytest.approx(ev.stats[1], abs=1e-12)
    gt, _ = make_problem(21, n_images=50, n_cats=5)
    for a in gt["annotations"]:
        a["id"] += 1  # pycocotools counts a match to annotation id 0 as no match
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0} for a in gt["annotations"] if not a["iscrowd"]]
    tp = error_analysis.tide_errors(evaluate(gt, perfect))
    assert tp["ap"] == pytest.approx(1.0)
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in tp["dAP"].values())


def test_cat_score_order_is_the_lexsort():
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 5000):
        score = np.round(rng.random(n), 2)  # many ties: the index breaks them
        score[: n // 10] = -0.0  # -0.0 sorts as 0.0
        cat = rng.integers(0, 9, n)
        got = analysis.cat_score_order(cat, np.argsort(-score, kind="stable"))
        np.testing.assert_array_equal(got, np.lexsort((-score, cat)))


@pytest.mark.parametrize("shuffle", [False, True])
def test_image_pairs_match_a_plain_loop(shuffle):
    from detseg.eval.match import box_iou_pairs

    gt, res = make_problem(seed=11, n_images=30, dets_per_image=15)
    if shuffle:  # results not in image order
        res = [res[i] for i in np.random.default_rng(0).permutation(len(res))]
    ev = evaluate(gt, res, "bbox")
    for floor in (0.0, 0.1, 0.5):
        pd, pg, pi = error_analysis._all_pairs(ev, floor)
        want = []
        for d in np.argsort(ev.results.img, kind="stable").tolist():
            g = np.flatnonzero(ev.gt.img == ev.results.img[d])
            iou = box_iou_pairs(ev.results.bbox[[d] * g.size], ev.gt.bbox[g], ev.gt.crowd[g])
            want += [(d, int(j), float(v)) for j, v in zip(g, iou, strict=True) if v >= floor]
        assert list(zip(pd.tolist(), pg.tolist(), pi.tolist(), strict=True)) == want
