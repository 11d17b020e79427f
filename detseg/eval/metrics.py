"""COCO metrics identical to pycocotools' COCOeval, computed with vectorised numpy.

`evaluate` = ``COCO.loadRes`` + ``COCOeval.evaluate`` + ``accumulate`` + ``summarize``: the
same ``precision`` (T, R, K, A, M), ``recall`` (T, K, A, M) and ``scores`` arrays, bit for
bit, and the 12 ``stats`` in pycocotools' order. Differences on purpose: bad input raises an
`InputError` instead of an assert or a KeyError, results naming unknown categories are an
error (pycocotools silently drops them), and empty results give zero metrics with a warning.
"""

from __future__ import annotations

import warnings as _warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detseg.errors import InputError
from detseg.eval.match import Matching, match, stable_argsort
from detseg.eval.validate import GroundTruth, Results, load_ground_truth, load_results

STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


def _linspace(lo: float, hi: float, step: float) -> np.ndarray:
    # pycocotools' exact expression: np.arange would give slightly different floats.
    return np.linspace(lo, hi, int(np.round((hi - lo) / step)) + 1, endpoint=True)


@dataclass
class EvalParams:
    """pycocotools ``Params`` for bbox/segm: thresholds, maxDets and area ranges."""

    iou_thrs: np.ndarray = field(default_factory=lambda: _linspace(0.5, 0.95, 0.05))
    rec_thrs: np.ndarray = field(default_factory=lambda: _linspace(0.0, 1.0, 0.01))
    max_dets: Sequence[int] = (1, 10, 100)
    area_rng: Sequence[Sequence[float]] = ((0**2, 1e5**2), (0**2, 32**2), (32**2, 96**2),
                                           (96**2, 1e5**2))
    area_lbl: Sequence[str] = ("all", "small", "medium", "large")

    def __post_init__(self) -> None:
        self.iou_thrs = np.asarray(self.iou_thrs, np.float64).reshape(-1)
        self.rec_thrs = np.asarray(self.rec_thrs, np.float64).reshape(-1)
        self.max_dets = sorted(int(m) for m in self.max_dets)  # pycocotools sorts them too
        self.area_rng = [[float(a), float(b)] for a, b in self.area_rng]
        self.area_lbl = [str(s) for s in self.area_lbl]
        if len(self.area_lbl) != len(self.area_rng):
            raise InputError(f"area_lbl: expected {len(self.area_rng)} labels (one per area range), "
                             f"found {len(self.area_lbl)}")
        if self.iou_thrs.size == 0 or not ((self.iou_thrs >= 0) & (self.iou_thrs <= 1)).all():
            raise InputError(f"iou_thrs: expected values in [0, 1], found {self.iou_thrs.tolist()}")
        if not self.max_dets or self.max_dets[0] < 1:
            raise InputError(f"max_dets: expected positive integers, found {self.max_dets}")
        if not self.area_rng:
            raise InputError("area_rng: expected at least one [lo, hi] range, found none")


@dataclass
class CocoEvaluation:
    """Everything `evaluate` computed. Arrays follow pycocotools' ``self.eval`` layout.

    Attributes:
        stats: (12,) the COCO summary in pycocotools' order (`STAT_NAMES`); -1 where undefined.
        precision: (T, R, K, A, M) interpolated precision; -1 where a category has no GT.
        recall: (T, K, A, M) recall at the last detection.
        scores: (T, R, K, A, M) score of the detection reaching each recall threshold.
        gt, results: the inputs as arrays; matching: per-detection matches (see `Matching`).
    """

    iou_type: str
    params: EvalParams
    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    gt: GroundTruth
    results: Results
    matching: Matching
    warnings: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict, repr=False)  # analyses share work through it

    @property
    def stats_dict(self) -> dict[str, float]:
        return dict(zip(STAT_NAMES, (float(s) for s in self.stats), strict=True))

    def summary_lines(self) -> list[str]:
        """pycocotools' summary lines, character for character."""
        p = self.params
        lines = []
        for (ap, thr, area, mdets), value in zip(_summary_spec(p), self.stats, strict=True):
            title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
            iou = f"{p.iou_thrs[0]:0.2f}:{p.iou_thrs[-1]:0.2f}" if thr is None else f"{thr:0.2f}"
            lines.append(f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | "
                         f"maxDets={mdets:>3d} ] = {value:0.3f}")
        return lines


