"""Two result files on the same ground truth: is B really better than A, or is it noise?

The 12 stats of each come from the exact evaluation. The uncertainty comes from a paired
bootstrap over images: both models are scored on the same resampled image sets (an image
drawn twice counts twice), and the percentile interval of AP(B) - AP(A) is reported. An
interval that excludes 0 means the difference is unlikely to come from which images happen
to be in the set. Resampled APs use COCO's 101-point interpolation on weighted counts (ties
in score are not ordered as pycocotools does; this moves resampled APs by ~1e-4 at most and
does not bias the difference).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detseg.errors import InputError
from detseg.eval.analysis import _area_all
from detseg.eval.loader import load_ground_truth
from detseg.eval.metrics import STAT_NAMES, CocoEvaluation, evaluate


@dataclass
class _Flat:
    """One evaluation's detections flattened for weighted AP: sorted by (category, -score)."""

    cat: np.ndarray  # (D,)
    img: np.ndarray  # (D,)
    tp: np.ndarray  # (T, D) float
    fp: np.ndarray  # (T, D) float
    gt_cat: np.ndarray  # (G,) non-ignored ground truths
    gt_img: np.ndarray
    t50: int | None


def _flatten(ev: CocoEvaluation) -> _Flat:
    m, a = ev.matching, _area_all(ev)
    n_t = len(ev.params.iou_thrs)
    tp = np.zeros((n_t, m.det.shape[0]), bool)
    fp = np.zeros_like(tp)
    for t in range(n_t):
        match = m.det_match(a, t)
        matched = match >= 0
        safe = np.where(matched, match, 0)
        if m.gt.size:
            hit = matched & (ev.gt.ids[m.gt[safe]] != 0)
            ign = (matched & m.gt_ignore[a, safe]) | (~hit & m.det_out[a])
        else:
            hit, ign = matched, m.det_out[a]
        tp[t], fp[t] = hit & ~ign, ~hit & ~ign
    cat, img, score = ev.results.cat[m.det], ev.results.img[m.det], ev.results.score[m.det]
    o = np.lexsort((-score, cat))
    keep_gt = ~m.gt_ignore[a]
    t50 = np.flatnonzero(np.isclose(ev.params.iou_thrs, 0.5))
    return _Flat(cat[o], img[o], tp[:, o].astype(float), fp[:, o].astype(float),
                 ev.gt.cat[m.gt][keep_gt], ev.gt.img[m.gt][keep_gt], int(t50[0]) if t50.size else None)


def _weighted_ap(f: _Flat, w: np.ndarray, n_k: int, rec_thrs: np.ndarray) -> tuple[float, float]:
    """(AP averaged over IoU thresholds, AP50) with image weights ``w`` (I,)."""
    wd = w[f.img]
    npig = np.bincount(f.gt_cat, weights=w[f.gt_img], minlength=n_k)
    n_t, n_d = f.tp.shape
    valid_k = npig > 0
    if not valid_k.any():
        return float("nan"), float("nan")
    if n_d == 0:
        return 0.0, 0.0
    tp = np.cumsum(f.tp * wd, axis=1)
    fp = np.cumsum(f.fp * wd, axis=1)
    starts = np.searchsorted(f.cat, np.arange(n_k + 1))
    first = starts[f.cat]
    base_tp = np.where(first > 0, tp[:, np.maximum(first - 1, 0)], 0)
    base_fp = np.where(first > 0, fp[:, np.maximum(first - 1, 0)], 0)
    tp, fp = tp - base_tp, fp - base_fp
    with np.errstate(divide="ignore", invalid="ignore"):
        rc = np.where(npig[f.cat] > 0, tp / npig[f.cat], 0)
        pr = np.where(tp + fp > 0, tp / (tp + fp), 0)
    # suffix max within each category: offset categories so that the running max resets
    off = 2.0 * (n_k - f.cat)
    env = np.maximum.accumulate((pr + off)[:, ::-1], axis=1)[:, ::-1] - off
    # first detection of category k whose recall reaches each threshold
    keys = rc + 2.0 * f.cat
    targets = (2.0 * np.arange(n_k)[:, None] + rec_thrs[None, :]).ravel()
    ap_t = np.zeros(n_t)
    for t in range(n_t):
        inds = np.searchsorted(keys[t], targets, side="left").reshape(n_k, -1)
        inside = inds < starts[1:, None]
        prec = np.where(inside, env[t, np.minimum(inds, n_d - 1)], 0.0)
        ap_t[t] = prec[valid_k].mean()
    return float(ap_t.mean()), float(ap_t[f.t50]) if f.t50 is not None else float("nan")


