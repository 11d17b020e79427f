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


def view_scale(shape: tuple[int, ...], max_side: int, min_side: int = 0) -> float:
    """Factor that fits an image of ``shape`` (H, W, ...) within ``max_side`` pixels and, for
    small images, enlarges it to ``min_side`` pixels on its longest side.

    The page shows the image at this scale; a click at (u, v) on it is (u / s, v / s) in
    pixels of the original image.
    """
    longest = max(shape[0], shape[1])
    if longest > max_side:
        return max_side / longest
    if min_side and longest < min_side:
        return min_side / longest
    return 1.0


def _resize(arr: np.ndarray, scale: float, nearest: bool = False) -> np.ndarray:
    """Resize by ``scale``: area-averaged down, bicubic up (pixel-exact nearest from 2x, so
    small images show their real pixels); masks always nearest."""
    import cv2

    if scale == 1.0:
        return arr
    h, w = arr.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if nearest:
        return cv2.resize(arr.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    interp = cv2.INTER_AREA if scale < 1 else (cv2.INTER_NEAREST if scale >= 2 else cv2.INTER_CUBIC)
    return cv2.resize(arr, size, interpolation=interp)


def sam_view(
    image: np.ndarray,
    mask: np.ndarray | None,
    prompt: Prompt,
    pending_corner: tuple[float, float] | None = None,
    max_side: int = 1024,
    min_side: int = 0,
) -> np.ndarray:
    """The SAM canvas: ``image`` with the chosen (H, W) bool ``mask`` (or none) and prompts.

    Drawn at `view_scale` so that big images stay cheap to draw and to send, and small ones
    are big enough to click on.
    """
    s = view_scale(image.shape, max_side, min_side)
    out = _resize(image, s)
    if mask is not None:
        out = overlay_mask(out, _resize(mask, s, nearest=True))
    if s != 1.0:
        prompt = Prompt(
            points=tuple((x * s, y * s) for x, y in prompt.points),
            labels=prompt.labels,
            box=tuple(v * s for v in prompt.box) if prompt.box is not None else None,
        )
        if pending_corner is not None:
            pending_corner = (pending_corner[0] * s, pending_corner[1] * s)
    return draw_prompts(out, prompt, pending_corner)


# Distinct colours for neighbouring instances (instance i gets PALETTE[i % len]); a class
# colour would paint every person the same.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 225, 25), (128, 0, 0), (170, 255, 195),
    (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 255, 255),
)


def instance_color(i: int) -> tuple[int, int, int]:
    """The RGB colour of instance ``i`` (its row in the detections table)."""
    return PALETTE[i % len(PALETTE)]


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def place_labels(
    boxes: np.ndarray, sizes: list[tuple[int, int]], width: int, height: int
) -> list[tuple[int, int, int, int]]:
    """Where to put each box's label (x1, y1, x2, y2), so that labels do not cover each other.

    ``boxes`` (N, 4) xyxy and label ``sizes`` (w, h) are in view pixels, in drawing priority
    order (first placed first). Each label tries above its box, inside its top edge, below
    it, then the right-hand versions; the first spot inside the image that touches no earlier
    label wins, else the spot with the least overlap. Returns N rectangles.
    """
    placed: list[tuple[int, int, int, int]] = []
    for (x1, y1, x2, y2), (tw, th) in zip(np.round(boxes).astype(int).tolist(), sizes, strict=True):
        spots = []
        for x in (x1, x2 - tw):
            for y in (y1 - th, y1, y2, y2 - th):
                x0 = min(max(x, 0), max(width - tw, 0))
                y0 = min(max(y, 0), max(height - th, 0))
                spots.append((x0, y0, x0 + tw, y0 + th))
        costs = [sum(_overlap(r, q) for q in placed) for r in spots]
        best = spots[int(np.argmin(costs))]
        placed.append(best)
    return placed


def detections_view(
    image: np.ndarray, dets: Detections, max_side: int = 1024, min_side: int = 0
) -> np.ndarray:
    """``image`` with ``dets`` drawn: masks, boxes and a label "#i class score" per instance,
    one colour per instance, labels placed so that they do not hide each other.

    Drawn at `view_scale` (small images enlarged) so that labels stay legible; label ``#i``
    is row ``i`` of the detections table.
    """
    import cv2

    s = view_scale(image.shape, max_side, min_side)
    out = _resize(image, s).copy()
    h, w = out.shape[:2]
    n = len(dets)
    masks = dets.masks_as_array() if dets.masks is not None and n else None
    thick = max(1, round(max(h, w) / 500))
    for i in range(n):
        color = instance_color(i)
        if masks is not None:
            m = _resize(masks[i], s, nearest=True)
            if m.any():
                solid = np.empty_like(out)
                solid[:] = color
                out = np.where(m[..., None], cv2.addWeighted(out, 0.55, solid, 0.45, 0), out)
                contours, _ = cv2.findContours(m.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(out, contours, -1, color, thick)
    out = np.ascontiguousarray(out)
    boxes = dets.boxes.astype(np.float64) * s
    for i in range(n):
        x1, y1, x2, y2 = (round(v) for v in boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), instance_color(i), thick + 1)
    names = dets.class_names or {}
    texts = [f"#{i} {names.get(int(c), str(int(c)))} {float(sc):.2f}"
             for i, (c, sc) in enumerate(zip(dets.class_ids, dets.scores, strict=True))]
    font, fscale = cv2.FONT_HERSHEY_SIMPLEX, max(0.45, min(0.8, max(h, w) / 1300))
    sizes = []
    for t in texts:
        (tw, th), base = cv2.getTextSize(t, font, fscale, 1)
        sizes.append((tw + 6, th + base + 4))
    order = np.argsort(-dets.scores, kind="stable")
    rects = place_labels(boxes[order], [sizes[i] for i in order], w, h) if n else []
    for i, (rx1, ry1, rx2, ry2) in zip(order.tolist(), rects, strict=True):
        color = instance_color(i)
        cv2.rectangle(out, (rx1, ry1), (rx2 - 1, ry2 - 1), color, -1)
        ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        cv2.putText(out, texts[i], (rx1 + 3, ry2 - 4 - 1), font, fscale, ink, 1, cv2.LINE_AA)
    return out
