"""Drawing detections on images: boxes, labels and translucent mask overlays.

Pure functions on arrays: images are (H, W, 3) uint8 **RGB**; boxes come from a `Detections`
(xyxy, pixels of that image). Used by `detseg predict --save-images` and the web demo.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from detseg.detections import Detections
from detseg.errors import InputError

# A fixed palette (Ultralytics-like hues) so that a class keeps its colour across images.
_PALETTE = np.array(
    [(255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49),
     (72, 249, 10), (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187),
     (44, 153, 168), (0, 194, 255), (52, 69, 147), (100, 115, 255), (0, 24, 236),
     (132, 56, 255), (82, 0, 133), (203, 56, 255), (255, 149, 200), (255, 55, 199)],
    dtype=np.uint8,
)


def color_for(class_id: int) -> tuple[int, int, int]:
    """The RGB colour of a class id."""
    r, g, b = _PALETTE[int(class_id) % len(_PALETTE)]
    return int(r), int(g), int(b)


def label_for(class_id: int, score: float | None, names: Mapping[int, str] | None) -> str:
    """``"name 0.87"`` (falls back to the class id when the name is unknown)."""
    name = names.get(int(class_id), str(int(class_id))) if names else str(int(class_id))
    return name if score is None else f"{name} {score:.2f}"


def draw_detections(
    image: np.ndarray,
    det: Detections,
    names: Mapping[int, str] | None = None,
    *,
    mask_alpha: float = 0.45,
    show_scores: bool = True,
) -> np.ndarray:
    """A copy of ``image`` with ``det`` drawn on it.

    Args:
        image: (H, W, 3) uint8 RGB.
        det: detections of that image; masks, when present, must be (N, H, W) or RLE of the
            same size.
        names: class id -> name for labels (defaults to ``det.class_names``).
        mask_alpha: opacity of mask overlays.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image: expected (H, W, 3) uint8 RGB, found {image.shape} {image.dtype}")
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    names = names if names is not None else det.class_names
    if det.masks is not None and len(det):
        masks = det.masks_as_array()
        if masks.shape[1:] != (h, w):
            raise InputError(f"det.masks: expected (N, {h}, {w}) to match the image, found {masks.shape}")
        # Paint lowest score first so that the most confident instance ends up on top.
        for i in np.argsort(det.scores, kind="stable"):
            m = masks[i]
            color = np.array(color_for(det.class_ids[i]), np.float32)
            out[m] = (out[m] * (1 - mask_alpha) + color * mask_alpha).astype(np.uint8)
    thickness = max(1, round((h + w) / 600))
    font_scale = max(0.4, thickness / 3)
    for i in range(len(det)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in det.boxes[i])
        color = color_for(det.class_ids[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_8)
        text = label_for(det.class_ids[i], float(det.scores[i]) if show_scores else None, names)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2  # inside when at the top
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 1), color, -1)
        lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        ink = (0, 0, 0) if lum > 140 else (255, 255, 255)
        cv2.putText(out, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink,
                    1, cv2.LINE_AA)
    return out


def save_annotated(
    path: str | Path, image: np.ndarray, det: Detections, names: Mapping[int, str] | None = None
) -> Path:
    """Draw ``det`` on ``image`` (RGB) and write it to ``path`` (format from the extension)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn = draw_detections(image, det, names)
    try:
        ok = cv2.imwrite(str(path), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    except cv2.error as exc:
        raise InputError(f"{path}: could not write the annotated image: {exc.err}") from None
    if not ok:
        raise InputError(f"{path}: could not write the annotated image (disk full or no access?)")
    return path
