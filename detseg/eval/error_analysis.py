"""Where the errors are: a confusion matrix and a TIDE-style error breakdown.

Both look at every (detection, ground truth) pair of the same image regardless of class.
IoU is box IoU for bbox evaluation and mask IoU for segm (pycocotools' functions, so a
crowd region's IoU is intersection over the detection's area, as in COCO).

TIDE-style breakdown (after Bolya et al., "TIDE: A General Toolbox for Identifying Object
Detection Errors", ECCV 2020), at the foreground IoU ``t_f`` (0.5) and background IoU
``t_b`` (0.1), on AP at ``t_f``: each false positive gets one error type, tested in TIDE's
order: background (IoU < t_b with every ground truth), localisation (right class,
t_b <= IoU < t_f), classification (wrong class, IoU >= t_f), duplicate (right class,
IoU >= t_f but its ground truth was taken by a higher score), both (wrong class and
t_b <= IoU < t_f), other. Ground truths no detection found, even badly, are "missed".
Each type's dAP is the AP gained when an oracle fixes only that type: a classification or
localisation error becomes a true positive of its ground truth if that one is still free
(otherwise it is dropped), duplicates, background and "both" errors are dropped, missed
ground truths are removed from the count. This reimplements the idea with detseg's own
matching; it is not the ``tidecv`` package and its numbers can differ slightly from it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from detseg.eval.analysis import _area_all, cat_score_order, iou_index
from detseg.eval.loader import to_rles
from detseg.eval.metrics import CocoEvaluation

# One at a time: the report's tables and its gallery (another thread) ask for the same cached
# pairs and classification; the second asker waits for the first's result instead of
# computing it again.
_COMPUTING = threading.RLock()

ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")


def image_pairs(ev: CocoEvaluation, det: np.ndarray, min_iou: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (detection, ground truth) pairs of the same image with IoU >= min_iou.

    The pairs of every detection are computed once per evaluation (IoU >= 0.1 or lower when
    asked) and cached on it, so the confusion matrix and the TIDE breakdown share them.

    Args:
        det: (D,) indices into the results arrays.
    Returns (P,) positions into ``det``, (P,) ground-truth indices, (P,) IoU.
    """
    floor = min(min_iou, 0.1)
    with _COMPUTING:
        cached = ev.cache.get("image_pairs")
        if cached is None or cached[0] > floor:
            cached = (floor, *_all_pairs(ev, floor))
            ev.cache["image_pairs"] = cached
    _, pd_all, pg_all, pi_all = cached
    where = np.full(len(ev.results), -1, np.int64)
    where[det] = np.arange(det.shape[0])
    pos = where[pd_all]
    keep = (pos >= 0) & (pi_all >= min_iou)
    return pos[keep], pg_all[keep], pi_all[keep]


