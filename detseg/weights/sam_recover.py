"""Recover a PyTorch `Sam` from the two ONNX files `export_sam` wrote (when the checkpoint is gone).

The embedded shapes SAM ships as ONNX only; comparing detseg's ONNX code paths with
segment-anything's PyTorch ones on it needs its weights as a `Sam`. Every weight is in the
ONNX files, but constant folding moved some of them: Linear weights are stored transposed,
LayerNorm2d weights reshaped, token embeddings concatenated, relative-position tables gathered.

Rather than undoing each fold by hand, the same architecture is exported again by the same
exporter with every weight element set to a distinct integer (exact in float32); each element
of each weight is then found by its value in that export, and read at the same tensor name and
place (same node, same input) in the original files. Recovery is exact (no arithmetic on the
values) and refuses files whose graph differs from a fresh export (another exporter version).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from segment_anything.modeling import Sam

from detseg.errors import ModelError
from detseg.weights.sam_arch import SamArch, build_sam_from_arch


def _tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node tensors of an ONNX model, by name."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _counterparts(fresh: onnx.ModelProto, orig: onnx.ModelProto, path: Path) -> dict[str, str]:
    """Fresh tensor name -> the original's tensor at the same place in the graph.

    Matched by position (node index, input slot), not by name: the exporter merges weights
    with equal values (e.g. two all-zero tables) into one name.
    """
    if len(fresh.graph.node) != len(orig.graph.node) or any(
        a.op_type != b.op_type for a, b in zip(fresh.graph.node, orig.graph.node, strict=True)
    ):
        raise ModelError(f"{path}: its graph differs from a fresh export of the same architecture "
                         "(another exporter version); cannot recover the weights")
    out: dict[str, str] = {}
    for a, b in zip(fresh.graph.node, orig.graph.node, strict=True):
        for x, y in zip(a.input, b.input, strict=False):
            out.setdefault(x, y)
        if a.op_type == "Constant":
            out.setdefault(a.output[0], b.output[0])
    return out


def recover_sam(encoder_path: str | Path, decoder_path: str | Path) -> Sam:
    """A `Sam` (eval mode, CPU) with the weights stored in an encoder/decoder ONNX pair."""
    meta = {p.key: p.value for p in onnx.load(str(encoder_path), load_external_data=False)
            .metadata_props}
    if "arch" not in meta:
        raise ModelError(f"{encoder_path}: metadata has no 'arch'; not a detseg SAM export")
    arch = SamArch.from_dict(json.loads(meta["arch"]))
    probe = build_sam_from_arch(arch)
    state = probe.state_dict()
    offset = start = 2**20  # clear of small integer constants (2.0, 16.0, ...) in the graph
    with torch.no_grad():
        for value in state.values():
            n = value.numel()
            value.copy_(torch.arange(offset, offset + n, dtype=torch.float64).reshape(value.shape))
            offset += n
    if offset >= 2**24:
        raise ModelError(f"{encoder_path}: model too large ({offset} weights) to index exactly "
                         "in float32")
    from detseg.weights.export_sam import _export_decoder, _export_encoder

    where: dict[int, tuple[str, str, int]] = {}
    originals = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part, export, path in (("encoder", _export_encoder, encoder_path),
                                   ("decoder", _export_decoder, decoder_path)):
            fresh_path = Path(tmp) / f"{part}.onnx"
            export(probe, fresh_path, 17)
            fresh_model, orig_model = onnx.load(str(fresh_path)), onnx.load(str(path))
            fresh, orig = _tensors(fresh_model), _tensors(orig_model)
            names = _counterparts(fresh_model, orig_model, Path(path))
            for name, arr in fresh.items():
                if arr.dtype != np.float32 or name not in names:
                    continue
                if names[name] not in orig or orig[names[name]].shape != arr.shape:
                    raise ModelError(f"{path}: tensor {name} {arr.shape} has no counterpart of "
                                     "that shape; the file comes from another exporter")
                flat = arr.reshape(-1)
                ints = np.flatnonzero((flat >= start) & (flat == np.round(flat)))
                for i in ints:
                    where.setdefault(int(flat[i]), (part, names[name], int(i)))
            originals[part] = orig
    recovered = {}
    for name, value in state.items():
        ids = value.reshape(-1).to(torch.int64).tolist()
        missing = [i for i in ids if i not in where]
        if missing:
            raise ModelError(f"{encoder_path}: weight {name} not found in the ONNX files "
                             f"({len(missing)} of {len(ids)} elements)")
        vals = [originals[p][t].reshape(-1)[k] for p, t, k in (where[i] for i in ids)]
        recovered[name] = torch.tensor(np.asarray(vals, np.float32)).reshape(value.shape)
    sam = build_sam_from_arch(arch)
    sam.load_state_dict(recovered)
    return sam.eval()
