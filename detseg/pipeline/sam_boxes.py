"""Detector boxes to masks: Segment Anything as a pipeline step.

`segment_boxes` gives every detection a SAM mask prompted by its box (one encoder run per
image, the boxes through the decoder in batches). `SamBoxesDetector` wraps a detector so that
the batch runner (`detseg predict MODEL SOURCE --sam NAME`) writes those masks for every
detection: YOLOX or a detect-only YOLO becomes an instance segmenter that
`detseg eval --iou-type segm` can score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detseg.detections import Detections
from detseg.errors import InputError
from detseg.pipeline.sam import SamEmbedding, SamPredictor

#: Boxes per decoder run: the decoder returns (B, 4, H, W) float32 logits at the image's
#: resolution, so the batch is bounded to keep memory flat (64 x 4 x 640 x 480 x 4 B = 315 MB).
BOX_BATCH = 64


def segment_boxes(
    sam: SamPredictor,
    image: np.ndarray | SamEmbedding,
    detections: Detections,
    *,
    batch_size: int = BOX_BATCH,
) -> Detections:
    """The same detections with SAM masks: one mask per box (SAM's single-mask output).

    image: the RGB uint8 (H, W, 3) image the detections are on, or its `sam.embed()` result
        (then no encoder run). detections: boxes xyxy in pixels of that image.
    Returns boxes, scores, classes and names unchanged, masks (N, H, W) bool at the image's
    resolution (any masks the detections had are replaced). One encoder run (none for an
    embedding or a cached image); the boxes go through the decoder `batch_size` at a time
    (all at once for up to `batch_size` boxes).
    """
    embedding = image if isinstance(image, SamEmbedding) else sam.embed(image)
    h, w = embedding.original_size
    if detections.image_size is not None and tuple(detections.image_size) != (h, w):
        raise InputError(
            f"segment_boxes: detections are for an image of {tuple(detections.image_size)} "
            f"(h, w), the image given is {(h, w)}"
        )
    if batch_size < 1:
        raise InputError(f"segment_boxes: batch_size must be >= 1, found {batch_size}")
    masks = np.zeros((len(detections), h, w), bool)
    for i in range(0, len(detections), batch_size):
        pred = sam.predict_batch(
            boxes=detections.boxes[i:i + batch_size].astype(np.float64),
            multimask_output=False,
            embedding=embedding,
        )
        masks[i:i + batch_size] = pred.masks[:, 0]
    return Detections(
        boxes=detections.boxes,
        scores=detections.scores,
        class_ids=detections.class_ids,
        masks=masks,
        class_names=detections.class_names,
        image_size=(h, w),
    )


@dataclass(frozen=True)
class _WithImage:
    """A detector's per-image transform, carried with the image SAM needs after inference."""

    transform: Any
    image: np.ndarray


class SamBoxesDetector:
    """A detector whose detections get SAM masks (`segment_boxes`) in `postprocess`.

    It answers the calls the batch runner makes of a detector (`preprocess`, `infer`,
    `postprocess`, `input_size_for`, `warmup`, `meta`, `providers`, `batch_size`, ...) by
    passing them to `detector`; only `preprocess` (keeps each image beside its transform) and
    `postprocess` (adds the masks) differ. The SAM encoder runs in `postprocess`, once per image.
    """

    def __init__(self, detector: Any, sam: SamPredictor) -> None:
        self.detector = detector
        self.sam = sam

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper: meta, providers, batch_size,
        # session, input_size_for, warmup, ... are the detector's.
        if name in ("detector", "sam"):
            raise AttributeError(name)
        return getattr(self.detector, name)

    def preprocess(self, images: Any) -> tuple[Any, list[_WithImage]]:
        images = list(images)
        tensor, transforms = self.detector.preprocess(images)
        return tensor, [_WithImage(t, im) for t, im in zip(transforms, images, strict=True)]

    def infer(self, tensor: Any) -> Any:
        return self.detector.infer(tensor)

    def postprocess(self, outputs: Any, transforms: list[_WithImage], *args: Any,
                    **kwargs: Any) -> list[Detections]:
        dets = self.detector.postprocess(outputs, [t.transform for t in transforms], *args,
                                         **kwargs)
        return [segment_boxes(self.sam, t.image, d) for t, d in zip(transforms, dets, strict=True)]


def load_sam_boxes_detector(model: Any, sam: str | None, head: str | None = None,
                            device: str = "auto", threads: int | None = None) -> SamBoxesDetector:
    """A `SamBoxesDetector` from a detector ONNX path and a SAM name (None/"builtin": the
    embedded SAM; else a registry name or checkpoint, see `detseg.weights.onnx_models`)."""
    from detseg.pipeline.detector import Detector
    from detseg.weights.onnx_models import sam_onnx

    encoder, decoder = sam_onnx(sam)
    predictor = SamPredictor.load(encoder, decoder, device=device, threads=threads)
    return SamBoxesDetector(Detector.load(model, head=head, device=device, threads=threads),
                            predictor)
