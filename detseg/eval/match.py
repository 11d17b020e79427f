"""Detection-to-ground-truth matching, vectorised, with pycocotools' exact rules.

pycocotools' ``evaluateImg`` walks, for every (image, category, area range, IoU threshold),
the detections in score order and gives each the best still-free ground truth. Here every
(image, category) group advances together: step ``s`` handles the ``s``-th competing
detection of every group at once, for all area ranges and IoU thresholds at once (the
"lanes"). Only the order inside a group matters, so this gives the same matches.

The rule reproduced for one detection, in one lane (see ``evaluateImg``):
- candidates: ground truths with IoU >= min(t, 1 - 1e-10) that are unmatched or crowd;
- if any candidate is not ignored (not crowd, area inside the range), only those count;
- among them the highest IoU wins, and on a tie the *last* one in file order (pycocotools
  replaces its best on ``>=``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detseg.eval.loader import GroundTruth, Results, to_rles


@dataclass
class Matching:
    """Matching of the kept detections, for every area range ``a`` and IoU threshold ``t``.

    Detections are those within the top ``max_det`` of their (image, category), in
    pycocotools' order: grouped by (image, category), score descending, file order on ties.
    Ground truths are sorted by (image, category), file order inside. Matches are stored
    sparsely (few detections match): one entry per (a, t, detection, ground truth).

    Attributes:
        det: (D,) indices into the `Results` arrays.
        det_rank: (D,) position of each detection in its (image, category) group.
        gt: (G,) indices into the `GroundTruth` arrays.
        gt_ignore: (A, G) bool, crowd or area outside range ``a``.
        det_out: (A, D) bool, detection area outside range ``a``.
        m_a, m_t, m_det, m_gt: (E,) the matches: lane indices, index into ``det``, index
            into ``gt`` (int32 unless the arrays are huge).
        by_category: (D,) indices into ``det`` in pycocotools' ``accumulate`` order: category,
            score descending, image, rank (None when not computed).
    """

    det: np.ndarray
    det_rank: np.ndarray
    gt: np.ndarray
    gt_ignore: np.ndarray
    det_out: np.ndarray
    m_a: np.ndarray
    m_t: np.ndarray
    m_det: np.ndarray
    m_gt: np.ndarray
    by_category: np.ndarray | None = None

    def det_match(self, a: int, t: int) -> np.ndarray:
        """(D,) index into ``gt`` of each detection's match in lane (a, t), -1 if none."""
        out = np.full(self.det.shape[0], -1, np.int64)
        sel = (self.m_a == a) & (self.m_t == t)
        out[self.m_det[sel]] = self.m_gt[sel]
        return out

    def gt_matched(self, a: int, t: int) -> np.ndarray:
        """(G,) bool: ground truths matched in lane (a, t)."""
        out = np.zeros(self.gt.shape[0], bool)
        out[self.m_gt[(self.m_a == a) & (self.m_t == t)]] = True
        return out


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of integer keys; radix sort (numpy's for 16-bit keys) when they fit."""
    if keys.size and keys.min() >= -32768 and keys.max() < 32768:
        return np.argsort(keys.astype(np.int16), kind="stable")
    return np.argsort(keys, kind="stable")


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start of each run of equal keys in a sorted array, and each element's rank in its run."""
    n = keys.shape[0]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if n else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, lengths)
    return starts, rank


def _by_category(res: Results) -> np.ndarray:
    """(M,) result indices ordered by (category, score descending, image, file order).

    Stable sorts applied from the last key to the first (radix sorts for the small integer
    keys): one float sort serves both orders that evaluation needs, since a further stable
    sort by image gives the (image, category, score, file order) order of `match`.
    """
    by_img = stable_argsort(res.img)
    by_score = by_img[np.argsort(descending_key(res.score[by_img]), kind="stable")]
    return by_score[stable_argsort(res.cat[by_score])]


def descending_key(x: np.ndarray) -> np.ndarray:
    """int64 keys whose ascending order is the descending order of float64 ``x`` (no NaN).

    Equal floats get equal keys (-0.0 counts as 0.0, as in a float comparison). numpy's
    stable sort is faster on int64 than on float64.
    """
    bits = (x + 0.0).view(np.int64)  # + 0.0 turns -0.0 into 0.0
    # IEEE order as signed integers: flip the magnitude bits of negative values
    key = np.where(bits < 0, bits ^ np.int64(0x7FFFFFFFFFFFFFFF), bits)
    return np.invert(key, out=key)  # ~k = -k - 1: reverses the order without overflow


def _positions_in(det: np.ndarray, order: np.ndarray, n: int) -> np.ndarray:
    """Positions in ``det`` (a subset of range(n)) of the elements of ``order`` it holds."""
    pos = np.full(n, -1, np.int64)
    pos[det] = np.arange(det.shape[0])
    out = pos[order]
    return out[out >= 0]


