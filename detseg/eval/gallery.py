"""The images behind the numbers: an error gallery and a per-image cost table.

`build_gallery` picks, per class and per TIDE error type (`error_analysis.detection_errors`:
classification, localisation, both, duplicate, background, and missed ground truth), the
worst examples (the highest-scoring false positives; the largest missed objects), draws each
as a JPEG thumbnail cropped around it (`drawing.draw_gt_vs_pred`: ground truth dashed,
predictions solid with score and IoU; for a segm evaluation the masks' outlines), and ranks the images by cost (false positives + false
negatives at the report's IoU and score thresholds). `gallery_html` turns it into a section
of the one-file HTML report (thumbnails embedded as data URIs).

Images come from a ``load_image(image_index) -> (H, W, 3) uint8 RGB or None`` callable;
`dataset_image_loader` makes one from the ground-truth file (``--images DIR``, ``images/``
beside it, or ``file_name``). Images that cannot be read are left out and counted.
"""

from __future__ import annotations

import base64
import html
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detseg.detections import Detections
from detseg.eval.analysis import _area_all
from detseg.eval.drawing import class_color, draw_gt_vs_pred, encode_jpeg
from detseg.eval.error_analysis import ERROR_TYPES, FP_TYPES, DetectionErrors, detection_errors
from detseg.eval.metrics import CocoEvaluation
from detseg.eval.outlines import counts_many, segmentation_outlines

log = logging.getLogger(__name__)

ImageLoader = Callable[[int], "np.ndarray | None"]


@dataclass
class Example:
    """One gallery entry. ``img`` indexes ``ev.gt.image_ids``; ``det`` the results arrays
    (-1 for a missed ground truth); ``gt`` the GT arrays (-1 when none is involved);
    ``category`` the class index of the prediction (of the ground truth when missed)."""

    error: str
    category: int
    img: int
    det: int
    gt: int
    score: float
    iou: float
    thumb: bytes | None = None


@dataclass
class Gallery:
    examples: list[Example]
    images: list[dict]  #: per-image rows, costliest first
    views: dict[int, bytes] = field(default_factory=dict)  #: image index -> whole-image thumbnail
    per_class: int = 3
    score: float = 0.5
    min_score: float = 0.1
    iou: float = 0.5
    n_unreadable: int = 0
    note: str | None = None

    @property
    def n_bytes(self) -> int:
        return sum(len(e.thumb or b"") for e in self.examples) + sum(map(len, self.views.values()))


def select_examples(ev: CocoEvaluation, errors: DetectionErrors, per_class: int = 3,
                    min_score: float = 0.1) -> list[Example]:
    """The ``per_class`` worst examples of each (error type, class): highest score first for
    false positives (those scoring below ``min_score`` are not shown: at the usual conf
    0.001 most detections are such), largest area first for missed ground truths."""
    out: list[Example] = []
    det = errors.det
    score = ev.results.score[det]
    cat = ev.results.cat[det]
    for code, name in enumerate(FP_TYPES):
        sel = np.flatnonzero((errors.kind == code) & (score >= min_score))
        if not sel.size:
            continue
        sel = sel[np.lexsort((-score[sel], cat[sel]))]  # class, then score descending
        starts = np.flatnonzero(np.r_[True, cat[sel][1:] != cat[sel][:-1]])
        for s, e in zip(starts, np.r_[starts[1:], sel.size], strict=True):
            for i in sel[s:min(e, s + per_class)].tolist():
                out.append(Example(name, int(cat[i]), int(ev.results.img[det[i]]), int(det[i]),
                                   int(errors.gt[i]), float(score[i]), float(errors.iou[i])))
    miss = np.flatnonzero(errors.missed)
    if miss.size:
        g_cat, g_area = ev.gt.cat[miss], ev.gt.area[miss]
        miss = miss[np.lexsort((-g_area, g_cat))]
        g_cat = ev.gt.cat[miss]
        starts = np.flatnonzero(np.r_[True, g_cat[1:] != g_cat[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], miss.size], strict=True):
            for g in miss[s:min(e, s + per_class)].tolist():
                out.append(Example("missed", int(ev.gt.cat[g]), int(ev.gt.img[g]), -1, int(g),
                                   float("nan"), float("nan")))
    return out


