"""Parity with Ultralytics: the same ONNX file through detseg and through `YOLO(onnx).predict`.

Models are built from Ultralytics' architecture files (no pretrained weights here) and exported
by Ultralytics itself. An untrained YOLOv8 gives near-identical scores everywhere, which would
make the comparison empty or a contest of tie-breaking, so the fixture first gives the network
a real signal: every convolution is rescaled so its output has unit spread on the test images
(LSUV-style, one forward pass, deterministic seed), then the class logits get a bias of -3.
The result is a model with varied boxes, classes and masks, tens of detections per image.
Five exports: YOLOv8n and YOLOv8n-seg with dynamic shapes (batched by detseg), YOLOv8n-seg
with a fixed 1x3x320x320 input (looped, and Ultralytics' default predictor settings), and
YOLO26n / YOLO26n-seg exported NMS-free (``end2end`` outputs).

Ultralytics' predictor runs with its default settings, one image per call: on the
dynamic-shape exports it letterboxes each image to its minimum stride-multiple rectangle
(``rect``), on the fixed one to 320x320; detseg, given all images in one call, must feed each
image the same input (it groups images by rectangle). A second test feeds a batch of mixed
shapes through both (square for both: Ultralytics' ``pre_transform`` rule).

Compared per image, for images of several aspect ratios: every detection has a partner of the
same class with every box edge within 1 px and the same score (to 1e-4), counts are equal, and
masks at the original resolution have IoU >= 0.99 with Ultralytics' masks (its predictor's
`process_mask(upsample=True)` masks in letterbox space, brought to the original image with its
own `scale_masks`). A minimum number of matched detections keeps the test from passing on
empty output.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from detseg.pipeline.detector import Detector
from detseg.pipeline.preprocess import preprocess_batch
from tests.pipeline.ultralytics_env import import_ultralytics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),  # export tracing
    pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean"),
]

IMGSZ = 320
CONF, IOU, MAX_DET = 0.05, 0.7, 100
MIN_MATCHED_PER_IMAGE = 10
MODELS = [  # key, architecture, dynamic shapes
    ("detect", "yolov8n.yaml", True),
    ("segment", "yolov8n-seg.yaml", True),
    ("segment-fixed", "yolov8n-seg.yaml", False),
    ("e2e-detect", "yolo26n.yaml", True),
    ("e2e-segment", "yolo26n-seg.yaml", True),
]


@pytest.fixture(scope="session")
def test_images(assets_or_none) -> list[np.ndarray]:
    """BGR images of different aspect ratios: bus (3:4), zidane (16:9), real COCO images."""
    ultralytics = import_ultralytics()
    root = Path(ultralytics.__file__).parent / "assets"
    paths = [root / "bus.jpg", root / "zidane.jpg"]
    if assets_or_none is not None:
        paths += sorted((assets_or_none / "coco-val-11" / "images").glob("*.jpg"))[:4]
    images = [cv2.imread(str(p)) for p in paths]
    images.append(cv2.resize(images[1], (160, 640)))  # tall and thin
    return images


@pytest.fixture(scope="session")
def assets_or_none(request):
    try:
        return request.getfixturevalue("assets")
    except pytest.skip.Exception:
        return None


def _signal(model, images_bgr: list[np.ndarray]) -> None:
    """Rescale every trainable convolution to unit output spread on ``images`` (in place)."""
    import torch
    from torch import nn

    net = model.model.eval()
    x, _ = preprocess_batch([im[:, :, ::-1] for im in images_bgr], (IMGSZ, IMGSZ))

    def rescale(module, inputs, output):
        std = output.std().clamp_min(1e-6)
        module.weight.data /= std
        if module.bias is not None:
            module.bias.data /= std
        return output / std

    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    hooks = [m.register_forward_hook(rescale) for m in convs]  # DFL's fixed conv is skipped
    with torch.no_grad():
        net(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    head = net.model[-1]
    with torch.no_grad():  # class branches (one-to-one too on NMS-free heads): logits ~ N(-3, 1)
        for seq in [*head.cv3, *(getattr(head, "one2one_cv3", None) or [])]:
            seq[-1].bias.data.fill_(-3.0)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, test_images) -> dict[str, Path]:
    """ONNX files: yolov8n and yolov8n-seg (dynamic shapes), yolov8n-seg (fixed 1x3x320x320),
    and YOLO26n/YOLO26n-seg exported NMS-free (end2end: (B, 300, 6 [+ 32]) outputs)."""
    import_ultralytics()
    import torch
    from ultralytics import YOLO

    out = tmp_path_factory.mktemp("ultralytics-onnx")
    files = {}
    for key, yaml, dynamic in MODELS:
        torch.manual_seed(0)
        model = YOLO(yaml)
        _signal(model, test_images)
        end2end = {"nms": False} if key.startswith("e2e") else {}
        # A model built from a yaml exports next to the current directory: work in ``out``
        # so that nothing lands in the checkout (nor collides with a parallel run).
        cwd = os.getcwd()
        os.chdir(out)
        try:
            path = Path(
                model.export(
                    format="onnx",
                    imgsz=IMGSZ,
                    dynamic=dynamic,
                    opset=17,
                    simplify=True,
                    verbose=False,
                    **end2end,
                )
            )
        finally:
            os.chdir(cwd)
        files[key] = (out / path).rename(out / f"{key}.onnx")
    return files


def _reference(
    onnx_path: Path, image_bgr: np.ndarray, task: str, rect: bool | None = None, results=None
):
    """Ultralytics' predictor on one image, default settings (``rect`` included); or, with
    ``results``, one of its `Results` already computed.

    ``rect=False`` is only for a model whose batch is dynamic but whose H and W are fixed
    (detseg's own exports): Ultralytics takes any dynamic output batch for a dynamic-shape
    model and would feed it a rectangle it cannot take.
    """
    from ultralytics import YOLO
    from ultralytics.utils.ops import scale_masks

    r = results
    if r is None:
        r = YOLO(str(onnx_path), task=task).predict(
            image_bgr,
            imgsz=IMGSZ,
            conf=CONF,
            iou=IOU,
            max_det=MAX_DET,
            device="cpu",
            verbose=False,
            **({} if rect is None else {"rect": rect}),
        )[0]
    boxes = r.boxes.xyxy.numpy()
    masks = None
    if task == "segment":
        if r.masks is None:
            masks = np.zeros((0, *image_bgr.shape[:2]), bool)
        else:
            masks = scale_masks(r.masks.data[None].float(), image_bgr.shape[:2])[0].numpy() > 0.5
    return boxes, r.boxes.conf.numpy(), r.boxes.cls.numpy().astype(int), masks


def _match(ref_boxes, ref_scores, ref_cls, boxes, scores, cls) -> list[int]:
    """For each reference detection, the index of a detseg detection of the same class with every
    edge within 1 px (each used once; the closest score first, as boxes clipped to the image
    border can coincide), or -1."""
    used, pairs = set(), []
    for b, s, c in zip(ref_boxes, ref_scores, ref_cls, strict=True):
        err = np.abs(boxes - b).max(axis=1)
        order = np.argsort(np.abs(scores - s) * 1e3 + err)
        cand = [j for j in order if cls[j] == c and err[j] <= 1.0 and j not in used]
        pairs.append(int(cand[0]) if cand else -1)
        if cand:
            used.add(cand[0])
    return pairs


@pytest.mark.parametrize("key", [m[0] for m in MODELS])
def test_same_detections_as_ultralytics(exported, test_images, key):
    task = "segment" if key.endswith(("segment", "segment-fixed")) else "detect"
    det = Detector.load(exported[key], device="cpu")
    assert (
        det.meta.family == "ultralytics"
        and det.meta.task == task
        and det.meta.imgsz == (IMGSZ, IMGSZ)
    )
    assert det.fixed_batch == (1 if key == "segment-fixed" else None)
    assert det.meta.end2end == key.startswith("e2e")
    assert det.rect_stride == (None if key == "segment-fixed" else 32)
    # One detseg call for all images (batched on dynamic models, looped on the fixed one).
    ours = det.predict([im[:, :, ::-1] for im in test_images], conf=CONF, iou=IOU, max_det=MAX_DET)
    total = 0
    for image, d in zip(test_images, ours, strict=True):
        boxes, scores, cls, masks = _reference(exported[key], image, task)
        assert d.image_size == image.shape[:2]
        assert len(d) == len(boxes), (len(d), len(boxes))
        pairs = _match(boxes, scores, cls, d.boxes, d.scores, d.class_ids)
        assert -1 not in pairs, (
            f"{pairs.count(-1)} of {len(pairs)} Ultralytics detections unmatched"
        )
        np.testing.assert_allclose(d.scores[pairs], scores, atol=1e-4)
        if task == "segment":
            assert d.masks.shape == masks.shape
            for j, ref_mask in zip(pairs, masks, strict=True):
                inter = np.logical_and(d.masks[j], ref_mask).sum()
                union = np.logical_or(d.masks[j], ref_mask).sum()
                # A mask that lay only in the letterbox padding is empty here, in both.
                assert (inter / union if union else 1.0) >= 0.99, inter / union
        assert len(pairs) >= MIN_MATCHED_PER_IMAGE, (
            f"only {len(pairs)} detections: comparison too weak"
        )
        total += len(pairs)
    assert total >= MIN_MATCHED_PER_IMAGE * len(test_images)


@pytest.mark.parametrize("key", ["detect", "segment"])
def test_mixed_shape_batch_as_ultralytics(exported, test_images, key):
    """The stage API on one batch of mixed shapes: both tools feed imgsz x imgsz (Ultralytics
    `pre_transform` uses its minimum rectangle only for a batch of one shape)."""
    from ultralytics import YOLO

    task = key
    det = Detector.load(exported[key], device="cpu")
    images = test_images[:3]  # bus, zidane, and a COCO image or the tall one
    tensor, transforms = det.preprocess([im[:, :, ::-1] for im in images])
    assert tensor.shape[2:] == (IMGSZ, IMGSZ)
    ours = det.postprocess(det.infer(tensor), transforms, conf=CONF, iou=IOU, max_det=MAX_DET)
    refs = YOLO(str(exported[key]), task=task).predict(
        images, imgsz=IMGSZ, conf=CONF, iou=IOU, max_det=MAX_DET, device="cpu", verbose=False,
        batch=len(images),
    )
    for image, d, r in zip(images, ours, refs, strict=True):
        boxes, scores, cls, masks = _reference(exported[key], image, task, results=r)
        assert len(d) == len(boxes) >= MIN_MATCHED_PER_IMAGE
        pairs = _match(boxes, scores, cls, d.boxes, d.scores, d.class_ids)
        assert -1 not in pairs
        np.testing.assert_allclose(d.scores[pairs], scores, atol=1e-4)
        if masks is not None:
            for j, ref_mask in zip(pairs, masks, strict=True):
                inter = np.logical_and(d.masks[j], ref_mask).sum()
                union = np.logical_or(d.masks[j], ref_mask).sum()
                assert (inter / union if union else 1.0) >= 0.99, inter / union


def test_comparison_detects_a_wrong_letterbox(exported, test_images):
    """Negative control: YOLOX's top-left placement instead of Ultralytics' centred one must
    break the match, so the parity test above can fail."""
    from dataclasses import replace

    det = Detector.load(exported["detect"], device="cpu")
    det.meta = replace(det.meta, letterbox="topleft")
    image = test_images[0]  # bus.jpg, 1080 x 810: centred padding differs from top-left
    [d] = det.predict([image[:, :, ::-1]], conf=CONF, iou=IOU, max_det=MAX_DET)
    boxes, scores, cls, _ = _reference(exported["detect"], image, "detect")
    pairs = _match(boxes, scores, cls, d.boxes, d.scores, d.class_ids)
    assert pairs.count(-1) > len(pairs) // 2
