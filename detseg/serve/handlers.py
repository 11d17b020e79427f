"""What the demo does, as plain functions on a `Session`: the UI and the API both call these.

Nothing here imports gradio. Each function takes the shared `ServeContext` (models, limits,
download folder) and the caller's `Session`, changes the session, and returns plain values
(arrays, rows, paths). Bad input raises `InputError`, a model that cannot load `ModelError`;
`detseg.serve.app` turns both into messages in the page.

Coordinates are pixels of the original image (x right, y down); boxes are xyxy.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detseg.detections import Detections
from detseg.errors import InputError
from detseg.serve.limits import Limits, read_upload
from detseg.serve.models import ModelHub
from detseg.serve.state import Prompt, SamResult, SamStep, Session

TABLE_HEADERS = ["#", "class", "score", "x1", "y1", "x2", "y2", "mask area"]


@dataclass
class ServeContext:
    """What every handler shares: the models, the upload limits, the download folder."""

    hub: ModelHub
    limits: Limits
    out_dir: Path

    def session_dir(self, session: Session) -> Path:
        path = self.out_dir / session.ensure_id()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def forget(self, session: Session) -> None:
        """Remove a session's download files (called when Gradio drops the session)."""
        if session.session_id:
            shutil.rmtree(self.out_dir / session.session_id, ignore_errors=True)


def _require_image(session: Session) -> np.ndarray:
    if session.image is None:
        raise InputError("no image loaded: upload an image (or pick a sample) first")
    return session.image


def _stem(session: Session) -> str:
    stem = Path(session.image_name).stem or "image"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:64]


# ---- image ------------------------------------------------------------------------------
SAMPLE_SEED = 3  # the shapes split the embedded models were scored on, never trained on


def write_samples(folder: Path, n: int = 4) -> list[Path]:
    """Write ``n`` synthetic shapes images (PNG) for the page's sample gallery.

    They come from `detseg.data.shapes` with the held-out test seed, so the embedded models
    are shown on images they were not trained on.
    """
    import cv2

    from detseg.data.shapes import ShapesSpec, render_image

    folder.mkdir(parents=True, exist_ok=True)
    spec = ShapesSpec(n_images=n, seed=SAMPLE_SEED)
    paths = []
    for i in range(n):
        path = folder / f"shapes_sample_{i + 1}.png"
        if not path.is_file():
            bgr, _, _ = render_image(spec, i)
            cv2.imwrite(str(path), bgr)
        paths.append(path)
    return paths


def load_image(ctx: ServeContext, session: Session, path: str | Path, name: str) -> None:
    """Decode an uploaded file into ``session`` and compute its SAM embedding now.

    Computing the embedding at upload time means each click pays only for the decoder. The
    embedding is kept in the session (no shared "current image", no lock): sessions encode
    and click at the same time without waiting on each other.
    A refused file leaves the session with no image (never the previous one), so that the
    page and detection cannot disagree about which image is loaded. A SAM that cannot load
    is not an error here (detection still works); the SAM tab says so.
    """
    try:
        image = read_upload(path, name, ctx.limits)
    except InputError:
        session.clear_image()
        raise
    session.set_image(image, Path(name).name or "image")
    if ctx.hub.sam_status() is None:
        session.embedding = ctx.hub.sam().embed(image)


def session_embedding(ctx: ServeContext, session: Session):
    """The SAM embedding of the session's image (computed now if the upload did not)."""
    image = _require_image(session)
    if session.embedding is None or tuple(session.embedding.original_size) != image.shape[:2]:
        session.embedding = ctx.hub.sam().embed(image)
    return session.embedding


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def example_images(folder: Path, limit: int = 24) -> list[Path]:
    """The image files directly in ``folder`` (sorted by name, at most ``limit``).

    Raises InputError when ``folder`` is not a folder or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--examples {folder}: not a folder; give a folder of JPEG/PNG photos")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise InputError(
            f"--examples {folder}: no image files found (expected {', '.join(IMAGE_SUFFIXES)})"
        )
    return found[:limit]


# ---- detection ----------------------------------------------------------------------------
def detect(
    ctx: ServeContext, session: Session, model: str, conf: float, iou: float, max_det: int = 100
) -> Detections:
    """Run detector ``model`` on the session's image; keeps and returns the `Detections`."""
    image = _require_image(session)
    if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:
        raise InputError(f"thresholds: expected conf and IoU in [0, 1], found conf={conf}, iou={iou}")
    if int(max_det) < 1:
        raise InputError(f"max detections: expected at least 1, found {max_det}")
    detector = ctx.hub.detector(model)
    dets = detector.predict([image], conf=float(conf), iou=float(iou), max_det=int(max_det))[0]
    if dets.class_names is None:
        dets.class_names = class_names(detector)
    session.detections = dets
    session.detector_name = model
    return dets


