"""Segment Anything under onnxruntime, with no torch: `set_image()` once, `predict()` many times.

The two ONNX files come from `detseg.weights.export_sam`:
- encoder: input `image` uint8 (h, w, 3) RGB, already resized so that its longest side is the
  model's `image_size` (`resize_longest_side` below, the same PIL bilinear resize as
  segment-anything's `ResizeLongestSide.apply_image`); the graph normalises with SAM's pixel
  mean/std and pads bottom/right to `image_size` square. Output `image_embeddings`
  (1, C, E, E), E = image_size / 16.
- decoder: segment-anything's `SamOnnxModel` with all four mask tokens returned: inputs
  `image_embeddings`, `point_coords` (1, N, 2) float32 in the resized frame, `point_labels`
  (1, N) float32 (1 positive, 0 negative, 2/3 box corners, -1 padding point), `mask_input`
  (1, 1, L, L), `has_mask_input` (1,), `orig_im_size` (2,) float32 (h, w); outputs `masks`
  (1, 4, H, W) logits at original resolution, `iou_predictions` (1, 4), `low_res_masks`
  (1, 4, L, L), L = image_size / 4. As in segment-anything's `SamPredictor`, mask token 0 is
  the single-mask answer and tokens 1..3 the multimask answers.

Prompts and masks are in original-image pixels: x to the right, y down.

SAM 2 exports (metadata ``sam_generation = "2"``, `detseg.weights.export_sam2`) have other
inputs and outputs; `SamPredictor.load` returns a `detseg.pipeline.sam2.Sam2Predictor` for them,
a subclass with the same calls.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detseg.errors import InputError, ModelError
from detseg.pipeline.session import Session

ENCODER_TASK = "sam_encoder"
DECODER_TASK = "sam_decoder"
#: Decoder metadata key: "dynamic" when `point_coords` takes a batch of prompts (B, N, 2).
PROMPT_BATCH_KEY = "prompt_batch"


@dataclass(frozen=True)
class SamPrediction:
    """Masks for one prompt.

    masks: (M, H, W) bool at the original image resolution; M = 3 (multimask) or 1.
    scores: (M,) float32, the model's predicted IoU of each mask.
    low_res_logits: (M, L, L) float32 logits, L = image_size / 4 (256 for the official models);
        pass one of them back as `mask_input` (shape (1, L, L)) to refine a mask.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


@dataclass(frozen=True)
class SamBatchPrediction:
    """Masks for a batch of B prompts on one image (one decoder run).

    masks: (B, M, H, W) at the original image resolution: bool, or float32 logits when asked
        for (`return_logits=True`; threshold them at `SamPredictor.mask_threshold`).
    scores: (B, M) float32 predicted IoU; low_res_logits: (B, M, L, L) float32.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


@dataclass(frozen=True)
class SamEmbedding:
    """The encoder's output for one image.

    features: (1, C, E, E) float32, E = image_size / 16.
    original_size: (h, w) of the image that was embedded.
    """

    features: np.ndarray
    original_size: tuple[int, int]


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to `long_side` (segment-anything's rounding)."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an RGB uint8 (H, W, 3) image so that its longest side is `long_side`.

    PIL bilinear, exactly what segment-anything's `ResizeLongestSide.apply_image` does through
    torchvision; returns uint8 (h, w, 3).
    """
    h, w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def transform_coords(
    coords: np.ndarray, original_size: tuple[int, int], long_side: int
) -> np.ndarray:
    """Map (..., 2) xy pixel coordinates of the original image into the resized frame (float64)."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    out = np.array(coords, dtype=np.float64)
    out[..., 0] *= new_w / old_w
    out[..., 1] *= new_h / old_h
    return out


def prompt_arrays(
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    box: np.ndarray | None,
    original_size: tuple[int, int],
    long_side: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs (1, N, 2) coords and (1, N) labels, float32, from checked prompts.

    A box becomes its two corners with labels 2 and 3; without a box a padding point (0, 0)
    labelled -1 is appended, as segment-anything's prompt encoder does.
    """
    coords = np.zeros((0, 2))
    labels = np.zeros((0,))
    if point_coords is not None:
        coords = transform_coords(point_coords, original_size, long_side)
        labels = np.asarray(point_labels, dtype=np.float64)
    if box is not None:
        corners = transform_coords(np.asarray(box).reshape(2, 2), original_size, long_side)
        coords = np.concatenate([coords, corners])
        labels = np.concatenate([labels, [2.0, 3.0]])
    else:
        coords = np.concatenate([coords, np.zeros((1, 2))])
        labels = np.concatenate([labels, [-1.0]])
    return coords[None].astype(np.float32), labels[None].astype(np.float32)


