"""An onnxruntime session that runs where it really can: CUDA/TensorRT when usable, else CPU.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as *available* whenever it was built with it,
even on a machine without a GPU or CUDA libraries; asking for it there prints a burst of
"Failed to load library ..." errors and silently falls back to the CPU. `probe_cuda` checks
instead that the provider library and the driver really load (ctypes, no onnxruntime logging)
and that the driver sees a device, and `Session` then checks ``get_providers()`` on the
created session, so `Session.providers` is the truth.

Devices:
    ``"auto"``      CUDA when it really loads (probe, then the session confirms), else CPU.
    ``"cpu"``       CPU only.
    ``"cuda"``      CUDA or a `ModelError` that says why not.
    ``"tensorrt"``  TensorRT (falls back to CUDA inside onnxruntime for unsupported nodes), or a
                    `ModelError`. Not part of ``auto``: building a TensorRT engine takes minutes
                    on first use and needs shape profiles for dynamic inputs, which would make
                    ``auto`` unpredictable.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from detseg.errors import ModelError

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_TRT = "TensorrtExecutionProvider"
_SILENT = 4  # onnxruntime log severity FATAL: nothing below it is printed

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ModelError(
            "onnxruntime is not installed: pip install onnxruntime-gpu (Linux/Windows x86_64) "
            "or onnxruntime (elsewhere)"
        ) from exc
    return onnxruntime


@functools.cache
def probe_cuda(tensorrt: bool = False) -> str | None:
    """Why CUDA (or TensorRT) cannot be used here, or None when it can.

    Loads the provider library and the CUDA driver with ctypes (no onnxruntime error spam),
    after onnxruntime's own `preload_dlls` has had a chance to load CUDA libraries installed
    from pip, and asks the driver for a device count.
    """
    ort = _ort()
    wanted = _TRT if tensorrt else _CUDA
    if wanted not in ort.get_available_providers():
        return f"this onnxruntime build has no {wanted} (install onnxruntime-gpu)"
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        # It prints warnings for missing pip CUDA packages; those are reported below instead.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            preload()
    try:
        driver = ctypes.CDLL("libcuda.so.1" if os.name != "nt" else "nvcuda.dll")
    except OSError:
        return "no NVIDIA driver (libcuda) could be loaded"
    count = ctypes.c_int(0)
    if (
        driver.cuInit(0) != 0
        or driver.cuDeviceGetCount(ctypes.byref(count)) != 0
        or count.value < 1
    ):
        return "the NVIDIA driver reports no usable GPU"
    capi = Path(ort.__file__).parent / "capi"
    names = ["onnxruntime_providers_cuda"] + (
        ["onnxruntime_providers_tensorrt"] if tensorrt else []
    )
    for name in names:
        lib = capi / (f"lib{name}.so" if os.name != "nt" else f"{name}.dll")
        try:
            ctypes.CDLL(str(lib))
        except OSError as exc:
            return f"{lib.name} does not load: {exc} (CUDA/cuDNN/TensorRT libraries missing?)"
    return None


class Session:
    """One onnxruntime InferenceSession, created once and run many times.

    Attributes:
        path: the model file.
        providers: execution providers actually in use, best first (e.g. ``["CPUExecutionProvider"]``).
        device: ``"cuda"``, ``"tensorrt"`` or ``"cpu"``, what the session really runs on.
        input_name, input_shape: the first input; dims that are dynamic are str or None.
        input_dtype: numpy dtype the first input expects.
        output_names: names of the outputs, in the model's order.
        metadata: the model's custom metadata map (str -> str).
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        threads: int | None = None,
        inter_op_threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        if device not in DEVICES:
            raise ModelError(f"device: expected one of {', '.join(DEVICES)}, found {device!r}")
        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        if inter_op_threads is not None:
            options.inter_op_num_threads = int(inter_op_threads)

        requested = self._requested_providers(device)
        # This session logs nothing: a provider that fails to load is detected from
        # get_providers() below and reported (or silently skipped for "auto"). onnxruntime's
        # process-wide default logger is left alone: it has no getter, so a level changed here
        # could not be given back to the caller. CUDA is only requested once probe_cuda() has
        # loaded its libraries, so on a machine without a usable GPU nothing reaches that logger.
        options.log_severity_level = _SILENT
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=requested)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{self.path}: onnxruntime cannot load this model ({exc})") from None
        self.providers: list[str] = list(self._session.get_providers())
        if device == "cuda" and _CUDA not in self.providers:
            raise ModelError(f"{self.path}: device='cuda' requested but CUDA did not load")
        if device == "tensorrt" and _TRT not in self.providers:
            raise ModelError(f"{self.path}: device='tensorrt' requested but TensorRT did not load")
        self.device = (
            "tensorrt" if _TRT in self.providers else "cuda" if _CUDA in self.providers else "cpu"
        )

        inp = self._session.get_inputs()[0]
        self.input_name: str = inp.name
        self.input_shape: list = list(inp.shape)
        self.input_dtype = _ORT_TYPES.get(inp.type, np.float32)
        self.output_names: list[str] = [o.name for o in self._session.get_outputs()]
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)

    @staticmethod
    def _requested_providers(device: str) -> list:
        if device == "cpu":
            return [_CPU]
        if device == "tensorrt":
            reason = probe_cuda(tensorrt=True)
            if reason:
                raise ModelError(f"device='tensorrt' is not usable here: {reason}")
            return [_TRT, _CUDA, _CPU]
        reason = probe_cuda()
        if reason is None:
            return [_CUDA, _CPU]
        if device == "cuda":
            raise ModelError(
                f"device='cuda' is not usable here: {reason}; use device='cpu' or 'auto'"
            )
        return [_CPU]

    @property
    def batch_size(self) -> int | None:
        """The fixed batch size of the first input, or None when the batch dim is dynamic."""
        dim = self.input_shape[0] if self.input_shape else None
        return dim if isinstance(dim, int) and dim > 0 else None

    def run(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model. ``feeds``: the first input's array, or a name -> array mapping."""
        if isinstance(feeds, np.ndarray):
            feeds = {self.input_name: feeds}
        try:
            return self._session.run(self.output_names, dict(feeds))
        except Exception as exc:  # onnxruntime's Fail/InvalidArgument types
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise ModelError(
                f"{self.path}: inference failed for inputs {shapes} "
                f"(model expects {self.input_name} {self.input_shape}): {exc}"
            ) from None

    def warmup(self, shape: Sequence[int] | None = None, runs: int = 1) -> None:
        """Run the model on zeros so that the first real call is not slowed by lazy setup.

        ``shape`` defaults to the input shape with dynamic dims set to 1 (batch) or 640.
        """
        if shape is None:
            shape = [
                d if isinstance(d, int) and d > 0 else (1 if i == 0 else 640)
                for i, d in enumerate(self.input_shape)
            ]
        x = np.zeros(tuple(shape), self.input_dtype)
        for _ in range(runs):
            self.run(x)

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, providers={self.providers})"
