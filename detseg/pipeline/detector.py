"""`Detector`: load an ONNX detector or segmenter once, run it on many images.

    >>> det = Detector.load("yolox_nano.onnx", head="yolox")
    >>> [dets] = det.predict([read_image("bus.jpg")], conf=0.25)

The three stages are also public so that a batch runner can overlap them in threads
(onnxruntime releases the GIL while it runs; cv2 and numpy release it for the heavy parts):

    tensor, transforms = det.preprocess(images)   # letterbox, stack
    outputs = det.infer(tensor)                   # onnxruntime
    dets = det.postprocess(outputs, transforms, conf=0.25, iou=0.45, max_det=300)

`predict` is exactly those three calls, on the images grouped by input size (below) and
chunked by `Detector.batch_size`.

Input size. A model with a fixed input (H, W) is fed that. An Ultralytics model whose input
height and width are dynamic (``export(dynamic=True)``) is fed what Ultralytics' own predictor
feeds it by default (``rect``): each image letterboxed at the ratio of ``imgsz`` but padded only
to the next multiple of the stride (640x480 for a 4:3 photo at 640: 25 % fewer pixels).
`preprocess` does that when all its images need the same rectangle, and feeds ``imgsz`` to a
batch that mixes rectangles (Ultralytics does the same for a batch of mixed shapes);
`predict` groups images by `input_size_for`, so that every image gets its rectangle and its
result does not depend on the other images of the call: the same as Ultralytics' predictor
given that image alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detseg.detections import Detections
from detseg.errors import InputError, ModelError
from detseg.pipeline import heads
from detseg.pipeline.meta import ModelMeta, resolve_meta
from detseg.pipeline.postprocess import select
from detseg.pipeline.preprocess import (
    LetterboxTransform,
    batch_input_size,
    boxes_to_original,
    preprocess_batch,
)
from detseg.pipeline.session import Session

DEFAULT_DYNAMIC_BATCH = 8


class Detector:
    """An ONNX detection/segmentation model with its pre- and post-processing.

    Attributes:
        meta: the `ModelMeta` in use (family, task, names, imgsz, ...).
        session: the underlying `Session`.
        providers: onnxruntime execution providers actually in use.
        batch_size: images per model call (the model's fixed batch, or a chunk size for
            dynamic-batch models).
    """

    def __init__(self, session: Session, meta: ModelMeta, batch_size: int | None = None) -> None:
        self.session = session
        self.meta = meta
        self.fixed_batch = session.batch_size
        self.batch_size = self.fixed_batch or int(batch_size or DEFAULT_DYNAMIC_BATCH)
        self._check_input()
        shape = session.input_shape
        dynamic_hw = all(not (isinstance(d, int) and d > 0) for d in shape[2:4])
        #: stride of the minimum-rectangle letterbox, or None (always ``meta.imgsz``)
        self.rect_stride: int | None = (
            int(meta.stride)
            if dynamic_hw and meta.family == "ultralytics" and meta.letterbox == "center"
            else None
        )

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        head: str | None = None,
        device: str = "auto",
        names: Sequence[str] | Mapping[int, str] | None = None,
        imgsz: int | Sequence[int] | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
    ) -> Detector:
        """Load an ONNX model.

        Args:
            model: path of the .onnx file.
            head: ``"ultralytics"`` or ``"yolox"``; None reads it from the model's metadata or
                its sidecar ``<stem>.detseg.json`` (see `detseg.pipeline.meta`).
            device: ``"auto"`` (CUDA when it really loads, else CPU), ``"cpu"``, ``"cuda"``,
                or ``"tensorrt"``.
            names: class names overriding the model's.
            imgsz: input (height, width) or one int, for models with a dynamic input size.
            threads: onnxruntime intra-op threads (None: onnxruntime's default, all cores).
            batch_size: images per call for dynamic-batch models (default 8).
        """
        session = Session(model, device=device, threads=threads)
        meta = resolve_meta(Path(model), session.metadata, session.input_shape, head, names, imgsz)
        return cls(session, meta, batch_size)

    @property
    def providers(self) -> list[str]:
        return self.session.providers

    # ---- stages -------------------------------------------------------------------------
    def preprocess(
        self, images: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[LetterboxTransform]]:
        """Letterbox and stack (H_i, W_i, 3) uint8 RGB images -> ((B, 3, H, W) tensor, transforms).

        (H, W) is ``meta.imgsz``, or, for a dynamic-size Ultralytics model, the images' common
        minimum rectangle when they share one (see the module docstring).
        """
        m = self.meta
        return preprocess_batch(
            images,
            m.imgsz,
            m.letterbox,
            m.pad_value,
            m.channels,
            m.scale,
            self.session.input_dtype,
            stride=self.rect_stride,
        )

    def input_size_for(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The model input (H, W) an image of ``image_size`` (h, w) gets when batched with
        images that get the same: a key to group a stream of images by."""
        m = self.meta
        h, w = image_size[:2]
        if h < 1 or w < 1:  # not an image: `preprocess` rejects it with the reason
            return tuple(m.imgsz)
        return batch_input_size([(h, w)], m.imgsz, m.letterbox, self.rect_stride)

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model on a (B, 3, H, W) tensor; loops over a fixed-batch model's batch size.

        Returns the model outputs in its output order, each with B on the first axis.
        """
        fb = self.fixed_batch
        if fb is None or tensor.shape[0] == fb:
            return self.session.run(tensor)
        parts: list[list[np.ndarray]] = []
        for start in range(0, tensor.shape[0], fb):
            chunk = tensor[start : start + fb]
            n = chunk.shape[0]
            if n < fb:  # pad the last chunk to the fixed batch, drop the padding afterwards
                chunk = np.concatenate([chunk, np.zeros((fb - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append([o[:n] for o in self.session.run(chunk)])
        return [np.concatenate(p) for p in zip(*parts, strict=True)]

    def postprocess(
        self,
        outputs: Sequence[np.ndarray],
        transforms: Sequence[LetterboxTransform],
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
        agnostic_nms: bool = False,
    ) -> list[Detections]:
        """Decode, filter, NMS and map back to original pixels: one `Detections` per image.

        ``agnostic_nms``: class-agnostic NMS (boxes of different classes suppress each other).
        """
        _check_thresholds(conf, iou, max_det)
        pred, protos = self._split_outputs(outputs)
        if pred.shape[0] != len(transforms):
            raise InputError(f"outputs: batch of {pred.shape[0]} for {len(transforms)} transforms")
        return [
            self._postprocess_one(
                pred[i], None if protos is None else protos[i], t, conf, iou, max_det, agnostic_nms
            )
            for i, t in enumerate(transforms)
        ]

    def predict(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        *,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
        agnostic_nms: bool = False,
    ) -> list[Detections]:
        """Detections for each (H, W, 3) uint8 RGB image (a list, or one array for one image).

        Boxes are xyxy in original-image pixels; seg models add (N, H, W) bool masks.
        Images are batched with those of the same `input_size_for`; results keep the input order.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        _check_thresholds(conf, iou, max_det)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            key = self.input_size_for(im.shape) if getattr(im, "ndim", 0) == 3 else None
            groups.setdefault(key, []).append(i)  # type: ignore[arg-type]
        results: list[Detections | None] = [None] * len(images)
        for index in groups.values():
            for start in range(0, len(index), self.batch_size):
                chunk = index[start : start + self.batch_size]
                tensor, transforms = self.preprocess([images[i] for i in chunk])
                dets = self.postprocess(
                    self.infer(tensor), transforms, conf, iou, max_det, agnostic_nms
                )
                for i, d in zip(chunk, dets, strict=True):
                    results[i] = d
        return results  # type: ignore[return-value]

    def warmup(self) -> None:
        """One run on a blank batch, so the first real call is not slowed by lazy setup."""
        self.session.warmup((self.fixed_batch or 1, 3, *self.meta.imgsz))

    # ---- internals ----------------------------------------------------------------------
    def _check_input(self) -> None:
        shape = self.session.input_shape
        if len(shape) != 4 or shape[1] not in (3, None) and not isinstance(shape[1], str):
            raise ModelError(
                f"{self.session.path}: expected an image input (B, 3, H, W), found {shape}"
            )
        for axis, size in zip((2, 3), self.meta.imgsz, strict=True):
            dim = shape[axis]
            if isinstance(dim, int) and dim > 0 and dim != size:
                raise ModelError(
                    f"{self.session.path}: imgsz {self.meta.imgsz} does not match the model input "
                    f"{shape} (a fixed-size model cannot be fed another size)"
                )

    def _split_outputs(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        pred = next((o for o in outputs if o.ndim == 3), None)
        protos = next((o for o in outputs if o.ndim == 4), None)
        if pred is None:
            shapes = [o.shape for o in outputs]
            raise ModelError(
                f"{self.session.path}: expected a (B, ., .) prediction output, found {shapes}"
            )
        if self.meta.task == "segment" and protos is None:
            raise ModelError(
                f"{self.session.path}: task 'segment' but no (B, nm, mh, mw) prototype output"
            )
        return pred, protos if self.meta.task == "segment" else None

    def _postprocess_one(
        self,
        pred: np.ndarray,
        protos: np.ndarray | None,
        t: LetterboxTransform,
        conf: float,
        iou: float,
        max_det: int,
        agnostic: bool = False,
    ) -> Detections:
        names = self.meta.names
        if self.meta.family == "yolox":
            cand = heads.yolox_candidates(pred, self.meta.imgsz, conf)
        elif self.meta.end2end:
            rows = heads.end2end_rows(pred, conf, max_det)
            return self._finish(
                rows[:, :4],
                rows[:, 4],
                rows[:, 5].astype(np.int64),
                rows[:, 6:] if protos is not None else None,
                protos,
                t,
            )
        else:
            cand = heads.ultralytics_candidates(
                pred, 0 if protos is None else protos.shape[0], conf
            )
        if cand.class_scores.shape[1] != len(names) and len(names):
            raise ModelError(
                f"{self.session.path}: the model predicts {cand.class_scores.shape[1]} classes "
                f"but {len(names)} names are given; pass names= with one name per class"
            )
        sel = select(cand.boxes, cand.class_scores, conf, iou, max_det, agnostic=agnostic)
        coeffs = None if cand.coeffs is None else cand.coeffs[sel.index]
        return self._finish(cand.boxes[sel.index], sel.scores, sel.class_ids, coeffs, protos, t)

    def _finish(
        self, boxes_in, scores, class_ids, coeffs, protos, t: LetterboxTransform
    ) -> Detections:
        masks = None
        if protos is not None and coeffs is not None:
            masks, keep = heads.process_masks(protos, coeffs, boxes_in, t)
            boxes_in, scores, class_ids = boxes_in[keep], scores[keep], class_ids[keep]
        return Detections(
            boxes=boxes_to_original(boxes_in, t),
            scores=np.asarray(scores, np.float32),
            class_ids=np.asarray(class_ids, np.int64),
            masks=masks,
            class_names=self.meta.names,
            image_size=t.orig_size,
        )

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"Detector({str(self.session.path)!r}, {m.family} {m.task}, imgsz={m.imgsz}, "
            f"{len(m.names)} classes, providers={self.providers})"
        )


def _check_thresholds(conf: Any, iou: Any, max_det: Any) -> None:
    if not 0 <= float(conf) <= 1:
        raise InputError(f"conf: expected a value in [0, 1], found {conf}")
    if not 0 <= float(iou) <= 1:
        raise InputError(f"iou: expected a value in [0, 1], found {iou}")
    if int(max_det) < 1:
        raise InputError(f"max_det: expected an integer >= 1, found {max_det}")
