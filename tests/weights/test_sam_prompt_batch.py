"""The SAM decoder's prompt batch (export and the in-place edit) and weight recovery from ONNX."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from detseg.errors import ModelError  # noqa: E402
from detseg.weights.builtin import default_sam  # noqa: E402
from detseg.weights.export_sam import export_sam, make_prompt_batch_dynamic  # noqa: E402
from detseg.weights.sam_arch import build_sam_small  # noqa: E402
from detseg.weights.sam_recover import recover_sam  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    sam = build_sam_small(image_size=256)
    return sam, export_sam(None, "tiny_batch", tmp_path_factory.mktemp("sam"), model=sam)


def feeds(n: int, seed: int = 0, dim: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 256, (n, 3, 2)).astype(np.float32)
    labels = np.tile(np.array([[1, 0, -1]], np.float32), (n, 1))
    labels[::2, 1] = 2  # some prompts with a box corner
    return {
        "image_embeddings": rng.standard_normal((1, dim, 16, 16)).astype(np.float32),
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": np.zeros((1, 1, 64, 64), np.float32),
        "has_mask_input": np.zeros((1,), np.float32),
        "orig_im_size": np.array([180, 300], np.float32),
    }


def check_batch_equals_single_runs(path, dim: int) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 2, 8):
        f = feeds(n, seed=n, dim=dim)
        batch = session.run(None, f)
        assert batch[0].shape == (n, 4, 180, 300)
        for b in range(n):
            one = session.run(None, {**f, "point_coords": f["point_coords"][b:b + 1],
                                     "point_labels": f["point_labels"][b:b + 1]})
            for x, y in zip(batch, one, strict=True):
                np.testing.assert_allclose(x[b], y[0], atol=1e-4, rtol=0)


def test_exported_decoder_takes_a_batch_of_prompts(exported) -> None:
    _, result = exported
    meta = {p.key: p.value for p in onnx.load(str(result.decoder_path)).metadata_props}
    assert meta["prompt_batch"] == "dynamic"
    check_batch_equals_single_runs(result.decoder_path, 256)


def test_embedded_decoder_takes_a_batch_of_prompts() -> None:
    _, decoder = default_sam()
    check_batch_equals_single_runs(decoder, 128)


def test_in_place_edit_keeps_batch_one_outputs_identical(exported, tmp_path) -> None:
    """An old export (batch axis fixed at 1) made dynamic: same bits at batch 1, batch N works."""
    _, result = exported
    old = tmp_path / "old.onnx"
    model = onnx.load(str(result.decoder_path))
    for inp in model.graph.input:  # what exports looked like before the batch axis
        if inp.name in ("point_coords", "point_labels"):
            inp.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(old))
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        ort.InferenceSession(str(old), providers=["CPUExecutionProvider"]).run(None, feeds(2))
    new = tmp_path / "new.onnx"
    shutil.copy(old, new)
    make_prompt_batch_dynamic(new)
    a = ort.InferenceSession(str(old), providers=["CPUExecutionProvider"]).run(None, feeds(1))
    b = ort.InferenceSession(str(new), providers=["CPUExecutionProvider"]).run(None, feeds(1))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    check_batch_equals_single_runs(new, 256)


@pytest.mark.slow
def test_recovered_weights_are_the_exported_ones(tmp_path) -> None:
    """Like a trained model, every weight random (PyTorch's init has all-zero tables, which
    the exporter merges into one tensor, and then the graphs differ)."""
    torch.manual_seed(1)
    sam = build_sam_small(image_size=128, encoder_embed_dim=48, window_size=4)
    with torch.no_grad():
        for value in sam.state_dict().values():
            if value.dtype.is_floating_point:
                value.copy_(torch.randn_like(value) * 0.05)
    result = export_sam(None, "tiny_recover", tmp_path, model=sam)
    recovered = recover_sam(result.encoder_path, result.decoder_path)
    want = sam.state_dict()
    got = recovered.state_dict()
    assert set(got) == set(want)
    for name, value in want.items():
        assert torch.equal(got[name], value), name


def test_recovery_refuses_a_file_without_arch(tmp_path, exported) -> None:
    _, result = exported
    model = onnx.load(str(result.encoder_path))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ModelError, match="no 'arch'"):
        recover_sam(bare, result.decoder_path)
