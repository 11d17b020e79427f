"""Pictures the demo shows: a SAM mask with its prompts, and detections drawn on the image.

All functions take an (H, W, 3) uint8 RGB image and return a new one; they never modify their
input. Coordinates are pixels of that image, boxes xyxy.
"""

from __future__ import annotations

import numpy as np

from detseg.detections import Detections
from detseg.serve.state import Prompt

MASK_RGB = (30, 144, 255)
POSITIVE_RGB = (0, 200, 0)
NEGATIVE_RGB = (230, 0, 0)
BOX_RGB = (255, 200, 0)


def _scale(image: np.ndarray) -> int:
    """Line width and marker size that stay visible on small and large images."""
    return max(2, round(max(image.shape[:2]) / 250))


def overlay_mask(
    image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = MASK_RGB, alpha: float = 0.5
) -> np.ndarray:
    """Blend an (H, W) bool ``mask`` onto ``image`` in ``color`` and outline it."""
    import cv2

    if not mask.any():
        return image.copy()
    solid = np.empty_like(image)
    solid[:] = color
    blended = cv2.addWeighted(image, 1 - alpha, solid, alpha, 0)
    out = np.where(mask[..., None], blended, image)
    contours, _ = cv2.findContours(np.ascontiguousarray(mask).view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, max(1, _scale(image) // 2))
    return out


def draw_prompts(
    image: np.ndarray, prompt: Prompt, pending_corner: tuple[float, float] | None = None
) -> np.ndarray:
    """Draw positive clicks (green), negative clicks (red), the box and a half-drawn box corner."""
    import cv2

    out = image.copy()
    s = _scale(image)
    if prompt.box is not None:
        x1, y1, x2, y2 = (round(v) for v in prompt.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_RGB, s)
    if pending_corner is not None:
        cx, cy = (round(v) for v in pending_corner)
        cv2.drawMarker(out, (cx, cy), BOX_RGB, cv2.MARKER_CROSS, 6 * s, s)
    for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
        center = (round(x), round(y))
        color = POSITIVE_RGB if label == 1 else NEGATIVE_RGB
        cv2.circle(out, center, 3 * s, (255, 255, 255), -1)
        cv2.circle(out, center, 2 * s, color, -1)
    return out


def view_scale(shape: tuple[int, ...], max_side: int) -> float:
    """Factor (<= 1) that fits an image of ``shape`` (H, W, ...) within ``max_side`` pixels.

    The page shows the image at this scale; a click at (u, v) on it is (u / s, v / s) in
    pixels of the original image.
    """
    return min(1.0, max_side / max(shape[0], shape[1]))


def _resize(arr: np.ndarray, scale: float, nearest: bool = False) -> np.ndarray:
    import cv2

    if scale >= 1.0:
        return arr
    h, w = arr.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if nearest:
        return cv2.resize(arr.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)


def sam_view(
    image: np.ndarray,
    mask: np.ndarray | None,
    prompt: Prompt,
    pending_corner: tuple[float, float] | None = None,
    max_side: int = 1024,
) -> np.ndarray:
    """The SAM canvas: ``image`` with the chosen (H, W) bool ``mask`` (or none) and prompts.

    Drawn at `view_scale` so that big images stay cheap to draw and to send.
    """
    s = view_scale(image.shape, max_side)
    out = _resize(image, s)
    if mask is not None:
        out = overlay_mask(out, _resize(mask, s, nearest=True))
    if s < 1.0:
        prompt = Prompt(
            points=tuple((x * s, y * s) for x, y in prompt.points),
            labels=prompt.labels,
            box=tuple(v * s for v in prompt.box) if prompt.box is not None else None,
        )
        if pending_corner is not None:
            pending_corner = (pending_corner[0] * s, pending_corner[1] * s)
    return draw_prompts(out, prompt, pending_corner)


def detections_view(image: np.ndarray, dets: Detections) -> np.ndarray:
    """``image`` with boxes, masks and labels of ``dets`` (via `detseg.pipeline.draw`)."""
    from detseg.pipeline import draw

    return draw.draw_detections(image, dets)