def class_names(detector: object) -> dict[int, str]:
    """Class id -> name from a detector's metadata (empty when it has none)."""
    names = getattr(getattr(detector, "meta", None), "names", None) or {}
    if isinstance(names, (list, tuple)):
        return dict(enumerate(names))
    return {int(k): str(v) for k, v in dict(names).items()}


def detection_rows(dets: Detections) -> list[list]:
    """One table row per detection: index, class name, score, box xyxy, mask area in pixels."""
    names = dets.class_names or {}
    areas: list[int | None] = [None] * len(dets)
    if dets.masks is not None and len(dets):
        areas = [int(a) for a in dets.masks_as_array().sum(axis=(1, 2))]
    rows = []
    for i in range(len(dets)):
        cid = int(dets.class_ids[i])
        x1, y1, x2, y2 = (round(float(v), 1) for v in dets.boxes[i])
        rows.append([i, names.get(cid, str(cid)), round(float(dets.scores[i]), 3), x1, y1, x2, y2, areas[i]])
    return rows


def write_coco(ctx: ServeContext, session: Session, dets: Detections, suffix: str) -> Path:
    """Write ``dets`` as COCO results JSON (``image_id`` is the file name) and return the path."""
    from detseg.data.coco import write_json_atomic

    path = ctx.session_dir(session) / f"{_stem(session)}_{suffix}.json"
    records = dets.to_coco(image_id=session.image_name)
    names = dets.class_names or {}
    for rec in records:
        rec["category_name"] = names.get(rec["category_id"], str(rec["category_id"]))
    write_json_atomic(path, records)
    return path


# ---- Segment Anything ---------------------------------------------------------------------
def _check_point(image: np.ndarray, x: float, y: float) -> None:
    h, w = image.shape[:2]
    if x is None or y is None or not (0 <= float(x) < w and 0 <= float(y) < h):
        raise InputError(
            f"point ({x}, {y}): expected x in [0, {w}) and y in [0, {h}) (pixels of the "
            f"{w}x{h} image)"
        )


def _check_box(image: np.ndarray, box) -> tuple[float, float, float, float]:
    """Order the corners, clip to the image and refuse an empty box."""
    h, w = image.shape[:2]
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"box: expected four numbers x1, y1, x2, y2, found {box!r}") from None
    x1, x2 = sorted((min(max(x1, 0.0), w), min(max(x2, 0.0), w)))
    y1, y2 = sorted((min(max(y1, 0.0), h), min(max(y2, 0.0), h)))
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise InputError(
            f"box {tuple(box)}: expected a box at least 1 pixel wide and high inside the "
            f"{w}x{h} image, found {x2 - x1:g}x{y2 - y1:g} after clipping"
        )
    return (x1, y1, x2, y2)


def _predict(ctx: ServeContext, session: Session, step: SamStep) -> SamResult:
    """Run the SAM prompt decoder for ``step`` on the session's own embedding."""
    embedding = session_embedding(ctx, session)
    sam = ctx.hub.sam()
    p = step.prompt
    coords = np.asarray(p.points, np.float32).reshape(-1, 2) if p.points else None
    labels = np.asarray(p.labels, np.int64) if p.points else None
    box = np.asarray(p.box, np.float32) if p.box is not None else None
    pred = sam.predict(
        point_coords=coords,
        point_labels=labels,
        box=box,
        mask_input=step.mask_input,
        multimask_output=step.multimask,
        embedding=embedding,
    )
    return SamResult(
        masks=np.asarray(pred.masks, bool),
        scores=np.asarray(pred.scores, np.float32),
        low_res_logits=np.asarray(pred.low_res_logits, np.float32),
    )


