"""The onnxruntime session wrapper: devices, real providers, quiet fallback, threads, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from detseg.errors import ModelError
from detseg.pipeline.session import Session, probe_cuda
from tests.pipeline.tiny_onnx import constant_head_model


@pytest.fixture()
def tiny(tmp_path):
    pred = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    return constant_head_model(
        tmp_path / "tiny.onnx", pred, metadata={"task": "detect", "note": "x"}
    )


def test_cpu_session_runs_and_reports_providers(tiny):
    s = Session(tiny, device="cpu")
    assert s.providers == ["CPUExecutionProvider"] and s.device == "cpu"
    assert s.input_name == "images" and s.input_shape == ["batch", 3, 64, 64]
    assert s.batch_size is None and s.output_names == ["output0"]
    assert s.metadata == {"task": "detect", "note": "x"}
    [out] = s.run(np.zeros((2, 3, 64, 64), np.float32))
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out[1], np.arange(12).reshape(3, 4))
    s.warmup()


def test_fixed_batch_reported(tmp_path):
    path = constant_head_model(tmp_path / "b1.onnx", np.zeros((1, 2, 2), np.float32), batch=1)
    assert Session(path, device="cpu").batch_size == 1


def test_thread_settings_reach_onnxruntime(tiny):
    s = Session(tiny, device="cpu", threads=1, inter_op_threads=1)
    opts = s._session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1


def test_auto_falls_back_to_cpu_quietly_without_cuda(tiny):
    """On a machine without a usable GPU, 'auto' gives CPU and prints nothing."""
    if probe_cuda() is None:
        pytest.skip("a usable CUDA device is present; the fallback path is not taken here")
    code = (
        "from detseg.pipeline.session import Session; "
        f"s = Session({str(tiny)!r}, device='auto'); print(s.providers)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "['CPUExecutionProvider']"
    assert proc.stderr == "", proc.stderr


def test_cuda_without_gpu_is_a_clear_error(tiny):
    reason = probe_cuda()
    if reason is None:
        pytest.skip("a usable CUDA device is present")
    with pytest.raises(ModelError, match="device='cuda' is not usable here: .*use device='cpu'"):
        Session(tiny, device="cuda")


@pytest.mark.parametrize(
    "device,path_kind,message",
    [
        ("gpu", "ok", "device: expected one of auto, cpu, cuda, tensorrt, found 'gpu'"),
        ("cpu", "missing", "model file not found"),
        ("cpu", "garbage", "onnxruntime cannot load this model"),
    ],
)
def test_errors(tmp_path, tiny, device, path_kind, message):
    path = {"ok": tiny, "missing": tmp_path / "nope.onnx", "garbage": tmp_path / "bad.onnx"}[
        path_kind
    ]
    if path_kind == "garbage":
        path.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelError, match=message):
        Session(path, device=device)


def test_run_with_wrong_shape_names_the_shapes(tiny):
    s = Session(tiny, device="cpu")
    with pytest.raises(
        ModelError, match=r"inference failed for inputs \{'images': \(1, 3, 32, 64\)\}"
    ):
        s.run(np.zeros((1, 3, 32, 64), np.float32))
