"""INT8/FP16 variants and their accuracy gate, on the embedded model and the YOLOX-Nano asset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx (the export extra) is not installed")

from detseg.errors import InputError  # noqa: E402
from detseg.weights.builtin import default_detector  # noqa: E402
from detseg.weights.quantize import export_variant, head_nodes  # noqa: E402


def test_head_nodes_of_the_embedded_seg_model():
    """The head's last convolutions, DFL, decode and the prototypes' last conv stay float;
    the backbone and neck convolutions do not."""
    model = onnx.load(str(default_detector()))
    kept = set(head_nodes(model))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    for branch in ("cv2", "cv3", "cv4"):  # box, class, mask-coefficient branches
        for level in range(3):
            assert f"/model.22/{branch}.{level}/{branch}.{level}.2/Conv" in kept
            assert f"/model.22/{branch}.{level}/{branch}.{level}.0/conv/Conv" not in kept
    assert {"/model.22/dfl/conv/Conv", "/model.22/dfl/Softmax", "/model.22/Sigmoid",
            "/model.22/proto/cv3/conv/Conv"} <= kept
    assert len([c for c in convs if c in kept]) == 11  # 9 head + DFL + prototypes
    assert not any(n.startswith("/model.0/") for n in kept)


def test_head_nodes_of_yolox(yolox_nano: Path):
    model = onnx.load(str(yolox_nano))
    kept = set(head_nodes(model))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert sum(ops[k] == "Conv" for k in kept) == 9  # reg, obj, cls convs at 3 strides
    assert sum(ops[k] == "Sigmoid" for k in kept) == 6
    assert len(kept) < len(ops) / 5


def test_other_models_need_gate_and_calibration_data(yolox_nano: Path, tmp_path: Path):
    with pytest.raises(InputError, match="--gate: a COCO-format ground truth"):
        export_variant(yolox_nano, "int8", tmp_path, head="yolox")
    with pytest.raises(InputError, match="no such file; expected a COCO instances"):
        export_variant(yolox_nano, "int8", tmp_path, head="yolox",
                       gate=tmp_path / "instances.json")
    gate = tmp_path / "gt.json"
    gate.write_text("{}")
    with pytest.raises(InputError, match="--calib: INT8 needs calibration images"):
        export_variant(yolox_nano, "int8", tmp_path, head="yolox", gate=gate)
    with pytest.raises(InputError, match="--quantize: expected one of int8, fp16"):
        export_variant(yolox_nano, "int4", tmp_path)


def _detseg(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detseg", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def small_gate(tmp_path_factory) -> Path:
    from detseg.data.shapes import generate_shapes

    folder = tmp_path_factory.mktemp("gate")
    return generate_shapes(folder, 16, 4242)


@pytest.mark.slow
def test_int8_export_of_the_embedded_model_passes_its_gate(small_gate: Path, tmp_path: Path):
    """`detseg export builtin --quantize int8`: a QDQ model whose Conv nodes are quantized,
    metadata kept, and a gate report with both models' AP and a measured speedup."""
    proc = _detseg("export", "builtin", "--quantize", "int8", "--calib-images", "8",
                   "--gate", small_gate, "--out", tmp_path / "q", cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads((tmp_path / "q" / "yolov8n_seg_shapes_int8_gate.json").read_text())
    assert report["passed"] == (proc.returncode == 0) == (report["ap_drop"] <= 1.0)
    assert set(report["per_type"]) == {"bbox", "segm"}
    assert report["ap_reference"] > 50 and report["ap_variant"] > 40  # not the zero-mAP failure
    assert report["speedup"] > 0 and report["images"] == 16
    assert any("only 16 images" in w for w in report["warnings"])
    model = onnx.load(str(tmp_path / "q" / "yolov8n_seg_shapes_int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 50 and "Softmax" in ops
    assert {p.key for p in model.metadata_props} >= {"names", "imgsz", "task"}
    assert "gate passed" in proc.stdout or "gate FAILED" in proc.stdout


@pytest.mark.slow
def test_a_damaged_variant_fails_the_gate(small_gate: Path, tmp_path: Path):
    """The gate can fail: a copy whose box-branch weights are scaled by 1.5 loses most AP, and
    the report says passed: false (the CLI exits 1 on it)."""
    from onnx import numpy_helper

    from detseg.weights.gate import run_gate

    model = onnx.load(str(default_detector()))
    hit = 0
    for init in model.graph.initializer:
        if "cv2" in init.name and "model.22" in init.name and init.name.endswith("weight"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
            hit += 1
    if not hit:  # the exporter named the weights after their Conv nodes' inputs
        conv_w = {n.input[1] for n in model.graph.node
                  if n.op_type == "Conv" and n.name.startswith("/model.22/cv2.")}
        for init in model.graph.initializer:
            if init.name in conv_w:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5,
                                                      init.name))
                hit += 1
    assert hit
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    r = run_gate(default_detector(), damaged, small_gate, tmp_path, rounds=1, timing_images=2)
    assert r["passed"] is False and r["ap_drop"] > 5
    assert r["ap_drop_ci"][0] <= r["ap_drop"] <= r["ap_drop_ci"][1]
    assert json.loads(Path(r["path"]).read_text())["passed"] is False
    np.testing.assert_allclose(r["ap_reference"] - r["ap_variant"], r["ap_drop"], atol=0.01)


def test_calibration_on_the_gate_images_is_flagged(coco11: Path, tmp_path: Path):
    """Calibration images are read by detseg's reader; those that are also gate images are
    counted (the gate report then says it is optimistic)."""
    from detseg.weights.quantize import _calibration_images, _overlap

    images, _, paths = _calibration_images(coco11.parent / "images", False, tmp_path, 5)
    assert len(images) == 5 and all(im.dtype == np.uint8 and im.ndim == 3 for im in images)
    assert _overlap(paths, coco11, None) == 5
    from detseg.data.shapes import generate_shapes

    other = generate_shapes(tmp_path / "s", 2, 1)
    assert _overlap(paths, other, None) == 0
