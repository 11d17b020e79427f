"""LVIS evaluation (federated labels), identical to the official `lvis` package, vectorised.

    from detseg.eval.lvis import evaluate_lvis
    ev = evaluate_lvis("lvis_val.json", "results.json", "segm")
    ev.results["APr"], ev.results["AP"]

LVIS is COCO-format with federated annotation: each image lists the categories verified
absent (``neg_category_ids``) and those whose instances may be incompletely labelled
(``not_exhaustive_category_ids``); each category has a frequency group (``r``are, ``c``ommon,
``f``requent). What `lvis.LVISEval` (0.5.3) does differently from COCO, and this module too:

- at most 300 detections per image, the highest scores over all categories (file order on
  ties), cut before anything else;
- a detection is evaluated only when its category is in the image's ground truth or in its
  negative list (the detector is not judged on what nobody checked);
- an unmatched detection of a not-exhaustively labelled category is ignored, not a false
  positive;
- annotations and detections of area 0 are left out altogether (``LVIS.get_ann_ids`` keeps
  ``0 < area``), after the 300 cut;
- no crowd annotations; one maxDets (300); AP per frequency group (APr, APc, APf).

The matching is COCO's greedy rule, so `detseg.eval.match.match` does it; the accumulation
below follows ``LVISEval.accumulate`` operation for operation (same float64 expressions, same
order of summation in the summary), so the numbers are those of the package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from detseg.errors import InputError
from detseg.eval.loader import GroundTruth, Results, load_ground_truth, load_results
from detseg.eval.match import Matching, descending_key, match, stable_argsort
from detseg.eval.metrics import EvalParams

MAX_DETS = 300
FREQUENCIES = ("r", "c", "f")
AREA_RNG = ((0**2, 1e5**2), (0**2, 32**2), (32**2, 96**2), (96**2, 1e5**2))
AREA_LBL = ("all", "small", "medium", "large")
RESULT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
                "AR@300", "ARs@300", "ARm@300", "ARl@300")


@dataclass
class LvisFields:
    """The federated fields of an LVIS ground truth, as indices into the `GroundTruth` arrays.

    Attributes:
        neg: (I, K) bool, category k verified absent from image i.
        not_exhaustive: (I, K) bool, category k possibly incompletely labelled in image i.
        frequency: (K,) str, "r", "c" or "f" per category (``cat_ids`` order).
    """

    neg: np.ndarray
    not_exhaustive: np.ndarray
    frequency: np.ndarray


@dataclass
class LvisEvaluation:
    """What `evaluate_lvis` computed, in the layout of ``LVISEval.eval``.

    Attributes:
        results: the 13 LVIS numbers by name (`RESULT_NAMES`); -1 where undefined.
        precision: (T, R, K, A) interpolated precision; -1 where a category has no GT.
        recall: (T, K, A) recall at the last detection.
        freq_groups: category indices of the r, c and f groups.
    """

    iou_type: str
    results: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    freq_groups: list[list[int]]
    iou_thrs: np.ndarray
    gt: GroundTruth
    kept: Results
    matching: Matching
    warnings: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """``LVISEval.print_results`` lines, character for character."""
        template = (" {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} catIds={:>3s}]"
                    " = {:0.3f}")
        lines = []
        for key, value in self.results.items():
            title, kind = ("Average Precision", "(AP)") if "AP" in key else ("Average Recall", "(AR)")
            if len(key) > 2 and key[2].isdigit():
                iou = f"{float(key[2:]) / 100:0.2f}"
            else:
                iou = f"{self.iou_thrs[0]:0.2f}:{self.iou_thrs[-1]:0.2f}"
            group = key[2] if len(key) > 2 and key[2] in FREQUENCIES else "all"
            area = key[2] if len(key) > 2 and key[2] in "sml" else "all"
            lines.append(template.format(title, kind, iou, area, MAX_DETS, group, value))
        return lines


# ---- reading ---------------------------------------------------------------------------------
def _read(gt: str | Path | Mapping) -> tuple[str, Mapping]:
    if isinstance(gt, (str, Path)):
        from detseg.data.coco import read_json

        return str(gt), read_json(gt, "LVIS ground-truth file")
    return "<memory>", gt


def lvis_fields(data: Mapping, gt: GroundTruth, source: str) -> LvisFields:
    """Check and index the federated fields of a parsed LVIS file against its `GroundTruth`."""
    n_img, n_cat = len(gt.image_ids), len(gt.cat_ids)
    img_lut = {v: i for i, v in enumerate(gt.image_ids.tolist())}
    cat_lut = {v: k for k, v in enumerate(gt.cat_ids.tolist())}
    neg = np.zeros((n_img, n_cat), bool)
    nel = np.zeros((n_img, n_cat), bool)
    keys = gt.cat_ids
    for key, table in (("neg_category_ids", neg), ("not_exhaustive_category_ids", nel)):
        lists = [im.get(key) for im in data["images"]]
        for i, ids in enumerate(lists):
            if not isinstance(ids, list):
                raise InputError(f"{source}: images[{i}]: field '{key}': expected a list of "
                                 f"category ids (LVIS format), found {ids!r:.80}")
        flat = [v for ids in lists for v in ids]
        rows = np.repeat([img_lut[im["id"]] for im in data["images"]],
                         [len(ids) for ids in lists]).astype(np.int64)
        arr = np.array(flat) if flat else np.zeros(0, np.int64)
        k = np.minimum(np.searchsorted(keys, arr), max(n_cat - 1, 0)) if arr.dtype.kind in "iu" else None
        if k is None or (n_cat and not (keys[k] == arr).all()) or (not n_cat and flat):
            for i, ids in enumerate(lists):  # name the first bad id
                for v in ids:
                    if isinstance(v, bool) or not isinstance(v, int) or v not in cat_lut:
                        raise InputError(f"{source}: images[{i}]: field '{key}': unknown category "
                                         f"id {v!r:.40} (not in 'categories')")
        if flat:
            table[rows, k] = True
    freq = np.empty(n_cat, dtype="<U1")
    for j, cat in enumerate(data["categories"]):
        f = cat.get("frequency")
        if f not in FREQUENCIES:
            raise InputError(f"{source}: categories[{j}]: field 'frequency': expected one of "
                             f"'r', 'c', 'f', found {f!r:.40}")
        freq[cat_lut[cat["id"]]] = f
    return LvisFields(neg, nel, freq)


def _subset(res: Results, keep: np.ndarray) -> Results:
    """The results at the sorted positions ``keep`` (file order kept: it decides ties)."""
    segs = None if res.segmentation is None else [res.segmentation[i] for i in keep.tolist()]
    return replace(res, img=res.img[keep], cat=res.cat[keep], bbox=res.bbox[keep],
                   area=res.area[keep], score=res.score[keep], segmentation=segs)


def _subset_gt(gt: GroundTruth, keep: np.ndarray) -> GroundTruth:
    """The annotations at the sorted positions ``keep`` (images and categories unchanged)."""
    if keep.shape[0] == len(gt):
        return gt
    segs = [gt.segmentation[i] for i in keep.tolist()]
    return replace(gt, img=gt.img[keep], cat=gt.cat[keep], ids=gt.ids[keep], bbox=gt.bbox[keep],
                   area=gt.area[keep], crowd=gt.crowd[keep], segmentation=segs)


def top_per_image(res: Results, max_dets: int = MAX_DETS) -> np.ndarray:
    """Sorted positions of the ``max_dets`` best-scored results of each image (ties: file order).

    ``LVISResults.limit_dets_per_image``: a stable sort by score, descending, per image.
    """
    by_score = np.argsort(descending_key(res.score), kind="stable")
    order = by_score[stable_argsort(res.img[by_score])]
    img = res.img[order]
    starts = np.flatnonzero(np.r_[True, img[1:] != img[:-1]]) if img.size else np.zeros(0, int)
    rank = np.arange(img.size) - np.repeat(starts, np.diff(np.r_[starts, img.size]))
    return np.sort(order[rank < max_dets])


# ---- evaluation ------------------------------------------------------------------------------
def evaluate_lvis(gt: str | Path | Mapping, results: str | Path | Sequence | Mapping[Any, Any],
                  iou_type: str = "bbox") -> LvisEvaluation:
    """LVIS evaluation of ``results`` against an LVIS ground truth, identical to `lvis.LVISEval`.

    Args:
        gt: LVIS instances (path or parsed dict): COCO format plus ``neg_category_ids`` and
            ``not_exhaustive_category_ids`` per image and ``frequency`` per category.
        results: COCO results (path, list of records, or ``{image_id: Detections}``).
        iou_type: "bbox" or "segm".
    """
    source, data = _read(gt)
    try:
        g = load_ground_truth(data, iou_type)
    except InputError as exc:  # name the file, not the parsed object it was read into
        raise InputError(str(exc).replace("<memory>", source, 1)) from None
    g = replace(g, source=source)
    fields = lvis_fields(data, g, source)
    g = replace(g, crowd=np.zeros_like(g.crowd))  # LVISEval treats every annotation as regular
    res = load_results(results, g, iou_type)
    res = _subset(res, top_per_image(res))
    # LVIS.get_ann_ids keeps 0 < area < inf, for the ground truth and the (cut) results alike
    g = _subset_gt(g, np.flatnonzero(g.area > 0))
    res = _subset(res, np.flatnonzero(res.area > 0))
    n_cat = len(g.cat_ids)
    positive = np.zeros_like(fields.neg)
    positive[g.img, g.cat] = True
    judged = (positive | fields.neg)[res.img, res.cat]
    kept = _subset(res, np.flatnonzero(judged))

    defaults = EvalParams()  # COCO's and LVIS's thresholds are the same linspace expressions
    iou_thrs, rec_thrs = defaults.iou_thrs, defaults.rec_thrs
    area_rng = np.asarray(AREA_RNG, np.float64)
    m = match(g, kept, iou_thrs, area_rng, max(len(kept), 1), iou_type)
    precision, recall = _accumulate(m, g, kept, fields, iou_thrs, rec_thrs, n_cat)
    groups = [[k for k in range(n_cat) if fields.frequency[k] == f] for f in FREQUENCIES]
    values = _summarize(precision, recall, iou_thrs, groups)
    return LvisEvaluation(iou_type, values, precision, recall, groups, iou_thrs, g, kept, m,
                          g.warnings + res.warnings)


def _accumulate(m: Matching, gt: GroundTruth, res: Results, fields: LvisFields,
                iou_thrs: np.ndarray, rec_thrs: np.ndarray, n_cat: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``LVISEval.accumulate``: (precision (T, R, K, A), recall (T, K, A))."""
    n_t, n_r, n_a = iou_thrs.shape[0], rec_thrs.shape[0], m.gt_ignore.shape[0]
    precision = -np.ones((n_t, n_r, n_cat, n_a))
    recall = -np.ones((n_t, n_cat, n_a))
    # Detections in accumulate order: category, score descending, image, rank in the image.
    order = m.by_category
    det = m.det[order]
    d_cat = res.cat[det]
    nel = fields.not_exhaustive[res.img[det], d_cat]  # (D,)
    pos = np.empty(m.det.shape[0], np.int64)
    pos[order] = np.arange(order.shape[0])
    # hit[a, t, j]: the j-th detection (in `order`) matched a ground truth in lane (a, t).
    # Like the package, a match to an annotation with id 0 is no hit (it stores the matched
    # id and tests its truth), though it still takes the ground truth and its ignore flag.
    hit = np.zeros((n_a, n_t, det.shape[0]), bool)
    match_ignored = np.zeros_like(hit)
    if m.m_det.size:
        j = pos[m.m_det]
        hit[m.m_a, m.m_t, j] = gt.ids[m.gt][m.m_gt] != 0
        match_ignored[m.m_a, m.m_t, j] = m.gt_ignore[m.m_a, m.m_gt]
    out = m.det_out[:, order][:, None, :] | nel[None, None, :]  # (A, 1, D)
    ignored = match_ignored | (~hit & out)
    tps = hit & ~ignored
    fps = ~hit & ~ignored

    g_cat = gt.cat[m.gt]
    n_gt = np.zeros((n_a, n_cat), np.int64)  # ground truths not ignored, per area and category
    for a in range(n_a):
        n_gt[a] = np.bincount(g_cat[~m.gt_ignore[a]], minlength=n_cat)
    starts = np.searchsorted(d_cat, np.arange(n_cat), "left")
    ends = np.searchsorted(d_cat, np.arange(n_cat), "right")
    # One category at a time, every area range and IoU threshold at once: the package's
    # per-(category, area, threshold) loop, with the same float64 operations element-wise.
    for k in np.flatnonzero((n_gt > 0).any(axis=0)):
        s, e = int(starts[k]), int(ends[k])
        areas = np.flatnonzero(n_gt[:, k] > 0)
        num_gt = n_gt[areas, k].astype(np.float64)[:, None, None]
        tp = np.cumsum(tps[areas, :, s:e], axis=2).astype(np.float64)  # (A', T, n)
        fp = np.cumsum(fps[areas, :, s:e], axis=2).astype(np.float64)
        n = e - s
        rc = tp / num_gt
        recall[:, k, areas] = (rc[:, :, -1] if n else np.zeros((areas.size, n_t))).T
        if n == 0:
            precision[:, :, k, areas] = 0.0
            continue
        pr = tp / (fp + tp + np.spacing(1))
        # the package's right-to-left "max to the right" loop is a suffix maximum
        pr = np.maximum.accumulate(pr[:, :, ::-1], axis=2)[:, :, ::-1]
        idx = _first_at_least(rc, rec_thrs)  # (A', T, R): np.searchsorted(rc, rec_thrs, "left")
        vals = np.take_along_axis(pr, np.minimum(idx, n - 1), axis=2)
        vals[idx >= n] = 0.0  # recall thresholds never reached
        precision[:, :, k, areas] = vals.transpose(1, 2, 0)
    return precision, recall


