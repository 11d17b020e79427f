"""`export_model`: one entry point for every export, used by ``detseg export``.

A name or path is resolved by `detseg.weights.registry.resolve`, its file fetched (or found)
by `detseg.weights.download`, and handed to the exporter of its family:

- Ultralytics (registry names ``yolov8n``..., ``.pt`` files, ``.yaml`` architecture files):
  `detseg.weights.export_ultralytics.export_ultralytics`.
- Segment Anything (``sam_vit_b``..., ``.pth`` files): `detseg.weights.export_sam.export_sam`.
- SAM 2.1 (``sam2.1_hiera_tiny``..., their ``.pt`` files, or any ``.pt`` with
  ``--sam-type sam2.1_hiera_...``): `detseg.weights.export_sam2.export_sam2`.

Exporters import torch; they are imported only when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detseg.errors import InputError
from detseg.weights.download import local_file, sha256_of
from detseg.weights.registry import SAM_MODEL_TYPES, resolve, sam_model_type_from_name


@dataclass
class ExportSummary:
    """What an export wrote and whether its parity check passed."""

    family: str
    files: list[Path]
    report_path: Path
    passed: bool
    report: dict[str, Any] = field(default_factory=dict, repr=False)


def export_model(
    name_or_path: str | Path,
    out_dir: Path,
    *,
    imgsz: int | None = None,
    sam_type: str | None = None,
    sample_images: Sequence[np.ndarray] | None = None,
    progress: bool = True,
) -> ExportSummary:
    """Export a registry model, a checkpoint or an architecture file to ONNX in ``out_dir``.

    Args:
        name_or_path: a registry name (``yolov8n-seg``, ``sam_vit_b``), a local ``.pt``
            / ``.pth`` / ``.yaml`` file, or an Ultralytics architecture name (``yolov8n.yaml``).
        out_dir: output folder.
        imgsz: Ultralytics input size (default 640); not used by SAM (fixed by the model).
        sam_type: segment-anything model type (``vit_b``, ``vit_l``, ``vit_h``) for a local
            ``.pth`` whose name does not say it.
        sample_images: (H, W, 3) uint8 RGB images for the Ultralytics parity check.
        progress: show download progress.

    Raises:
        InputError, DownloadError, ModelError: bad arguments, a file that cannot be fetched
            or verified, a model that cannot be loaded or exported.
    """
    source = resolve(name_or_path)
    if source.family == "onnx":
        raise InputError(f"{source.path}: already an ONNX model; export takes a .pt, .pth or .yaml")
    out_dir = Path(out_dir)
    if source.family == "sam2" or (sam_type or "").startswith("sam2"):
        if imgsz is not None:
            raise InputError("--imgsz: SAM 2's input size is fixed by the model; drop it")
        return _export_sam2(source, out_dir, sam_type, progress)
    if source.family == "sam":
        if imgsz is not None:
            raise InputError("--imgsz: Segment Anything's input size is fixed by the model; drop it")
        return _export_sam(source, out_dir, sam_type, progress)
    if sam_type is not None:
        raise InputError(f"--sam-type: {source.name} is not a Segment Anything model")
    from detseg.weights.export_ultralytics import DEFAULT_IMGSZ, export_ultralytics

    if source.kind == "architecture":
        model_arg: str | Path = source.path if source.path is not None else source.name
        sha, label = None, source.name
    else:
        model_arg = local_file(source, progress=progress)
        sha = sha256_of(model_arg)
        label = source.spec.url if source.spec is not None else str(model_arg)
    result = export_ultralytics(
        model_arg, out_dir, imgsz or DEFAULT_IMGSZ, source_sha256=sha, source_label=label,
        sample_images=sample_images,
    )
    return ExportSummary("ultralytics", [result.onnx_path], result.report_path, result.passed,
                         result.report)


def _export_sam(source, out_dir: Path, sam_type: str | None, progress: bool) -> ExportSummary:
    checkpoint = local_file(source, progress=progress)
    known = source.spec.sam_model_type if source.spec is not None else None
    model_type = known or sam_type or sam_model_type_from_name(checkpoint.name)
    if sam_type is not None and sam_type not in SAM_MODEL_TYPES:
        raise InputError(f"--sam-type: expected one of {', '.join(SAM_MODEL_TYPES)}, found {sam_type!r}")
    if sam_type is not None and known is not None and sam_type != known:
        raise InputError(f"--sam-type: {source.name} is a {known} checkpoint, not {sam_type}")
    from detseg.weights.export_sam import export_sam

    # "custom": a checkpoint that stores its own architecture (detseg's small SAMs).
    result = export_sam(checkpoint, model_type or "custom", out_dir)
    return ExportSummary("sam", [result.encoder_path, result.decoder_path], result.report_path,
                         result.passed, result.report)


def _export_sam2(source, out_dir: Path, sam_type: str | None, progress: bool) -> ExportSummary:
    from detseg.weights.export_sam2 import SAM2_CONFIGS, export_sam2

    known = source.spec.sam_model_type if source.spec is not None else None
    if sam_type is not None and sam_type not in SAM2_CONFIGS:
        raise InputError(f"--sam-type: expected one of {', '.join(SAM2_CONFIGS)}, found {sam_type!r}")
    if sam_type is not None and known is not None and sam_type != known:
        raise InputError(f"--sam-type: {source.name} is a {known} checkpoint, not {sam_type}")
    if source.kind == "architecture" or (source.kind == "file" and source.path.suffix != ".pt"):
        raise InputError(f"{source.name}: a SAM 2 checkpoint is a .pt file")
    checkpoint = local_file(source, progress=progress)
    result = export_sam2(checkpoint, known or sam_type, out_dir)
    return ExportSummary("sam2", [result.encoder_path, result.decoder_path], result.report_path,
                         result.passed, result.report)