def image_costs(ev: CocoEvaluation, errors: DetectionErrors, score: float = 0.5) -> list[dict]:
    """Per image: TP, FP (by TIDE type), FN at score >= ``score`` and IoU ``errors.t_f``, and
    TIDE's missed count; ``cost`` = FP + FN. Sorted by cost (then FN), costliest first."""
    n_img = len(ev.gt.image_ids)
    det_img = ev.results.img[errors.det]
    keep = ev.results.score[errors.det] >= score
    tp = np.bincount(det_img[errors.tp & keep], minlength=n_img)
    fp_by = {name: np.bincount(det_img[(errors.kind == c) & keep], minlength=n_img)
             for c, name in enumerate((*FP_TYPES, "other"))}
    fp = sum(fp_by.values())
    m = ev.matching
    a = _area_all(ev)
    n_gt = np.bincount(ev.gt.img[m.gt][~m.gt_ignore[a]], minlength=n_img) if m.gt.size else np.zeros(n_img, int)
    fn = n_gt - tp
    missed = np.bincount(ev.gt.img[errors.missed], minlength=n_img)
    cost = fp + fn
    order = np.lexsort((np.arange(n_img), -fn, -cost))
    rows = []
    for i in order.tolist():
        if cost[i] == 0:
            break
        rows.append({"img": i, "image_id": int(ev.gt.image_ids[i]), "cost": int(cost[i]),
                     "n_gt": int(n_gt[i]), "tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i]),
                     "missed": int(missed[i]),
                     **{f"fp_{k}": int(v[i]) for k, v in fp_by.items() if k != "other"}})
    return rows


def dataset_image_loader(gt_json: str | Path, image_ids: np.ndarray,
                         images_dir: str | Path | None = None
                         ) -> tuple[ImageLoader, int, dict[int, str]]:
    """A loader of the ground-truth file's images, how many of the first 5 were found, and
    image index -> file name.

    Looks where `detseg predict` does (`detseg.data.coco.resolve_image_path`).
    """
    from detseg.data.coco import read_json, resolve_image_path
    from detseg.data.images import read_image

    path = Path(gt_json)
    names = {int(im["id"]): str(im.get("file_name", "")) for im in read_json(path).get("images", [])
             if isinstance(im, dict) and "id" in im}
    img_dir = Path(images_dir) if images_dir is not None else None
    ids = [int(i) for i in image_ids.tolist()]

    def where(i: int) -> Path | None:
        name = names.get(ids[i])
        if not name:
            return None
        p = resolve_image_path(path, name, img_dir)
        return p if p.is_file() else None

    # probe a few: enough to say "no images here" without stat-ing a whole big dataset
    probe = [i for i in range(min(len(ids), 5)) if where(i) is not None]

    def load(i: int) -> np.ndarray | None:
        p = where(i)
        if p is None:
            return None
        try:
            return read_image(p)
        except Exception as exc:  # noqa: BLE001 - one bad image must not lose the report
            log.warning("gallery: %s: %s", p, exc)
            return None

    return load, len(probe), {i: names.get(d, '') for i, d in enumerate(ids)}


class _LazyOutlines(Sequence):
    """``segmentation_outlines`` of ``segs[idx[k]]`` for item k, traced on first access and
    kept in ``memo`` (shared by the thumbnails of one image). The compressed RLE strings of
    all ``idx`` are decoded together on the first access (`outlines.counts_many`)."""

    def __init__(self, segs: list | None, idx: np.ndarray, h: int, w: int, memo: dict, kind: str):
        self.segs, self.idx, self.h, self.w, self.memo, self.kind = segs, idx.tolist(), h, w, memo, kind

    def __len__(self) -> int:
        return len(self.idx)

    def _decode_strings(self) -> None:
        todo = [j for j in self.idx if (self.kind, j) not in self.memo and isinstance(self.segs[j], dict)
                and isinstance(self.segs[j].get("counts"), (str, bytes))]
        for j, counts in zip(todo, counts_many([self.segs[j]["counts"] for j in todo]), strict=True):
            self.memo["counts", self.kind, j] = counts

    def __getitem__(self, k):  # type: ignore[override]
        j = self.idx[k]
        key = (self.kind, j)
        if key not in self.memo:
            seg = self.segs[j] if self.segs is not None else None
            if self.segs is not None and ("decoded", self.kind) not in self.memo:
                self.memo["decoded", self.kind] = True
                self._decode_strings()
            counts = self.memo.get(("counts", self.kind, j))
            if counts is not None:
                seg = {"size": seg.get("size"), "counts": counts}
            self.memo[key] = segmentation_outlines(seg, self.h, self.w, tolerance=1.0)
        return self.memo[key]