def compare(gt: str | Path, a: str | Path, b: str | Path, iou_type: str = "bbox",
            n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Stats of A and B, B - A, and paired-bootstrap intervals of the AP and AP50 difference."""
    if n_boot < 10:
        raise InputError(f"--bootstrap: expected at least 10 resamples, found {n_boot}")
    if not 0.5 < confidence < 1:
        raise InputError(f"--confidence: expected a value in (0.5, 1), found {confidence}")
    g = load_ground_truth(gt, iou_type)
    ev_a, ev_b = evaluate(g, a, iou_type), evaluate(g, b, iou_type)
    fa, fb = _flatten(ev_a), _flatten(ev_b)
    n_i, n_k = g.image_ids.shape[0], g.cat_ids.shape[0]
    rec = ev_a.params.rec_thrs
    rng = np.random.default_rng(seed)
    diffs = np.zeros((n_boot, 2))
    for i in range(n_boot):
        w = np.bincount(rng.integers(0, n_i, n_i), minlength=n_i).astype(float)
        ap_a, ap50_a = _weighted_ap(fa, w, n_k, rec)
        ap_b, ap50_b = _weighted_ap(fb, w, n_k, rec)
        diffs[i] = (ap_b - ap_a, ap50_b - ap50_a)
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    boot = {}
    for j, name in enumerate(("AP", "AP50")):
        d = diffs[:, j][np.isfinite(diffs[:, j])]
        point = float(ev_b.stats[STAT_NAMES.index(name)] - ev_a.stats[STAT_NAMES.index(name)])
        if d.size == 0:
            boot[name] = {"diff": point, "ci_low": None, "ci_high": None, "p_b_not_better": None}
            continue
        lo, hi = np.quantile(d, [lo_q, hi_q])
        boot[name] = {"diff": point, "ci_low": float(lo), "ci_high": float(hi),
                      "p_b_not_better": float((d <= 0).mean())}
    ci = boot["AP"]
    if ci["ci_low"] is None:
        verdict = "no ground truth to compare on"
    elif ci["ci_low"] > 0:
        verdict = "B is better than A (the interval excludes 0)"
    elif ci["ci_high"] < 0:
        verdict = "B is worse than A (the interval excludes 0)"
    else:
        verdict = "no significant difference (the interval contains 0): it may be noise"
    return {
        "ground_truth": g.source, "iou_type": iou_type, "a": str(a), "b": str(b),
        "n_images": int(n_i), "stat_names": list(STAT_NAMES),
        "stats_a": ev_a.stats.tolist(), "stats_b": ev_b.stats.tolist(),
        "diff": (ev_b.stats - ev_a.stats).tolist(),
        "bootstrap": {"resamples": n_boot, "seed": seed, "confidence": confidence, **boot},
        "verdict": verdict,
        "warnings": ev_a.warnings + ev_b.warnings,
    }


def _rows(result: dict) -> list[list[str]]:
    return [[n, f"{100 * sa:.2f}", f"{100 * sb:.2f}", f"{100 * (sb - sa):+.2f}"]
            for n, sa, sb in zip(result["stat_names"], result["stats_a"], result["stats_b"], strict=True)]


def _ci_line(result: dict, name: str) -> str:
    bt = result["bootstrap"]
    c = bt[name]
    if c["ci_low"] is None:
        return f"{name}: B - A = {100 * c['diff']:+.2f} (no interval)"
    return (f"{name}: B - A = {100 * c['diff']:+.2f} points, {100 * bt['confidence']:.0f}% CI "
            f"[{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}] "
            f"(paired bootstrap over {result['n_images']} images, {bt['resamples']} resamples; "
            f"share of resamples with B <= A: {c['p_b_not_better']:.3f})")


def compare_markdown(result: dict) -> str:
    from detseg.eval.tables import markdown_table

    return "\n".join([
        f"# detseg eval compare ({result['iou_type']})", "",
        f"- A: `{result['a']}`", f"- B: `{result['b']}`",
        f"- ground truth: `{result['ground_truth']}` ({result['n_images']} images)", "",
        markdown_table(["metric", "A", "B", "B - A"], _rows(result)), "",
        "- " + _ci_line(result, "AP"), "- " + _ci_line(result, "AP50"), "",
        f"**{result['verdict']}**", ""])


def print_compare(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"A = {result['a']}   B = {result['b']}   (values in %)")
    for h in ("metric", "A", "B", "B - A"):
        table.add_column(h, justify="left" if h == "metric" else "right")
    for r in _rows(result):
        table.add_row(*r)
    console.print(table)
    console.print(_ci_line(result, "AP"), highlight=False, markup=False)
    console.print(_ci_line(result, "AP50"), highlight=False, markup=False)
    console.print(result["verdict"], style="bold", highlight=False, markup=False)
    for w in result["warnings"]:
        console.print(f"warning: {w}", style="yellow", highlight=False, markup=False)
