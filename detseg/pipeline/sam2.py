"""SAM 2 under onnxruntime, with no torch, behind the `SamPredictor` interface.

`SamPredictor.load` returns a `Sam2Predictor` when the ONNX metadata says
``sam_generation = "2"`` (files from `detseg.weights.export_sam2`); `set_image`, `embed`,
`predict(embedding=...)` and the embedding cache work as for SAM 1. What differs, following
sam2's `SAM2Transforms` and `SAM2ImagePredictor`:

- the image is resized to image_size x image_size (1024) without keeping its aspect ratio, on
  float pixels in [0, 1] with an antialiased bilinear filter (`resize_square`); prompts are
  scaled per axis (x * S / w, y * S / h);
- the embedding carries the two high-resolution feature maps beside the image embedding
  (`Sam2Embedding`);
- a box goes before the points, and one padding point (0, 0) labelled -1 always follows;
- the decoder returns low-resolution logits for the four mask tokens; the single-mask answer
  is token 0 unless its stability score is below the threshold, then the best multimask token
  (sam2's "dynamic multimask via stability"); masks are the logits upsampled bilinearly to the
  original size (`upsample_logits`), thresholded at mask_threshold; the returned low-res logits
  are clamped to [-32, 32].

Prompts and masks are in original-image pixels: x to the right, y down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from detseg.errors import ModelError
from detseg.pipeline.sam import SamEmbedding, SamPrediction, SamPredictor, check_prompts

GENERATION_KEY = "sam_generation"
LOW_RES_CLAMP = 32.0


@dataclass(frozen=True)
class Sam2Embedding(SamEmbedding):
    """The SAM 2 encoder's output for one image.

    features: (1, C, E, E) float32 image embedding (E = image_size / 16).
    original_size: (h, w) of the image that was embedded.
    high_res_features: ((1, C/8, 4E, 4E), (1, C/4, 2E, 2E)) float32.
    """

    high_res_features: tuple[np.ndarray, np.ndarray] = ()


def is_sam2(metadata: dict[str, str]) -> bool:
    """True for the metadata of ONNX files written by `detseg.weights.export_sam2`."""
    return metadata.get(GENERATION_KEY) == "2"


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (size, size, 3) float32 in [0, 1], aspect ratio not kept.

    Per-channel PIL bilinear resampling on float pixels: the antialiased bilinear filter that
    torchvision's `Resize` applies in sam2's `SAM2Transforms` (PIL's algorithm, which torch's
    antialiased interpolation was ported from); equal to it within ~1e-6.
    """
    pixels = image.astype(np.float32) / np.float32(255.0)
    channels = [
        np.asarray(Image.fromarray(pixels[..., c], mode="F").resize((size, size), Image.BILINEAR))
        for c in range(3)
    ]
    return np.ascontiguousarray(np.stack(channels, axis=-1), dtype=np.float32)


def _linear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear interpolation (align_corners=False)."""
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def upsample_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(M, L, L) float32 -> (M, h, w) float32, bilinear with align_corners=False.

    What sam2's `postprocess_masks` does with `F.interpolate` (no holes/sprinkles removal:
    the predictor's defaults), in numpy: along x first, then along y.
    """
    h, w = size
    x0, x1, wx = _linear_taps(w, logits.shape[-1])
    y0, y1, wy = _linear_taps(h, logits.shape[-2])
    rows = logits[..., x0] * (1 - wx) + logits[..., x1] * wx  # (M, L, w)
    return rows[:, y0, :] * (1 - wy)[:, None] + rows[:, y1, :] * wy[:, None]


def stability_scores(logits: np.ndarray, delta: float) -> np.ndarray:
    """(M, L, L) logits -> (M,) IoU of the masks thresholded at +delta and -delta."""
    flat = logits.reshape(len(logits), -1)
    inter = (flat > delta).sum(-1).astype(np.float32)
    union = (flat > -delta).sum(-1).astype(np.float32)
    return np.where(union > 0, inter / np.maximum(union, 1), np.float32(1.0))


