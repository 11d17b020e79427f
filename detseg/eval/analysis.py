"""What people need beyond the 12 numbers: per-class AP, P/R/F1, the F1-optimal threshold.

All of it reads a `CocoEvaluation`: per-class numbers come from pycocotools' own precision
and recall arrays (area "all", the largest maxDets), and precision/recall/F1 at a score
threshold use the same matches (so recall at threshold 0 equals the COCO recall).
The confusion matrix and the TIDE-style error breakdown live in `detseg.eval.error_analysis`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detseg.errors import InputError
from detseg.eval.metrics import CocoEvaluation


def _mean_valid(x: np.ndarray) -> float:
    v = x[x > -1]
    return float(np.mean(v)) if v.size else float("nan")


def iou_index(ev: CocoEvaluation, iou: float) -> int:
    """Index of an IoU threshold among the evaluation's thresholds, or a clear error."""
    thrs = ev.params.iou_thrs
    hits = np.flatnonzero(np.isclose(thrs, iou, atol=1e-9))
    if not hits.size:
        raise InputError(f"iou: expected one of the evaluated IoU thresholds "
                         f"{[round(float(t), 4) for t in thrs]}, found {iou}")
    return int(hits[0])


def _area_all(ev: CocoEvaluation) -> int:
    lbl = list(ev.params.area_lbl)
    return lbl.index("all") if "all" in lbl else 0


def per_class_table(ev: CocoEvaluation) -> list[dict]:
    """One row per category: AP, AP50, AP75, APs/m/l, AR at the largest maxDets, #GT, #dets.

    AP values are NaN where the category has no (non-crowd) ground truth, as pycocotools'
    -1. ``n_gt`` counts non-crowd ground truths, ``n_det`` all detections in the results.
    """
    p = ev.params
    a_all, m_last = _area_all(ev), len(p.max_dets) - 1
    prec, rec = ev.precision[..., m_last], ev.recall[..., m_last]
    lbl = list(p.area_lbl)
    t50 = np.flatnonzero(np.isclose(p.iou_thrs, 0.5))
    t75 = np.flatnonzero(np.isclose(p.iou_thrs, 0.75))
    n_gt = np.bincount(ev.gt.cat[~ev.gt.crowd], minlength=len(ev.gt.cat_ids))
    n_det = np.bincount(ev.results.cat, minlength=len(ev.gt.cat_ids))
    rows = []
    for k, (cid, name) in enumerate(zip(ev.gt.cat_ids.tolist(), ev.gt.cat_names, strict=True)):
        row = {"category_id": cid, "name": name,
               "AP": _mean_valid(prec[:, :, k, a_all]),
               "AP50": _mean_valid(prec[t50, :, k, a_all]) if t50.size else float("nan"),
               "AP75": _mean_valid(prec[t75, :, k, a_all]) if t75.size else float("nan")}
        for key, area in (("APs", "small"), ("APm", "medium"), ("APl", "large")):
            row[key] = _mean_valid(prec[:, :, k, lbl.index(area)]) if area in lbl else float("nan")
        row[f"AR{p.max_dets[-1]}"] = _mean_valid(rec[:, k, a_all])
        row["n_gt"] = int(n_gt[k])
        row["n_det"] = int(n_det[k])
        rows.append(row)
    return rows


@dataclass
class ScoredMatches:
    """Detections of the evaluation at one IoU threshold (area "all", top maxDets kept).

    Attributes:
        cat: (D,) category index; score: (D,) float64; tp / fp: (D,) bool (crowd and other
        ignored matches are neither); npig: (K,) non-ignored ground truths per category.
    """

    cat: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    npig: np.ndarray


def scored_matches(ev: CocoEvaluation, iou: float = 0.5) -> ScoredMatches:
    t, a = iou_index(ev, iou), _area_all(ev)
    m = ev.matching
    match = m.det_match(a, t)
    matched = match >= 0
    safe = np.where(matched, match, 0)
    hit = matched & (ev.gt.ids[m.gt[safe]] != 0) if m.gt.size else matched
    gig = m.gt_ignore[a, safe] & matched if m.gt.size else matched
    ignored = gig | (~hit & m.det_out[a])
    npig = np.bincount(ev.gt.cat[m.gt][~m.gt_ignore[a]], minlength=len(ev.gt.cat_ids))
    return ScoredMatches(ev.results.cat[m.det], ev.results.score[m.det], hit & ~ignored,
                         ~hit & ~ignored, npig)


def cat_score_order(cat: np.ndarray, by_score: np.ndarray) -> np.ndarray:
    """``np.lexsort((-score, cat))`` (category, then score descending, then index), given
    ``by_score = np.argsort(-score, kind="stable")``: a stable sort of the categories in
    score order, cheaper than a lexsort and reusable when only the categories change."""
    c = cat[by_score]
    if c.size and 0 <= c.min() and c.max() < 2**15:
        c = c.astype(np.int16)  # numpy sorts small integers stably with a radix sort
    return by_score[np.argsort(c, kind="stable")]


def _prf(tp: np.ndarray, fp: np.ndarray, npig: np.ndarray) -> tuple[np.ndarray, ...]:
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(npig > 0, tp / npig, np.nan)
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return p, r, np.where(npig > 0, f1, np.nan)