def box_iou_pairs(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired xywh boxes, with the float operations of pycocotools' ``bbIou``.

    Args:
        d, g: (P, 4) float64 COCO ``[x, y, w, h]`` of the detection and the ground truth.
        crowd: (P,) bool; for a crowd ground truth the union is the detection's area.
    """
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    da = d[:, 2] * d[:, 3]
    ga = g[:, 2] * g[:, 3]
    union = np.where(crowd, da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _mask_iou_blocks(gt: GroundTruth, res: Results, det: np.ndarray, gts: np.ndarray,
                     blocks: list[tuple[int, int, int, int]]) -> np.ndarray:
    """pycocotools' RLE IoU for each (det range, gt range) block, flattened row-major."""
    from pycocotools import mask as mask_utils

    drle = to_rles([res.segmentation[i] for i in det.tolist()], res.img[det], gt.image_hw)
    grle = to_rles([gt.segmentation[i] for i in gts.tolist()], gt.img[gts], gt.image_hw)
    crowd = gt.crowd[gts].astype(np.uint8)
    out = []
    for d0, d1, g0, g1 in blocks:
        ious = mask_utils.iou(drle[d0:d1], grle[g0:g1], list(crowd[g0:g1]))
        out.append(np.asarray(ious, np.float64).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0)


def match(gt: GroundTruth, res: Results, iou_thrs: np.ndarray, area_rng: np.ndarray,
          max_det: int, iou_type: str = "bbox") -> Matching:
    """Match detections to ground truth in every lane (area range x IoU threshold).

    Args:
        iou_thrs: (T,) IoU thresholds.
        area_rng: (A, 2) area ranges ``[lo, hi]`` (both inclusive, as in pycocotools).
        max_det: detections kept per (image, category): the largest maxDets.
    """
    ncat = len(gt.cat_ids)
    # Detections: grouped by (image, category), score descending, file order on ties.
    dkey = res.img * ncat + res.cat
    by_cat = _by_category(res)
    order = by_cat[stable_argsort(res.img[by_cat])]
    _, rank = _groups(dkey[order])
    keep = rank < max_det
    det, det_rank, dkey = order[keep], rank[keep], dkey[order][keep]
    gkey_all = gt.img * ncat + gt.cat
    gts = np.argsort(gkey_all, kind="stable")
    gkey = gkey_all[gts]

    lo, hi = area_rng[:, :1], area_rng[:, 1:]
    garea, darea = gt.area[gts][None], res.area[det][None]
    gt_ignore = gt.crowd[gts][None] | (garea < lo) | (garea > hi)
    det_out = (darea < lo) | (darea > hi)
    n_a = area_rng.shape[0]
    found: list[tuple[np.ndarray, ...]] = []

    # matches are many (lanes x detections): a compact dtype halves their memory
    idx_t = np.int32 if max(det.shape[0], gts.shape[0]) < 2**31 else np.int64

    def result() -> Matching:
        cols = [np.concatenate(c, dtype=idx_t, casting="same_kind") for c in zip(*found, strict=True)]
        cols = cols or [np.zeros(0, idx_t)] * 4
        return Matching(det, det_rank, gts, gt_ignore, det_out, *cols,
                        by_category=_positions_in(det, by_cat, res.score.shape[0]))

    if det.size == 0 or gts.size == 0:
        return result()

    # Every (detection, ground truth) pair of the same (image, category).
    g_lo = np.searchsorted(gkey, dkey, "left")
    g_n = np.searchsorted(gkey, dkey, "right") - g_lo
    pair_det = np.repeat(np.arange(det.shape[0]), g_n)
    if pair_det.size == 0:
        return result()
    first = np.repeat(np.cumsum(g_n) - g_n, g_n)
    pair_gt = g_lo[pair_det] + (np.arange(pair_det.shape[0]) - first)
    if iou_type == "bbox":
        iou = box_iou_pairs(res.bbox[det[pair_det]], gt.bbox[gts[pair_gt]], gt.crowd[gts[pair_gt]])
    else:
        iou = _segm_pair_ious(gt, res, det, gts, dkey, g_lo, g_n)

    thr = np.minimum(iou_thrs, 1 - 1e-10)
    live = iou >= thr.min()
    pair_det, pair_gt, iou = pair_det[live], pair_gt[live], iou[live]
    if pair_det.size == 0:
        return result()
    # Step of each competing detection inside its group (only competing ones change state).
    comp = pair_det[np.r_[True, pair_det[1:] != pair_det[:-1]]]  # pairs are det-major
    _, cstep = _groups(dkey[comp])
    step = np.zeros(det.shape[0], np.int64)
    step[comp] = cstep
    by_step = stable_argsort(step[pair_det])
    pair_det, pair_gt, iou = pair_det[by_step], pair_gt[by_step], iou[by_step]
    pair_step = step[pair_det]
    crowd = gt.crowd[gts]

    # Area range 0 for every group. Another range can only differ where a group's ignore
    # flags differ from range 0's: the flags act only through "prefer regular ground
    # truth", which changes nothing when they are the same, or constant in both ranges.
    found.append(_greedy(pair_det, pair_gt, iou, pair_step, gt_ignore[:1], crowd, thr, 0))
    if n_a > 1:
        g_starts = np.flatnonzero(np.r_[True, gkey[1:] != gkey[:-1]])
        g_group = np.cumsum(np.r_[True, gkey[1:] != gkey[:-1]]) - 1
        same = np.logical_and.reduceat(gt_ignore[1:] == gt_ignore[:1], g_starts, axis=1)
        const = (np.logical_and.reduceat(gt_ignore, g_starts, axis=1)
                 | ~np.logical_or.reduceat(gt_ignore, g_starts, axis=1))
        diverge = (~same & ~(const[1:] & const[:1])).any(axis=0)  # (groups,)
        pair_div = diverge[g_group[pair_gt]]
        sel = np.flatnonzero(pair_div)
        if sel.size:
            found.append(_greedy(pair_det[sel], pair_gt[sel], iou[sel], pair_step[sel],
                                 gt_ignore[1:], crowd, thr, 1))
        # copy range 0's matches of the other groups to every other range
        a0, t0, d0, g0 = found[0]
        keep0 = ~diverge[g_group[g0]]
        for a_other in range(1, n_a):
            found.append((np.full(int(keep0.sum()), a_other, a0.dtype), t0[keep0], d0[keep0], g0[keep0]))
    return result()


def _greedy(pair_det: np.ndarray, pair_gt: np.ndarray, iou: np.ndarray, pair_step: np.ndarray,
            gt_ignore: np.ndarray, crowd: np.ndarray, thr: np.ndarray, a_offset: int
            ) -> tuple[np.ndarray, ...]:
    """pycocotools' greedy matching for the lanes (area ranges in ``gt_ignore`` x ``thr``).

    Pairs are sorted by step (the competing detection's rank in its group), then detection,
    then ground truth in file order. Returns the matches as (a, t, det, gt) arrays.
    """
    n_a, n_t = gt_ignore.shape[0], thr.shape[0]
    bounds = np.searchsorted(pair_step, np.arange(int(pair_step.max()) + 2))
    taken = np.zeros((n_a, n_t, crowd.shape[0]), bool)
    thr3 = thr[None, :, None]
    out = []
    for s in range(bounds.shape[0] - 1):
        sl = slice(bounds[s], bounds[s + 1])
        pd, pg, pi = pair_det[sl], pair_gt[sl], iou[sl]
        new = np.r_[True, pd[1:] != pd[:-1]]
        cand = (~taken[:, :, pg] | crowd[pg]) & (pi >= thr3)
        if new.all():  # one pair per detection (the usual case): every candidate wins
            a_i, t_i, won = np.nonzero(cand)
            taken[a_i, t_i, pg[won]] = True
            out.append((a_i + a_offset, t_i, pd[won], pg[won]))
            continue
        seg = np.flatnonzero(new)
        seg_id = np.cumsum(new) - 1
        cand_reg = cand & ~gt_ignore[:, pg][:, None, :]
        has_reg = np.logical_or.reduceat(cand_reg, seg, axis=2)[:, :, seg_id]
        pref = cand_reg | (cand & ~has_reg)
        val = np.where(pref, pi, -1.0)
        best = np.maximum.reduceat(val, seg, axis=2)[:, :, seg_id]
        pos = np.where(pref & (val == best), np.arange(pd.shape[0]), -1)
        last = np.maximum.reduceat(pos, seg, axis=2)
        a_i, t_i, s_i = np.nonzero(last >= 0)
        won = last[a_i, t_i, s_i]
        taken[a_i, t_i, pg[won]] = True
        out.append((a_i + a_offset, t_i, pd[won], pg[won]))
    cols = [np.concatenate(c) for c in zip(*out, strict=True)] if out else [np.zeros(0, np.int64)] * 4
    return tuple(cols)


def _segm_pair_ious(gt: GroundTruth, res: Results, det: np.ndarray, gts: np.ndarray,
                    dkey: np.ndarray, g_lo: np.ndarray, g_n: np.ndarray) -> np.ndarray:
    """Mask IoU of all same-group pairs, in the pair order of `match` (det-major)."""
    starts, _ = _groups(dkey)
    ends = np.r_[starts[1:], dkey.shape[0]]
    blocks = [(int(d0), int(d1), int(g_lo[d0]), int(g_lo[d0] + g_n[d0]))
              for d0, d1 in zip(starts, ends, strict=True) if g_n[d0] > 0]
    return _mask_iou_blocks(gt, res, det, gts, blocks)
