"""Ultralytics export: ONNX structure and metadata, parity (which must be able to fail), safety.

Models come from Ultralytics architecture files (random weights, no download).
"""

from __future__ import annotations

import ast
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ultralytics", reason="export needs the [export] extra (ultralytics, torch)")

from detseg.errors import InputError, ModelError  # noqa: E402
from detseg.weights import ultralytics_parity as parity  # noqa: E402
from detseg.weights.export_ultralytics import (  # noqa: E402
    export_ultralytics,
    load_yolo,
    ultralytics_environment,
)

pytestmark = pytest.mark.slow
IMGSZ = 256


@pytest.fixture(scope="module", autouse=True)
def _ultralytics_sandbox(tmp_path_factory: pytest.TempPathFactory):
    """Ultralytics settings in a temporary folder; no auto-install, offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo-config")))
        mp.setenv("YOLO_AUTOINSTALL", "false")
        mp.setenv("YOLO_OFFLINE", "1")
        with ultralytics_environment():
            yield


@pytest.fixture(scope="module")
def detect_export(tmp_path_factory: pytest.TempPathFactory):
    """yolov8n.yaml exported at IMGSZ, with a spy on Ultralytics' requirement checks."""
    import ultralytics.engine.exporter as exporter

    calls = []
    original = exporter.check_requirements

    def spy(*args, **kwargs):
        kwargs["install"] = False
        result = original(*args, **kwargs)
        calls.append((args, result))
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "check_requirements", spy)
        result = export_ultralytics("yolov8n.yaml", tmp_path_factory.mktemp("det"), IMGSZ)
    return result, calls


def test_detect_export_passes_parity(detect_export) -> None:
    result, _ = detect_export
    assert result.passed and result.report["passed"]
    assert result.report_path == result.onnx_path.with_name("yolov8n_parity.json")
    raw = result.report["raw_outputs"]
    assert {r["batch"] for r in raw} == {3, 1}  # the dynamic batch axis was exercised
    assert all(r["max_abs_diff"] <= r["tolerance"] for r in raw)
    det = result.report["detections"]
    assert det["total_reference"] > 0  # compared real detections, not two empty lists
    for image in det["images"]:
        assert image["reference"] == image["onnx"] == image["matched"] > 0
        assert image["min_box_iou"] >= parity.BOX_IOU_MIN


def test_ultralytics_needed_nothing_installed(detect_export) -> None:
    _, calls = detect_export
    assert calls and all(ok for _, ok in calls), calls  # every requirement was already met
    import ultralytics.utils.checks as checks

    assert checks.AUTOINSTALL is False


def test_detect_onnx_structure_and_metadata(detect_export) -> None:
    import onnx
    import onnxruntime as ort

    result, _ = detect_export
    model = onnx.load(str(result.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, IMGSZ, IMGSZ]
    meta = {p.key: p.value for p in model.metadata_props}
    for key in ("task", "names", "imgsz", "stride", "end2end", "author", "version"):
        assert key in meta, key  # Ultralytics' own keys are kept
    assert meta["task"] == "detect"
    assert len(ast.literal_eval(meta["names"])) == 80
    assert ast.literal_eval(meta["imgsz"]) == [IMGSZ, IMGSZ]
    assert meta["channel_order"] == "RGB" and meta["input_scale"] == "1/255"
    assert meta["source"] == "yolov8n.yaml" and meta["source_kind"].startswith("architecture")
    from detseg import __version__

    assert meta["detseg_version"] == __version__
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    for batch in (2, 5):
        [out] = session.run(None, {"images": np.zeros((batch, 3, IMGSZ, IMGSZ), np.float32)})
        assert out.shape == (batch, 84, (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2)


def test_parity_fails_for_other_weights(detect_export) -> None:
    """The check can fail: the ONNX of seed 0 against the PyTorch model of seed 1."""
    result, _ = detect_export
    other = load_yolo("yolov8n.yaml", seed=1)
    report = parity.check_parity(other, result.onnx_path, parity.sample_images())
    assert report["passed"] is False
    assert not all(r["passed"] for r in report["raw_outputs"])


def test_segment_export_with_images_and_checkpoint(tmp_path: Path) -> None:
    """A .pt checkpoint (saved by Ultralytics) exports through the safe loader; masks match."""
    yolo = load_yolo("yolov8n-seg.yaml", seed=3)
    pt = tmp_path / "tiny-seg.pt"
    yolo.save(pt)
    images = parity.sample_images(seed=7)[:2]
    result = export_ultralytics(pt, tmp_path / "out", IMGSZ, sample_images=images)
    assert result.passed, result.report
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(result.onnx_path)).metadata_props}
    assert meta["task"] == "segment" and meta["source_kind"] == "checkpoint"
    assert meta["source_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    images_report = result.report["detections"]["images"]
    assert len(images_report) == 2
    assert all(im["min_mask_iou"] >= parity.MASK_IOU_MIN for im in images_report if im["matched"])


class _RunsCode:
    """Unpickling this calls Path.touch(marker): what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_cannot_run_code(tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "code-ran"
    pt = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(marker)}, pt, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(ModelError):
        export_ultralytics(pt, tmp_path / "out", IMGSZ)
    assert not marker.exists()


@pytest.mark.parametrize("imgsz", [100, 0, 16])
def test_bad_imgsz(tmp_path: Path, imgsz: int) -> None:
    with pytest.raises(InputError, match="multiple of 32"):
        export_ultralytics("yolov8n.yaml", tmp_path, imgsz)


def test_unknown_architecture(tmp_path: Path) -> None:
    with pytest.raises((InputError, ModelError)):
        export_ultralytics("yolov8q-nothing.yaml", tmp_path, IMGSZ)


# ---- the matching used by the decoded-detection check ---------------------------------
B = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)


@pytest.mark.parametrize(
    "boxes, cls, passed, matched",
    [
        (B, [0, 1], True, 2),
        (B[::-1], [1, 0], True, 2),  # order does not matter
        (B, [0, 2], False, 1),  # a class differs
        (B[:1], [0], False, 1),  # one missing
        (B + [0, 0, 1, 0], [0, 1], False, 2),  # a box moved: IoU 0.91 < BOX_IOU_MIN
    ],
)
def test_match_detections(boxes, cls, passed, matched) -> None:
    boxes = np.asarray(boxes, np.float32)
    report = parity.match_detections(B, np.array([0, 1]), np.array([0.9, 0.8]), None,
                                     boxes, np.asarray(cls), np.full(len(boxes), 0.5), None)
    assert report["passed"] is passed and report["matched"] == matched


def test_match_detections_masks() -> None:
    m = np.zeros((1, 8, 8), bool)
    m[0, :4] = True
    half = m.copy()
    half[0, :2] = False
    one = np.array([[0, 0, 8, 4]], np.float32)
    args = (one, np.array([0]), np.array([0.9]))
    assert parity.match_detections(*args, m, *args, m)["passed"]
    assert not parity.match_detections(*args, m, *args, half)["passed"]  # mask IoU 0.5


def test_choose_conf_sits_in_a_gap() -> None:
    scores = np.concatenate([np.linspace(0.9, 0.8, 15), np.linspace(0.5, 0.1, 100)])
    conf = parity.choose_conf(scores, 20)
    assert 0.5 < conf < 0.8  # between the two clusters
    assert (scores > conf).sum() == 15
