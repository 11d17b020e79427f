"""Per-image outcomes of an evaluation: what an image browser shows behind the numbers.

`outcomes` turns a `CocoEvaluation` into flat per-detection and per-ground-truth arrays at
one IoU threshold (area "all", the largest maxDets), computed once:

- each kept detection is a true positive (TP), a false positive (FP) or ignored (matched to
  a crowd region, as in COCO); each FP gets a TIDE-style error type (see
  `detseg.eval.error_analysis`), and each detection the IoU of its match (TP) or its best
  same-class IoU (FP);
- each ground truth is counted (non-crowd) or ignored, knows the detection that matched it,
  and whether TIDE calls it "missed" (no detection found it, even badly).

A score threshold is applied afterwards without re-matching: COCO matches detections in
score order, so dropping those below a threshold leaves the matches of the others unchanged
(the same rule as `analysis.prf_at`). `image_counts`, `select_images` and `image_view` are
then cheap enough to run on every slider move or click, on 5,000 images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detseg.errors import InputError
from detseg.eval.analysis import _area_all, iou_index, scored_matches
from detseg.eval.error_analysis import image_pairs
from detseg.eval.metrics import CocoEvaluation

#: error types of a false positive, in TIDE's order; "other" is none of them
FP_TYPES = ("classification", "localisation", "both", "duplicate", "background", "other")
#: what `select_images` filters on
ERROR_FILTERS = ("any", "FP", "FN", *FP_TYPES[:-1], "missed")
TP, FP, IGNORED = 0, 1, 2
FN = 1  # ground-truth state: 0 matched (TP), 1 missed at the threshold (FN), 2 ignored


@dataclass
class Outcomes:
    """An evaluation's matches at IoU ``iou``, as flat arrays (see the module docstring).

    Detection arrays (D,) follow ``ev.matching.det`` (the top maxDets of each image and
    category); ground-truth arrays (N,) follow the `GroundTruth` arrays.

    Attributes:
        det: indices into the `Results` arrays. det_img, det_cat: image / category index.
        det_score: float64. det_state: int8 `TP`, `FP` or `IGNORED`.
        det_gt: ground-truth index of a TP's match, -1 otherwise.
        det_iou: IoU with the matched ground truth (TP), best same-class IoU (others; 0.0
            when none reaches 0.1).
        det_error: int8 index into `FP_TYPES` for a FP, -1 otherwise.
        gt_det: position (into ``det``) of the TP that matched each ground truth, -1 if none.
        gt_counted: bool, non-crowd ground truth (counted in recall).
        gt_missed: bool, TIDE's "missed": counted and no detection overlaps it enough.
        det_by_img, gt_by_img: positions sorted by image; det_start, gt_start: (I + 1,)
            where each image's run begins in them.
    """

    iou: float
    det: np.ndarray
    det_img: np.ndarray
    det_cat: np.ndarray
    det_score: np.ndarray
    det_state: np.ndarray
    det_gt: np.ndarray
    det_iou: np.ndarray
    det_error: np.ndarray
    gt_det: np.ndarray
    gt_counted: np.ndarray
    gt_missed: np.ndarray
    det_by_img: np.ndarray
    det_start: np.ndarray
    gt_by_img: np.ndarray
    gt_start: np.ndarray


def outcomes(ev: CocoEvaluation, iou: float = 0.5, t_b: float = 0.1) -> Outcomes:
    """Per-detection and per-ground-truth outcomes at IoU ``iou`` (cached on ``ev``).

    Args:
        iou: one of the evaluation's IoU thresholds; also TIDE's foreground IoU.
        t_b: TIDE's background IoU (an FP overlapping nothing by ``t_b`` is "background").
    """
    key = ("browse_outcomes", float(iou), float(t_b))
    if key in ev.cache:
        return ev.cache[key]
    t, a = iou_index(ev, iou), _area_all(ev)
    m, gt = ev.matching, ev.gt
    n_img, n_gt = gt.image_ids.shape[0], len(gt)
    sm = scored_matches(ev, iou)
    det = m.det
    n_det = det.shape[0]
    match = m.det_match(a, t)
    state = np.full(n_det, IGNORED, np.int8)
    state[sm.tp] = TP
    state[sm.fp] = FP
    det_gt = np.where(sm.tp, m.gt[np.maximum(match, 0)] if m.gt.size else -1, -1)
    gt_det = np.full(n_gt, -1, np.int64)
    tp_pos = np.flatnonzero(sm.tp)
    gt_det[det_gt[tp_pos]] = tp_pos
    d_cat = sm.cat

    # every (detection, non-crowd ground truth) pair of an image with IoU >= t_b
    pd, pg, pi = image_pairs(ev, det, t_b)
    keep = ~gt.crowd[pg]
    pd, pg, pi = pd[keep], pg[keep], pi[keep]
    same = gt.cat[pg] == d_cat[pd]
    iou_s, gt_s = _best(pd[same], pg[same], pi[same], n_det)
    iou_o, gt_o = _best(pd[~same], pg[~same], pi[~same], n_det)
    det_iou = iou_s.copy()
    on_match = pg == det_gt[pd]
    det_iou[pd[on_match]] = pi[on_match]  # a TP's IoU is its match's, not the best one

    # TIDE's tests in its order (the first that holds wins), on false positives only
    iou_any = np.maximum(iou_s, iou_o)
    tests = (iou_o >= iou, (iou_s >= t_b) & (iou_s < iou), (iou_o >= t_b) & (iou_o < iou),
             iou_s >= iou, iou_any < t_b)  # classification, localisation, both, duplicate, bg
    order = (4, 1, 0, 3, 2)  # TIDE tests background, localisation, classification, duplicate, both
    code = np.full(n_det, FP_TYPES.index("other"), np.int8)
    for c in order[::-1]:
        code[tests[c]] = c
    det_error = np.where(state == FP, code, -1).astype(np.int8)

    fp = state == FP
    covered = gt_det >= 0
    covered[gt_s[fp & (det_error == 1)]] = True  # localisation: found, with a poor box
    covered[gt_o[fp & (det_error == 0)]] = True  # classification: found, with the wrong class
    counted = ~gt.crowd
    d_img = ev.results.img[det]
    det_by_img = np.argsort(d_img, kind="stable")
    gt_by_img = np.argsort(gt.img, kind="stable")
    out = Outcomes(
        float(iou), det, d_img, d_cat, sm.score, state, det_gt, det_iou, det_error, gt_det,
        counted, counted & ~covered, det_by_img,
        np.searchsorted(d_img[det_by_img], np.arange(n_img + 1)), gt_by_img,
        np.searchsorted(gt.img[gt_by_img], np.arange(n_img + 1)),
    )
    ev.cache[key] = out
    return out


def _best(pd: np.ndarray, pg: np.ndarray, pi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n,) highest IoU per detection and its ground truth (0.0 / -1 where no pair)."""
    iou_b, gt_b = np.zeros(n), np.full(n, -1, np.int64)
    o = np.lexsort((pi, pd))  # per detection, highest IoU last: the last write wins
    iou_b[pd[o]], gt_b[pd[o]] = pi[o], pg[o]
    return iou_b, gt_b