def _all_pairs(ev: CocoEvaluation, min_iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of every result with every ground truth of its image, IoU >= min_iou.

    Pairs come in the order (detection by image, stable; ground truth by image, stable).
    For boxes with ``min_iou > 0`` only pairs whose boxes overlap get an IoU (the others
    have IoU 0); the floats are those of `box_iou_pairs` (pycocotools' ``bbIou``).
    """
    gt, res = ev.gt, ev.results
    det = np.arange(len(res))
    d_img = res.img
    # int32 indices: the pair arrays are large (detections x ground truths per image)
    d_ord = _stable_order(d_img)
    g_ord = _stable_order(gt.img)
    g_img = gt.img[g_ord]
    d_img_o = d_img[d_ord]
    lo = np.searchsorted(g_img, d_img_o, "left").astype(np.int32)
    n = (np.searchsorted(g_img, d_img_o, "right") - lo).astype(np.int32)
    n_pairs = int(n.sum(dtype=np.int64))
    if n_pairs == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    idx = np.int32 if max(n_pairs, len(res), len(gt)) < 2**31 - 1 else np.int64
    pd = np.repeat(d_ord.astype(idx), n)
    first = np.cumsum(n, dtype=idx)
    first -= n
    # position of each pair's ground truth in g_ord: lo + (pair index - first pair of its det)
    off = np.repeat((lo - first).astype(idx), n)
    off += np.arange(n_pairs, dtype=idx)
    pg = g_ord.astype(idx)[off]
    del off
    if ev.iou_type != "bbox":
        pd, pg = pd.astype(np.int64), pg.astype(np.int64)
        iou = _mask_pairs(ev, det, pd, pg)
        keep = iou >= min_iou
        return pd[keep], pg[keep], iou[keep]
    # per-box terms of pycocotools' bbIou, computed once per box (same floats as per pair)
    db, gb = res.bbox, gt.bbox
    dx0, dy0, dx1, dy1 = db[:, 0].copy(), db[:, 1].copy(), db[:, 2] + db[:, 0], db[:, 3] + db[:, 1]
    gx0, gy0, gx1, gy1 = gb[:, 0].copy(), gb[:, 1].copy(), gb[:, 2] + gb[:, 0], gb[:, 3] + gb[:, 1]
    w = np.minimum(dx1[pd], gx1[pg])
    w -= np.maximum(dx0[pd], gx0[pg])
    h = np.minimum(dy1[pd], gy1[pg])
    h -= np.maximum(dy0[pd], gy0[pg])
    overlap = (w > 0) & (h > 0)
    if min_iou > 0:  # IoU 0 pairs cannot pass: drop them before the rest of the work
        sel = np.flatnonzero(overlap)
        pd, pg, w, h = pd[sel], pg[sel], w[sel], h[sel]
        overlap = np.ones(sel.shape[0], bool)
    inter = w * h
    da = (db[:, 2] * db[:, 3])[pd]
    ga = (gb[:, 2] * gb[:, 3])[pg]
    union = np.where(gt.crowd[pg], da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    iou = np.where(overlap, iou, 0.0)
    keep = iou >= min_iou
    return pd[keep].astype(np.int64), pg[keep].astype(np.int64), iou[keep]


def _stable_order(x: np.ndarray) -> np.ndarray:
    """``np.argsort(x, kind="stable")``, skipping the sort when ``x`` is already sorted."""
    if x.shape[0] < 2 or bool((x[1:] >= x[:-1]).all()):
        return np.arange(x.shape[0])
    return np.argsort(x, kind="stable")


def _mask_pairs(ev: CocoEvaluation, det: np.ndarray, pd: np.ndarray, pg: np.ndarray) -> np.ndarray:
    from pycocotools import mask as mask_utils

    gt, res = ev.gt, ev.results
    drle = to_rles([res.segmentation[i] for i in det.tolist()], res.img[det], gt.image_hw)
    grle = to_rles(gt.segmentation, gt.img, gt.image_hw)
    out = np.zeros(pd.shape[0])
    img = res.img[det[pd]]
    starts = np.flatnonzero(np.r_[True, img[1:] != img[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], img.shape[0]], strict=True):
        ud, di = np.unique(pd[s:e], return_inverse=True)
        ug, gi = np.unique(pg[s:e], return_inverse=True)
        m = np.asarray(mask_utils.iou([drle[i] for i in ud], [grle[i] for i in ug],
                                      gt.crowd[ug].astype(np.uint8).tolist())).reshape(len(ud), len(ug))
        out[s:e] = m[di.reshape(-1), gi.reshape(-1)]
    return out


def _greedy_unique(pd: np.ndarray, pg: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs taken best-key-first so that each detection and ground truth is used once."""
    o = np.argsort(-key, kind="stable")
    pd, pg = pd[o], pg[o]
    _, first_d = np.unique(pd, return_index=True)
    sel = np.sort(first_d)
    pd, pg = pd[sel], pg[sel]
    _, first_g = np.unique(pg, return_index=True)
    sel = np.sort(first_g)
    return pd[sel], pg[sel]


def confusion_matrix(ev: CocoEvaluation, iou: float = 0.5, score: float = 0.25) -> np.ndarray:
    """(K+1, K+1) counts: rows true class, columns predicted class, last = background.

    Detections with score >= ``score`` are matched to non-crowd ground truths of any class,
    highest IoU first (then highest score), each used once, at IoU >= ``iou``. Unmatched
    ground truths count in the background column (missed), unmatched detections in the
    background row (false alarms) unless they cover a crowd region.
    """
    n_k = len(ev.gt.cat_ids)
    det = np.flatnonzero(ev.results.score >= score)
    pd, pg, pi = image_pairs(ev, det, iou)
    crowd = ev.gt.crowd[pg]
    on_crowd = np.zeros(det.shape[0], bool)
    on_crowd[pd[crowd]] = True
    pd, pg, pi = pd[~crowd], pg[~crowd], pi[~crowd]
    md, mg = _greedy_unique(pd, pg, pi + 1e-9 * ev.results.score[det[pd]])
    cm = np.zeros((n_k + 1, n_k + 1), np.int64)
    np.add.at(cm, (ev.gt.cat[mg], ev.results.cat[det[md]]), 1)
    g_used = np.zeros(len(ev.gt), bool)
    g_used[mg] = True
    missed = ~g_used & ~ev.gt.crowd
    np.add.at(cm, (ev.gt.cat[missed], n_k), 1)
    d_used = np.zeros(det.shape[0], bool)
    d_used[md] = True
    alarms = ~d_used & ~on_crowd
    np.add.at(cm, (n_k, ev.results.cat[det[alarms]]), 1)
    return cm


def _ap101(cat: np.ndarray, score: np.ndarray, tp: np.ndarray, fp: np.ndarray,
           npig: np.ndarray, rec_thrs: np.ndarray, order: np.ndarray | None = None) -> float:
    """COCO-style 101-point AP averaged over categories with ground truth.

    ``order`` sorts the detections by (category, score descending); computed when None.
    """
    if order is None:
        order = np.lexsort((-score, cat))
    cat, tp, fp = cat[order], tp[order], fp[order]
    bounds = np.searchsorted(cat, np.arange(npig.shape[0] + 1))
    tp_c = np.r_[0.0, np.cumsum(tp, dtype=np.float64)]
    fp_c = np.r_[0.0, np.cumsum(fp, dtype=np.float64)]
    aps = []
    for k in np.flatnonzero(npig > 0).tolist():
        lo, hi = bounds[k], bounds[k + 1]
        if hi == lo:
            aps.append(0.0)
            continue
        t = tp_c[lo + 1:hi + 1] - tp_c[lo]
        f = fp_c[lo + 1:hi + 1] - fp_c[lo]
        rc = t / npig[k]
        pr = np.maximum.accumulate((t / (t + f + np.spacing(1)))[::-1])[::-1]
        inds = np.searchsorted(rc, rec_thrs, side="left")
        aps.append(float(np.where(inds < t.size, pr[np.minimum(inds, t.size - 1)], 0).mean()))
    return float(np.mean(aps)) if aps else float("nan")


#: TIDE's false-positive types in the order their tests are tried (codes 0..4; 5 = "other")
FP_TYPES = ("background", "localisation", "classification", "duplicate", "both")


@dataclass
class DetectionErrors:
    """The TIDE-style verdict on every evaluated detection and ground truth.

    Detections are those of ``ev.matching.det`` (top maxDets per image and class), at the
    foreground IoU ``t_f`` and area "all".

    Attributes:
        det: (D,) indices into the results arrays.
        kind: (D,) int64: -1 true positive, -2 ignored (matched a crowd or an ignored ground
            truth), else the error type's index in `FP_TYPES` (5 = "other").
        gt: (D,) int64 ground truth index (into the GT arrays) the verdict refers to: the
            match of a true positive; for an error the ground truth of its best IoU that
            decided the type (same class for localisation/duplicate, other class for
            classification/both); -1 for background and other.
        iou: (D,) float64 the evaluation's IoU (box or mask) with ``gt`` for errors; 0 where
            ``gt`` is -1; NaN for true positives and ignored detections (not computed).
        missed: (G,) bool over the GT arrays: non-crowd ground truths no detection found,
            even with the wrong class or a poor box (TIDE's "missed").
        tp: (D,) bool; fp: (D,) bool (neither for ignored detections).
    """

    t_f: float
    t_b: float
    det: np.ndarray
    kind: np.ndarray
    gt: np.ndarray
    iou: np.ndarray
    missed: np.ndarray
    tp: np.ndarray
    fp: np.ndarray

    def type_name(self, code: int) -> str:
        """"tp", "ignored", an `FP_TYPES` name or "other"."""
        return {-1: "tp", -2: "ignored"}.get(int(code)) or (*FP_TYPES, "other")[int(code)]


def _classify(ev: CocoEvaluation, t_f: float, t_b: float) -> dict:
    """TIDE's error type of every false positive and the missed ground truths (shared by
    `tide_errors` and `detection_errors`, computed once per evaluation; read-only)."""
    key = ("tide_classify", float(t_f), float(t_b))
    with _COMPUTING:
        if key not in ev.cache:
            ev.cache[key] = _classify_uncached(ev, t_f, t_b)
    return ev.cache[key]


def _classify_uncached(ev: CocoEvaluation, t_f: float, t_b: float) -> dict:
    a, t = _area_all(ev), iou_index(ev, t_f)
    m = ev.matching
    det = m.det
    d_cat, d_score = ev.results.cat[det], ev.results.score[det]
    match = m.det_match(a, t)
    matched = match >= 0
    safe = np.where(matched, match, 0)
    gt_idx = m.gt[safe] if m.gt.size else safe  # no ground truth: nothing is matched
    ignored = (matched & m.gt_ignore[a, safe]) if m.gt.size else matched
    tp = matched & ~ignored & ((ev.gt.ids[gt_idx] != 0) if m.gt.size else matched)
    fp = ~tp & ~ignored
    gt_used = np.zeros(len(ev.gt), bool)
    gt_used[gt_idx[tp]] = True
    npig = np.bincount(ev.gt.cat[m.gt][~m.gt_ignore[a]], minlength=len(ev.gt.cat_ids))

    # best same-class and other-class IoU of every false positive (non-crowd ground truth)
    fp_pos = np.flatnonzero(fp)
    pd, pg, pi = image_pairs(ev, det[fp_pos], t_b)
    keep = ~ev.gt.crowd[pg]
    pd, pg, pi = pd[keep], pg[keep], pi[keep]
    same = ev.gt.cat[pg] == d_cat[fp_pos[pd]]
    n_fp = fp_pos.shape[0]

    def best(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        iou_b, gt_b = np.zeros(n_fp), np.full(n_fp, -1)
        o = np.lexsort((pi[mask], pd[mask]))  # per detection, highest IoU last
        d_m, g_m, i_m = pd[mask][o], pg[mask][o], pi[mask][o]
        iou_b[d_m], gt_b[d_m] = i_m, g_m
        return iou_b, gt_b

    iou_s, gt_s = best(same)
    iou_o, gt_o = best(~same)
    iou_any = np.maximum(iou_s, iou_o)
    # error type codes, assigned in TIDE's order: the first test that holds wins
    names = FP_TYPES
    tests = (iou_any < t_b, (iou_s >= t_b) & (iou_s < t_f), iou_o >= t_f, iou_s >= t_f,
             (iou_o >= t_b) & (iou_o < t_f))
    code = np.full(n_fp, len(names), np.int64)  # len(names) = "other"
    for c in range(len(names) - 1, -1, -1):
        code[tests[c]] = c
    kind = {name: code == c for c, name in enumerate(names)}

    # ground truths some detection found, even with the wrong class or a poor box
    covered = gt_used.copy()
    covered[gt_s[kind["localisation"]]] = True
    covered[gt_o[kind["classification"]]] = True
    missed = ~covered & ~ev.gt.crowd
    return {"det": det, "d_cat": d_cat, "d_score": d_score, "tp": tp, "fp": fp, "ignored": ignored,
            "gt_idx": gt_idx, "gt_used": gt_used, "npig": npig, "fp_pos": fp_pos, "code": code,
            "kind": kind, "iou_s": iou_s, "gt_s": gt_s, "iou_o": iou_o, "gt_o": gt_o,
            "missed": missed}


def detection_errors(ev: CocoEvaluation, t_f: float = 0.5, t_b: float = 0.1) -> DetectionErrors:
    """Per-detection TIDE verdicts (the ones `tide_errors` counts), for galleries and browsers."""
    c = _classify(ev, t_f, t_b)
    n = c["det"].shape[0]
    kind = np.full(n, -2, np.int64)
    kind[c["tp"]] = -1
    gt = np.where(c["tp"] | c["ignored"], c["gt_idx"], -1).astype(np.int64)
    iou = np.full(n, np.nan)
    code, fp_pos = c["code"], c["fp_pos"]
    kind[fp_pos] = code
    use_same = np.isin(code, (1, 3))  # localisation, duplicate: the same-class ground truth
    use_other = np.isin(code, (2, 4))  # classification, both
    gt[fp_pos] = np.where(use_same, c["gt_s"], np.where(use_other, c["gt_o"], -1))
    iou[fp_pos] = np.where(use_same, c["iou_s"], np.where(use_other, c["iou_o"], 0.0))
    return DetectionErrors(t_f, t_b, c["det"], kind, gt, iou, c["missed"], c["tp"], c["fp"])


def tide_errors(ev: CocoEvaluation, t_f: float = 0.5, t_b: float = 0.1) -> dict:
    """TIDE-style error counts and dAP (AP at ``t_f`` gained by fixing each type)."""
    c = _classify(ev, t_f, t_b)
    d_cat, d_score, tp, fp, npig = c["d_cat"], c["d_score"], c["tp"], c["fp"], c["npig"]
    fp_pos, kind, code, missed = c["fp_pos"], c["kind"], c["code"], c["missed"]
    gt_s, gt_o, gt_used = c["gt_s"], c["gt_o"], c["gt_used"]
    names = FP_TYPES
    by_score = np.argsort(-d_score, kind="stable")
    order = cat_score_order(d_cat, by_score)
    base = _ap101(d_cat, d_score, tp, fp, npig, ev.params.rec_thrs, order)
    counts = {e: int(kind[e].sum()) for e in ERROR_TYPES[:-1]}
    counts["other"] = int((code == len(names)).sum())
    counts["missed"] = int(missed.sum())

    def fixed_ap(name: str) -> float:
        cat, tp2, fp2, npig2 = d_cat.copy(), tp.copy(), fp.copy(), npig.copy()
        if name == "missed":
            np.subtract.at(npig2, ev.gt.cat[missed], 1)
            return _ap101(cat, d_score, tp2, fp2, npig2, ev.params.rec_thrs, order)
        sel = fp_pos[kind[name]]
        fp2[sel] = False  # dropped unless it becomes a true positive below
        if name in ("classification", "localisation"):
            target = (gt_o if name == "classification" else gt_s)[kind[name]]
            # the highest-scoring error on each still-free ground truth becomes its match
            o = np.argsort(-d_score[sel], kind="stable")
            sel, target = sel[o], target[o]
            _, first = np.unique(target, return_index=True)
            win = first[~gt_used[target[first]]]
            tp2[sel[win]] = True
            cat[sel[win]] = ev.gt.cat[target[win]]
            return _ap101(cat, d_score, tp2, fp2, npig2, ev.params.rec_thrs,
                          cat_score_order(cat, by_score))  # classes moved
        return _ap101(cat, d_score, tp2, fp2, npig2, ev.params.rec_thrs, order)

    dap = {e: fixed_ap(e) - base for e in ERROR_TYPES}
    return {"t_f": t_f, "t_b": t_b, "ap": base, "dAP": dap, "counts": counts}
