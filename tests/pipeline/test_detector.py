"""The Detector API on tiny ONNX models whose outputs the tests choose."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detseg.detections import Detections
from detseg.errors import InputError, ModelError
from detseg.pipeline.detector import Detector
from detseg.pipeline.meta import COCO80_NAMES
from tests.pipeline.tiny_onnx import constant_head_model, ultralytics_metadata, ultralytics_pred

NAMES = {0: "cat", 1: "dog", 2: "bird"}


def _detect_pred():
    boxes = np.array([[32, 32, 16, 8], [33, 32, 16, 8], [10, 40, 6, 6], [50, 50, 4, 4]], np.float32)
    scores = np.array(
        [[0.9, 0.1, 0.0], [0.8, 0.0, 0.0], [0.0, 0.0, 0.6], [0.1, 0.2, 0.1]], np.float32
    )
    return ultralytics_pred(boxes, scores, n=20)


@pytest.fixture()
def detect_model(tmp_path):
    pred = _detect_pred()
    shift = np.zeros_like(pred)
    shift[0, 0, 2] = 0.1  # the bird box moves right with the image's mean input value
    return constant_head_model(
        tmp_path / "det.onnx", pred, shift=shift, metadata=ultralytics_metadata(NAMES)
    )


def test_ultralytics_detect_end_to_end(detect_model):
    det = Detector.load(detect_model, device="cpu")
    assert det.meta.family == "ultralytics" and det.meta.task == "detect"
    assert det.meta.names == NAMES and det.meta.imgsz == (64, 64)
    assert det.providers == ["CPUExecutionProvider"]
    img = np.zeros((128, 256, 3), np.uint8)  # r = 0.25, 32 x 64 content, 16 px padding on top
    [d] = det.predict([img], conf=0.25, iou=0.45)
    assert isinstance(d, Detections) and d.image_size == (128, 256) and d.class_names == NAMES
    assert d.class_ids.tolist() == [0, 2]  # box 1 suppressed by box 0, box 3 below conf
    np.testing.assert_allclose(d.scores, [0.9, 0.6])
    np.testing.assert_allclose(d.boxes[0], [96, 48, 160, 80])
    # bird: cx = 10 + 0.1 * mean(input), mean = 114/255 * (share of padding) on a black image
    mean = (114 / 255) * 0.5
    cx = 10 + 0.1 * mean
    np.testing.assert_allclose(
        d.boxes[1],
        [(cx - 3) / 0.25, (37 - 16) / 0.25, (cx + 3) / 0.25, (43 - 16) / 0.25],
        rtol=1e-5,
    )
    assert d.masks is None


@pytest.mark.parametrize("batch", [1, "batch"])
def test_batches_equal_single_calls(tmp_path, batch):
    pred = _detect_pred()
    shift = np.zeros_like(pred)
    shift[0, 0, :] = 5.0  # every box moves with the image mean: a mix-up between images shows
    path = constant_head_model(
        tmp_path / "m.onnx", pred, shift=shift, batch=batch, metadata=ultralytics_metadata(NAMES)
    )
    det = Detector.load(path, device="cpu", batch_size=2)
    assert det.batch_size == (1 if batch == 1 else 2)
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for h, w in [(64, 64), (100, 30), (30, 100), (77, 77), (5, 9)]
    ]
    together = det.predict(images, conf=0.05)
    alone = [det.predict([im], conf=0.05)[0] for im in images]
    assert len(together) == 5
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5)
        assert a.class_ids.tolist() == b.class_ids.tolist() and a.image_size == b.image_size
    brighter = det.predict(
        [np.clip(images[0].astype(int) + 40, 0, 255).astype(np.uint8)], conf=0.05
    )[0]
    assert not np.allclose(brighter.boxes, together[0].boxes)  # the shift is really per image
    # the stages give what predict gives
    tensor, transforms = det.preprocess(images)
    staged = det.postprocess(det.infer(tensor), transforms, conf=0.05, iou=0.45, max_det=300)
    for a, b in zip(staged, together, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)


def test_segment_model_gives_masks_at_original_size(tmp_path):
    nm = 2
    boxes = np.array([[20, 20, 16, 16], [44, 44, 10, 10]], np.float32)
    scores = np.array([[0.9, 0, 0], [0, 0.8, 0]], np.float32)
    coeffs = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    protos = np.ones((1, nm, 16, 16), np.float32)  # positive everywhere: masks = the boxes
    pred = ultralytics_pred(boxes, scores, coeffs, n=10)
    meta = ultralytics_metadata(NAMES, task="segment")
    path = constant_head_model(tmp_path / "seg.onnx", pred, protos=protos, metadata=meta)
    det = Detector.load(path, device="cpu")
    [d] = det.predict(np.zeros((64, 64, 3), np.uint8))
    assert d.masks.shape == (2, 64, 64) and d.masks.dtype == bool
    assert d.masks[0, 12:28, 12:28].all() and d.masks[0].sum() == 16 * 16
    assert d.masks[1, 39:49, 39:49].all() and d.masks[1].sum() == 100
    [d] = det.predict(np.zeros((32, 128, 3), np.uint8))  # letterboxed: masks at 32 x 128
    assert d.masks.shape == (2, 32, 128)


def test_model_without_metadata_needs_a_head(tmp_path):
    path = constant_head_model(
        tmp_path / "raw.onnx", np.zeros((1, 3549, 85), np.float32), imgsz=(416, 416)
    )
    with pytest.raises(ModelError, match="head='yolox'"):
        Detector.load(path, device="cpu")
    det = Detector.load(path, head="yolox", device="cpu")
    assert det.meta.channels == "BGR" and det.meta.letterbox == "topleft" and det.meta.scale == 1
    assert det.meta.names == dict(enumerate(COCO80_NAMES)) and det.meta.imgsz == (416, 416)
    assert det.predict([np.zeros((10, 10, 3), np.uint8)])[0].boxes.shape == (0, 4)


@pytest.mark.parametrize("sidecar_name", ["raw.detseg.json", "raw.onnx.detseg.json"])
def test_sidecar_file(tmp_path, sidecar_name):
    path = constant_head_model(
        tmp_path / "raw.onnx", np.zeros((1, 7, 84), np.float32), imgsz=(64, 64)
    )
    (tmp_path / sidecar_name).write_text(
        json.dumps({"family": "ultralytics", "names": ["a", "b", "c"], "channels": "BGR"})
    )
    det = Detector.load(path, device="cpu")
    assert det.meta.family == "ultralytics" and det.meta.names == {0: "a", 1: "b", 2: "c"}
    assert det.meta.channels == "BGR" and det.meta.scale == pytest.approx(1 / 255)
    det = Detector.load(path, device="cpu", names=["x", "y", "z"])
    assert det.meta.names == {0: "x", 1: "y", 2: "z"}


@pytest.mark.parametrize(
    "sidecar,message",
    [
        ("{not json", "cannot read model sidecar JSON"),
        (
            '{"family": "detr"}',
            "raw.detseg.json: field 'family': expected one of ultralytics, yolox, found 'detr'",
        ),
        ('{"colour": "blue"}', r"unknown keys \['colour'\]"),
        ('{"family": "yolox", "imgsz": [1, 2, 3]}', "field 'imgsz'"),
    ],
)
def test_bad_sidecar(tmp_path, sidecar, message):
    path = constant_head_model(tmp_path / "raw.onnx", np.zeros((1, 7, 84), np.float32))
    (tmp_path / "raw.detseg.json").write_text(sidecar)
    with pytest.raises(ModelError, match=message):
        Detector.load(path, device="cpu")


def test_names_that_do_not_match_the_output(detect_model):
    det = Detector.load(detect_model, device="cpu", names=["only", "two"])
    with pytest.raises(ModelError, match="predicts 3 classes but 2 names"):
        det.predict([np.zeros((64, 64, 3), np.uint8)])


def test_imgsz_that_does_not_match_a_fixed_input(detect_model):
    with pytest.raises(ModelError, match=r"imgsz \(32, 32\) does not match the model input"):
        Detector.load(detect_model, device="cpu", imgsz=32)


@pytest.mark.parametrize(
    "kw,message", [({"conf": 1.5}, "conf"), ({"iou": -0.1}, "iou"), ({"max_det": 0}, "max_det")]
)
def test_bad_thresholds(detect_model, kw, message):
    det = Detector.load(detect_model, device="cpu")
    with pytest.raises(InputError, match=message):
        det.predict([np.zeros((8, 8, 3), np.uint8)], **kw)


def test_bad_image_is_an_input_error(detect_model):
    det = Detector.load(detect_model, device="cpu")
    with pytest.raises(InputError, match="uint8 RGB"):
        det.predict([np.zeros((8, 8), np.uint8)])


def test_dynamic_size_model_gets_ultralytics_minimum_rectangle(tmp_path):
    """Dynamic H and W: each image's minimum rectangle (per `input_size_for`), results in input
    order; a fixed-size model always gets imgsz."""
    pred = _detect_pred()
    meta = ultralytics_metadata(NAMES, imgsz=(128, 128))
    dyn = constant_head_model(tmp_path / "dyn.onnx", pred, imgsz=("h", "w"), metadata=meta)
    det = Detector.load(dyn, device="cpu")
    assert det.rect_stride == 32 and det.meta.imgsz == (128, 128)
    assert det.input_size_for((48, 64)) == (96, 128)  # 2x: 96x128, nothing to pad
    assert det.input_size_for((64, 40)) == (128, 96)  # 128x80, width padded to 96
    assert det.input_size_for((10, 10)) == (128, 128)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(48, 64, 3), (64, 40, 3),
                                                                (24, 32, 3), (10, 10, 3)]]
    tensor, transforms = det.preprocess(images[:1] + images[2:3])  # one rectangle: 96x128
    assert tensor.shape == (2, 3, 96, 128) and transforms[0].pad == (0, 0)
    tensor, transforms = det.preprocess(images[:2])  # two rectangles: imgsz, as Ultralytics
    assert tensor.shape == (2, 3, 128, 128)
    together = det.predict(images, conf=0.05)
    assert [d.image_size for d in together] == [im.shape[:2] for im in images]
    for im, d in zip(images, together, strict=True):
        np.testing.assert_array_equal(d.boxes, det.predict([im], conf=0.05)[0].boxes)
    with pytest.raises(InputError, match="non-empty"):
        det.predict([images[0], np.zeros((0, 5, 3), np.uint8)])

    fixed = constant_head_model(tmp_path / "fixed.onnx", pred, imgsz=(128, 128), metadata=meta)
    det = Detector.load(fixed, device="cpu")
    assert det.rect_stride is None and det.input_size_for((48, 64)) == (128, 128)
    assert det.preprocess(images[:1])[0].shape == (1, 3, 128, 128)