def _gt_state(o: Outcomes, score: float) -> np.ndarray:
    """(N,) int8 ground-truth state at a score threshold: TP, FN or IGNORED."""
    found = o.gt_det >= 0
    found[found] = o.det_score[o.gt_det[found]] >= score
    return np.where(~o.gt_counted, IGNORED, np.where(found, TP, FN)).astype(np.int8)


def check_score(score: float) -> float:
    """``score`` as a float in [0, 1], or a clear `InputError`."""
    if not isinstance(score, (int, float, np.number)):
        raise InputError(f"score threshold: expected a number in [0, 1], found {score!r}")
    if not 0 <= score <= 1:
        raise InputError(f"score threshold: expected a value in [0, 1], found {score}")
    return float(score)


def image_counts(o: Outcomes, gt_cat: np.ndarray, score: float = 0.0,
                 cat: int | None = None) -> np.ndarray:
    """(I, 3) int64 TP, FP, FN per image at a score threshold, optionally for one category.

    Args:
        gt_cat: (N,) category index of each ground truth (``ev.gt.cat``).
        cat: category index (into ``ev.gt.cat_ids``), or None for all.
    """
    score = check_score(score)
    n_img = o.det_start.shape[0] - 1
    keep = o.det_score >= score
    g_keep = np.ones(gt_cat.shape[0], bool)
    if cat is not None:
        keep &= o.det_cat == cat
        g_keep = gt_cat == cat
    g_img = np.empty(gt_cat.shape[0], np.int64)
    g_img[o.gt_by_img] = np.repeat(np.arange(n_img), np.diff(o.gt_start))
    fn = (_gt_state(o, score) == FN) & g_keep
    return np.stack([np.bincount(o.det_img[keep & (o.det_state == TP)], minlength=n_img),
                     np.bincount(o.det_img[keep & (o.det_state == FP)], minlength=n_img),
                     np.bincount(g_img[fn], minlength=n_img)], axis=1)


