"""Letterbox pre-processing, batched, with the inverse transform of each image.

Two placements, each matching its family bit for bit:

- ``"center"``: Ultralytics ``LetterBox(auto=False, center=True)``: ratio
  ``r = min(H / h, W / w)``; resized size ``max(round(w * r), 1) x max(round(h * r), 1)``;
  padding split as ``left = round(dw / 2 - 0.1)``, ``top = round(dh / 2 - 0.1)``. Boxes map
  back as Ultralytics' ``scale_boxes`` does: per-axis gains ``new_w / w`` and ``new_h / h``.
- ``"topleft"``: YOLOX ``preproc``: ``r = min(H / h, W / w)``; resized size
  ``int(w * r) x int(h * r)`` (truncated); image at the top-left corner; boxes map back by
  dividing by ``r`` on both axes.

Resizing is ``cv2.resize(..., INTER_LINEAR)`` in both (as in both references), and is skipped
when the size does not change. Images are (H, W, 3) uint8 RGB; the tensor is (B, 3, H, W)
float32 in the model's channel order, times the model's scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from detseg.errors import InputError


@dataclass(frozen=True)
class LetterboxTransform:
    """How one image was placed in the model input, and how to undo it.

    Attributes:
        gain: (gain_x, gain_y): input pixels per original pixel along x and y.
        pad: (left, top) offset of the image inside the model input, in input pixels.
        orig_size: (height, width) of the original image.
        resized: (height, width) of the resized image inside the model input.
        input_size: (height, width) of the model input.
    """

    gain: tuple[float, float]
    pad: tuple[int, int]
    orig_size: tuple[int, int]
    resized: tuple[int, int]
    input_size: tuple[int, int]


def letterbox_params(
    orig_size: tuple[int, int], input_size: tuple[int, int], placement: str = "center"
) -> LetterboxTransform:
    """The transform that fits an image of ``orig_size`` (h, w) into ``input_size`` (H, W)."""
    h, w = orig_size
    H, W = input_size
    r = min(H / h, W / w)
    if placement == "center":
        new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
        left, top = round((W - new_w) / 2 - 0.1), round((H - new_h) / 2 - 0.1)
        gain = (new_w / w, new_h / h)
    elif placement == "topleft":
        new_w, new_h = max(int(w * r), 1), max(int(h * r), 1)
        left, top = 0, 0
        gain = (r, r)
    else:
        raise InputError(f"placement: expected 'center' or 'topleft', found {placement!r}")
    return LetterboxTransform(gain, (left, top), (h, w), (new_h, new_w), (H, W))


def letterbox(
    image: np.ndarray,
    input_size: tuple[int, int],
    placement: str = "center",
    pad_value: int = 114,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, LetterboxTransform]:
    """Resize ``image`` (H, W, 3) uint8 into an (H', W', 3) canvas filled with ``pad_value``.

    ``out``: an optional (H', W', 3) uint8 array to write into (avoids an allocation).
    Returns the canvas and its `LetterboxTransform`.
    """
    _check_image(image)
    t = letterbox_params(image.shape[:2], input_size, placement)
    new_h, new_w = t.resized
    if (new_h, new_w) != image.shape[:2]:
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = out if out is not None else np.empty((*input_size, 3), np.uint8)
    left, top = t.pad
    canvas[...] = pad_value
    canvas[top : top + new_h, left : left + new_w] = image
    return canvas, t


def preprocess_batch(
    images: Sequence[np.ndarray],
    input_size: tuple[int, int],
    placement: str = "center",
    pad_value: int = 114,
    channels: str = "RGB",
    scale: float = 1 / 255,
    dtype: type = np.float32,
) -> tuple[np.ndarray, list[LetterboxTransform]]:
    """Letterbox every image and stack them into one model input.

    Args:
        images: (H_i, W_i, 3) uint8 RGB arrays of any sizes.
        input_size: model input (height, width).
        channels: ``"RGB"`` or ``"BGR"``, the order the model expects.
        scale: multiplier of the 0-255 values (1/255 for Ultralytics, 1 for YOLOX).

    Returns:
        (B, 3, H, W) tensor of ``dtype`` and one `LetterboxTransform` per image.
    """
    if len(images) == 0:
        raise InputError("images: expected at least one image, found an empty list")
    canvases = np.empty((len(images), *input_size, 3), np.uint8)
    transforms = [
        letterbox(im, input_size, placement, pad_value, out=canvases[i])[1]
        for i, im in enumerate(images)
    ]
    order = [2, 1, 0] if channels == "BGR" else [0, 1, 2]
    tensor = np.empty((len(images), 3, *input_size), dtype)
    for dst, src in enumerate(order):
        if scale == 1:
            tensor[:, dst] = canvases[..., src]
        else:
            np.multiply(canvases[..., src], dtype(scale), out=tensor[:, dst], casting="unsafe")
    return tensor, transforms


def boxes_to_original(
    boxes: np.ndarray, transform: LetterboxTransform, clip: bool = True
) -> np.ndarray:
    """Map (N, 4) xyxy boxes from model-input pixels to original-image pixels.

    Same arithmetic as Ultralytics' ``scale_boxes`` (subtract the pad, divide by the gain, clip
    to the image); returns a new float32 array.
    """
    out = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    left, top = transform.pad
    gx, gy = transform.gain
    out[:, [0, 2]] = (out[:, [0, 2]] - left) / gx
    out[:, [1, 3]] = (out[:, [1, 3]] - top) / gy
    if clip:
        h, w = transform.orig_size
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise InputError(f"image: expected an (H, W, 3) uint8 RGB array, found {shape}")
    if image.dtype != np.uint8:
        raise InputError(f"image: expected dtype uint8, found {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image: expected a non-empty image, found shape {image.shape}")
