"""Tiny ONNX models with outputs chosen by the test, for the session and detector tests.

`constant_head_model` writes a model whose prediction output is ``pred + mean(image) * shift``
broadcast over the batch: the test picks ``pred`` (any head format) and the per-image mean of
the input moves what ``shift`` selects, so batching mistakes (wrong image order, padding
leaking into results) change the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def constant_head_model(
    path: Path,
    pred: np.ndarray,
    *,
    shift: np.ndarray | None = None,
    protos: np.ndarray | None = None,
    batch: int | str = "batch",
    imgsz: tuple[int, int] = (64, 64),
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the model to ``path``.

    Args:
        pred: (1, ...) float32 prediction output of one image (e.g. (1, 4 + nc, N)).
        shift: same shape as pred; added times the image's mean input value (default zeros).
        protos: optional (1, nm, mh, mw) second output (segment models).
        batch: fixed batch size, or a name for a dynamic batch axis.
        metadata: custom metadata (str -> str), as Ultralytics writes it.
    """
    pred = np.asarray(pred, np.float32)
    shift = np.zeros_like(pred) if shift is None else np.asarray(shift, np.float32)
    h, w = imgsz
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, h, w])]
    mean_shape = [-1] + [1] * (pred.ndim - 1)
    inits = [
        numpy_helper.from_array(pred, "pred"),
        numpy_helper.from_array(shift, "shift"),
        numpy_helper.from_array(np.array(mean_shape, np.int64), "mean_shape"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=1),
        helper.make_node("Reshape", ["mean", "mean_shape"], ["mean_b"]),
        helper.make_node("Mul", ["mean_b", "shift"], ["moved"]),
        helper.make_node("Add", ["moved", "pred"], ["output0"]),
    ]
    out_shape = [batch, *pred.shape[1:]]
    outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)]
    if protos is not None:
        protos = np.asarray(protos, np.float32)
        inits += [
            numpy_helper.from_array(protos, "protos"),
            numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "proto_shape"),
        ]
        nodes += [
            helper.make_node("Reshape", ["mean", "proto_shape"], ["mean_p"]),
            helper.make_node("Mul", ["mean_p", "zero"], ["zero_b"]),
            helper.make_node("Add", ["zero_b", "protos"], ["output1"]),
        ]
        inits.append(numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "zero"))
        outputs.append(
            helper.make_tensor_value_info("output1", TensorProto.FLOAT, [batch, *protos.shape[1:]])
        )
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ultralytics_metadata(
    names: Mapping[int, str], task: str = "detect", imgsz=(64, 64)
) -> dict[str, str]:
    """Metadata as an Ultralytics export writes it (values are str() of Python objects)."""
    return {
        "task": task,
        "names": str(dict(names)),
        "imgsz": str(list(imgsz)),
        "stride": "32",
        "batch": "1",
        "end2end": "False",
        "author": "Ultralytics",
    }


def ultralytics_pred(
    boxes_cxcywh: np.ndarray,
    class_scores: np.ndarray,
    coeffs: np.ndarray | None = None,
    n: int | None = None,
) -> np.ndarray:
    """A (1, 4 + nc [+ nm], N) Ultralytics output holding the given candidates, zeros after them."""
    k, nc = class_scores.shape
    rows = [boxes_cxcywh, class_scores] + ([coeffs] if coeffs is not None else [])
    body = np.concatenate(rows, axis=1).T  # (C, k)
    n = n or k
    out = np.zeros((1, body.shape[0], n), np.float32)
    out[0, :, :k] = body
    return out
