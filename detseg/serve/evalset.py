"""What the Evaluate tab shows, without Gradio: one ground truth and one or two results files
evaluated once, their images found on disk, and the pictures (an image with its ground truth
and predictions drawn, a class's PR curve) as (H, W, 3) uint8 RGB arrays.

The numbers all come from `detseg.eval` (`evaluate`, `analysis`, `error_analysis`, `browse`);
this module only loads, looks up and draws.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detseg.data.coco import read_json, resolve_image_path
from detseg.errors import InputError
from detseg.eval import CocoEvaluation, browse, evaluate
from detseg.eval.analysis import iou_index, per_class_table, prf_at
from detseg.eval.error_analysis import tide_errors

log = logging.getLogger(__name__)
_LOCK = threading.Lock()

GT_RGB = (0, 200, 0)          # ground truth found by a prediction
FN_RGB = (255, 140, 0)        # ground truth no prediction found (drawn dashed)
TP_RGB = (30, 144, 255)       # correct prediction
FP_RGB = (230, 0, 40)         # wrong prediction
IGNORED_RGB = (160, 160, 160)  # crowd regions and what matched them
SHORT_ERROR = {"classification": "cls", "localisation": "loc", "both": "both",
               "duplicate": "dup", "background": "bkg", "other": "other"}
LEGEND = ("ground truth: green = found, orange dashed = missed (FN); predictions: blue = TP, "
          "red = FP (with its error type: cls, loc, both, dup, bkg); grey = crowd / ignored. "
          "segm: the masks' outlines instead of the boxes, ground truth dashed, predictions solid")
MAX_OUTLINES = 5000  # traced mask outlines kept per evaluation set (RLE decoding is the cost)


@dataclass
class Run:
    """One results file evaluated against the ground truth."""

    name: str
    path: str
    ev: CocoEvaluation
    outcomes: browse.Outcomes
    tide: dict

    def at(self, iou: float) -> browse.Outcomes:
        """Per-image outcomes at IoU ``iou`` (computed once per threshold, cached on ``ev``)."""
        return browse.outcomes(self.ev, iou)


@dataclass
class EvalSet:
    """A ground truth, its images on disk, and one or two evaluated runs (A, B).

    Attributes:
        image_paths: one path per image, in ``ev.gt.image_ids`` order (None: not found).
        iou: the default IoU threshold of the per-image outcomes (TIDE's foreground IoU
            too); every view below takes another of the evaluation's thresholds.
    """

    gt_path: str
    runs: list[Run]
    image_paths: list[Path | None]
    iou: float = 0.5
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def gt(self):
        return self.runs[0].ev.gt

    @property
    def cat_names(self) -> list[str]:
        return list(self.gt.cat_names)

    @property
    def n_found(self) -> int:
        return sum(p is not None for p in self.image_paths)

    @property
    def iou_thresholds(self) -> list[float]:
        """The evaluated IoU thresholds (COCO's 0.50, 0.55, ..., 0.95), rounded for display."""
        return [round(float(t), 4) for t in self.runs[0].ev.params.iou_thrs]

    def check_iou(self, iou: float | None) -> float:
        """``iou`` as one of `iou_thresholds` (None: the default), or a clear `InputError`."""
        if iou is None:
            return self.iou
        try:
            iou_index(self.runs[0].ev, float(iou))
        except (TypeError, ValueError):
            raise InputError(f"IoU threshold: expected one of {self.iou_thresholds}, found {iou!r}") from None
        except InputError:
            raise InputError(f"IoU threshold: expected one of {self.iou_thresholds}, found {iou}") from None
        return float(round(float(iou), 4))


def _run_names(paths: list[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) < len(stems):
        return [f"{chr(65 + i)}: {s}" for i, s in enumerate(stems)]
    return stems


def load_evalset(gt_path: str | Path, pred_paths: list[str | Path], iou_type: str = "bbox",
                 images_dir: str | Path | None = None, iou: float = 0.5,
                 names: list[str] | None = None) -> EvalSet:
    """Evaluate one or two results files against a ground truth, once, and find the images.

    Images are looked for as `detseg.data.coco.resolve_image_path` does (``images_dir``,
    ``images/`` beside the ground truth, ``file_name`` relative to it); missing ones are
    recorded, never an error.
    """
    if not 1 <= len(pred_paths) <= 2:
        raise InputError(f"--pred: expected one or two results files, found {len(pred_paths)}")
    gt_path = Path(gt_path)
    gt = None
    runs = []
    names = names or _run_names([str(p) for p in pred_paths])
    for name, pred in zip(names, pred_paths, strict=True):
        ev = evaluate(gt_path if gt is None else gt, pred, iou_type)  # the GT is read once
        gt = ev.gt
        runs.append(Run(name, str(pred), ev, browse.outcomes(ev, iou), tide_errors(ev, t_f=iou)))
    data = read_json(gt_path, "ground-truth file")  # again, for the file names only
    by_id = {im.get("id"): im.get("file_name") for im in data.get("images", []) if isinstance(im, dict)}
    img_dir = Path(images_dir) if images_dir is not None else None
    paths: list[Path | None] = []
    for image_id in gt.image_ids.tolist():
        name = by_id.get(image_id)
        p = resolve_image_path(gt_path, name, img_dir) if isinstance(name, str) else None
        paths.append(p if p is not None and p.is_file() else None)
    out = EvalSet(str(gt_path), runs, paths, iou)
    log.info("evaluated %s against %s: %d images, %d found on disk", ", ".join(names), gt_path,
             len(paths), out.n_found)
    return out


# ---- tables ----------------------------------------------------------------------------------
def _memo(es: EvalSet, key: tuple, make, keep: int = 32):
    """``make()`` cached on ``es`` (the last ``keep`` keys of each kind): the tables, the PR
    figures and P/R at a score are asked for again and again as users move the filters."""
    with _LOCK:
        store = es.cache.setdefault(key[0], {})
        if key in store:
            return store[key]
    value = make()  # outside the lock: two sessions may compute the same value, never wait
    with _LOCK:
        if len(store) >= keep:
            store.pop(next(iter(store)))
        store[key] = value
    return value


def _prf(es: EvalSet, run: int, score: float, iou: float) -> dict:
    return _memo(es, ("prf", run, float(score), iou), lambda: prf_at(es.runs[run].ev, iou, score))


def tide_at(es: EvalSet, run: int, iou: float) -> dict:
    """TIDE's counts and dAP of run ``run`` with foreground IoU ``iou`` (cached on ``es``)."""
    if iou == es.iou:
        return es.runs[run].tide
    return _memo(es, ("tide", run, iou), lambda: tide_errors(es.runs[run].ev, t_f=iou))


def _per_class(es: EvalSet, run: int) -> list[dict]:
    return _memo(es, ("per_class", run), lambda: per_class_table(es.runs[run].ev))


def summary_markdown(es: EvalSet, score: float, iou: float | None = None) -> str:
    """COCO summary, P/R and TP/FP/FN at ``score`` and IoU ``iou`` (default ``es.iou``), TIDE
    counts and dAP with that foreground IoU; one column per run."""
    def row(label: str, cells) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    iou = es.check_iou(iou)
    tides = [tide_at(es, k, iou) for k in range(len(es.runs))]
    stats = [r.ev.stats_dict for r in es.runs]
    prf = [_prf(es, k, score, iou)["overall"] for k in range(len(es.runs))]
    kinds = ("classification", "localisation", "both", "duplicate", "background", "missed")
    at = f"@ score ≥ {score:.2f}, IoU {iou:.2f}"
    lines = [row("", [r.name for r in es.runs]), "|---" * (len(es.runs) + 1) + "|"]
    lines += [row(key, [_num(st[key]) for st in stats]) for key in ("AP", "AP50", "AP75")]
    lines += [row("APs / APm / APl", [" / ".join(_num(st[k]) for k in ("APs", "APm", "APl"))
                                      for st in stats]),
              row("AR100", [_num(st["AR100"]) for st in stats]),
              row(f"precision / recall {at}", [f"{_num(p['precision'])} / {_num(p['recall'])}" for p in prf]),
              row(f"TP / FP / FN {at}", [f"{p['tp']} / {p['fp']} / {p['fn']}" for p in prf]),
              row(f"TIDE count @ IoU {iou:.2f}: cls / loc / both / dup / bkg / missed",
                  [" / ".join(str(t["counts"][k]) for k in kinds) for t in tides]),
              row(f"TIDE dAP @ IoU {iou:.2f}: cls / loc / both / dup / bkg / missed",
                  [" / ".join(f"{t['dAP'][k]:.3f}" for k in kinds) for t in tides])]
    n = len(es.image_paths)
    canvas = ("tables and curves are complete; the image browser draws the boxes on a blank canvas "
              "(give --images DIR when starting detseg serve; files uploaded in the page come "
              "without their images).")
    note = (f"{n} images, all found on disk." if es.n_found == n else
            f"**Images are missing: {n - es.n_found} of {n} not found**; " + canvas if es.n_found else
            f"**Images are missing: none of the {n} images was found**; " + canvas)
    return (f"**{Path(es.gt.source).name}** ({es.runs[0].ev.iou_type}), {len(es.gt)} ground-truth "
            "objects. " + note + "\n\n" + "\n".join(lines))


def class_table(es: EvalSet, score: float, iou: float | None = None) -> tuple[list[str], list[list]]:
    """Per-class table, most ground truth first: #GT, then AP, AP50 and P/R/TP/FP/FN at
    ``score`` and IoU ``iou`` (default ``es.iou``) for each run."""
    iou = es.check_iou(iou)
    head = ["class", "n_gt"]
    cols = []
    for k, r in enumerate(es.runs):
        suffix = f" {r.name}" if len(es.runs) > 1 else ""
        head += [f"{k}{suffix}" for k in ("AP", "AP50", "P", "R", "TP", "FP", "FN")]
        pc = _per_class(es, k)
        pr = _prf(es, k, score, iou)["per_class"]
        cols.append([[_round(a["AP"]), _round(a["AP50"]), _round(b["precision"]),
                      _round(b["recall"]), b["tp"], b["fp"], b["fn"]] for a, b in zip(pc, pr, strict=True)])
    n_gt = [row["n_gt"] for row in _per_class(es, 0)]
    rows = [[name, n_gt[k], *[v for c in cols for v in c[k]]] for k, name in enumerate(es.cat_names)]
    return head, sorted(rows, key=lambda r: -r[1])  # stable: class order among equals


def _round(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def _num(x) -> str:
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return "n/a" if not np.isfinite(x) or x < 0 else f"{x:.3f}"


# ---- pictures --------------------------------------------------------------------------------
def read_image_or_blank(es: EvalSet, image_index: int) -> tuple[np.ndarray, bool]:
    """The image as (H, W, 3) uint8 RGB, or a grey canvas of its size if it is not on disk."""
    from detseg.data.images import read_image

    path = es.image_paths[image_index]
    if path is not None:
        try:
            return read_image(path), True
        except InputError as exc:
            log.warning("%s", exc)
    h, w = (int(v) for v in es.gt.image_hw[image_index])
    return np.full((h or 480, w or 640, 3), 90, np.uint8), False


def _dashed_rect(img: np.ndarray, p1, p2, color, thick: int, dash: int) -> None:
    import cv2

    from detseg.eval.drawing import dash_segments  # cv2 only when drawing (see view_outlines)

    seg, _ = dash_segments(np.array([[*p1, *p2]], np.float64), dash)
    cv2.polylines(img, list(seg), False, color, thick)


def view_outlines(es: EvalSet, run: int, view: browse.ImageView
                  ) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]] | tuple[None, None]:
    """The mask outlines of what ``view`` (of run ``run``) shows, for `draw_view`: per ground
    truth and per detection a list of (K, 2) float64 x, y polylines in image pixels (empty
    where the record has no mask). (None, None) for a bbox evaluation. Each outline is traced
    once and kept on ``es`` (the last `MAX_OUTLINES`)."""
    ev = es.runs[run].ev
    if ev.iou_type != "segm":
        return None, None
    # imported here, as cv2 is: importing cv2 edits LD_LIBRARY_PATH, and importing the web
    # app must leave the environment alone
    from detseg.eval.outlines import segmentation_outlines

    h, w = (int(v) for v in es.gt.image_hw[view.image_index])

    def get(kind: str, segs: list | None, k: int) -> list[np.ndarray]:
        if segs is None:
            return []
        key = ("outline", kind, k) if kind == "g" else ("outline", kind, run, k)
        return _memo(es, key, lambda: segmentation_outlines(segs[k], h, w), keep=MAX_OUTLINES)

    return ([get("g", es.gt.segmentation, k) for k in view.gt_index.tolist()],
            [get("r", ev.results.segmentation, k) for k in view.det_index.tolist()])


def draw_view(image: np.ndarray, view: browse.ImageView, cat_names: list[str],
              max_side: int = 960, found: bool = True,
              gt_outlines: list[list[np.ndarray]] | None = None,
              det_outlines: list[list[np.ndarray]] | None = None) -> np.ndarray:
    """Draw ``view`` on (a downscaled copy of) ``image``: ground truth and predictions in the
    styles of `LEGEND`. Labels (class, score, IoU, error type; highest scores first, then the
    missed ground truths) go where they hide no earlier label, or are left out.

    ``gt_outlines`` / ``det_outlines`` (`view_outlines`): per ground truth / detection, its
    mask's outline ((K, 2) x, y in ``image``'s pixels), drawn instead of the box (ground truth
    dashed, predictions solid, in the box's colour); an empty one draws the box. Labels stay
    placed by the boxes."""
    import cv2

    from detseg.eval.outlines import draw_outline

    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    out = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else image.copy()
    th = max(1, round(max(out.shape[:2]) / 400))
    font, fs = cv2.FONT_HERSHEY_SIMPLEX, max(0.35, max(out.shape[:2]) / 1600)
    placed: list[tuple[int, int, int, int]] = []
    labels: list[tuple[str, tuple[int, int, int, int], tuple[int, int, int]]] = []

    def label(text: str, box: tuple[int, int, int, int], color) -> None:
        """Put ``text`` at a corner of ``box`` where it hides no earlier label, else skip it
        (every object is listed in the table beside the picture)."""
        x1, y1, x2, y2 = box
        (tw, tht), base = cv2.getTextSize(text, font, fs, 1)
        hh, ww = tht + base + 2, tw + 4
        xs = [min(max(0, x), out.shape[1] - ww) for x in (x1, x2 - ww)]
        for ty in (y1 - hh, y1, y2, y2 - hh):  # above, inside top, below, inside bottom
            for tx in xs:
                r = (tx, ty, tx + ww, ty + hh)
                if ty >= 0 and ty + hh <= out.shape[0] and not any(
                        r[0] < q[2] and q[0] < r[2] and r[1] < q[3] and q[1] < r[3] for q in placed):
                    placed.append(r)
                    cv2.rectangle(out, r[:2], r[2:], color, -1)
                    cv2.putText(out, text, (r[0] + 2, r[3] - base - 1), font, fs, (255, 255, 255), 1,
                                cv2.LINE_AA)
                    return

    def px(b: np.ndarray) -> tuple[int, int, int, int]:
        return tuple(round(float(v) * s) for v in b)

    def outline(polys: list[np.ndarray] | None) -> list[np.ndarray]:
        return [np.asarray(p, np.float64).reshape(-1, 2) * s for p in polys or ()]

    # every box first, then the labels on top (highest scores first, missed ground truth last)
    for k, (b, st) in enumerate(zip(view.gt_box, view.gt_state, strict=True)):
        x1, y1, x2, y2 = px(b)
        poly = outline(gt_outlines[k]) if gt_outlines is not None else []
        if poly:
            color = (GT_RGB, FN_RGB, IGNORED_RGB)[int(st)]
            draw_outline(out, poly, color, th + 1, dashed=True, dash=max(6, 5 * th))
        elif st == browse.FN:
            _dashed_rect(out, (x1, y1), (x2, y2), FN_RGB, th + 1, max(4, 4 * th))
        else:
            cv2.rectangle(out, (x1, y1), (x2, y2), GT_RGB if st == browse.TP else IGNORED_RGB, th + 1)
    for k, (b, c, st, e, sc, i) in enumerate(zip(view.det_box, view.det_cat, view.det_state,
                                                 view.det_error, view.det_score, view.det_iou,
                                                 strict=True)):
        color = (TP_RGB, FP_RGB, IGNORED_RGB)[int(st)]
        x1, y1, x2, y2 = px(b)
        poly = outline(det_outlines[k]) if det_outlines is not None else []
        if poly:
            draw_outline(out, poly, color, th)
        else:
            cv2.rectangle(out, (x1, y1), (x2, y2), color, th)
        tag = f" {SHORT_ERROR[browse.FP_TYPES[int(e)]]}" if e >= 0 else ""
        iou = f" IoU {i:.2f}" if i > 0 else ""
        labels.append((f"{cat_names[int(c)]} {sc:.2f}{iou}{tag}", (x1, y1, x2, y2), color))
    for b, c, st, m in zip(view.gt_box, view.gt_cat, view.gt_state, view.gt_missed, strict=True):
        if st == browse.FN:
            x1, _, x2, y2 = px(b)
            labels.append((f"GT {cat_names[int(c)]} {'missed' if m else 'FN'}", (x1, y2, x2, y2), FN_RGB))
    for text, box, color in labels:
        label(text, box, color)
    if not found:
        cv2.putText(out, "image file not found", (10, out.shape[0] - 12), font, 2 * fs,
                    (255, 255, 255), 2, cv2.LINE_AA)
    return out


def pr_figure(es: EvalSet, cat: int | None, iou: float | None = None) -> np.ndarray:
    """The PR curve of category index ``cat`` (or the class mean), each run a colour; solid:
    mean over IoU .50:.95 (its mean is AP), dashed: at IoU ``iou`` (default ``es.iou``).
    (H, W, 3) uint8 RGB."""
    iou = es.check_iou(iou)
    return _memo(es, ("pr", cat, iou), lambda: _pr_figure(es, cat, iou))


def _pr_figure(es: EvalSet, cat: int | None, iou: float) -> np.ndarray:
    # matplotlib's object API, not pyplot: pyplot's global state is not safe across the
    # server's threads
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.8), dpi=90)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    for r, color in zip(es.runs, ("tab:blue", "tab:red"), strict=False):
        rec, p = browse.class_pr(r.ev, cat)
        _, p_t = browse.class_pr(r.ev, cat, iou)
        if np.isfinite(p).all():
            ax.plot(rec, p, "-", color=color, label=f"{r.name} AP {p.mean():.3f}")
            ax.plot(rec, p_t, "--", color=color, lw=1,
                    label=f"{r.name} AP{round(100 * iou)} {p_t.mean():.3f}")
    name = es.cat_names[cat] if cat is not None else "all classes (mean)"
    if not ax.lines:
        ax.text(0.5, 0.5, "no ground truth of this class", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=f"PR: {name}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="lower left", fontsize=8)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
