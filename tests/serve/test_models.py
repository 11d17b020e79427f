"""Which models the server offers and where they come from (files, registry names, cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from detseg.errors import ModelError
from detseg.serve.models import ModelHub, detector_specs
from detseg.weights.onnx_models import exported_onnx


@pytest.fixture()
def model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DETSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DETSEG_OFFLINE", "1")
    return tmp_path / "cache"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def test_registry_name_uses_its_cached_export(model_cache: Path, yolox_nano: Path) -> None:
    # Stand-in for an earlier export of "yolov8n": any ONNX the detector can load.
    _link(yolox_nano, model_cache / "onnx" / "yolov8n" / "yolov8n.onnx")
    assert exported_onnx("yolov8n", "detect") == [model_cache / "onnx" / "yolov8n" / "yolov8n.onnx"]
    hub = ModelHub(detector_specs(["yolov8n"], head="yolox"), device="cpu")
    assert hub.names == ["yolov8n"] and hub.detector("yolov8n").meta.family == "yolox"


def test_registry_sam_uses_its_cached_export(model_cache: Path, sam_paths) -> None:
    folder = model_cache / "onnx" / "sam_vit_b"
    _link(sam_paths[0], folder / "sam_vit_b_01ec64_encoder.onnx")
    _link(sam_paths[1], folder / "sam_vit_b_01ec64_decoder.onnx")
    hub = ModelHub(detector_specs([]), sam_name="sam_vit_b", device="cpu")
    assert hub.sam_status() is None


def test_registry_name_offline_says_why(model_cache: Path) -> None:
    hub = ModelHub(detector_specs(["yolov8n-seg"]), device="cpu")
    with pytest.raises(ModelError, match="model 'yolov8n-seg' could not be loaded: .*(?i:offline)"):
        hub.detector("yolov8n-seg")
    with pytest.raises(ModelError, match="could not be loaded"):  # remembered, not retried
        hub.detector("yolov8n-seg")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"sam_name": "yolov8n"}, "expected a Segment Anything model"),
     ({"sam_name": "no-such-sam"}, "not a file and not a known model name")],
)
def test_bad_sam_names(model_cache: Path, kwargs, message) -> None:
    hub = ModelHub(detector_specs([]), device="cpu", **kwargs)
    assert message in hub.sam_status()


def test_unknown_detector_name_is_explained(model_cache: Path) -> None:
    hub = ModelHub(detector_specs(["yolov99"]), device="cpu")
    with pytest.raises(ModelError, match="not a file and not a known model name"):
        hub.detector("yolov99")


def test_hub_needs_a_detector() -> None:
    with pytest.raises(ModelError, match="at least one detector"):
        ModelHub([])


def test_each_model_says_what_it_knows(yolox_nano: Path, sam_paths, model_cache: Path) -> None:
    from tests.serve.conftest import builtin_detector, builtin_sam

    models = [str(yolox_nano)] + (["builtin"] if builtin_detector() else []) + ["missing.onnx"]
    hub = ModelHub(detector_specs(models, head="yolox"), sam_paths=sam_paths, device="cpu")
    line = hub.describe_detector("yolox_nano.onnx")
    assert line.startswith("Trained on COCO's 80 everyday classes: person, bicycle") and "68 more" in line
    assert hub.describe_detector("missing.onnx").startswith("**Not available:**")
    if builtin_detector():
        line = hub.describe_detector("builtin")
        assert "trained on synthetic shapes only" in line
        assert "Knows 6 classes: circle, square, triangle, star, hexagon, ellipse" in line
    sam_line = hub.describe_sam()
    if builtin_sam() is not None and sam_paths == builtin_sam():
        assert "trained on synthetic shapes only" in sam_line
    else:
        assert "no classes" in sam_line and "synthetic" not in sam_line