class Sam2Predictor(SamPredictor):
    """SAM 2 image predictor on onnxruntime; the same calls as `SamPredictor`.

    `encoder` / `decoder`: sessions (or anything with `run(feeds)` and a `metadata` dict) of the
    files written by `detseg.weights.export_sam2`; `SamPredictor.load` opens them.
    """

    def __init__(self, encoder: Any, decoder: Any, cache_size: int = 8) -> None:
        meta = dict(getattr(encoder, "metadata", None) or {})
        if not is_sam2(meta):
            raise ModelError(
                f"{getattr(encoder, 'path', 'SAM encoder')}: metadata {GENERATION_KEY} should be "
                f"'2', found {meta.get(GENERATION_KEY)!r}; export with `detseg export sam2.1_...`"
            )
        super().__init__(encoder, decoder, cache_size=cache_size)
        self.dynamic_multimask = meta.get("dynamic_multimask_via_stability", "False") == "True"
        self.stability_delta = float(meta.get("dynamic_multimask_stability_delta", 0.05))
        self.stability_thresh = float(meta.get("dynamic_multimask_stability_thresh", 0.98))

    def _encode(self, image: np.ndarray) -> Sam2Embedding:
        resized = resize_square(image, self.image_size)
        embed, feats0, feats1 = self._encoder.run({"image": resized})[:3]
        f32 = np.float32
        return Sam2Embedding(embed.astype(f32, copy=False), image.shape[:2],
                             (feats0.astype(f32, copy=False), feats1.astype(f32, copy=False)))

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        embedding: SamEmbedding | None = None,
    ) -> SamPrediction:
        """Masks for one prompt; arguments and result as `SamPredictor.predict`."""
        current = embedding if embedding is not None else self._require_image()
        if not isinstance(current, Sam2Embedding):
            raise ModelError(
                "predict: this embedding comes from a SAM 1 encoder; embed the image with this "
                "SAM 2 predictor's embed()"
            )
        point_coords, point_labels, box, mask_input = check_prompts(
            point_coords, point_labels, box, mask_input, self.low_res_size
        )
        coords, labels = sam2_prompt_arrays(
            point_coords, point_labels, box, current.original_size, self.image_size
        )
        has_mask = mask_input is not None
        if mask_input is None:
            mask_input = np.zeros((1, self.low_res_size, self.low_res_size), np.float32)
        iou, low_res = self._decoder.run(
            {
                "image_embed": current.features,
                "high_res_feats_0": current.high_res_features[0],
                "high_res_feats_1": current.high_res_features[1],
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": mask_input[None],
                "has_mask_input": np.array([float(has_mask)], np.float32),
            }
        )[:2]
        picked = self._pick_tokens(low_res[0], iou[0], multimask_output)
        logits = low_res[0, picked]
        masks = upsample_logits(logits, current.original_size) > self.mask_threshold
        return SamPrediction(
            masks=masks,
            scores=iou[0, picked].astype(np.float32, copy=False),
            low_res_logits=np.clip(logits, -LOW_RES_CLAMP, LOW_RES_CLAMP).astype(np.float32),
        )

    def _pick_tokens(self, low_res: np.ndarray, iou: np.ndarray, multimask: bool) -> list[int]:
        """Mask token indices: 1..3 for multimask, else 0 or (unstable) the best of 1..3."""
        if multimask:
            return [1, 2, 3]
        if self.dynamic_multimask:
            stable = stability_scores(low_res[:1], self.stability_delta)[0] >= self.stability_thresh
            if not stable:
                return [1 + int(np.argmax(iou[1:]))]
        return [0]


def sam2_prompt_arrays(
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    box: np.ndarray | None,
    original_size: tuple[int, int],
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs (1, K, 2) coords in the size x size frame and (1, K) labels, float32.

    sam2's order: box corners (labels 2, 3) first, then the points, then one padding point
    (0, 0) labelled -1. Coordinates are scaled as sam2 does, in float32: x / w * size.
    """
    h, w = original_size
    parts, labels = [], []
    if box is not None:
        parts.append(np.asarray(box, np.float32).reshape(2, 2))
        labels.append(np.array([2.0, 3.0], np.float32))
    if point_coords is not None:
        parts.append(np.asarray(point_coords, np.float32).reshape(-1, 2))
        labels.append(np.asarray(point_labels, np.float32).reshape(-1))
    coords = np.concatenate(parts).astype(np.float32)
    coords = coords / np.array([w, h], np.float32) * np.float32(size)
    coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
    labels = np.concatenate([*labels, np.array([-1.0], np.float32)])
    return coords[None].astype(np.float32), labels[None].astype(np.float32)