def select_images(o: Outcomes, gt_cat: np.ndarray, score: float = 0.0, cat: int | None = None,
                  error: str = "any", counts: np.ndarray | None = None) -> np.ndarray:
    """Image indices to browse, the costliest first (most FP + FN, then image order).

    Args:
        error: "any" (every image holding a ground truth or a kept detection of ``cat``),
            "FP", "FN", a TIDE false-positive type ("classification", ..., "background")
            or "missed" (TIDE's missed ground truths).
        counts: `image_counts` for the same arguments, if already computed.
    """
    if error not in ERROR_FILTERS:
        raise InputError(f"error type: expected one of {', '.join(ERROR_FILTERS)}, found {error!r}")
    if counts is None:
        counts = image_counts(o, gt_cat, score, cat)
    n_img = counts.shape[0]
    keep = o.det_score >= score
    g_keep = np.ones(gt_cat.shape[0], bool)
    if cat is not None:
        keep &= o.det_cat == cat
        g_keep = gt_cat == cat
    g_img = np.empty(gt_cat.shape[0], np.int64)
    g_img[o.gt_by_img] = np.repeat(np.arange(n_img), np.diff(o.gt_start))
    if error == "any":
        has = np.zeros(n_img, bool)
        has[o.det_img[keep]] = True
        has[g_img[g_keep]] = True
    elif error == "FP":
        has = counts[:, 1] > 0
    elif error == "FN":
        has = counts[:, 2] > 0
    elif error == "missed":
        has = np.zeros(n_img, bool)
        has[g_img[g_keep & o.gt_missed]] = True
    else:
        has = np.zeros(n_img, bool)
        has[o.det_img[keep & (o.det_error == FP_TYPES.index(error))]] = True
    idx = np.flatnonzero(has)
    cost = counts[idx, 1] + counts[idx, 2]
    return idx[np.argsort(-cost, kind="stable")]


