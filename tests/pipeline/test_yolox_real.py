"""A real COCO-trained model on real COCO images: YOLOX-Nano through the Detector API.

YOLOX's own reference decoding gives AP@[.50:.95] of about 0.35 on these 11 images with the
COCO evaluation settings (conf 0.001, class-aware NMS at IoU 0.65, 100 detections).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from detseg.data.images import read_image
from detseg.pipeline.detector import Detector
from detseg.pipeline.meta import COCO80_CATEGORY_IDS


def test_coco80_category_ids_are_the_sorted_dataset_ids(coco11):
    cats = json.loads(coco11.read_text())["categories"]
    assert list(COCO80_CATEGORY_IDS) == sorted(int(c["id"]) for c in cats)


def test_yolox_nano_coco_ap(yolox_nano, coco11):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    det = Detector.load(yolox_nano, head="yolox", device="cpu")
    assert det.meta.imgsz == (416, 416) and det.fixed_batch == 1
    gt = COCO(str(coco11))
    images = gt.dataset["images"]
    arrays = [read_image(coco11.parent / "images" / im["file_name"]) for im in images]
    for im, arr in zip(images, arrays, strict=True):
        assert arr.shape == (im["height"], im["width"], 3)
    dets = det.predict(arrays, conf=0.001, iou=0.65, max_det=100)  # loops over the fixed batch of 1
    results = [
        r
        for im, d in zip(images, dets, strict=True)
        for r in d.to_coco(im["id"], COCO80_CATEGORY_IDS, with_masks=False)
    ]
    assert all(len(d) <= 100 for d in dets) and len(results) > 300
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    ap = evaluator.stats[0]
    assert ap >= 0.34, f"AP@[.50:.95] = {ap:.4f}"


def test_yolox_nano_finds_the_people_in_a_known_image(yolox_nano, coco11):
    """Image 785 (a skier): the best detection is a person covering the annotated one."""
    det = Detector.load(yolox_nano, head="yolox", device="cpu")
    data = json.loads(coco11.read_text())
    image = next(im for im in data["images"] if im["id"] == 785)
    gt = [a for a in data["annotations"] if a["image_id"] == 785 and a["category_id"] == 1]
    [d] = det.predict([read_image(coco11.parent / "images" / image["file_name"])], conf=0.3)
    assert len(d) >= 1 and d.class_names[int(d.class_ids[0])] == "person"
    x, y, w, h = gt[0]["bbox"]
    b = d.boxes[0]
    iw = max(0.0, min(b[2], x + w) - max(b[0], x))
    ih = max(0.0, min(b[3], y + h) - max(b[1], y))
    iou = iw * ih / ((b[2] - b[0]) * (b[3] - b[1]) + w * h - iw * ih)
    assert iou > 0.7, (b, gt[0]["bbox"])
    assert np.all(d.boxes[:, 2] <= image["width"]) and np.all(d.boxes[:, 3] <= image["height"])
