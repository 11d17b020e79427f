"""SAM export: two ONNX files with metadata and a parity report that passes, and can fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from segment_anything.utils.onnx import SamOnnxModel  # noqa: E402

import detseg  # noqa: E402
from detseg.errors import InputError  # noqa: E402
from detseg.weights import export_sam as export_module  # noqa: E402
from detseg.weights.export_sam import export_sam  # noqa: E402
from detseg.weights.sam_arch import arch_of, build_sam_small, save_sam_checkpoint  # noqa: E402
from detseg.weights.sam_parity import check_sam_parity  # noqa: E402


def tiny_sam(seed: int = 0, **sizes):
    torch.manual_seed(seed)
    return build_sam_small(image_size=256, **sizes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    sam = tiny_sam()
    out = tmp_path_factory.mktemp("sam_export")
    return sam, export_sam(None, "tiny_test", out, model=sam)


def test_export_writes_two_models_and_a_passing_report(exported) -> None:
    sam, result = exported
    assert result.passed is True
    for path in (result.encoder_path, result.decoder_path, result.report_path):
        assert path.is_file(), path
    report = json.loads(result.report_path.read_text())
    assert report["passed"] is True
    assert report["resize_identical"] is True
    assert report["min_mask_iou"] >= 0.99
    names = {m["input"].split("/")[1] for m in report["masks"]}
    assert names == {
        "point",
        "points_with_negative",
        "box",
        "box_and_point",
        "point_with_mask_input",
    }
    # two aspect ratios, so that a crop baked in for one aspect would show
    assert {m["input"].split("/")[0] for m in report["masks"]} == {
        "image0_240x360",
        "image1_360x200",
    }
    assert all(r["max_abs_diff"] <= r["tolerance"] for r in report["raw"])


@pytest.mark.parametrize("which", ["encoder_path", "decoder_path"])
def test_metadata_carries_model_and_arch(exported, which: str) -> None:
    sam, result = exported
    model = onnx.load(str(getattr(result, which)))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["detseg_task"] == ("sam_encoder" if which == "encoder_path" else "sam_decoder")
    assert meta["model_type"] == "tiny_test"
    assert meta["image_size"] == "256" and meta["low_res_size"] == "64"
    assert float(meta["mask_threshold"]) == 0.0
    assert json.loads(meta["arch"]) == arch_of(sam).to_dict()
    assert meta["detseg_version"] == detseg.__version__


def test_decoder_takes_any_number_of_points_and_image_size(exported) -> None:
    _, result = exported
    session = ort.InferenceSession(str(result.decoder_path), providers=["CPUExecutionProvider"])
    emb = np.random.default_rng(0).normal(size=(1, 256, 16, 16)).astype(np.float32)
    for n, (h, w) in [(1, (50, 70)), (7, (300, 120))]:
        masks, scores, low_res = session.run(
            None,
            {
                "image_embeddings": emb,
                "point_coords": np.full((1, n, 2), 100, np.float32),
                "point_labels": np.ones((1, n), np.float32),
                "mask_input": np.zeros((1, 1, 64, 64), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
                "orig_im_size": np.array([h, w], np.float32),
            },
        )
        assert masks.shape == (1, 4, h, w) and scores.shape == (1, 4)
        assert low_res.shape == (1, 4, 64, 64)


def test_encoder_takes_landscape_and_portrait(exported) -> None:
    _, result = exported
    session = ort.InferenceSession(str(result.encoder_path), providers=["CPUExecutionProvider"])
    for shape in [(171, 256, 3), (256, 100, 3), (256, 256, 3)]:
        (emb,) = session.run(None, {"image": np.zeros(shape, np.uint8)})
        assert emb.shape == (1, 256, 16, 16)


def test_parity_fails_for_a_different_model(exported) -> None:
    _, result = exported
    other = tiny_sam(seed=1)
    report = check_sam_parity(other, result.encoder_path, result.decoder_path)
    assert report["passed"] is False
    assert report["worst_raw"]["max_abs_diff"] > report["worst_raw"]["tolerance"]


def test_parity_catches_upstream_crop_baked_in_for_one_aspect(tmp_path, monkeypatch) -> None:
    # segment-anything's SamOnnxModel crops with int(...), which tracing freezes to the
    # dummy input's aspect ratio; the parity check must notice on the other-aspect image.
    monkeypatch.setattr(export_module, "SamOnnxDecoder", SamOnnxModel)
    result = export_sam(None, "upstream", tmp_path, model=tiny_sam())
    assert result.passed is False
    report = json.loads(result.report_path.read_text())
    bad = {m["input"] for m in report["masks"] if not m["passed"]}
    assert bad and all(name.startswith("image1_360x200") for name in bad)


def test_export_from_checkpoint_records_its_hash(tmp_path) -> None:
    sam = tiny_sam(seed=2, decoder_mlp_dim=256, iou_head_hidden_dim=64)
    ckpt = save_sam_checkpoint(sam, tmp_path / "shapes_sam.pt")
    result = export_sam(ckpt, "shapes_sam", tmp_path / "out")
    assert result.passed
    assert result.encoder_path.name == "shapes_sam_encoder.onnx"
    meta = {p.key: p.value for p in onnx.load(str(result.decoder_path)).metadata_props}
    import hashlib

    assert meta["source_sha256"] == hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    assert json.loads(meta["arch"])["decoder_mlp_dim"] == 256


def test_unknown_model_type_without_weights() -> None:
    with pytest.raises(InputError, match="vit_b"):
        export_sam(None, "vit_x", Path("/tmp/never"))