@dataclass
class ImageView:
    """What one image shows at a score threshold. Boxes are xyxy in image pixels (float64).

    Attributes:
        image_index: index into ``ev.gt.image_ids``; image_id: its COCO id.
        gt_box: (g, 4); gt_cat: (g,) category index; gt_state: (g,) TP, FN or IGNORED;
            gt_missed: (g,) bool (TIDE's missed).
        det_box: (d, 4); det_cat, det_score, det_iou: (d,); det_state: (d,) TP, FP or
            IGNORED; det_error: (d,) index into `FP_TYPES` or -1. Sorted by score descending.
        counts: (TP, FP, FN) of what is shown.
        gt_index: (g,) int64 indices into the `GroundTruth` arrays (``ev.gt.segmentation[k]``
            is the mask); det_index: (d,) int64 indices into the `Results` arrays.
    """

    image_index: int
    image_id: int
    gt_box: np.ndarray
    gt_cat: np.ndarray
    gt_state: np.ndarray
    gt_missed: np.ndarray
    det_box: np.ndarray
    det_cat: np.ndarray
    det_score: np.ndarray
    det_iou: np.ndarray
    det_state: np.ndarray
    det_error: np.ndarray
    gt_index: np.ndarray
    det_index: np.ndarray

    @property
    def counts(self) -> tuple[int, int, int]:
        return (int((self.det_state == TP).sum()), int((self.det_state == FP).sum()),
                int((self.gt_state == FN).sum()))

    def rows(self, cat_names: list[str]) -> list[dict]:
        """One dict per shown object (ground truths first), for tables and JSON."""
        gt_names = ("TP", "FN", "ignored")
        det_names = ("TP", "FP", "ignored")
        out = [{"kind": "gt", "class": cat_names[int(c)], "state": gt_names[int(s)],
                "error": "missed" if m else "", "score": None, "iou": None,
                "box": [round(float(v), 1) for v in b]}
               for b, c, s, m in zip(self.gt_box, self.gt_cat, self.gt_state, self.gt_missed,
                                     strict=True)]
        out += [{"kind": "pred", "class": cat_names[int(c)], "state": det_names[int(s)],
                 "error": FP_TYPES[int(e)] if e >= 0 else "", "score": round(float(sc), 4),
                 "iou": round(float(i), 3), "box": [round(float(v), 1) for v in b]}
                for b, c, s, e, sc, i in zip(self.det_box, self.det_cat, self.det_state,
                                             self.det_error, self.det_score, self.det_iou, strict=True)]
        return out


def image_view(ev: CocoEvaluation, o: Outcomes, image_index: int, score: float = 0.0,
               cat: int | None = None) -> ImageView:
    """The ground truths and kept detections of one image (of category ``cat`` if given)."""
    score = check_score(score)
    n_img = ev.gt.image_ids.shape[0]
    if not 0 <= image_index < n_img:
        raise InputError(f"image index: expected 0..{n_img - 1}, found {image_index}")
    g = o.gt_by_img[o.gt_start[image_index]:o.gt_start[image_index + 1]]
    d = o.det_by_img[o.det_start[image_index]:o.det_start[image_index + 1]]
    d = d[o.det_score[d] >= score]
    if cat is not None:
        g, d = g[ev.gt.cat[g] == cat], d[o.det_cat[d] == cat]
    d = d[np.argsort(-o.det_score[d], kind="stable")]
    found = o.gt_det[g] >= 0
    found[found] = o.det_score[o.gt_det[g][found]] >= score
    g_state = np.where(~o.gt_counted[g], IGNORED, np.where(found, TP, FN)).astype(np.int8)
    return ImageView(
        int(image_index), int(ev.gt.image_ids[image_index]), xywh_to_xyxy(ev.gt.bbox[g]),
        ev.gt.cat[g], g_state, o.gt_missed[g], xywh_to_xyxy(ev.results.bbox[o.det[d]]),
        o.det_cat[d], o.det_score[d], o.det_iou[d], o.det_state[d], o.det_error[d],
        np.asarray(g, np.int64), np.asarray(o.det[d], np.int64),
    )


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    """(n, 4) COCO [x, y, w, h] -> (n, 4) [x1, y1, x2, y2], float64."""
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def class_pr(ev: CocoEvaluation, cat: int | None = None, iou: float | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """COCO's interpolated precision against recall for one category (or the class mean).

    Args:
        cat: category index, or None for the mean over categories with ground truth.
        iou: an evaluated IoU threshold, or None for the mean over all of them (AP's curve).

    Returns:
        recall thresholds (R,) and precision (R,) (area "all", largest maxDets); precision
        is NaN where the category has no ground truth.
    """
    a = _area_all(ev)
    prec = ev.precision[:, :, :, a, -1]  # (T, R, K)
    if iou is not None:
        prec = prec[iou_index(ev, iou)][None]
    if cat is not None:
        prec = prec[:, :, cat:cat + 1]
    valid = (prec > -1).all(axis=1)  # (T, K): categories with ground truth
    if not valid.any():
        return ev.params.rec_thrs, np.full(ev.params.rec_thrs.shape, np.nan)
    curve = prec.transpose(1, 0, 2)[:, valid].mean(axis=1)  # mean over (T, K) with GT
    return ev.params.rec_thrs, curve
