"""The demo's "Segment everything": every mask of the image, each selectable as the SAM mask.

Plain functions on a `Session` (no gradio here, like `detseg.serve.handlers`):

- `segment_everything` runs `detseg.pipeline.sam_auto.SamMaskGenerator` on the session's
  image, on the session's own SAM embedding (no second encoder run), and keeps the result in
  ``session.everything`` (a `GeneratedMasks`: RLE masks, boxes, predicted IoU, the grid
  point that produced each mask).
- `pick` makes mask ``i`` the current SAM mask: it becomes an ordinary prompt step (one
  positive click at the grid point that produced the mask, the candidate whose mask matches
  it best), so undo, refine (more clicks, "refine the previous mask") and download work on
  it exactly as after a click by hand.
- `everything_view` draws every mask in its own colour with its index ``#i``.

Coordinates are pixels of the original image (x right, y down), boxes xyxy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detseg.errors import InputError
from detseg.pipeline.sam_auto import GeneratedMasks, MaskGeneratorSettings, SamMaskGenerator
from detseg.serve import handlers as h
from detseg.serve.render import _resize, instance_color, place_labels, view_scale
from detseg.serve.state import Prompt, SamStep, Session

# segment-anything's defaults (IoU 0.88, stability 0.95, 32x32 points) keep very few masks
# with the embedded SAM (256 px, trained on synthetic shapes only); these keep the useful ones
# (the settings sam-auto's tests use) and run the decoder over 256 points instead of 1024.
DEMO_SETTINGS = MaskGeneratorSettings(
    points_per_side=16, pred_iou_thresh=0.6, stability_score_thresh=0.8
)


def describe_settings(s: MaskGeneratorSettings = DEMO_SETTINGS) -> str:
    """The settings in one phrase, for the status line."""
    return (f"{s.points_per_side}x{s.points_per_side} points, predicted IoU > "
            f"{s.pred_iou_thresh:g}, stability >= {s.stability_score_thresh:g}, "
            f"box NMS {s.box_nms_thresh:g}")


class _SessionSam:
    """The SAM predictor, but `embed` of the session's image returns the session's embedding
    (the generator encodes each crop; with no crop layers the only crop is the image)."""

    def __init__(self, sam: Any, image: np.ndarray, embedding: Any) -> None:
        self._sam, self._image, self._embedding = sam, image, embedding

    def embed(self, image: np.ndarray) -> Any:
        if image.shape == self._image.shape and np.array_equal(image, self._image):
            return self._embedding
        return self._sam.embed(image)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sam, name)


def segment_everything(
    ctx: h.ServeContext, session: Session, settings: MaskGeneratorSettings = DEMO_SETTINGS
) -> GeneratedMasks:
    """Generate every mask of the session's image; kept in ``session.everything``.

    Earlier prompts are dropped so that the canvas shows the generated masks; they stay
    available (the canvas shows them again after Clear) until the next image.
    """
    embedding = h.session_embedding(ctx, session)  # raises InputError without an image
    sam = _SessionSam(ctx.hub.sam(), session.image, embedding)
    generated = SamMaskGenerator(sam, settings).generate(session.image)
    session.clear_prompts()
    session.everything = generated
    return generated


def pick(ctx: h.ServeContext, session: Session, index: int | None) -> float:
    """Make generated mask ``index`` (0-based) the current SAM mask, as a new prompt.

    Earlier prompts are dropped (a new object, as when a detection is sent to SAM). The
    step is one positive click at the mask's grid point with three candidates; the candidate
    shown is the one that matches the generated mask best. Returns that IoU (1.0 when the
    decoder reproduces the mask exactly, as it does with the same embedding).
    """
    h._require_image(session)
    gen: GeneratedMasks | None = getattr(session, "everything", None)
    if gen is None:
        raise InputError("no generated masks: press 'Segment everything' first")
    n = len(gen)
    try:
        i = int(index)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        i = -1
    if not 0 <= i < n or (isinstance(index, float) and index != i):
        raise InputError(f"generated mask: expected an index in [0, {n}), found {index!r}")
    from pycocotools import mask as mask_utils

    target = mask_utils.decode(_bytes_rle(gen.rles[i])).astype(bool)
    x, y = (float(v) for v in gen.point_coords[i])
    step = SamStep(prompt=Prompt().with_point(x, y, 1), multimask=True)
    result = h._predict(ctx, session, step)
    inter = (result.masks & target).sum(axis=(1, 2))
    union = (result.masks | target).sum(axis=(1, 2))
    ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    step.choice = int(np.argmax(ious))
    # the session changes only here, in one go (another event of this session may be running)
    session.clear_prompts()
    session.push(step, result)
    return float(ious[step.choice])


def _bytes_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def choices(session: Session) -> list[tuple[str, int]]:
    """Dropdown entries "#i  IoU 0.93  1,234 px" for the generated masks (empty when none)."""
    gen: GeneratedMasks | None = getattr(session, "everything", None)
    if gen is None or session.image is None:
        return []
    areas = gen.areas()
    return [(f"#{i}  IoU {float(s):.2f}  {int(a):,} px", i)
            for i, (s, a) in enumerate(zip(gen.predicted_iou, areas, strict=True))]


def showing(session: Session) -> bool:
    """True when the canvas shows the generated masks (there are some and no current mask)."""
    return (session.image is not None and getattr(session, "everything", None) is not None
            and session.result is None and session.pending_corner is None)


def status(session: Session) -> str | None:
    """The SAM status line while the generated masks are shown, else None (the usual one)."""
    if session.error and session.error_area == "sam" or not showing(session):
        return None
    n = len(session.everything)
    if not n:
        return ("Segment everything found **no mask** with the demo's settings "
                f"({describe_settings()}). Click on an object instead.")
    return (f"Segment everything: **{n} masks** (demo settings for the embedded SAM: "
            f"{describe_settings()}; segment-anything's defaults keep fewer). Pick one under "
            "*Generated masks* to make it the current mask (then refine, undo or download "
            "it), or click on an object.")


def everything_view(
    image: np.ndarray, gen: GeneratedMasks, max_side: int = 1024, min_side: int = 0
) -> np.ndarray:
    """``image`` with every generated mask in its own colour (`instance_color(i)`), outlined,
    and its index ``#i`` in a label; large masks drawn first so small ones stay visible.

    Drawn at `view_scale` like the SAM canvas. Returns (h, w, 3) uint8 RGB.
    """
    import cv2

    s = view_scale(image.shape, max_side, min_side)
    out = np.ascontiguousarray(_resize(image, s)).copy()
    hh, ww = out.shape[:2]
    n = len(gen)
    if not n:
        return out
    masks = gen.masks()
    order = np.argsort(-gen.areas(), kind="stable")
    thick = max(1, round(max(hh, ww) / 500))
    for i in order.tolist():
        m = _resize(masks[i], s, nearest=True)
        if not m.any():
            continue
        color = instance_color(i)
        solid = np.empty_like(out)
        solid[:] = color
        out = np.where(m[..., None], cv2.addWeighted(out, 0.5, solid, 0.5, 0), out)
        contours, _ = cv2.findContours(m.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out = np.ascontiguousarray(out)
        cv2.drawContours(out, contours, -1, color, thick)
    boxes = gen.boxes.astype(np.float64).reshape(-1, 4) * s
    texts = [f"#{i}" for i in range(n)]
    font, fscale = cv2.FONT_HERSHEY_SIMPLEX, max(0.45, min(0.8, max(hh, ww) / 1300))
    sizes = []
    for t in texts:
        (tw, th), base = cv2.getTextSize(t, font, fscale, 1)
        sizes.append((tw + 6, th + base + 4))
    # small masks' labels first: they have the least room
    label_order = order[::-1]
    rects = place_labels(boxes[label_order], [sizes[i] for i in label_order], ww, hh)
    for i, (rx1, ry1, rx2, ry2) in zip(label_order.tolist(), rects, strict=True):
        color = instance_color(i)
        cv2.rectangle(out, (rx1, ry1), (rx2 - 1, ry2 - 1), color, -1)
        ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        cv2.putText(out, texts[i], (rx1 + 3, ry2 - 5), font, fscale, ink, 1, cv2.LINE_AA)
    return out


def summary(session: Session) -> dict:
    """`handlers.sam_summary` plus ``everything``: how many masks were generated (or None)."""
    out = h.sam_summary(session)
    gen = session.everything if session.image is not None else None
    out["everything"] = len(gen) if gen is not None else None
    return out
