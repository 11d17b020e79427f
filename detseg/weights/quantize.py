"""INT8 and FP16 variants of a detector's ONNX file (accepted only through `detseg.weights.gate`).

- INT8: onnxruntime static quantization in QDQ format. Calibration tensors are the ones the
  detector is fed at inference: images read by detseg's reader and letterboxed by
  `Detector.preprocess` of the float model. Only Conv/MatMul/Gemm are quantized (weights
  int8 per channel, activations uint8), and the head stays float: every node between the
  last convolutions that read the backbone's activated features and the outputs (the
  box/class/mask-coefficient convolutions, DFL softmax and its convolution, box decoding,
  Sigmoid, Concat, prototypes' last convolution). Quantizing those is what gives the zero-mAP
  INT8 models users report (ultralytics#25045, onnxruntime#14233).
- FP16: weights and activations in float16, inputs and outputs kept float32
  (``onnxruntime.transformers.float16``, ``keep_io_types=True``).

The variant keeps the original's metadata (Ultralytics' ``names``/``imgsz``...) and its
``<stem>.detseg.json`` sidecar, so `Detector.load` reads it as it reads the original.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from detseg.errors import InputError, ModelError

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
#: ``--int8-ops wide``: the backbone's activations, adds, concatenations, pooling and resizes
#: too (QLinearSigmoid/Mul/Add/Concat...), so that fewer Quantize/Dequantize pairs and float
#: SiLUs sit between the integer convolutions. The head stays float either way.
WIDE_OPS = QUANTIZED_OPS + ("Mul", "Sigmoid", "Add", "Concat", "MaxPool", "Resize", "Split",
                            "Slice")
OP_SETS = {"conv": QUANTIZED_OPS, "wide": WIDE_OPS}
#: Ops that end a backbone block: a head convolution reading one of them is the head's first
#: layer of its own (SiLU is Sigmoid + Mul in ONNX exports).
_ACTIVATIONS = {"Mul", "Sigmoid", "Relu", "LeakyRelu", "HardSwish", "HardSigmoid", "Clip", "Silu"}
MODES = ("int8", "fp16")


def head_nodes(model) -> list[str]:
    """Names of the nodes kept in float: all nodes from which a graph output is reached
    without passing through a convolution that reads an activation.

    Walks back from each output; a Conv/MatMul/Gemm whose data input comes from an activation
    (or from the graph input) is kept in float and the walk stops there: it is the head's last
    learned layer. The DFL convolution (its input comes from a Softmax) is passed through.
    """
    producer = {out: n for n in model.graph.node for out in n.output}
    kept: list[str] = []
    seen: set[int] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        kept.append(node.name)
        if node.op_type in QUANTIZED_OPS:
            source = producer.get(node.input[0])
            if source is None or source.op_type in _ACTIVATIONS:
                continue
            stack.append(node.input[0])
            continue
        stack.extend(i for i in node.input if i)
    return kept


class _Calibration:
    """onnxruntime's CalibrationDataReader over letterboxed tensors, one image per call."""

    def __init__(self, input_name: str, tensors: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self._it = iter(tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:  # pragma: no cover - onnxruntime calls it only for some methods
        raise ModelError("calibration tensors can be read once")


def calibration_tensors(detector, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(1, 3, H, W) float tensors of ``images`` letterboxed exactly as ``detector`` does."""
    if not images:
        raise InputError("--calib: no images to calibrate with")
    return [detector.preprocess([im])[0] for im in images]


def quantize_int8(
    onnx_in: Path,
    onnx_out: Path,
    tensors: Sequence[np.ndarray],
    *,
    per_channel: bool = True,
    ops: str = "conv",
) -> dict:
    """Write an INT8 (QDQ) copy of ``onnx_in`` calibrated on ``tensors``; returns what was done.

    The dict says how: method, quantized op types, opset, how many nodes were kept float
    (and the first few names), calibration images.
    """
    import onnx

    if ops not in OP_SETS:
        raise InputError(f"--int8-ops: expected one of {', '.join(OP_SETS)}, found {ops!r}")
    model = onnx.load(str(onnx_in))
    excluded = head_nodes(model)
    unnamed = [n for n in model.graph.node if not n.name]
    if unnamed:
        raise ModelError(f"{onnx_in}: {len(unnamed)} nodes have no name; cannot keep the head "
                         "in float (re-export the model, or run onnxsim on it)")
    input_name = model.graph.input[0].name
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    source, opset = onnx_in, _opset(model)
    if opset < MIN_QDQ_OPSET:
        # Per-channel DequantizeLinear (its ``axis``) exists from opset 13 on; older exports
        # (the YOLOX-Nano asset is opset 11) are converted first.
        from onnx import version_converter

        source = onnx_out.with_name(f"{onnx_out.stem}_opset{MIN_QDQ_OPSET}.tmp.onnx")
        converted = version_converter.convert_version(model, MIN_QDQ_OPSET)
        # The converter keeps IR version 7, under which onnxruntime rejects the ``axis`` of
        # per-channel DequantizeLinear; IR 8 is the one that reads it.
        converted.ir_version = max(converted.ir_version, 8)
        onnx.save(converted, str(source))
    try:
        _quantize_static(source, onnx_out, input_name, tensors, excluded, per_channel, ops)
    finally:
        if source != onnx_in:
            source.unlink(missing_ok=True)
    _copy_metadata(onnx_in, onnx_out)
    return {
        "method": "onnxruntime quantize_static, QDQ, weights int8 per-channel, activations uint8, "
                  "MinMax calibration",
        "quantized_ops": list(OP_SETS[ops]),
        "opset": max(opset, MIN_QDQ_OPSET),
        "excluded_nodes": len(excluded),
        "excluded_examples": excluded[:12],
        "calibration_images": len(tensors),
    }


MIN_QDQ_OPSET = 13


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _quantize_static(source: Path, onnx_out: Path, input_name: str, tensors, excluded: list[str],
                     per_channel: bool, ops: str) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    quantize_static(
        str(source),
        str(onnx_out),
        _Calibration(input_name, tensors),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(OP_SETS[ops]),
        nodes_to_exclude=excluded,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def convert_fp16(onnx_in: Path, onnx_out: Path) -> dict:
    """Write a float16 copy of ``onnx_in`` with float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(onnx_in))
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(onnx_out))
    _copy_metadata(onnx_in, onnx_out)
    return {"method": "onnxruntime.transformers.float16, keep_io_types=True"}


def _copy_metadata(src: Path, dst: Path) -> None:
    """Metadata props and the ``.detseg.json`` sidecar of ``src`` onto ``dst``."""
    import onnx

    from detseg.pipeline.meta import sidecar_path

    original = onnx.load(str(src), load_external_data=False)
    variant = onnx.load(str(dst))
    have = {p.key for p in variant.metadata_props}
    for prop in original.metadata_props:
        if prop.key not in have:
            variant.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(variant, str(dst))
    side = sidecar_path(src)
    if side is not None:
        shutil.copyfile(side, dst.with_suffix(".detseg.json"))


CALIB_SEED = 11  # shapes splits of the embedded default: calibration and gate never overlap
GATE_SEED = 20261130
MAX_CALIB_IMAGES = 200


def export_variant(
    model: str | Path | None,
    mode: str,
    out_dir: Path,
    *,
    calib: str | Path | None = None,
    gate: Path | None = None,
    gate_images_dir: Path | None = None,
    head: str | None = None,
    max_ap_drop: float | None = None,
    calib_images: int = 64,
    gate_size: int = 200,
    int8_ops: str = "conv",
) -> dict:
    """Write ``out_dir/<stem>_<mode>.onnx`` and its gate report; return the gate dict.

    ``model``: an ONNX file, ``"builtin"``/None (the embedded default) or anything
    `detector_onnx` exports. Without ``calib`` (INT8) or ``gate``, the embedded default gets
    held-out splits of its shapes generator (seeds `CALIB_SEED`, `GATE_SEED`); any other model
    must be given them.
    """
    from detseg.weights.builtin import default_detector
    from detseg.weights.gate import MAX_AP_DROP, run_gate
    from detseg.weights.onnx_models import detector_onnx

    if mode not in MODES:
        raise InputError(f"--quantize: expected one of {', '.join(MODES)}, found {mode!r}")
    src = detector_onnx(None if model is None else str(model))
    if not src.is_file():
        raise InputError(f"{src}: no such ONNX file")
    embedded = src.resolve() == default_detector().resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if gate is None:
        if not embedded:
            raise InputError(
                f"--gate: a COCO-format ground truth (instances .json) is required to accept a "
                f"{mode} variant of {src.name}; only the embedded default has a built-in "
                f"held-out set")
        gate = _shapes_split(out_dir / "gate_shapes", gate_size, GATE_SEED)
        notes.append(f"gate set: {gate_size} held-out shapes images, seed {GATE_SEED}")
    elif not Path(gate).is_file():
        raise InputError(f"--gate {gate}: no such file; expected a COCO instances .json of "
                         f"held-out images")
    suffix = mode if mode == "fp16" or int8_ops == "conv" else f"{mode}_{int8_ops}"
    variant = out_dir / f"{src.stem}_{suffix}.onnx"
    if mode == "int8":
        from detseg.pipeline.detector import Detector

        images, where, paths = _calibration_images(calib, embedded, out_dir, calib_images)
        notes.append(f"calibration: {len(images)} images from {where}")
        shared = _overlap(paths, Path(gate), gate_images_dir)
        if shared:
            notes.append(f"{shared} calibration images are also gate images: the gate is "
                         f"optimistic")
        detector = Detector.load(src, head=head, device="cpu")
        info = quantize_int8(src, variant, calibration_tensors(detector, images), ops=int8_ops)
    else:
        info = convert_fp16(src, variant)
    log.info("wrote %s (%s)", variant, info["method"])
    result = run_gate(src, variant, Path(gate), out_dir, images_dir=gate_images_dir, head=head,
                      max_ap_drop=MAX_AP_DROP if max_ap_drop is None else max_ap_drop,
                      notes=notes, extra={"mode": mode, "conversion": info})
    return result


def _shapes_split(folder: Path, n: int, seed: int) -> Path:
    from detseg.data.shapes import generate_shapes

    json_path = folder / "instances.json"
    if not json_path.is_file():
        generate_shapes(folder, n, seed)
    return json_path


def _overlap(paths: list[Path], gate: Path, images_dir: Path | None) -> int:
    """How many of ``paths`` are images of the gate set."""
    from detseg.pipeline.sources import open_source

    gate_paths = {item.path.resolve() for item in open_source(gate, images_dir)}
    return sum(p.resolve() in gate_paths for p in paths)


def _calibration_images(calib, embedded: bool, out_dir: Path, n: int
                        ) -> tuple[list, str, list[Path]]:
    """Up to ``n`` (H, W, 3) uint8 RGB images read by detseg's reader, where from, their paths."""
    from detseg.data.images import read_image
    from detseg.errors import DetsegError
    from detseg.pipeline.sources import open_source

    if calib is None:
        if not embedded:
            raise InputError(
                "--calib: INT8 needs calibration images like the ones the model will see (a "
                "folder, glob or COCO .json, ideally 100-500 images); only the embedded "
                "default has a built-in calibration set")
        calib = _shapes_split(out_dir / "calib_shapes", n, CALIB_SEED)
    n = min(max(int(n), 1), MAX_CALIB_IMAGES)
    images, paths = [], []
    for item in open_source(calib):
        if len(images) >= n:
            break
        try:
            images.append(read_image(item.path))
            paths.append(item.path)
        except DetsegError as exc:  # a bad file is reported and skipped
            log.warning("--calib: skipped %s: %s", item.path, exc)
    if not images:
        raise InputError(f"--calib {calib}: no readable image")
    return images, str(calib), paths
