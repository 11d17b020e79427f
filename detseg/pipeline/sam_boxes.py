"""Detector boxes to SAM masks: turn any detector's output into instance masks.

`segment_boxes` runs the SAM image encoder once (or takes an embedding the caller already
has) and prompts the decoder with each detection's box, single-mask output, as
segment-anything's `SamPredictor` does for a box prompt.

This version sends the boxes through the decoder one at a time; a batched decoder (all boxes
in one run) gives the same masks faster.
"""

from __future__ import annotations

import numpy as np

from detseg.detections import Detections
from detseg.errors import InputError
from detseg.pipeline.sam import SamEmbedding, SamPredictor


def segment_boxes(
    sam: SamPredictor, image: np.ndarray | SamEmbedding, detections: Detections
) -> Detections:
    """SAM masks for every box of ``detections``.

    Args:
        sam: the predictor (its encoder runs once here unless ``image`` is an embedding).
        image: (H, W, 3) uint8 RGB, or that image's `SamPredictor.embed` result.
        detections: boxes xyxy in pixels of that image.

    Returns:
        The same boxes, scores, class ids and class names, with masks (N, H, W) bool at the
        image's resolution (``image_size`` set to (H, W)).

    Raises:
        InputError: ``detections.image_size`` is set and differs from the image's size.
    """
    embedding = image if isinstance(image, SamEmbedding) else sam.embed(image)
    h, w = (int(v) for v in embedding.original_size)
    if detections.image_size is not None and tuple(detections.image_size) != (h, w):
        raise InputError(
            f"segment_boxes: detections are for a {detections.image_size[1]}x"
            f"{detections.image_size[0]} image (image_size), found an image of {w}x{h}; "
            f"pass the image the detector ran on"
        )
    masks = np.zeros((len(detections), h, w), bool)
    for i, box in enumerate(detections.boxes):
        pred = sam.predict(box=np.asarray(box, np.float32), multimask_output=False, embedding=embedding)
        masks[i] = pred.masks[0]
    return Detections(
        boxes=detections.boxes.copy(),
        scores=detections.scores.copy(),
        class_ids=detections.class_ids.copy(),
        masks=masks,
        class_names=detections.class_names,
        image_size=(h, w),
    )