def _apply(ctx: ServeContext, session: Session, prompt: Prompt, multimask: bool, refine: bool) -> None:
    """Predict with ``prompt`` as a new undo step; best-scoring candidate shown first."""
    mask_input = None
    if refine and session.result is not None:
        prev = session.result.low_res_logits[session.steps[-1].choice]
        mask_input = prev[None].astype(np.float32)
    step = SamStep(prompt=prompt, multimask=bool(multimask), mask_input=mask_input)
    result = _predict(ctx, session, step)
    step.choice = int(np.argmax(result.scores)) if len(result.scores) else 0
    session.push(step, result)


def sam_point(
    ctx: ServeContext, session: Session, x: float, y: float, positive: bool = True,
    multimask: bool = True, refine: bool = False,
) -> None:
    """Add a positive (or negative) click at pixel (x, y) and predict."""
    image = _require_image(session)
    _check_point(image, x, y)
    _apply(ctx, session, session.prompt.with_point(x, y, 1 if positive else 0), multimask, refine)


def sam_box(
    ctx: ServeContext, session: Session, box, multimask: bool = False, refine: bool = False
) -> None:
    """Set the box prompt (replacing any earlier box) and predict."""
    image = _require_image(session)
    _apply(ctx, session, session.prompt.with_box(_check_box(image, box)), multimask, refine)


def sam_corner(
    ctx: ServeContext, session: Session, x: float, y: float, multimask: bool = False,
    refine: bool = False,
) -> bool:
    """Draw a box with two clicks: the first stores a corner, the second sets the box.

    Returns True when the box was set (a prediction ran), False after the first corner.
    """
    image = _require_image(session)
    _check_point(image, x, y)
    if session.pending_corner is None:
        session.pending_corner = (float(x), float(y))
        return False
    (x0, y0), session.pending_corner = session.pending_corner, None
    sam_box(ctx, session, (x0, y0, x, y), multimask, refine)
    return True


def sam_undo(ctx: ServeContext, session: Session) -> None:
    """Undo the last prompt (or a half-drawn box), re-showing the previous mask exactly."""
    if session.pending_corner is not None:
        session.pending_corner = None
        return
    if not session.steps:
        return
    session.steps.pop()
    if not session.steps:
        session.result = None
        return
    # Re-running the previous step with its own mask_input reproduces its result; keeping every
    # step's full-resolution masks instead would cost megabytes per click.
    session.result = _predict(ctx, session, session.steps[-1])


def sam_clear(session: Session) -> None:
    """Forget every prompt and the mask (the image and its embedding stay)."""
    session.clear_prompts()


def sam_choose(session: Session, index: int) -> None:
    """Show candidate ``index`` (0-based) of the current multimask result."""
    if session.result is None:
        raise InputError("no mask yet: click on the image or set a box first")
    n = len(session.result.scores)
    if index is None or not 0 <= int(index) < n:
        raise InputError(f"candidate: expected an index in [0, {n}), found {index}")
    session.steps[-1].choice = int(index)


def chosen_mask(session: Session) -> tuple[np.ndarray, float] | None:
    """The (H, W) bool mask shown now and its score, or None."""
    if session.result is None:
        return None
    i = session.steps[-1].choice
    return session.result.masks[i], float(session.result.scores[i])


def sam_summary(session: Session) -> dict:
    """JSON-ready description of the prompts and candidates (for the page and the API)."""
    p = session.prompt
    out: dict = {
        "image": session.image_name if session.image is not None else None,
        "points": [[x, y] for x, y in p.points],
        "labels": list(p.labels),
        "box": list(p.box) if p.box is not None else None,
        "pending_corner": list(session.pending_corner) if session.pending_corner else None,
        "steps": len(session.steps),
        "scores": [],
        "choice": None,
        "area": 0,
        "bbox": None,
    }
    chosen = chosen_mask(session)
    if chosen is not None:
        mask, _ = chosen
        out["scores"] = [round(float(s), 4) for s in session.result.scores]
        out["choice"] = session.steps[-1].choice
        out["area"] = int(mask.sum())
        out["bbox"] = _mask_box(mask)
    return out


