"""One COCO boundary: detections score the same in memory and from the file predict wrote."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from detseg.data.coco import (
    BOX_DECIMALS,
    detections_to_records,
    load_dataset,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from detseg.detections import Detections
from detseg.eval.metrics import evaluate


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A small shapes dataset, `detseg predict` (embedded model) on it, and the same model's
    Detections in memory, class ids mapped to the dataset's category ids."""
    from detseg.data.images import read_image
    from detseg.pipeline.detector import Detector
    from detseg.pipeline.settings import category_map
    from detseg.weights.onnx_models import detector_onnx

    folder = tmp_path_factory.mktemp("boundary")
    run = [sys.executable, "-m", "detseg"]
    subprocess.run([*run, "data", "shapes", "--out", folder, "--images", "4", "--seed", "5"],
                   check=True, capture_output=True)
    gt = folder / "instances.json"
    pred = folder / "pred.json"
    proc = subprocess.run([*run, "predict", gt, "--out", pred, "--conf", "0.05"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ds = load_dataset(gt)
    det = Detector.load(detector_onnx(None))
    cats = category_map(det.meta.names, ds)
    in_memory = {}
    for im in ds.images:
        d = det.predict(read_image(im.path), conf=0.05)[0]
        d.class_ids = np.array([cats[int(c)] for c in d.class_ids], np.int64)
        in_memory[im.id] = d
    return gt, pred, in_memory


@pytest.mark.slow
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_detections_in_memory_score_as_the_file_predict_wrote(predicted, iou_type):
    gt, pred, in_memory = predicted
    assert sum(map(len, in_memory.values())) > 5
    a, b = evaluate(gt, in_memory, iou_type), evaluate(gt, pred, iou_type)
    assert b.stats[0] > 0.1
    for name in ("stats", "precision", "recall", "scores"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # and the file holds exactly the records the boundary makes of those detections
    records = [r for k, d in in_memory.items() for r in detections_to_records(d, k)]
    assert sorted(json.loads(pred.read_text()), key=json.dumps) == sorted(records, key=json.dumps)


def test_the_one_rounding_rule_applies_in_memory():
    d = Detections(np.array([[1.23456, 2.0, 11.98765, 7.5]], np.float32),
                   np.array([0.123456789], np.float32), np.array([3]))
    (rec,) = detections_to_records(d, 7)
    assert rec["bbox"] == [round(float(np.float32(1.23456)), BOX_DECIMALS), 2.0,
                           round(float(np.float32(11.98765)) - float(np.float32(1.23456)), BOX_DECIMALS), 5.5]
    assert rec["score"] == round(float(np.float32(0.123456789)), 5)
    assert d.to_coco(7) == [rec]
    from detseg.eval.loader import detections_to_records as eval_records

    assert eval_records({7: d}) == [rec]


def test_box_conversions_round_trip():
    xyxy = np.array([[1.5, 2.0, 4.0, 10.25], [0, 0, 0, 0]])
    xywh = xyxy_to_xywh(xyxy)
    assert xywh.tolist() == [[1.5, 2.0, 2.5, 8.25], [0, 0, 0, 0]]
    assert np.array_equal(xywh_to_xyxy(xywh), xyxy)
