"""Does the exported ONNX model give what the Ultralytics PyTorch model gives?

Two checks, both on the same sample images:

1. **Raw outputs.** The same letterboxed tensor (a batch of all images, and a batch of one, so
   the dynamic batch axis is exercised) through the PyTorch model (the unfused model, as
   loaded) and through onnxruntime on the CPU. Each output passes when
   ``max |onnx - torch| <= ATOL + RTOL * max |torch|``.
2. **Decoded detections.** Ultralytics' own predictor on the PyTorch model (its letterbox,
   NMS and, for segment models, its masks scaled to the original image with its own
   ``scale_masks``) against detseg's
   `Detector` on the ONNX file. Every reference detection must have exactly one counterpart
   of the same class with box IoU >= ``BOX_IOU_MIN`` (and mask IoU >= ``MASK_IOU_MIN``), and
   the counts must be equal.

The confidence threshold of check 2 is chosen per image from its PyTorch scores so that
about ``per_image`` candidates pass it, in the widest relative gap between neighbouring
scores: a model with random weights (scores far below 0.25) is compared on real detections
rather than on two empty lists, and no score sits so close to the threshold that a rounding
difference could flip it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from detseg.pipeline.postprocess import iou_one_to_many
from detseg.weights.report import array_diff, mask_iou

RTOL = 1e-4
ATOL = 1e-4
BOX_IOU_MIN = 0.99
MASK_IOU_MIN = 0.9
NMS_IOU = 0.7
MAX_DET = 300


def sample_images(seed: int = 0) -> list[np.ndarray]:
    """Three deterministic synthetic (H, W, 3) uint8 RGB images: landscape, portrait, square.

    Smooth gradients, filled rectangles and ellipses in random colours, and mild noise: enough
    structure for a detector to respond, no file needed.
    """
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for h, w in ((240, 320), (352, 224), (256, 256)):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([xx / w, yy / h, 1 - xx / w], axis=-1) * rng.uniform(80, 200, 3)
        img = np.ascontiguousarray(base.astype(np.uint8))
        for _ in range(6):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            x1, y1 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            x2, y2 = int(rng.integers(x1 + 10, w)), int(rng.integers(y1 + 10, h))
            if rng.random() < 0.5:
                cv2.rectangle(img, (x1, y1), (x2, y2), color, thickness=-1)
            else:
                center, axes = ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2, (y2 - y1) // 2)
                cv2.ellipse(img, center, axes, 0, 0, 360, color, thickness=-1)
        noise = rng.normal(0, 6, img.shape)
        images.append(np.clip(img + noise, 0, 255).astype(np.uint8))
    return images


def check_parity(
    yolo: Any, onnx_path: Path, images: list[np.ndarray], per_image: int = 20
) -> dict[str, Any]:
    """Run both checks; returns ``{"passed", "raw_outputs", "detections"}``."""
    import torch

    from detseg.pipeline.detector import Detector

    detector = Detector.load(onnx_path, device="cpu")
    tensor, _ = detector.preprocess(images)
    model = yolo.model.float().eval()
    raw = []
    reference = None
    for batch in (tensor, tensor[:1]):
        with torch.no_grad():
            torch_out = _tensors(model(torch.from_numpy(batch)))
        onnx_out = detector.session.run(batch)
        reference = reference if reference is not None else torch_out
        for name, found, ref in zip(detector.session.output_names, onnx_out, torch_out, strict=False):
            entry = array_diff(name, found, ref, RTOL, ATOL)
            raw.append({"batch": int(batch.shape[0]), **entry})
        if len(onnx_out) != len(torch_out):
            raw.append({"output": "count", "onnx": len(onnx_out), "torch": len(torch_out),
                        "passed": False})
    nc = len(yolo.names)
    scores = reference[0][:, 4 : 4 + nc].max(axis=1)  # (B, anchors)
    confs = [choose_conf(row, per_image) for row in scores]
    detections = _decoded(yolo, detector, images, confs)
    raw_ok = all(r["passed"] for r in raw)
    return {"passed": raw_ok and detections["passed"], "raw_outputs": raw, "detections": detections}


def choose_conf(scores: np.ndarray, target: int) -> float:
    """A threshold that about ``target`` of ``scores`` pass, placed in a wide relative gap.

    Looks between ranks ``target/2`` and ``2*target`` of the sorted scores for the largest
    ``(s[i-1] - s[i]) / s[i-1]`` and returns the midpoint of that gap.
    """
    s = np.sort(np.asarray(scores, np.float64).ravel())[::-1]
    lo, hi = max(1, target // 2), min(len(s) - 1, 2 * target)
    if hi <= lo:
        return float(s[-1] / 2 if len(s) else 0.25)
    idx = np.arange(lo, hi + 1)
    gaps = (s[idx - 1] - s[idx]) / np.maximum(s[idx - 1], 1e-12)
    best = idx[int(np.argmax(gaps))]
    return float((s[best - 1] + s[best]) / 2)


def _decoded(yolo: Any, detector: Any, images: list[np.ndarray], confs: list[float]) -> dict[str, Any]:
    """Ultralytics' predictor (PyTorch) against detseg's Detector (ONNX), image by image."""
    imgsz = list(detector.meta.imgsz)
    per_image = []
    for image, conf in zip(images, confs, strict=True):
        [ref] = yolo.predict(
            np.ascontiguousarray(image[..., ::-1]),  # Ultralytics reads BGR arrays
            conf=conf, iou=NMS_IOU, imgsz=imgsz, max_det=MAX_DET, rect=False, device="cpu",
            verbose=False,
        )
        [det] = detector.predict([image], conf=conf, iou=NMS_IOU, max_det=MAX_DET)
        per_image.append({"conf": conf, **match_detections(
            ref.boxes.xyxy.cpu().numpy(), ref.boxes.cls.cpu().numpy().astype(np.int64),
            ref.boxes.conf.cpu().numpy(), _original_size_masks(ref),
            det.boxes, det.class_ids, det.scores, _dense_masks(det),
        )})
    total = sum(p["reference"] for p in per_image)
    return {"iou": NMS_IOU, "reference": "ultralytics predictor (PyTorch)",
            "candidate": "detseg Detector (onnxruntime CPU)", "total_reference": total,
            "passed": all(p["passed"] for p in per_image) and total > 0, "images": per_image}


def match_detections(
    ref_boxes: np.ndarray, ref_cls: np.ndarray, ref_scores: np.ndarray, ref_masks: np.ndarray | None,
    boxes: np.ndarray, cls: np.ndarray, scores: np.ndarray, masks: np.ndarray | None,
) -> dict[str, Any]:
    """Greedy one-to-one matching (reference in score order, same class, best box IoU).

    Boxes are (N, 4) xyxy pixels; masks (N, H, W) bool or None. Returns counts, the worst
    matched box and mask IoU, the largest score difference, and ``passed``.
    """
    used = np.zeros(len(boxes), bool)
    box_ious, mask_ious, score_diffs = [], [], []
    for i in np.argsort(-ref_scores, kind="stable"):
        candidates = np.flatnonzero((cls == ref_cls[i]) & ~used)
        if candidates.size == 0:
            continue
        ious = iou_one_to_many(ref_boxes[i], boxes[candidates])
        j = candidates[int(np.argmax(ious))]
        if ious.max() < 0.5:
            continue
        used[j] = True
        box_ious.append(float(ious.max()))
        score_diffs.append(float(abs(ref_scores[i] - scores[j])))
        if ref_masks is not None and masks is not None:
            mask_ious.append(mask_iou(ref_masks[i], masks[j]))
    matched = len(box_ious)
    report = {
        "reference": int(len(ref_boxes)),
        "onnx": int(len(boxes)),
        "matched": matched,
        "min_box_iou": min(box_ious) if box_ious else None,
        "max_score_diff": max(score_diffs) if score_diffs else None,
    }
    passed = matched == len(ref_boxes) == len(boxes) and all(v >= BOX_IOU_MIN for v in box_ious)
    if ref_masks is not None or masks is not None:
        report["min_mask_iou"] = min(mask_ious) if mask_ious else None
        report["mean_mask_iou"] = float(np.mean(mask_ious)) if mask_ious else None
        passed = passed and len(mask_ious) == matched and all(v >= MASK_IOU_MIN for v in mask_ious)
    report["passed"] = bool(passed)
    return report


def _tensors(output: Any) -> list[np.ndarray]:
    """The exported outputs of an Ultralytics model's eval-mode forward, as numpy arrays.

    Detect models return ``(pred, extras)``; segment models ``((pred, protos), extras)``.
    """
    first = output[0] if isinstance(output, (tuple, list)) else output
    parts = first if isinstance(first, (tuple, list)) else [first]
    return [p.detach().cpu().numpy() for p in parts]


def _original_size_masks(result: Any) -> np.ndarray | None:
    """Ultralytics' masks (at model-input size) scaled to the original image by its own
    ``scale_masks`` (bilinear, > 0.5): what its validator does for COCO results."""
    if result.masks is None:
        return None
    from ultralytics.utils import ops

    data = result.masks.data.float()
    if data.shape[0] == 0:
        return np.zeros((0, *result.orig_shape), bool)
    return (ops.scale_masks(data[None], result.orig_shape)[0] > 0.5).cpu().numpy()


def _dense_masks(det: Any) -> np.ndarray | None:
    if det.masks is None:
        return None
    if isinstance(det.masks, np.ndarray):
        return det.masks
    from pycocotools import mask as mask_utils

    return np.stack([mask_utils.decode(r).astype(bool) for r in det.masks]) if det.masks else None
