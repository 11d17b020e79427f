"""Letterbox pre-processing, batched, with the inverse transform of each image.

Two placements, each matching its family bit for bit:

- ``"center"``: Ultralytics ``LetterBox(auto=False, center=True)``: ratio
  ``r = min(H / h, W / w)``; resized size ``max(round(w * r), 1) x max(round(h * r), 1)``;
  padding split as ``left = round(dw / 2 - 0.1)``, ``top = round(dh / 2 - 0.1)``. Boxes map
  back as Ultralytics' ``scale_boxes`` does: per-axis gains ``new_w / w`` and ``new_h / h``.
- ``"topleft"``: YOLOX ``preproc``: ``r = min(H / h, W / w)``; resized size
  ``int(w * r) x int(h * r)`` (truncated); image at the top-left corner; boxes map back by
  dividing by ``r`` on both axes.

Minimum rectangle (``stride``, ``"center"`` only in practice): Ultralytics'
``LetterBox(auto=True)``, what its predictor does for a model with a dynamic input size and a
batch of images of one shape. The ratio and resized size are those of the full input size; only
the padding shrinks to ``dw % stride`` and ``dh % stride`` (split as above), so the model input
is ``(new_h + dh % stride, new_w + dw % stride)``: 640x480 for a 4:3 photo at imgsz 640.

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
    orig_size: tuple[int, int],
    input_size: tuple[int, int],
    placement: str = "center",
    stride: int | None = None,
) -> LetterboxTransform:
    """The transform that fits an image of ``orig_size`` (h, w) into ``input_size`` (H, W).

    ``stride``: None for the full (H, W) input; an int for Ultralytics' minimum rectangle (the
    same resized image, padded only up to the next multiple of ``stride`` on each axis): the
    transform's ``input_size`` is then that rectangle.
    """
    h, w = orig_size
    H, W = input_size
    r = min(H / h, W / w)
    if placement == "center":
        new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    elif placement == "topleft":
        new_w, new_h = max(int(w * r), 1), max(int(h * r), 1)
    else:
        raise InputError(f"placement: expected 'center' or 'topleft', found {placement!r}")
    if stride is not None:
        if int(stride) < 1:
            raise InputError(f"stride: expected an integer >= 1, found {stride}")
        H, W = new_h + (H - new_h) % int(stride), new_w + (W - new_w) % int(stride)
    if placement == "center":
        left, top = round((W - new_w) / 2 - 0.1), round((H - new_h) / 2 - 0.1)
        gain = (new_w / w, new_h / h)
    else:
        left, top = 0, 0
        gain = (r, r)
    return LetterboxTransform(gain, (left, top), (h, w), (new_h, new_w), (H, W))


def batch_input_size(
    sizes: Sequence[tuple[int, int]],
    input_size: tuple[int, int],
    placement: str = "center",
    stride: int | None = None,
) -> tuple[int, int]:
    """The (H, W) `preprocess_batch` feeds for images of ``sizes`` (h, w): their common
    minimum rectangle when ``stride`` is given and they all have the same one, else
    ``input_size`` (as Ultralytics' predictor falls back to the full size for a mixed batch)."""
    if stride is None:
        return tuple(input_size)
    rects = {letterbox_params(s, input_size, placement, stride).input_size for s in sizes}
    return rects.pop() if len(rects) == 1 else tuple(input_size)


def letterbox(
    image: np.ndarray,
    input_size: tuple[int, int],
    placement: str = "center",
    pad_value: int = 114,
    out: np.ndarray | None = None,
    stride: int | None = None,
) -> tuple[np.ndarray, LetterboxTransform]:
    """Resize ``image`` (H, W, 3) uint8 into an (H', W', 3) canvas filled with ``pad_value``.

    ``out``: an optional (H', W', 3) uint8 array to write into (avoids an allocation).
    ``stride``: minimum rectangle instead of the full ``input_size`` (see `letterbox_params`).
    Returns the canvas and its `LetterboxTransform`.
    """
    _check_image(image)
    t = letterbox_params(image.shape[:2], input_size, placement, stride)
    new_h, new_w = t.resized
    if (new_h, new_w) != image.shape[:2]:
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = out if out is not None else np.empty((*t.input_size, 3), np.uint8)
    if canvas.shape != (*t.input_size, 3):
        raise InputError(f"out: expected shape {(*t.input_size, 3)}, found {canvas.shape}")
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
    stride: int | None = None,
) -> tuple[np.ndarray, list[LetterboxTransform]]:
    """Letterbox every image and stack them into one model input.

    Args:
        images: (H_i, W_i, 3) uint8 RGB arrays of any sizes.
        input_size: model input (height, width).
        channels: ``"RGB"`` or ``"BGR"``, the order the model expects.
        scale: multiplier of the 0-255 values (1/255 for Ultralytics, 1 for YOLOX).
        stride: for a model with a dynamic input size: feed the images' minimum rectangle
            (Ultralytics' ``rect``) when they all have the same one, else ``input_size``
            (`batch_input_size`). None: always ``input_size``.

    Returns:
        (B, 3, H, W) tensor of ``dtype`` and one `LetterboxTransform` per image (its
        ``input_size`` is the (H, W) fed).
    """
    if len(images) == 0:
        raise InputError("images: expected at least one image, found an empty list")
    for im in images:
        _check_image(im)
    size = batch_input_size([im.shape[:2] for im in images], input_size, placement, stride)
    rect = None if size == tuple(input_size) else stride
    canvases = np.empty((len(images), *size, 3), np.uint8)
    transforms = [
        letterbox(im, input_size, placement, pad_value, out=canvases[i], stride=rect)[1]
        for i, im in enumerate(images)
    ]
    order = [2, 1, 0] if channels == "BGR" else [0, 1, 2]
    tensor = np.empty((len(images), 3, *size), dtype)
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
