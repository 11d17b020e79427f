"""SAM 2 export: ONNX files with metadata, a dynamic prompt batch, and a parity report that
passes against sam2's `SAM2ImagePredictor` and can fail.

One random-weight SAM 2.1 hiera tiny, built and exported once for the module, at 512 px to
keep the CPU time modest (the released models run at 1024; the export code does not depend
on the size, and bench/bench_sam.py checks parity at 1024).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2", reason="SAM 2 export needs the sam2 package ([export] extra)")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

import detseg  # noqa: E402
from detseg.errors import InputError, ModelError  # noqa: E402
from detseg.pipeline.sam import SamPredictor  # noqa: E402
from detseg.pipeline.sam2 import Sam2Predictor  # noqa: E402
from detseg.weights.export_sam2 import (  # noqa: E402
    Sam2DecoderOnnx,
    build_sam2_model,
    export_sam2,
)
from detseg.weights.report import mask_iou  # noqa: E402
from detseg.weights.sam2_parity import check_sam2_parity  # noqa: E402
from detseg.weights.sam_parity import sample_images  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = 512
PROMPT_NAMES = {"point", "points_with_negative", "box", "box_and_point", "point_with_mask_input"}


def tiny_sam2(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam2_model("sam2.1_hiera_tiny", image_size=SIZE)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_sam2()
    out = tmp_path_factory.mktemp("sam2_export")
    return model, export_sam2(None, "sam2.1_hiera_tiny", out, model=model)


def test_export_writes_two_models_and_a_passing_report(exported) -> None:
    _, result = exported
    assert result.passed is True
    report = json.loads(result.report_path.read_text())
    assert report["passed"] is True and report["min_mask_iou"] >= 0.99
    assert report["resize_max_abs_diff"] <= 1e-4
    assert {m["input"].split("/")[1] for m in report["masks"]} == PROMPT_NAMES
    assert {m["input"].split("/")[0] for m in report["masks"]} == {"image0_240x360",
                                                                   "image1_360x200"}
    assert {m["multimask"] for m in report["masks"]} == {True, False}
    assert {b["num_prompts"] for b in report["batch"]} == {1, 2, 8}
    assert all(b["passed"] for b in report["batch"])
    outputs = {r["output"] for r in report["raw"]}
    assert outputs == {"image_embed", "high_res_feats_0", "high_res_feats_1", "iou_predictions",
                       "low_res_masks"}
    # The masks compared are neither empty nor full, so the IoU says something.
    fractions = [f for m in report["masks"] for f in m["mask_fraction"]]
    assert 0.05 < min(fractions) and max(fractions) < 0.95


@pytest.mark.parametrize("which", ["encoder_path", "decoder_path"])
def test_metadata(exported, which: str) -> None:
    _, result = exported
    model = onnx.load(str(getattr(result, which)))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["detseg_task"] == ("sam_encoder" if which == "encoder_path" else "sam_decoder")
    assert meta["sam_generation"] == "2" and meta["model_type"] == "sam2.1_hiera_tiny"
    assert meta["image_size"] == str(SIZE) and meta["low_res_size"] == str(SIZE // 4)
    assert meta["dynamic_multimask_via_stability"] == "True"
    assert meta["source"] == "in-memory model" and meta["detseg_version"] == detseg.__version__


@pytest.mark.parametrize("n", [1, 2, 8])
def test_decoder_prompt_batch_matches_pytorch(exported, n: int) -> None:
    model, result = exported
    session = ort.InferenceSession(str(result.decoder_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(n)
    e = SIZE // 16
    feeds = {
        "image_embed": rng.normal(size=(1, 256, e, e)).astype(np.float32),
        "high_res_feats_0": rng.normal(size=(1, 32, 4 * e, 4 * e)).astype(np.float32),
        "high_res_feats_1": rng.normal(size=(1, 64, 2 * e, 2 * e)).astype(np.float32),
        "point_coords": rng.uniform(0, SIZE, (n, 5, 2)).astype(np.float32),
        "point_labels": np.tile(np.float32([[2, 3, 1, 0, -1]]), (n, 1)),
        "mask_input": rng.normal(size=(n, 1, 4 * e, 4 * e)).astype(np.float32),
        "has_mask_input": (np.arange(n) % 2).astype(np.float32),
    }
    iou, low, obj = session.run(None, feeds)
    assert iou.shape == (n, 4) and low.shape == (n, 4, 4 * e, 4 * e) and obj.shape == (n, 1)
    with torch.no_grad():
        ref = Sam2DecoderOnnx(model)(*(torch.from_numpy(v) for v in feeds.values()))
    assert np.abs(iou - ref[0].numpy()).max() < 1e-4
    assert np.abs(low - ref[1].numpy()).max() < 1e-3 * max(1.0, float(ref[1].abs().max()))


def test_has_mask_input_must_be_reshaped_for_a_prompt_batch(exported) -> None:
    # The usual wrapper multiplies the (N,) flag straight into the (N, C, E, E) embedding: the
    # flag broadcasts against the last axis (E wide), so N = 2 cannot work. Ours reshapes it.
    model, _ = exported
    pe = model.sam_prompt_encoder
    e = SIZE // 16
    flag = torch.tensor([1.0, 0.0])
    with torch.no_grad():
        dense = pe.mask_downscaling(torch.zeros(2, 1, 4 * e, 4 * e))
        with pytest.raises(RuntimeError):
            _ = flag * dense + (1 - flag) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)


def test_runtime_matches_sam2_image_predictor_on_more_aspect_ratios(exported) -> None:
    model, result = exported
    ours = SamPredictor.load(result.encoder_path, result.decoder_path, device="cpu")
    assert isinstance(ours, Sam2Predictor)
    ref = SAM2ImagePredictor(model)
    ref._bb_feat_sizes = [(SIZE // 4,) * 2, (SIZE // 8,) * 2, (SIZE // 16,) * 2]
    rng = np.random.default_rng(5)
    checked = 0
    for h, w in [(90, 400), (480, 300)]:
        image = np.asarray(rng.integers(0, 256, (h, w, 3)), np.uint8)
        image[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (250, 20, 20)
        ref.set_image(image)
        emb = ours.embed(image)
        box = np.array([0.3 * w, 0.2 * h, 0.7 * w, 0.8 * h])
        prompts = [
            {"point_coords": np.array([[w / 2, h / 2]]), "point_labels": np.array([1])},
            {"point_coords": np.array([[w / 2, h / 2], [5, 5]]), "point_labels": np.array([1, 0])},
            {"box": box, "point_coords": np.array([[w / 2, h / 2]]), "point_labels": np.array([1])},
        ]
        for prompt in prompts:
            for multimask in (True, False):
                m_ref, s_ref, _ = ref.predict(**prompt, multimask_output=multimask)
                pred = ours.predict(**prompt, multimask_output=multimask, embedding=emb)
                assert pred.masks.shape == m_ref.shape
                assert min(mask_iou(a, b > 0) for a, b in zip(pred.masks, m_ref, strict=True)) >= 0.99
                assert np.abs(pred.scores - s_ref).max() < 1e-3
                checked += 1
    assert checked == 12


def test_parity_fails_for_a_different_model(exported) -> None:
    _, result = exported
    report = check_sam2_parity(tiny_sam2(seed=1), result.encoder_path, result.decoder_path,
                               images=sample_images()[:1])
    assert report["passed"] is False
    assert report["worst_raw"]["max_abs_diff"] > report["worst_raw"]["tolerance"]


def test_checkpoint_weights_are_loaded(tmp_path: Path) -> None:
    model = tiny_sam2(seed=3)
    ckpt = tmp_path / "mine.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    loaded = build_sam2_model("sam2.1_hiera_tiny", ckpt, image_size=SIZE)
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.save({"model": {"nope": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="bad.pt"):
        build_sam2_model("sam2.1_hiera_tiny", tmp_path / "bad.pt", image_size=SIZE)
    with pytest.raises(InputError, match="sam2.1_hiera_tiny"):
        build_sam2_model("sam2_hiera_x")


def test_serve_hub_loads_sam2_by_registry_name(exported, tmp_path: Path, monkeypatch) -> None:
    from detseg.serve.models import ModelHub, detector_specs

    _, result = exported
    monkeypatch.setenv("DETSEG_CACHE", str(tmp_path))
    monkeypatch.setenv("DETSEG_OFFLINE", "1")
    folder = tmp_path / "onnx" / "sam2.1_hiera_tiny"  # where `detseg serve --sam` exports once
    folder.mkdir(parents=True)
    for path in (result.encoder_path, result.decoder_path):
        shutil.copy(path, folder / path.name)
    hub = ModelHub(detector_specs([]), sam_name="sam2.1_hiera_tiny", device="cpu")
    assert hub.sam_status() is None and isinstance(hub.sam(), Sam2Predictor)


def test_cli_export_checkpoint_with_sam_type(tmp_path: Path, monkeypatch) -> None:
    # The dispatch from `detseg export FILE --sam-type sam2.1_...`; the export itself is above.
    import detseg.weights.export_sam2 as module
    from detseg.weights.export import export_model

    calls = []

    def fake(checkpoint, model_type, out_dir, **kw):
        calls.append((Path(checkpoint).name, model_type))
        return module.Sam2ExportResult(Path(out_dir) / "e.onnx", Path(out_dir) / "d.onnx",
                                       Path(out_dir) / "p.json", True, {})

    monkeypatch.setattr(module, "export_sam2", fake)
    ckpt = tmp_path / "my_finetune.pt"
    ckpt.write_bytes(b"not read by the fake")
    summary = export_model(ckpt, tmp_path / "out", sam_type="sam2.1_hiera_small")
    assert summary.family == "sam2" and calls == [("my_finetune.pt", "sam2.1_hiera_small")]
    with pytest.raises(InputError, match="--sam-type"):
        export_model(ckpt, tmp_path / "out", sam_type="sam2.1_hiera_huge")


@pytest.mark.parametrize("name", ["sam2.1_hiera_large"])
def test_offline_export_names_the_url(tmp_path: Path, name: str) -> None:
    env = {**os.environ, "DETSEG_CACHE": str(tmp_path / "cache"), "DETSEG_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "detseg", "export", name, "--out",
                           str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 2, proc.stderr
    assert f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