def batch_prompt_arrays(
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    boxes: np.ndarray | None,
    original_size: tuple[int, int],
    long_side: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs (B, N, 2) coords and (B, N) labels, float32, for B prompts at once.

    point_coords (B, K, 2) xy pixels with point_labels (B, K); boxes (B, 4) xyxy pixels. Row b
    is exactly what `prompt_arrays` makes of prompt b.
    """
    n = len(boxes) if boxes is not None else len(point_coords)
    coords = np.zeros((n, 0, 2))
    labels = np.zeros((n, 0))
    if point_coords is not None:
        coords = transform_coords(point_coords, original_size, long_side)
        labels = np.asarray(point_labels, dtype=np.float64)
    if boxes is not None:
        corners = transform_coords(np.asarray(boxes).reshape(n, 2, 2), original_size, long_side)
        coords = np.concatenate([coords, corners], axis=1)
        labels = np.concatenate([labels, np.tile([[2.0, 3.0]], (n, 1))], axis=1)
    else:
        coords = np.concatenate([coords, np.zeros((n, 1, 2))], axis=1)
        labels = np.concatenate([labels, np.full((n, 1), -1.0)], axis=1)
    return coords.astype(np.float32), labels.astype(np.float32)


def check_batch_prompts(
    point_coords: Any, point_labels: Any, boxes: Any
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate a batch of prompts; raise InputError naming the argument and the shapes."""
    if point_coords is None and boxes is None:
        raise InputError("predict_batch: give point_coords (with point_labels) or boxes (or both)")
    if (point_coords is None) != (point_labels is None):
        raise InputError("predict_batch: give point_coords and point_labels together")
    n = None
    if boxes is not None:
        boxes = _finite("boxes", boxes)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InputError(
                f"predict_batch: boxes must have shape (B, 4) (x1, y1, x2, y2), found {boxes.shape}"
            )
        n = len(boxes)
    if point_coords is not None:
        point_coords = _finite("point_coords", point_coords)
        point_labels = np.asarray(point_labels)
        if point_coords.ndim != 3 or point_coords.shape[2] != 2 or (
            n is not None and len(point_coords) != n
        ):
            want = f"({'B' if n is None else n}, K, 2)"
            raise InputError(
                f"predict_batch: point_coords must have shape {want} (x, y pixels), "
                f"found {point_coords.shape}"
            )
        if point_labels.shape != point_coords.shape[:2]:
            raise InputError(
                f"predict_batch: point_labels must have shape {point_coords.shape[:2]} to match "
                f"point_coords {point_coords.shape}, found {point_labels.shape}"
            )
        if not np.isin(point_labels, (0, 1)).all():
            raise InputError("predict_batch: point_labels must be 1 (positive) or 0 (negative)")
    return point_coords, point_labels, boxes


def check_prompts(
    point_coords: Any, point_labels: Any, box: Any, mask_input: Any, low_res_size: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate prompt arrays; raise InputError naming the argument, expected and found shapes."""
    if point_coords is None and box is None:
        raise InputError("predict: give point_coords (with point_labels) or box (or both)")
    if (point_coords is None) != (point_labels is None):
        given, missing = ("point_coords", "point_labels")
        if point_coords is None:
            given, missing = missing, given
        raise InputError(f"predict: {given} was given without {missing}; give both or neither")
    if point_coords is not None:
        point_coords = _finite("point_coords", point_coords)
        point_labels = np.asarray(point_labels)
        if point_coords.ndim != 2 or point_coords.shape[1] != 2 or len(point_coords) == 0:
            raise InputError(
                f"predict: point_coords must have shape (K, 2) with K >= 1 (x, y pixels), "
                f"found {point_coords.shape}"
            )
        if point_labels.shape != (len(point_coords),):
            raise InputError(
                f"predict: point_labels must have shape ({len(point_coords)},) to match "
                f"point_coords {point_coords.shape}, found {point_labels.shape}"
            )
        if not np.isin(point_labels, (0, 1)).all():
            raise InputError(
                f"predict: point_labels must be 1 (positive) or 0 (negative), "
                f"found {sorted(set(np.unique(point_labels).tolist()))}"
            )
    if box is not None:
        box = _finite("box", box)
        if box.shape not in ((4,), (1, 4)):
            raise InputError(
                f"predict: box must have shape (4,) (x1, y1, x2, y2), found {box.shape}"
            )
        box = box.reshape(4)
    if mask_input is not None:
        mask_input = _finite("mask_input", mask_input).astype(np.float32)
        want = (1, low_res_size, low_res_size)
        if mask_input.shape != want:
            raise InputError(
                f"predict: mask_input must have shape {want} (low-res logits of an earlier "
                f"prediction), found {mask_input.shape}"
            )
    return point_coords, point_labels, box, mask_input


def _finite(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"predict: {name} must be numeric, found {type(value).__name__}") from exc
    if not np.isfinite(arr).all():
        raise InputError(f"predict: {name} has NaN or infinite values")
    return arr


def _open_session(path: Path, device: str, threads: int | None = None) -> Session:
    return Session(path, device=device, threads=threads)


def _session_metadata(session: Any) -> dict[str, str]:
    meta = getattr(session, "metadata", None)
    return dict(meta) if meta is not None else {}


class SamPredictor:
    """Segment Anything on onnxruntime: `set_image()` once, then `predict()` per prompt.

    Image embeddings are cached per image content (a bounded LRU of `cache_size` entries), so
    going back to an earlier image costs no encoder run. Several users of one predictor (a web
    app) can each keep the `SamEmbedding` returned by `embed()` and pass it to `predict()`
    instead of sharing the "current image" of `set_image()`.

    `encoder` and `decoder` are `detseg.pipeline.session.Session`s (or anything with
    `run(feeds) -> list[np.ndarray]` and a `metadata` dict); `load()` opens them from files.
    """

    def __init__(self, encoder: Any, decoder: Any, cache_size: int = 8) -> None:
        self._encoder = encoder
        self._decoder = decoder
        self.metadata = _session_metadata(encoder)
        if type(self) is SamPredictor and self.metadata.get("sam_generation", "1") != "1":
            raise ModelError(
                f"{getattr(encoder, 'path', 'SAM encoder')}: a SAM {self.metadata['sam_generation']}"
                f" export; open it with SamPredictor.load (or detseg.pipeline.sam2.Sam2Predictor)"
            )
        #: whether the decoder takes a batch of prompts in one run (see `predict_batch`)
        self.batches_prompts = _session_metadata(decoder).get(PROMPT_BATCH_KEY) == "dynamic"
        if "image_size" not in self.metadata:
            raise ModelError(
                f"{getattr(encoder, 'path', 'SAM encoder')}: metadata has no image_size; "
                f"export SAM with `detseg export`"
            )
        self.image_size = int(self.metadata["image_size"])
        self.mask_threshold = float(self.metadata.get("mask_threshold", 0.0))
        self.low_res_size = int(self.metadata.get("low_res_size", self.image_size // 4))
        if cache_size < 1:
            raise InputError(f"cache_size: expected >= 1, found {cache_size}")
        self._cache: OrderedDict[str, SamEmbedding] = OrderedDict()
        self._cache_size = cache_size
        self._current: SamEmbedding | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        encoder_path: str | Path,
        decoder_path: str | Path,
        device: str = "auto",
        cache_size: int = 8,
        threads: int | None = None,
    ) -> SamPredictor:
        """Open the two ONNX files written by `detseg.weights.export_sam.export_sam`.

        device: "auto", "cpu", "cuda" or "tensorrt" (see `detseg.pipeline.session`);
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        """
        sessions = []
        for path, task in ((Path(encoder_path), ENCODER_TASK), (Path(decoder_path), DECODER_TASK)):
            if not path.is_file():
                raise InputError(f"{path}: SAM {task.split('_')[1]} ONNX file not found")
            session = _open_session(path, device, threads)
            meta = _session_metadata(session)
            if meta.get("detseg_task") != task:
                raise ModelError(
                    f"{path}: metadata detseg_task should be {task!r}, found "
                    f"{meta.get('detseg_task')!r}; export SAM with `detseg export`"
                )
            sessions.append((path, session, meta))
        (enc_path, enc, enc_meta), (dec_path, dec, dec_meta) = sessions
        for key in ("image_size", "arch", "sam_generation"):
            if enc_meta.get(key) != dec_meta.get(key):
                raise ModelError(
                    f"{enc_path} and {dec_path} come from different SAM models: {key} "
                    f"{enc_meta.get(key)!r} vs {dec_meta.get(key)!r}"
                )
        if enc_meta.get("sam_generation", "1") == "2":  # SAM 2: own resize, features, decoder
            from detseg.pipeline.sam2 import Sam2Predictor

            return Sam2Predictor(enc, dec, cache_size=cache_size)
        return cls(enc, dec, cache_size=cache_size)

    @property
    def providers(self) -> list[str]:
        return list(getattr(self._encoder, "providers", []))

    @property
    def arch(self) -> dict[str, Any]:
        """The architecture sizes stored in the ONNX metadata."""
        return json.loads(self.metadata.get("arch", "{}"))

    @property
    def is_image_set(self) -> bool:
        return self._current is not None

    def reset_image(self) -> None:
        """Forget the current image (cached embeddings stay)."""
        self._current = None

    def clear_cache(self) -> None:
        """Drop every cached embedding and the current image."""
        with self._lock:
            self._cache.clear()
        self._current = None

    def set_image(self, image: np.ndarray) -> None:
        """Make an RGB uint8 (H, W, 3) image the current one (its embedding from the cache or
        the encoder)."""
        self._current = self.embed(image)

    def embed(self, image: np.ndarray) -> SamEmbedding:
        """The embedding of an RGB uint8 (H, W, 3) image, from the cache or the encoder."""
        image = _check_image(image)
        digest = hashlib.blake2b(np.asarray(image.shape, np.int64).tobytes(), digest_size=16)
        digest.update(image.data)
        key = digest.hexdigest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        embedding = self._encode(image)
        with self._lock:
            self._cache[key] = embedding
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return embedding

    def _encode(self, image: np.ndarray) -> SamEmbedding:
        """Run the encoder on a checked (H, W, 3) uint8 image (no cache)."""
        resized = np.ascontiguousarray(resize_longest_side(image, self.image_size))
        (features,) = self._encoder.run({"image": resized})[:1]
        return SamEmbedding(features.astype(np.float32, copy=False), image.shape[:2])

    @property
    def image_embedding(self) -> np.ndarray:
        """(1, C, E, E) float32 embedding of the current image."""
        return self._require_image().features

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        embedding: SamEmbedding | None = None,
    ) -> SamPrediction:
        """Masks for one prompt on the current image.

        point_coords: (K, 2) xy in original-image pixels; point_labels: (K,) 1 positive, 0
        negative. box: (4,) xyxy in original-image pixels. mask_input: (1, L, L) low-res logits
        from an earlier `SamPrediction.low_res_logits[i:i + 1]`. multimask_output: three masks
        (for ambiguous prompts such as one click) or the single best-guess mask.
        embedding: an image's `embed()` result to use instead of the current image.
        """
        current = embedding if embedding is not None else self._require_image()
        point_coords, point_labels, box, mask_input = check_prompts(
            point_coords, point_labels, box, mask_input, self.low_res_size
        )
        coords, labels = prompt_arrays(
            point_coords, point_labels, box, current.original_size, self.image_size
        )
        has_mask = mask_input is not None
        if mask_input is None:
            mask_input = np.zeros((1, self.low_res_size, self.low_res_size), np.float32)
        masks, scores, low_res = self._decoder.run(
            {
                "image_embeddings": current.features,
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": mask_input[None],
                "has_mask_input": np.array([float(has_mask)], np.float32),
                "orig_im_size": np.array(current.original_size, np.float32),
            }
        )[:3]
        pick = slice(1, None) if multimask_output else slice(0, 1)
        return SamPrediction(
            masks=masks[0, pick] > self.mask_threshold,
            scores=scores[0, pick].astype(np.float32, copy=False),
            low_res_logits=low_res[0, pick].astype(np.float32, copy=False),
        )

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        multimask_output: bool = True,
        embedding: SamEmbedding | None = None,
        return_logits: bool = False,
    ) -> SamBatchPrediction:
        """Masks for B prompts on one image, in one decoder run.

        point_coords: (B, K, 2) xy in original-image pixels with point_labels (B, K) (1
        positive, 0 negative); boxes: (B, 4) xyxy in original-image pixels; give either or
        both (then B matches). Prompt b gives what `predict` gives for it (segment-anything's
        `SamPredictor.predict_torch`). No mask input: refine masks one at a time with `predict`.
        return_logits: masks as float32 logits instead of bool.
        A decoder exported without a prompt batch axis (metadata `prompt_batch`) is run once
        per prompt, with the same result.
        """
        current = embedding if embedding is not None else self._require_image()
        point_coords, point_labels, boxes = check_batch_prompts(point_coords, point_labels, boxes)
        coords, labels = batch_prompt_arrays(
            point_coords, point_labels, boxes, current.original_size, self.image_size
        )
        feeds = {
            "image_embeddings": current.features,
            "mask_input": np.zeros((1, 1, self.low_res_size, self.low_res_size), np.float32),
            "has_mask_input": np.zeros((1,), np.float32),
            "orig_im_size": np.array(current.original_size, np.float32),
        }
        pick = slice(1, None) if multimask_output else slice(0, 1)
        h, w = current.original_size
        if len(coords) == 0:
            m = 3 if multimask_output else 1
            l_ = self.low_res_size
            return SamBatchPrediction(
                np.zeros((0, m, h, w), np.float32 if return_logits else bool),
                np.zeros((0, m), np.float32), np.zeros((0, m, l_, l_), np.float32)
            )
        step = len(coords) if self.batches_prompts else 1
        parts = []
        for i in range(0, len(coords), step):
            masks, scores, low_res = self._decoder.run(
                {**feeds, "point_coords": coords[i:i + step], "point_labels": labels[i:i + step]}
            )[:3]
            masks = masks[:, pick]
            masks = masks if return_logits else masks > self.mask_threshold
            parts.append((masks, scores[:, pick], low_res[:, pick]))
        masks, scores, low_res = (
            parts[0] if len(parts) == 1 else [np.concatenate(p) for p in zip(*parts, strict=True)]
        )
        return SamBatchPrediction(
            masks=masks if not return_logits else masks.astype(np.float32, copy=False),
            scores=scores.astype(np.float32, copy=False),
            low_res_logits=low_res.astype(np.float32, copy=False),
        )

    def _require_image(self) -> SamEmbedding:
        if self._current is None:
            raise RuntimeError("No image set: call SamPredictor.set_image(image) before predict().")
        return self._current


def _check_image(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"set_image: image must be RGB with shape (H, W, 3), found {arr.shape}")
    if arr.dtype != np.uint8:
        raise InputError(f"set_image: image must be uint8 (0-255), found dtype {arr.dtype}")
    return np.ascontiguousarray(arr)
