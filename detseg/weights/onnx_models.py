"""ONNX files for whatever a user names: a local .onnx, the embedded default, a registry name
or a PyTorch checkpoint (exported once into the model cache).

Used by `detseg predict`, `detseg eval --model` and `detseg serve` alike. Imports nothing heavy
at module level: an .onnx path or the embedded default never touches torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from detseg.errors import ModelError

logger = logging.getLogger(__name__)

BUILTIN = "builtin"


def detector_onnx(model: str | Path | None) -> Path:
    """The ONNX file of a detector: None or ``"builtin"`` gives the embedded default model."""
    if model is None or str(model) == BUILTIN:
        from detseg.weights.builtin import default_detector

        return default_detector()
    if Path(model).suffix.lower() == ".onnx":
        return Path(model)  # the pipeline reports a missing file with its own clear error
    return exported_onnx(str(model), "detect")[0]


def exported_onnx(name: str, family: str) -> list[Path]:
    """ONNX files for a registry name or a checkpoint (.pt, .pth, .yaml), exported once.

    The export (download, then `detseg.weights.export.export_model`, which needs torch) runs
    on first use and lands in ``<model cache>/onnx/<name>/``; later starts reuse it. Returns
    [model] for a detector, [encoder, decoder] for SAM. Errors say what failed (an offline
    machine gets `DownloadError`'s message).
    """
    from detseg.weights.download import cache_dir
    from detseg.weights.registry import resolve

    source = resolve(name)  # InputError for an unknown name
    if source.family == "onnx":
        return [Path(source.path)]
    if (family == "sam") != (source.family in ("sam", "sam2")):
        want = "a Segment Anything model" if family == "sam" else "a detector"
        raise ModelError(f"model {name!r}: expected {want}, found a {source.family} model")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name)
    folder = cache_dir() / "onnx" / safe
    found = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    if family == "sam":
        enc = [p for p in found if p.stem.endswith("_encoder")]
        dec = [p for p in found if p.stem.endswith("_decoder")]
        if enc and dec:
            return [enc[0], dec[0]]
    elif found:
        return [found[0]]
    try:
        from detseg.weights.export import export_model
    except ImportError as exc:
        raise ModelError(
            f"model {name!r}: exporting it to ONNX needs the export extra ({exc}); "
            f"`pip install detseg[export]`, or pass an .onnx file"
        ) from None
    logger.info("exporting %s to ONNX in %s (once) ...", name, folder)
    summary = export_model(name, folder, progress=True)
    onnx = [p for p in summary.files if p.suffix == ".onnx"]
    if not summary.passed:
        # Same rule as `detseg export`: a model that differs from its PyTorch original is not
        # used. Removing it keeps the cache lookup above from picking it up next time.
        for path in onnx:
            path.unlink(missing_ok=True)
        raise ModelError(
            f"model {name!r}: the ONNX export failed its parity check against PyTorch "
            f"(report: {summary.report_path}); not using it"
        )
    return onnx


def sam_onnx(name: str | Path | None) -> tuple[Path, Path]:
    """(encoder, decoder) ONNX files of a SAM: None or ``"builtin"`` gives the embedded one,
    else a registry name or checkpoint, exported once (see `exported_onnx`)."""
    if name is None or str(name) == BUILTIN:
        from detseg.weights.builtin import default_sam

        return default_sam()
    encoder, decoder = exported_onnx(str(name), "sam")
    return encoder, decoder
