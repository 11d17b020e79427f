"""PNG plots of an evaluation (matplotlib, Agg backend): PR curves, F1 vs confidence,
confusion matrix, TIDE-style error bars. Each function writes one file and returns its path.

Per-class curves share one axes (thin lines, one per class) with the overall curve in bold:
a figure per class would cost seconds on 80 classes and nobody reads 80 files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detseg.eval.metrics import CocoEvaluation


def figure(figsize: tuple[float, float], **kw):
    """A matplotlib Figure drawn by Agg, made without pyplot: no global backend is set, no
    figure manager keeps it alive, and pyplot's import (~0.4 s) is not paid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kw)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    """Write the PNG in one draw: every figure sets its own margins (``subplots_adjust``),
    as ``bbox_inches="tight"`` would draw the figure twice (a third of the plotting time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def _lines(ax, x: np.ndarray, ys: np.ndarray, color: str = "0.6") -> None:
    from matplotlib.collections import LineCollection

    segs = [np.column_stack([x, y]) for y in ys if np.isfinite(y).all()]
    if segs:
        ax.add_collection(LineCollection(segs, colors=color, linewidths=0.6, alpha=0.6))


def pr_curves(ev: CocoEvaluation, path: Path) -> Path:
    """Precision-recall (101-point interpolated, area all, largest maxDets).

    Left: overall (mean over classes) at IoU 0.5, 0.75 and averaged over IoU thresholds.
    Right: every class at IoU 0.5 (or the first threshold) in grey, the mean in bold.
    """
    p = ev.params
    a = list(p.area_lbl).index("all") if "all" in p.area_lbl else 0
    prec = ev.precision[:, :, :, a, -1]  # (T, R, K)
    rec = p.rec_thrs

    def mean_k(x: np.ndarray) -> np.ndarray:
        v = np.where(x > -1, x, np.nan)
        with np.errstate(all="ignore"):
            return np.nanmean(v, axis=-1) if np.isfinite(v).any() else np.zeros(x.shape[:-1])

    fig = figure((11, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.11, top=0.93, wspace=0.16)
    for thr, style in ((0.5, "-"), (0.75, "--")):
        hit = np.flatnonzero(np.isclose(p.iou_thrs, thr))
        if hit.size:
            ax1.plot(rec, mean_k(prec[hit[0]]), style, label=f"IoU={thr:.2f}")
    ax1.plot(rec, mean_k(prec.transpose(1, 2, 0).reshape(len(rec), -1)), ":", label="IoU=.50:.95 mean")
    t0 = int(np.flatnonzero(np.isclose(p.iou_thrs, 0.5))[0]) if np.isclose(p.iou_thrs, 0.5).any() else 0
    per_class = prec[t0].T  # (K, R)
    _lines(ax2, rec, per_class[(per_class > -1).all(axis=1)])
    ax2.plot(rec, mean_k(prec[t0]), "k-", lw=2, label=f"mean of {int((per_class > -1).all(1).sum())} classes")
    for ax, title in ((ax1, "overall"), (ax2, f"per class, IoU={p.iou_thrs[t0]:.2f}")):
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def f1_confidence(curves: dict, path: Path) -> Path:
    """F1 (and precision, recall) against the score threshold; classes in grey."""
    x = curves["thresholds"]
    fig = figure((6.5, 4.5))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.11, top=0.93)
    _lines(ax, x, curves["f1"][np.isfinite(curves["f1"]).all(axis=1)])
    ax.plot(x, curves["overall_f1"], "k-", lw=2, label="F1, all classes")
    ax.plot(x, curves["overall_precision"], "b--", lw=1, label="precision")
    ax.plot(x, curves["overall_recall"], "r--", lw=1, label="recall")
    bt, bf = curves["overall_best_threshold"], curves["overall_best_f1"]
    if np.isfinite(bt):
        ax.axvline(bt, color="g", lw=1)
        ax.set_title(f"F1 vs confidence (IoU={curves['iou']:.2f}): best F1 {bf:.3f} at {bt:.3f}",
                     fontsize=10)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def confusion(cm: np.ndarray, names: list[str], path: Path, iou: float, score: float) -> Path:
    """The confusion matrix, rows normalised (share of each true class), counts annotated
    when the matrix is small. Classes that never occur are left out (the CSV has them all)."""
    # only classes that occur (as truth or prediction): 80 empty rows hide the signal
    used = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    used[-1] = True
    cm = cm[np.ix_(used, used)]
    labels = [n for n, u in zip(list(names) + ["background"], used, strict=True) if u]
    n = len(labels)
    size = min(4 + 0.18 * n, 13)
    fig = figure((size, size * 0.85))
    ax = fig.subplots()
    fs = max(3, min(9, 160 // max(n, 1)))
    # margins in inches: the longest label (about 0.6 em per character), ticks, axis label
    label_in = 0.6 * fs / 72 * max(len(s) for s in labels) + 0.45
    fig.subplots_adjust(left=min(label_in / size, 0.45), bottom=min(label_in / (size * 0.85), 0.45),
                        right=1 - 0.5 / size, top=1 - 0.55 / (size * 0.85))
    with np.errstate(all="ignore"):
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    # class names as plain texts beside the cells: ~80 axis ticks (each several artists)
    # cost more than the rest of the figure
    from matplotlib.transforms import offset_copy

    ax.set_xticks([])
    ax.set_yticks([])
    tx = offset_copy(ax.get_xaxis_transform(), fig=fig, y=-3, units="points")
    ty = offset_copy(ax.get_yaxis_transform(), fig=fig, x=-3, units="points")
    for i, lbl in enumerate(labels):
        ax.text(i, 0, lbl, transform=tx, rotation=90, ha="center", va="top", fontsize=fs)
        ax.text(0, i, lbl, transform=ty, ha="right", va="center", fontsize=fs)
    if n <= 30:
        for i, j in zip(*np.nonzero(cm), strict=True):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fs,
                    color="white" if norm[i, j] > 0.5 else "black")
    sp = fig.subplotpars
    fig.text((sp.left + sp.right) / 2, 0.08 / (size * 0.85), "predicted", ha="center", va="bottom")
    fig.text(0.08 / size, (sp.bottom + sp.top) / 2, "true", rotation=90, ha="left", va="center")
    ax.set_title(f"confusion matrix, rows normalised\n(IoU>={iou:.2f}, score>={score:.2f})", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _save(fig, path)


def tide_bars(tide: dict, path: Path) -> Path:
    """Horizontal bars: AP (at t_f) gained by fixing each error type."""
    names = list(tide["dAP"])
    vals = [100 * tide["dAP"][k] for k in names]
    fig = figure((6, 3.2))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.2, right=0.96, bottom=0.16, top=0.89)
    ax.barh(names[::-1], vals[::-1], color="tab:orange")
    for i, v in enumerate(vals[::-1]):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set(xlabel=f"dAP{int(round(100 * tide['t_f']))} (points)",
           title=f"TIDE-style errors (AP{int(round(100 * tide['t_f']))} = {100 * tide['ap']:.1f})")
    lo, hi = min(0.0, *vals), max(0.0, *vals)
    ax.set_xlim(lo - 0.05 * (hi - lo or 1), hi + 0.2 * (hi - lo or 1))  # room for the value text
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