def accumulate(m: Matching, gt: GroundTruth, res: Results, p: EvalParams
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pycocotools' ``accumulate`` on a `Matching`: (precision, recall, scores).

    pycocotools walks every detection of a category in score order, cumulating true and
    false positives. Only the true positives matter for the result: the precision curve,
    made non-increasing from the right, reaches its maxima at true positives, and each
    recall threshold is first reached at a true positive. So this works on the (few) matched
    detections and counts false positives with prefix sums; the floats computed are the same
    (``tp / npig``, ``tp / (fp + tp + eps)`` with the same integer tp and fp).
    """
    n_t, n_r, n_k = len(p.iou_thrs), len(p.rec_thrs), len(gt.cat_ids)
    n_a, n_m = len(p.area_rng), len(p.max_dets)
    precision = -np.ones((n_t, n_r, n_k, n_a, n_m))
    recall = -np.ones((n_t, n_k, n_a, n_m))
    scores = -np.ones((n_t, n_r, n_k, n_a, n_m))
    n_det = m.det.shape[0]
    # pycocotools concatenates images in id order, then stable-sorts by score.
    # m.det is in (image, category, rank) order: two stable sorts give (category, -score,
    # image, rank) without a 4-key lexsort
    cat = res.cat[m.det]
    order = np.argsort(-res.score[m.det], kind="stable")
    order = order[stable_argsort(cat[order])]
    idx_t = np.int32 if n_det < 2**31 else np.int64  # compact dtypes: less memory traffic
    pos = np.empty(n_det, idx_t)
    pos[order] = np.arange(n_det, dtype=idx_t)
    cat_o, rank_o, score_o = cat[order], m.det_rank[order].astype(idx_t), res.score[m.det][order]
    cat_start = np.searchsorted(cat_o, np.arange(n_k + 1))
    gcat = gt.cat[m.gt]
    npig = np.stack([np.bincount(gcat[~m.gt_ignore[a]], minlength=n_k) for a in range(n_a)])

    # Matched entries: lane (a, t), position in the category's score order, flags.
    e_a, e_t, e_pos = m.m_a.astype(np.int32), m.m_t.astype(np.int32), pos[m.m_det]
    hit = gt.ids[m.gt[m.m_gt]] != 0  # pycocotools stores the matched id and tests its truth
    gig = m.gt_ignore[e_a, m.m_gt]
    out = m.det_out[e_a, m.m_det]
    e_tp = hit & ~gig
    # In range and not a false positive (pycocotools: ignored = matched to an ignored GT,
    # or not hit and out of range).
    e_corr = ~out & (hit | gig)
    # sort entries by (lane, position): three radix passes over 15-bit digits
    lane = e_a * n_t + e_t
    if n_det < 2**30:
        e_pos = e_pos.astype(np.int32)
        srt = stable_argsort(e_pos & 0x7FFF)
        srt = srt[stable_argsort((e_pos >> 15)[srt])]
        srt = srt[stable_argsort(lane[srt])]
    else:
        srt = np.lexsort((e_pos, lane))
    e_a, e_t, e_pos, e_tp, e_corr = (x[srt] for x in (e_a, e_t, e_pos, e_tp, e_corr))
    e_k = cat_o[e_pos].astype(np.int32)
    e_rank = rank_o[e_pos]
    in_range_o = ~m.det_out[:, order]  # (A, D) in score order
    need = np.zeros((n_a, n_k, n_r), np.int64)  # true positives needed per recall threshold
    for n in np.unique(npig[npig > 0]).tolist():
        need[npig == n] = _need(n, p.rec_thrs)
    need = need[:, None]  # (A, 1, K, R)
    valid = (npig > 0).T[None, None]  # (1, 1, K, A) in precision's layout
    eps = np.spacing(1)
    for mi, max_det in enumerate(p.max_dets):
        keep_o = rank_o < max_det
        kept = np.r_[0, np.cumsum(keep_o)]
        nd = np.diff(kept[cat_start])  # (K,) detections per category
        first = np.searchsorted(kept[1:], kept[cat_start[:-1]] + 1)
        s0 = np.where(nd > 0, score_o[np.minimum(first, max(n_det - 1, 0))] if n_det else 0.0, 0.0)
        # fp candidates up to each position: in range and kept, counted from the category start
        counted = in_range_o if max_det >= p.max_dets[-1] else in_range_o & keep_o
        cnt = np.zeros((n_a, n_det + 1), np.int32 if n_det < 2**31 else np.int64)
        np.cumsum(counted, axis=1, out=cnt[:, 1:])
        if max_det >= p.max_dets[-1]:  # every kept detection
            a_, t_, k_, p_, tp_, corr_ = e_a, e_t, e_k, e_pos, e_tp, e_corr
        else:
            sel = np.flatnonzero(e_rank < max_det)
            a_, t_, k_, p_, tp_, corr_ = (x[sel] for x in (e_a, e_t, e_k, e_pos, e_tp, e_corr))
        group = (a_.astype(np.int64) * n_t + t_) * n_k + k_
        g_start = np.r_[True, group[1:] != group[:-1]] if group.size else np.zeros(0, bool)
        corr_c = _seg_cumsum(corr_, g_start)
        tp_c = _seg_cumsum(tp_, g_start)
        # the true positives, in order: the v-th true positive of its group has tp_sum = v
        sel_tp = np.flatnonzero(tp_)
        a_, k_, p_, v, corr_c, group = (x[sel_tp] for x in (a_, k_, p_, tp_c, corr_c, group))
        fp = (cnt[a_, p_ + 1] - cnt[a_, cat_start[k_]]) - corr_c
        pr = v / ((fp + v) + eps)
        pr_env = np.r_[_seg_suffix_max(pr, group), 0.0]  # a sentinel for empty lookups
        tp_score = np.r_[score_o[p_], 0.0]
        ntp = np.bincount(group, minlength=n_a * n_t * n_k).reshape(n_a, n_t, n_k)
        start = (np.cumsum(ntp) - ntp.reshape(-1)).reshape(ntp.shape)
        ntp4 = ntp[..., None]
        inside = (need <= ntp4) & (ntp4 > 0)  # (A, T, K, R)
        at = np.where(inside, start[..., None] + np.maximum(need - 1, 0), pr_env.size - 1)
        prec = pr_env[at]
        sc = np.where(need == 0, s0[None, None, :, None], tp_score[at])
        sc = np.where(nd[None, None, :, None] > 0, sc, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rc = ntp / npig[:, None, :]
        precision[..., mi] = np.where(valid, prec.transpose(1, 3, 2, 0), precision[..., mi])
        scores[..., mi] = np.where(valid, sc.transpose(1, 3, 2, 0), scores[..., mi])
        recall[..., mi] = np.where(valid[0], rc.transpose(1, 2, 0), recall[..., mi])
    return precision, recall, scores


_NEED_CACHE: dict[tuple[int, bytes], np.ndarray] = {}


def _need(n: int, rec_thrs: np.ndarray) -> np.ndarray:
    """Smallest true-positive count v with v / n >= each recall threshold (same floats)."""
    key = (n, rec_thrs.tobytes())
    if key not in _NEED_CACHE:
        if len(_NEED_CACHE) > 4096:
            _NEED_CACHE.clear()
        _NEED_CACHE[key] = np.searchsorted(np.arange(n + 1) / n, rec_thrs, side="left")
    return _NEED_CACHE[key]


def _seg_cumsum(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Inclusive cumulative count restarting where ``starts`` is True. x: (N,) bool."""
    c = np.cumsum(x, dtype=np.int64)
    if x.size == 0:
        return c
    idx = np.flatnonzero(starts)
    base = np.repeat(c[idx] - x[idx], np.diff(np.r_[idx, x.size]))
    return c - base


def _seg_suffix_max(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Maximum of x[i:] within each run of equal ``group`` (sorted); exact values."""
    out = np.empty_like(x)
    if x.size == 0:
        return out
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]).tolist() + [x.size]
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        np.maximum.accumulate(x[s:e][::-1], out=out[s:e][::-1])
    return out


def _summary_spec(p: EvalParams) -> list[tuple[int, float | None, str, int]]:
    md = [p.max_dets[i] if i < len(p.max_dets) else -1 for i in range(3)]
    return [
        (1, None, "all", 100), (1, 0.5, "all", md[2]), (1, 0.75, "all", md[2]),
        (1, None, "small", md[2]), (1, None, "medium", md[2]), (1, None, "large", md[2]),
        (0, None, "all", md[0]), (0, None, "all", md[1]), (0, None, "all", md[2]),
        (0, None, "small", md[2]), (0, None, "medium", md[2]), (0, None, "large", md[2]),
    ]


def summarize(precision: np.ndarray, recall: np.ndarray, p: EvalParams) -> np.ndarray:
    """pycocotools' ``summarize`` (bbox/segm): the 12 stats, -1 where nothing is defined."""
    stats = np.zeros((12,))
    for i, (ap, thr, area, mdets) in enumerate(_summary_spec(p)):
        aind = [j for j, lbl in enumerate(p.area_lbl) if lbl == area]
        mind = [j for j, m in enumerate(p.max_dets) if m == mdets]
        if ap == 1:
            s = precision
            if thr is not None:
                s = s[np.where(thr == p.iou_thrs)[0]]
            s = s[:, :, :, aind, mind]
        else:
            s = recall
            if thr is not None:
                s = s[np.where(thr == p.iou_thrs)[0]]
            s = s[:, :, aind, mind]
        stats[i] = -1 if len(s[s > -1]) == 0 else np.mean(s[s > -1])
    return stats


def evaluate(gt: str | Path | Mapping | GroundTruth,
             results: str | Path | Sequence | Mapping[Any, Any] | Results,
             iou_type: str = "bbox", params: EvalParams | None = None) -> CocoEvaluation:
    """COCO evaluation of ``results`` against ``gt``, identical to pycocotools' COCOeval.

    Args:
        gt: COCO instances (path, parsed dict or a loaded `GroundTruth`).
        results: COCO results (path, list of records, ``{image_id: Detections}`` with
            class_ids holding category ids, or loaded `Results`).
        iou_type: "bbox" or "segm".
        params: thresholds, maxDets and area ranges; pycocotools' defaults when None.
    """
    p = params or EvalParams()
    if not isinstance(gt, GroundTruth):
        gt = load_ground_truth(gt, iou_type)
    if not isinstance(results, Results):
        results = load_results(results, gt, iou_type)
    matching = match(gt, results, p.iou_thrs, np.asarray(p.area_rng), p.max_dets[-1], iou_type)
    precision, recall, scores = accumulate(matching, gt, results, p)
    stats = summarize(precision, recall, p)
    warns = gt.warnings + results.warnings
    for w in warns:
        _warnings.warn(w, stacklevel=2)
    return CocoEvaluation(iou_type, p, stats, precision, recall, scores, gt, results, matching, warns)