def _first_at_least(rc: np.ndarray, thrs: np.ndarray) -> np.ndarray:
    """``np.searchsorted(row, thrs, "left")`` for every row of ``rc`` (..., n), rows sorted.

    For a non-decreasing row that is the number of its values below each threshold.
    """
    n = rc.shape[-1]
    if rc.size * thrs.size <= 4_000_000:
        return (rc[..., None] < thrs).sum(axis=-2)
    rows = rc.reshape(-1, n)
    out = np.stack([np.searchsorted(row, thrs, side="left") for row in rows])
    return out.reshape(*rc.shape[:-1], thrs.size)


def _summarize(precision: np.ndarray, recall: np.ndarray, iou_thrs: np.ndarray,
               groups: list[list[int]]) -> dict[str, float]:
    """``LVISEval.summarize`` with its exact indexing (the mean's order of summation)."""
    def one(kind: str, iou_thr: float | None = None, area: str = "all",
            group: int | None = None) -> float:
        aidx = [i for i, lbl in enumerate(AREA_LBL) if lbl == area]
        s = precision if kind == "ap" else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == iou_thrs)[0]]
        if kind == "ap":
            s = s[:, :, groups[group], aidx] if group is not None else s[:, :, :, aidx]
        else:
            s = s[:, :, aidx]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    out = {
        "AP": one("ap"), "AP50": one("ap", 0.50), "AP75": one("ap", 0.75),
        "APs": one("ap", area="small"), "APm": one("ap", area="medium"),
        "APl": one("ap", area="large"),
        "APr": one("ap", group=0), "APc": one("ap", group=1), "APf": one("ap", group=2),
        f"AR@{MAX_DETS}": one("ar"),
    }
    for area in ("small", "medium", "large"):
        out[f"AR{area[0]}@{MAX_DETS}"] = one("ar", area=area)
    return out