def _mask_box(mask: np.ndarray) -> list[float] | None:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def sam_export(ctx: ServeContext, session: Session) -> tuple[Path, Path]:
    """Write the shown mask as a PNG (0/255, original size) and as COCO RLE JSON."""
    from PIL import Image

    chosen = chosen_mask(session)
    if chosen is None:
        raise InputError("no mask to download: click on the image or set a box first")
    mask, score = chosen
    folder = ctx.session_dir(session)
    png = folder / f"{_stem(session)}_mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(png)
    box = _mask_box(mask) or [0.0, 0.0, 0.0, 0.0]
    dets = Detections(
        boxes=np.asarray([box], np.float32), scores=np.asarray([score], np.float32),
        class_ids=np.zeros(1, np.int64), masks=mask[None], image_size=mask.shape,
    )
    from detseg.data.coco import write_json_atomic

    records = dets.to_coco(image_id=session.image_name)
    records[0]["area"] = int(mask.sum())
    rle = folder / f"{_stem(session)}_mask_rle.json"
    write_json_atomic(rle, records)
    return png, rle


def detections_to_sam(ctx: ServeContext, session: Session) -> Detections:
    """A SAM mask for every detection, prompted with its box (single-mask output).

    Returns the detector's boxes, scores and classes with the SAM masks
    (`detseg.pipeline.sam_boxes.segment_boxes` on the session's embedding).
    """
    from detseg.pipeline.sam_boxes import segment_boxes

    _require_image(session)
    dets = session.detections
    if dets is None:
        raise InputError("no detections: run the detector first, then send its boxes to SAM")
    return segment_boxes(ctx.hub.sam(), session_embedding(ctx, session), dets)


def detection_to_prompt(ctx: ServeContext, session: Session, index: int) -> None:
    """Start a SAM prompt from detection ``index``'s box (earlier prompts are dropped).

    The user can then add clicks to refine it, as after drawing the box by hand.
    """
    _require_image(session)
    dets = session.detections
    if dets is None or not len(dets):
        raise InputError("no detections to refine: run the detector first")
    if index is None or not 0 <= int(index) < len(dets):
        raise InputError(f"detection: expected a row number in [0, {len(dets)}), found {index}")
    session.clear_prompts()
    sam_box(ctx, session, tuple(float(v) for v in dets.boxes[int(index)]), multimask=False)


# ---- status lines (plain text for the page) -----------------------------------------------
def image_status(session: Session, sam_note: str | None = None) -> str:
    """One Markdown line on what is loaded, or why nothing is."""
    if session.error and session.error_area == "image":
        return f"**Not loaded:** {session.error}. No image is loaded now; upload another file."
    if session.image is None:
        return "No image loaded: upload one or pick a sample."
    h, w = session.image.shape[:2]
    line = f"Loaded **{session.image_name}** ({w}x{h})."
    return line + (f" {sam_note}" if sam_note else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def sam_status(session: Session) -> str:
    """One Markdown line under the SAM canvas: what to do next, the prompts, the mask."""
    if session.error and session.error_area == "sam":
        return f"**Could not do that:** {session.error}"
    if session.image is None:
        return "Upload an image, then click on an object."
    if session.pending_corner is not None:
        x, y = session.pending_corner
        return (f"**Box: first corner at ({x:.0f}, {y:.0f}). Click the opposite corner** "
                "(Undo cancels).")
    p = session.prompt
    if p.is_empty():
        return "Click on an object to segment it."
    parts = []
    pos = sum(1 for v in p.labels if v == 1)
    if pos:
        parts.append(_plural(pos, "positive click"))
    if len(p.labels) - pos:
        parts.append(_plural(len(p.labels) - pos, "negative click"))
    if p.box is not None:
        parts.append("a box")
    line = "Prompts: " + ", ".join(parts) + "."
    chosen = chosen_mask(session)
    if chosen is not None:
        mask, score = chosen
        n = len(session.result.scores)
        which = f", candidate {session.steps[-1].choice + 1} of {n}" if n > 1 else ""
        line += f" Mask: {int(mask.sum()):,} pixels, predicted IoU {score:.2f}{which}."
    return line


def detect_status(session: Session, dets: Detections | None, what: str = "") -> str:
    """One Markdown line above the detections: how many, by which model."""
    if session.error and session.error_area == "detect":
        return f"**Could not do that:** {session.error}"
    if session.image is None:
        return "No image loaded."
    if dets is None:
        return "Press Detect."
    by = f" by **{session.detector_name}**" if session.detector_name else ""
    line = f"{_plural(len(dets), 'detection')}{by}{what}."
    if len(dets):
        line += " Select a row, then *Refine in Segment Anything* to edit its mask."
    return line