@contextmanager
def opencv_threads(n: int) -> Iterator[None]:
    """OpenCV's thread count set to ``n`` inside the block, restored after it (a process-wide
    setting: two blocks run at once in one process restore in the order they end)."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


class _ImageIndex:
    """Ground truths and results of each image (index lists), built once."""

    def __init__(self, ev: CocoEvaluation):
        self.ev = ev
        n = len(ev.gt.image_ids)
        self.g = self._split(ev.gt.img, n)
        self.r = self._split(ev.results.img, n)

    @staticmethod
    def _split(img: np.ndarray, n: int) -> list[np.ndarray]:
        o = np.argsort(img, kind="stable")
        return np.split(o, np.searchsorted(img[o], np.arange(1, n)))

    def view(self, i: int, min_score: float, also: int = -1
             ) -> tuple[Detections, Detections, np.ndarray, np.ndarray]:
        """Ground truth and predictions (score >= min_score, plus result ``also``) of image i,
        and their indices into the GT / results arrays."""
        ev = self.ev
        g = self.g[i]
        r = self.r[i]
        r = r[(ev.results.score[r] >= min_score) | (r == also)]
        gt = Detections(_xyxy(ev.gt.bbox[g]).astype(np.float32), np.ones(g.size, np.float32),
                        ev.gt.cat[g].astype(np.int64))
        pred = Detections(_xyxy(ev.results.bbox[r]).astype(np.float32),
                          ev.results.score[r].astype(np.float32), ev.results.cat[r].astype(np.int64))
        return gt, pred, g, r


def _crop(boxes: np.ndarray, w: int, h: int) -> tuple[float, float, float, float]:
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    pad = 0.5 * max(x1 - x0, y1 - y0) + 24
    side = max(x1 - x0, y1 - y0) + 2 * pad
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (max(0.0, cx - side / 2), max(0.0, cy - side / 2), min(w, cx + side / 2), min(h, cy + side / 2))


def build_gallery(ev: CocoEvaluation, load_image: ImageLoader | None, *,
                  errors: DetectionErrors | None = None, per_class: int = 3, score: float = 0.5,
                  iou: float = 0.5, min_score: float = 0.1, views: int = 12, max_side: int = 200,
                  view_side: int = 480, quality: int = 60, max_rows: int = 500,
                  workers: int | None = None) -> Gallery:
    """Select, draw and encode the gallery (see the module docstring).

    Args:
        load_image: image index (into ``ev.gt.image_ids``) -> (H, W, 3) uint8 RGB or None;
            None: no images, the gallery holds the cost table and a note only.
        per_class: examples per (error type, class).
        min_score: false positives scoring below it are not shown.
        max_side, view_side, quality: thumbnail and whole-image view sizes, JPEG quality.
        score: the score threshold of the cost table and of the thin boxes drawn around an
            example (an example's own prediction is always drawn).
        views: whole-image thumbnails for the costliest images.
        max_rows: rows of the per-image table kept.
        workers: threads reading and drawing images (default: one per CPU, at most 8).
    """
    errors = errors if errors is not None else detection_errors(ev, t_f=iou)
    rows = image_costs(ev, errors, score)
    g = Gallery([], rows[:max_rows], per_class=per_class, score=score, min_score=min_score, iou=errors.t_f)
    if load_image is None:
        g.note = "error gallery left out: the images were not found"
        return g
    examples = select_examples(ev, errors, per_class, min_score)
    view_imgs = {r["img"] for r in rows[:views]}
    need = sorted({e.img for e in examples} | set(view_imgs))
    index = _ImageIndex(ev)
    by_img: dict[int, list[Example]] = {}
    for e in examples:
        by_img.setdefault(e.img, []).append(e)
    names = dict(enumerate(ev.gt.cat_names))
    det_pos = np.full(len(ev.results), -1, np.int64)
    det_pos[errors.det] = np.arange(errors.det.shape[0])

    def pred_ious(r: np.ndarray, gt: Detections, pred: Detections, only: list[int] | None = None
                  ) -> np.ndarray:
        """The evaluation's IoU for errors with a ground truth, else the best box IoU; for
        the predictions ``only`` (the labelled ones), NaN for the rest."""
        idx = np.arange(len(pred)) if only is None else np.asarray(only, np.int64)
        out = np.full(len(pred), np.nan)
        if idx.size:
            best = _box_iou(pred.boxes[idx], gt.boxes).max(1) if len(gt) else np.zeros(idx.size)
            pos = det_pos[r[idx]]
            p0 = np.maximum(pos, 0)
            known = (pos >= 0) & (errors.gt[p0] >= 0) & np.isfinite(errors.iou[p0])
            out[idx] = np.where(known, errors.iou[p0], best)
        return out

    segm = ev.iou_type == "segm"
    gt_segs, res_segs = ev.gt.segmentation, ev.results.segmentation

    def outlines(i: int, h: int, w: int, gi: np.ndarray, ri: np.ndarray, memo: dict) -> dict:
        """Mask outlines (segm only) of the ground truths and results drawn: keyword arguments
        of `draw_gt_vs_pred`, traced when the drawing asks for them (only the boxes inside
        a thumbnail's crop are drawn), each mask once per image."""
        if not segm:
            return {}
        return {"gt_outlines": _LazyOutlines(gt_segs, gi, h, w, memo, "g"),
                "pred_outlines": _LazyOutlines(res_segs, ri, h, w, memo, "r")}

    def work(i: int) -> tuple[int, dict[int, bytes], bytes | None, bool]:
        image = load_image(i)
        if image is None:
            return i, {}, None, False
        h, w = image.shape[:2]
        thumbs: dict[int, bytes] = {}
        memo: dict = {}
        base = index.view(i, score)  # what most thumbnails of the image show
        shown = set(base[3].tolist())
        for k, e in enumerate(by_img.get(i, [])):
            gt, pred, gi, ri = base if e.det < 0 or e.det in shown else index.view(i, score, e.det)
            focus_p = np.flatnonzero(ri == e.det).tolist() if e.det >= 0 else []
            focus_g = np.flatnonzero(gi == e.gt).tolist() if e.gt >= 0 else []
            boxes = np.concatenate([pred.boxes[focus_p], gt.boxes[focus_g]]).reshape(-1, 4)
            crop = _crop(boxes, w, h) if boxes.size else None
            drawn = draw_gt_vs_pred(image, gt, pred, names, pred_iou=pred_ious(ri, gt, pred, focus_p),
                                    focus_gt=focus_g, focus_pred=focus_p, crop=crop, max_side=max_side,
                                    label_all=False, **outlines(i, h, w, gi, ri, memo))
            thumbs[k] = encode_jpeg(drawn, quality)
        view = None
        if i in view_imgs:
            gt, pred, gi, ri = base
            view = encode_jpeg(draw_gt_vs_pred(image, gt, pred, names, pred_iou=pred_ious(ri, gt, pred),
                                               max_side=view_side, **outlines(i, h, w, gi, ri, memo)),
                               quality)
        return i, thumbs, view, True

    # OpenCV decodes and draws without the GIL, so a pool of workers scales; OpenCV's own
    # thread pool under it only spins (measured: 6.3 -> 4.5 s CPU, 2 workers on 2 cores)
    workers = workers or min(8, os.cpu_count() or 1)
    with opencv_threads(1), ThreadPoolExecutor(max(1, workers)) as pool:
        for i, thumbs, view, ok in pool.map(work, need):
            if not ok:
                g.n_unreadable += 1
                continue
            for k, data in thumbs.items():
                by_img[i][k].thumb = data
            if view is not None:
                g.views[i] = view
    g.examples = [e for e in examples if e.thumb is not None]
    if g.n_unreadable and g.n_unreadable == len(need):
        g.note = f"error gallery left out: none of the {len(need)} images needed could be read"
    elif g.n_unreadable:
        g.note = f"{g.n_unreadable} of {len(need)} images could not be read; their examples are left out"
    return g


def gallery_for(ev: CocoEvaluation, images_dir: str | Path | None = None, *, per_class: int = 3,
                score: float = 0.5, iou: float = 0.5, load_image: ImageLoader | None = None,
                **kw) -> tuple[Gallery, dict[int, str]]:
    """`build_gallery` with the images of the evaluation's ground-truth file (when it is a
    file and its images are found, or from ``load_image``), and image index -> file name.
    Never raises for missing images: the gallery then carries a note."""
    load, names = load_image, {}
    where = "the ground truth is not a file"
    if load is None and ev.gt.source and Path(ev.gt.source).is_file():
        load, found, names = dataset_image_loader(ev.gt.source, ev.gt.image_ids, images_dir)
        where = (f"looked in {images_dir}, " if images_dir else "") + \
            f"in images/ beside {Path(ev.gt.source).name} and at its file_name paths; pass --images DIR"
        if not found:
            load = None
    g = build_gallery(ev, load, per_class=per_class, score=score, iou=iou, **kw)
    if load is None:
        g.note = f"error gallery left out: the images were not found ({where})"
    return g, names


# ---- HTML and JSON -------------------------------------------------------------------------
GALLERY_CSS = """.gal figure{display:inline-block;margin:2px 4px 6px 0;vertical-align:top}
.gal figcaption{font-size:11px;color:#444;max-width:210px}.gal img{border:1px solid #bbb}
.gal .cls{font-weight:bold;margin:6px 0 2px}.gal tr:last-child{font-weight:normal}.gal .sw{display:inline-block;width:10px;height:10px;
margin-right:4px;border:1px solid #555}"""


def _img(data: bytes, alt: str) -> str:
    return (f"<img alt='{html.escape(alt)}' "
            f"src='data:image/jpeg;base64,{base64.b64encode(data).decode('ascii')}'>")


def gallery_html(g: Gallery, cat_names: list[str], image_names: dict[int, str] | None = None) -> str:
    """The report's gallery section (HTML fragment). ``image_names``: image index -> file name."""
    image_names = image_names or {}
    parts = ["<div class='gal'><h2 id='gallery'>Error gallery</h2>"]
    if g.note:
        parts.append(f"<p><b>note:</b> {html.escape(g.note)}</p>")
    parts.append(
        f"<p>Per class and error type (TIDE at IoU {g.iou:.2f}), the {g.per_class} worst examples: "
        f"highest-scoring false positives (score &ge; {g.min_score:.2f}), largest missed objects. Ground truth is drawn "
        "<b>dashed</b> with a dark <i>GT class</i> tag; predictions <b>solid</b> with "
        "<i>class score | IoU</i> on a tag of the class colour; the boxes an example is about "
        f"are thick. Other predictions shown have score &ge; {g.score:.2f}.</p>")
    first_ex: dict[int, str] = {}
    for name in ERROR_TYPES:
        ex = [e for e in g.examples if e.error == name]
        if not ex:
            continue
        parts.append(f"<h3>{html.escape(name)} ({len(ex)} shown)</h3>")
        cur = None
        for n, e in enumerate(ex):
            if e.category != cur:
                cur = e.category
                r, gg, b = class_color(cur)
                parts.append(f"<div class='cls'><span class='sw' style='background:rgb({r},{gg},{b})'>"
                             f"</span>{html.escape(cat_names[cur])}</div>")
            anchor = f"ex-{name}-{n}"
            first_ex.setdefault(e.img, anchor)
            what = image_names.get(e.img, "")
            cap = (f"score {e.score:.2f}" if np.isfinite(e.score) else "missed") + (
                f", IoU {e.iou:.2f}" if np.isfinite(e.iou) and e.iou > 0 else "")
            parts.append(f"<figure id='{anchor}'>{_img(e.thumb, name)}<figcaption>{html.escape(cap)}"
                         f"<br>{html.escape(what)}</figcaption></figure>")
    if g.images:
        head = ["image", "cost", "FP", "FN", "TP", "GT", *[f"FP {t}" for t in FP_TYPES], "missed", "see"]
        parts.append(f"<h3 id='images-by-cost'>Images by cost</h3><p>cost = false positives + false "
                     f"negatives at IoU {g.iou:.2f}, score &ge; {g.score:.2f}; FP by TIDE type; "
                     f"missed = not found even badly. {len(g.images)} images with errors shown.</p>")
        body = []
        for r in g.images:
            i = r["img"]
            link = (f"<a href='#img-{i}'>view</a>" if i in g.views else
                    f"<a href='#{first_ex[i]}'>example</a>" if i in first_ex else "")
            label = image_names.get(i) or str(r["image_id"])
            cells = [html.escape(label), r["cost"], r["fp"], r["fn"], r["tp"], r["n_gt"],
                     *[r[f"fp_{t}"] for t in FP_TYPES], r["missed"]]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{link}</td></tr>")
        parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                     + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>")
    if g.views:
        parts.append("<h3>Costliest images</h3>")
        for i, data in g.views.items():
            label = image_names.get(i, "")
            parts.append(f"<figure id='img-{i}'>{_img(data, label)}<figcaption>{html.escape(label)}"
                         "</figcaption></figure>")
    parts.append("</div>")
    return "\n".join(parts)


def gallery_json(g: Gallery) -> dict:
    """What the report's JSON keeps of the gallery (no image bytes)."""
    return {"per_class": g.per_class, "iou": g.iou, "score": g.score, "note": g.note,
            "n_examples": len(g.examples), "n_views": len(g.views), "bytes": g.n_bytes,
            "n_unreadable": g.n_unreadable,
            "examples": [{"error": e.error, "category": e.category, "image": e.img, "det": e.det,
                          "gt": e.gt, "score": e.score, "iou": e.iou} for e in g.examples],
            "images": g.images}
