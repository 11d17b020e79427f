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
from detseg.eval.loader import GroundTruth, Results, load_ground_truth, load_results
from detseg.eval.match import Matching, match, stable_argsort

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
    # pycocotools concatenates images in id order, then stable-sorts by score: the order
    # (category, -score, image, rank), which `match` computed already
    cat = res.cat[m.det]
    order = m.by_category if m.by_category is not None else _by_category_positions(m, res)
    idx_t = np.int32 if n_det < 2**31 else np.int64  # compact dtypes: less memory traffic
    pos = np.empty(n_det, idx_t)
    pos[order] = np.arange(n_det, dtype=idx_t)
    cat_o, rank_o, score_o = cat[order], m.det_rank[order].astype(idx_t), res.score[m.det][order]
    cat_start = np.searchsorted(cat_o, np.arange(n_k + 1))
    gcat = gt.cat[m.gt]
    npig = np.stack([np.bincount(gcat[~m.gt_ignore[a]], minlength=n_k) for a in range(n_a)])

    e = _entries(m, gt, pos, cat_o, rank_o, n_t, n_k)
    in_range_o = ~m.det_out[:, order]  # (A, D) in score order
    need = _need(npig, p.rec_thrs)[:, None]  # (A, 1, K, R) true positives per recall threshold
    valid = (npig > 0).T[None, None]  # (1, 1, K, A) in precision's layout
    n_g = n_a * n_t * n_k
    g_a, _, g_k = np.unravel_index(np.arange(n_g), (n_a, n_t, n_k))
    g_cnt0 = g_a * (n_det + 1) + cat_start[g_k]  # (G,) flat index of each group's count base
    cnt = np.zeros((n_a, n_det + 1), np.int32 if n_det < 2**31 else np.int64)
    for mi, max_det in enumerate(p.max_dets):
        keep_o = rank_o < max_det
        kept = np.r_[0, np.cumsum(keep_o)]
        nd = np.diff(kept[cat_start])  # (K,) detections per category
        first = np.searchsorted(kept[1:], kept[cat_start[:-1]] + 1)
        s0 = np.where(nd > 0, score_o[np.minimum(first, max(n_det - 1, 0))] if n_det else 0.0, 0.0)
        # fp candidates up to each position: in range and kept, counted from the category start
        counted = in_range_o if max_det >= p.max_dets[-1] else in_range_o & keep_o
        np.cumsum(counted, axis=1, out=cnt[:, 1:])
        use = None if max_det >= p.max_dets[-1] else e.rank < max_det
        group, pr, tp_pos = _tp_curve(e, use, cnt.reshape(-1), g_cnt0)
        ntp = np.bincount(group, minlength=n_g).reshape(n_a, n_t, n_k)
        start = (np.cumsum(ntp) - ntp.reshape(-1)).reshape(ntp.shape)
        ntp4 = ntp[..., None]
        inside = (need <= ntp4) & (ntp4 > 0)  # (A, T, K, R)
        # the true positive reaching each recall threshold (a prefix of R in each group)
        at = np.where(inside, start[..., None] + np.maximum(need - 1, 0), 0)
        prec = _suffix_max_at(pr, at, inside, start + ntp)
        tp_score = np.where(inside, score_o[tp_pos[at]], 0.0) if tp_pos.size else np.zeros(at.shape)
        sc = np.where(need == 0, s0[None, None, :, None], tp_score)
        sc = np.where(nd[None, None, :, None] > 0, sc, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rc = ntp / npig[:, None, :]
        precision[..., mi] = np.where(valid, prec.transpose(1, 3, 2, 0), precision[..., mi])
        scores[..., mi] = np.where(valid, sc.transpose(1, 3, 2, 0), scores[..., mi])
        recall[..., mi] = np.where(valid[0], rc.transpose(1, 2, 0), recall[..., mi])
    return precision, recall, scores


@dataclass
class _Entries:
    """Match entries sorted by group (area range, IoU threshold, category), then score.

    Attributes (all (E,)): group id ``(a * T + t) * K + k``; position in the category's score
    order; rank in the detection's (image, category); flat index into the (A, D + 1) running
    count of in-range detections just after the entry; true-positive flag; "in range and not a
    false positive" flag. ``group_first``: (G + 1,) first entry of each group.
    """

    group: np.ndarray
    pos: np.ndarray
    rank: np.ndarray
    cnt_idx: np.ndarray
    tp: np.ndarray
    corr: np.ndarray
    group_first: np.ndarray


def _entries(m: Matching, gt: GroundTruth, pos: np.ndarray, cat_o: np.ndarray,
             rank_o: np.ndarray, n_t: int, n_k: int) -> _Entries:
    """The matches of ``m`` as `_Entries`, in compact dtypes (less memory to touch).

    Args:
        pos: (D,) position of each ``m.det`` in score order; cat_o, rank_o: (D,) category
            and rank in score order.
    """
    n_a, n_det = m.gt_ignore.shape[0], pos.shape[0]
    e_a = m.m_a.astype(np.int32, copy=False)
    lane = e_a * n_t + m.m_t.astype(np.int32, copy=False)
    e_pos = pos[m.m_det]
    hit = (gt.ids[m.gt] != 0)[m.m_gt]  # pycocotools stores the matched id and tests its truth
    gig = m.gt_ignore[e_a, m.m_gt]
    out = m.det_out[e_a, m.m_det]
    tp = hit & ~gig
    # In range and not a false positive (pycocotools: ignored = matched to an ignored GT,
    # or not hit and out of range).
    corr = ~out & (hit | gig)
    cnt_t = np.int32 if n_a * (n_det + 1) < 2**31 else np.int64
    cnt_idx = e_a.astype(cnt_t) * (n_det + 1) + e_pos + 1
    group = lane * n_k + cat_o[e_pos].astype(np.int32)
    srt = _lane_position_order(lane, e_pos, n_a * n_t, n_det)
    group, e_pos, cnt_idx, tp, corr = (x[srt] for x in (group, e_pos, cnt_idx, tp, corr))
    first = np.searchsorted(group, np.arange(n_a * n_t * n_k + 1))
    return _Entries(group, e_pos, rank_o[e_pos], cnt_idx, tp, corr, first)


def _tp_curve(e: _Entries, use: np.ndarray | None, cnt: np.ndarray, g_cnt0: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The true positives of the used entries, with their precision ``tp / (fp + tp + eps)``.

    Args:
        use: (E,) bool entries within maxDets, or None for all.
        cnt: (A * (D + 1),) running count of counted (in range, kept) detections.
        g_cnt0: (G,) index into ``cnt`` of each group's count before its category starts.

    Returns:
        (N,) group, precision and score-order position of each true positive, sorted by
        group then score: the v-th true positive of its group has tp = v.
    """
    tp, corr = (e.tp, e.corr) if use is None else (e.tp & use, e.corr & use)
    idx_t = np.int32 if e.group.shape[0] < 2**31 else np.int64
    corr_sum = np.cumsum(corr, dtype=idx_t)  # over all groups; the base is removed below
    f = e.group_first[:-1]
    corr_base = np.where(f > 0, corr_sum[np.maximum(f - 1, 0)], 0) if corr_sum.size else np.zeros_like(f)
    group = e.group[tp]
    n_tp = np.bincount(group, minlength=f.shape[0])
    v = np.arange(1, group.shape[0] + 1, dtype=idx_t)
    v -= (np.cumsum(n_tp) - n_tp).astype(idx_t)[group]
    # false positives: counted detections up to the entry, less the counted ones that matched
    fp = cnt[e.cnt_idx[tp]]
    fp -= (cnt[g_cnt0] - corr_base).astype(cnt.dtype)[group]
    fp -= corr_sum[tp]
    # pycocotools' float64 expression, computed in place: tp / ((fp + tp) + eps)
    fp += v
    pr = fp.astype(np.float64)
    pr += np.spacing(1)
    np.divide(v, pr, out=pr)
    return group, pr, e.pos[tp]


def _lane_position_order(lane: np.ndarray, pos: np.ndarray, n_lanes: int, n_det: int
                         ) -> np.ndarray:
    """Permutation sorting the match entries by (lane, position), without a sort.

    A detection matches at most once per lane, so the (lane, position) pairs are unique.
    Few detections match: ranking the matched positions densely makes the keys
    ``lane * n_matched + rank`` span a small range, and placing each entry at its key
    orders them (a counting sort). Falls back to ``lexsort`` when that range would be
    large compared with the number of entries, or if a pair repeats.

    Args:
        lane, pos: (E,) integer lane index and position in score order of each entry.
    """
    n = lane.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    matched = np.zeros(n_det, bool)
    matched[pos] = True
    n_u = int(np.count_nonzero(matched))
    if n_lanes * n_u <= 4 * n + 1024:
        idx_t = np.int32 if n_lanes * n_u < 2**31 else np.int64
        dense = np.cumsum(matched, dtype=idx_t)  # 1 + rank of each matched position
        key = lane.astype(idx_t) * n_u
        key += dense[pos]
        key -= 1
        slot = np.full(n_lanes * n_u, -1, idx_t)
        slot[key] = np.arange(n, dtype=idx_t)
        srt = slot[slot >= 0]
        if srt.shape[0] == n:
            return srt
    return np.lexsort((pos, lane))


def _by_category_positions(m: Matching, res: Results) -> np.ndarray:
    """(D,) positions in ``m.det`` ordered by (category, -score, image, rank)."""
    order = np.argsort(-res.score[m.det], kind="stable")  # m.det is in (image, category, rank) order
    return order[stable_argsort(res.cat[m.det][order])]


def _need(npig: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """Smallest true-positive count v with ``v / n >= thr``, for each count n and threshold.

    The same floats as pycocotools (``v / n`` in float64): ``ceil(thr * n)`` is off by at
    most one, which one comparison each way corrects. 0 where n is 0.

    Args:
        npig: (...) int counts n of ground truth; rec_thrs: (R,). Returns (..., R) int64.
    """
    n = npig[..., None].astype(np.float64)
    v = np.clip(np.ceil(rec_thrs * n), 0, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(v / n < rec_thrs, v + 1, v)
        v = np.where((v >= 1) & ((v - 1) / n >= rec_thrs), v - 1, v)
    return np.where(n > 0, v, 0).astype(np.int64)


def _suffix_max_at(x: np.ndarray, at: np.ndarray, inside: np.ndarray, end: np.ndarray
                   ) -> np.ndarray:
    """``x[at:end].max()`` for each lookup (exact), 0.0 where not ``inside``.

    The interpolated precision: the precision curve made non-increasing from the right,
    read at the true positive that reaches each recall threshold.

    Args:
        x: (N,) values, in runs (groups) ``[end - n, end)`` that follow one another.
        at: (..., R) lookup positions, non-decreasing along R and inside their group.
        inside: (..., R) bool, a prefix along R: where the lookup exists.
        end: (...) end of each group's run.
    """
    n_r = at.shape[-1]
    at2, in2, end2 = at.reshape(-1, n_r), inside.reshape(-1, n_r), end.reshape(-1)
    # Break each group's run at its lookups and at its end; the maximum of each piece,
    # then the running maximum of the pieces from the right. A repeated break gives a
    # one-element piece inside the same suffix, which changes nothing.
    cols = np.concatenate([at2, end2[:, None]], axis=1)
    has = np.concatenate([in2, in2.any(axis=1, keepdims=True)], axis=1)
    breaks = cols[has]  # row-major: ascending
    pieces = np.full(cols.shape, -np.inf)
    if breaks.size:
        # the last break can be the end of x: its piece is empty
        last_end = breaks[-1] == x.shape[0]
        vals = np.maximum.reduceat(x, breaks[:-1] if last_end else breaks)
        pieces[has] = np.append(vals, -np.inf) if last_end else vals
    pieces[:, n_r] = -np.inf  # the piece after a run's end belongs to the next run
    out = np.maximum.accumulate(pieces[:, n_r - 1::-1], axis=1)[:, ::-1]
    return np.where(in2, out, 0.0).reshape(at.shape)


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