def f1_curves(ev: CocoEvaluation, iou: float = 0.5, n_grid: int = 101) -> dict:
    """Precision, recall and F1 against the score threshold, per class and overall.

    Returns a dict with ``thresholds`` (G,), per-class ``precision``/``recall``/``f1``
    (K, G), ``overall_*`` (G,) pooled over classes (micro average), and the F1-optimal
    threshold per class (``best_threshold`` (K,), ``best_f1`` (K,)) and overall, chosen
    over every distinct detection score (not only the grid).
    """
    sm = scored_matches(ev, iou)
    n_k = len(ev.gt.cat_ids)
    grid = np.linspace(0, 1, n_grid)
    by_score = np.argsort(-sm.score, kind="stable")
    order = cat_score_order(sm.cat, by_score)
    cat, score = sm.cat[order], sm.score[order]
    tp_c = np.r_[0, np.cumsum(sm.tp[order])]  # tp_c[i]: true positives among the first i
    fp_c = np.r_[0, np.cumsum(sm.fp[order])]
    bounds = np.searchsorted(cat, np.arange(n_k + 1))
    tp_g = np.zeros((n_k, n_grid))
    fp_g = np.zeros((n_k, n_grid))
    best_thr = np.full(n_k, np.nan)
    best_f1 = np.full(n_k, np.nan)
    for k in range(n_k):
        lo, hi = bounds[k], bounds[k + 1]
        # detections with score >= thr: a count per grid point
        cnt = np.searchsorted(-score[lo:hi], -grid, side="right")
        tp_g[k] = tp_c[lo + cnt] - tp_c[lo]
        fp_g[k] = fp_c[lo + cnt] - fp_c[lo]
        if sm.npig[k] > 0 and hi > lo:
            last = np.r_[score[lo + 1:hi] != score[lo:hi - 1], True]  # end of each tie run
            ends = np.flatnonzero(last) + lo + 1
            tk, fk = tp_c[ends] - tp_c[lo], fp_c[ends] - fp_c[lo]
            _, _, f = _prf(tk.astype(float), fk.astype(float), np.full(tk.shape, float(sm.npig[k])))
            j = int(np.argmax(f))
            best_thr[k], best_f1[k] = score[lo:hi][last][j], f[j]
    p, r, f = _prf(tp_g, fp_g, sm.npig[:, None].astype(float))
    op, orc, of = _prf(tp_g.sum(0), fp_g.sum(0), np.full(n_grid, float(sm.npig.sum())))
    # overall optimum over all distinct scores (classes pooled, one threshold)
    o = by_score
    s_all = sm.score[o]
    last = np.r_[s_all[1:] != s_all[:-1], True] if s_all.size else np.zeros(0, bool)
    t_all, f_all = np.cumsum(sm.tp[o])[last], np.cumsum(sm.fp[o])[last]
    _, _, fo = _prf(t_all, f_all, np.full(t_all.shape, float(sm.npig.sum())))
    jo = int(np.nanargmax(fo)) if fo.size and np.isfinite(fo).any() else -1
    return {
        "iou": iou, "thresholds": grid, "precision": p, "recall": r, "f1": f,
        "overall_precision": op, "overall_recall": orc, "overall_f1": of,
        "best_threshold": best_thr, "best_f1": best_f1,
        "overall_best_threshold": float(s_all[last][jo]) if jo >= 0 else float("nan"),
        "overall_best_f1": float(fo[jo]) if jo >= 0 else float("nan"),
    }


def prf_at(ev: CocoEvaluation, iou: float = 0.5, score: float = 0.5) -> dict:
    """Precision, recall, F1, TP, FP, FN at one IoU and score threshold, per class and overall.

    Returns ``{"iou", "score", "per_class": [dict per category], "overall": dict}``; overall
    pools all classes (micro average). FN counts non-crowd ground truths left unmatched.
    """
    if not 0 <= score <= 1:
        raise InputError(f"score threshold: expected a value in [0, 1], found {score}")
    sm = scored_matches(ev, iou)
    keep = sm.score >= score
    n_k = len(ev.gt.cat_ids)
    tp = np.bincount(sm.cat[keep & sm.tp], minlength=n_k)
    fp = np.bincount(sm.cat[keep & sm.fp], minlength=n_k)
    p, r, f = _prf(tp.astype(float), fp.astype(float), sm.npig.astype(float))
    rows = [{"category_id": int(c), "name": n, "precision": float(p[k]), "recall": float(r[k]),
             "f1": float(f[k]), "tp": int(tp[k]), "fp": int(fp[k]), "fn": int(sm.npig[k] - tp[k])}
            for k, (c, n) in enumerate(zip(ev.gt.cat_ids.tolist(), ev.gt.cat_names, strict=True))]
    P, R, F = _prf(np.array(tp.sum(), float), np.array(fp.sum(), float),
                   np.array(sm.npig.sum(), float))
    overall = {"precision": float(P), "recall": float(R), "f1": float(F), "tp": int(tp.sum()),
               "fp": int(fp.sum()), "fn": int(sm.npig.sum() - tp.sum())}
    return {"iou": iou, "score": score, "per_class": rows, "overall": overall}
