"""Detector boxes to SAM masks: `segment_boxes`, `SamBoxesDetector` and `detseg predict --sam`.

Reference: the same SAM prompted box by box through `SamPredictor.predict(box=...,
multimask_output=False)` (itself checked against segment-anything's predictor in test_sam.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detseg.data.shapes import ShapesSpec, render_image
from detseg.detections import Detections
from detseg.errors import InputError
from detseg.pipeline.batch import run_predict
from detseg.pipeline.detector import Detector
from detseg.pipeline.sam import SamPredictor
from detseg.pipeline.sam_boxes import SamBoxesDetector, segment_boxes
from detseg.weights.builtin import default_detector, default_sam


@pytest.fixture(scope="module")
def sam() -> SamPredictor:
    return SamPredictor.load(*default_sam(), device="cpu")


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load(default_detector(), device="cpu")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    a = render_image(ShapesSpec(4, 3), 2)[0]
    return [a, np.ascontiguousarray(a[30:230]), np.ascontiguousarray(a[:, 100:260])]


def one_by_one(sam: SamPredictor, image: np.ndarray, dets: Detections) -> np.ndarray:
    emb = sam.embed(image)
    return np.stack([sam.predict(box=b, multimask_output=False, embedding=emb).masks[0]
                     for b in dets.boxes.astype(np.float64)])


def test_masks_match_box_by_box_prompts(sam, detector, images) -> None:
    for image in images:
        dets = detector.predict(image)[0]
        assert len(dets) >= 2
        out = segment_boxes(sam, image, dets)
        np.testing.assert_array_equal(out.boxes, dets.boxes)
        np.testing.assert_array_equal(out.scores, dets.scores)
        np.testing.assert_array_equal(out.class_ids, dets.class_ids)
        assert out.masks.shape == (len(dets), *image.shape[:2]) and out.masks.dtype == bool
        ref = one_by_one(sam, image, dets)
        inter = (out.masks & ref).sum(axis=(1, 2))
        union = (out.masks | ref).sum(axis=(1, 2))
        assert (inter / np.maximum(union, 1) >= 0.99).all()
        assert out.masks.any(axis=(1, 2)).all()  # trained SAM on shapes: no empty mask


def test_embedding_batches_and_empty_input(sam, detector, images) -> None:
    image = images[0]
    dets = detector.predict(image)[0]
    full = segment_boxes(sam, image, dets)
    chunked = segment_boxes(sam, sam.embed(image), dets, batch_size=2)
    assert (full.masks != chunked.masks).mean() < 1e-4
    empty = segment_boxes(sam, image, dets[np.zeros(len(dets), bool)])
    assert len(empty) == 0 and empty.masks.shape == (0, *image.shape[:2])


def test_refuses_detections_of_another_image(sam, detector, images) -> None:
    dets = detector.predict(images[0])[0]
    with pytest.raises(InputError, match="detections are for an image of"):
        segment_boxes(sam, images[1], dets)


def test_wrapped_detector_in_the_batch_runner(sam, detector, images, tmp_path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    out = tmp_path / "res.json"
    summary = run_predict(SamBoxesDetector(detector, sam), folder, out, progress=False)
    assert summary.done == 3 and not summary.failed
    records = json.loads(out.read_text())
    assert records and all("segmentation" in r for r in records)
    for i, image in enumerate(images):
        ref = segment_boxes(sam, image, detector.predict(image)[0]).to_coco(f"{i}.png")
        got = [r for r in records if r["image_id"] == f"{i}.png"]
        assert [r["segmentation"] for r in got] == [r["segmentation"] for r in ref]


def test_predict_cli_with_sam_writes_masks_for_a_detect_only_model(yolox_nano, coco11, tmp_path):
    """YOLOX (boxes only) + --sam: every detection gets a mask that `detseg eval` scores."""
    out = tmp_path / "yolox_sam.json"
    proc = subprocess.run(
        [sys.executable, "-m", "detseg", "predict", str(yolox_nano), str(coco11),
         "--head", "yolox", "--sam", "builtin", "--out", str(out), "-q"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())
    assert records and all(isinstance(r["segmentation"]["counts"], str) for r in records)
    proc = subprocess.run(
        [sys.executable, "-m", "detseg", "eval", "--gt", str(coco11), "--pred", str(out),
         "--iou-type", "segm", "-q"], capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
