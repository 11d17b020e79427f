"""Ultralytics YOLO (detect, segment) -> ONNX, with metadata and a parity proof.

    >>> result = export_ultralytics("yolov8n-seg.yaml", Path("out"), imgsz=320)
    >>> result.onnx_path, result.passed
    (PosixPath('out/yolov8n-seg.onnx'), True)

What the ONNX file is:
- Ultralytics' own exporter (``YOLO.export(format="onnx")``, ``torch.onnx.export`` with
  ``dynamo=False``, opset 17) with ``dynamic=True``; then height and width are fixed to
  ``imgsz`` so that only the batch stays dynamic, and onnxslim folds what that makes
  constant (anchor grids, strides). The file passes ``onnx.checker.check_model(full_check=True)``.
- Input ``images``: (batch, 3, imgsz, imgsz) float32 RGB in [0, 1], letterboxed (centred,
  pad 114). Outputs as Ultralytics writes them: ``output0`` (batch, 4 + nc [+ 32], anchors)
  with xywh boxes in input pixels; segment models add ``output1`` (batch, 32, imgsz/4, imgsz/4).
- Metadata: every key Ultralytics writes (``task``, ``names``, ``imgsz``, ``stride``,
  ``end2end``...) plus ``channel_order``, ``input_scale``, ``letterbox``, ``pad_value``,
  ``source``, ``source_kind``, ``source_sha256``, ``detseg_version``.

Safety: Ultralytics is made unable to install packages or go online (``YOLO_AUTOINSTALL``,
``YOLO_OFFLINE``), and loads ``.pt`` files with ``torch.load(weights_only=True)`` against an
allow-list of its own model classes (``ULTRALYTICS_SAFE_LOAD``, available since ultralytics
8.4): a checkpoint that needs any other class is refused instead of unpickled. Ultralytics'
default (flag off) loads with ``weights_only=False``, which can run code from the file. Model
``.yaml`` files are parsed on the same restricted path (no ``eval`` of layer names).

torch and ultralytics are imported here only: keep this module out of the runtime path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detseg.errors import InputError, ModelError

OPSET = 17
DEFAULT_IMGSZ = 640
ULTRALYTICS_TASKS = ("detect", "segment")
SCORE_LOGIT_MEAN = -4.0  # class logits of calibrated random-weight models: sigmoid ~ 0.02


@dataclass
class UltralyticsExportResult:
    """Where an export went and whether it passed its parity check."""

    onnx_path: Path
    report_path: Path
    passed: bool
    report: dict[str, Any] = field(default_factory=dict, repr=False)


_ENV_SETTINGS = {"YOLO_AUTOINSTALL": "false", "YOLO_OFFLINE": "1", "ULTRALYTICS_SAFE_LOAD": "1"}


@contextlib.contextmanager
def ultralytics_environment(config_dir: Path | None = None) -> Iterator[None]:
    """Make Ultralytics offline, install-free and safe-loading while the block runs.

    The environment variables are read when ultralytics is first imported (which may happen
    inside the block); the module globals are set as well in case it was imported earlier.
    Everything changed is given back on exit, so the caller's environment and an Ultralytics
    the caller uses directly behave afterwards as they did before. Blocks may nest.
    """
    saved_env = {k: os.environ.get(k) for k in (*_ENV_SETTINGS, "YOLO_VERBOSE", "YOLO_CONFIG_DIR")}
    os.environ.update(_ENV_SETTINGS)
    os.environ.setdefault("YOLO_VERBOSE", "false")
    if "YOLO_CONFIG_DIR" not in os.environ:
        # Ultralytics writes a settings file on import; keep it out of the user's config folder.
        base = config_dir or Path(tempfile.gettempdir()) / "detseg-ultralytics"
        base.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(base)
    saved_globals: list[tuple[Any, str, Any]] = []
    try:
        import ultralytics.nn.tasks as tasks
        import ultralytics.utils as uutils
        import ultralytics.utils.checks as checks

        for module, name, value in (
            (uutils, "AUTOINSTALL", False), (checks, "AUTOINSTALL", False),
            (uutils, "SAFE_LOAD", True), (tasks, "SAFE_LOAD", True), (uutils, "ONLINE", False),
        ):
            if hasattr(module, name):
                saved_globals.append((module, name, getattr(module, name)))
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in reversed(saved_globals):
            setattr(module, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_yolo(source: str | Path, seed: int = 0) -> Any:
    """An ``ultralytics.YOLO`` from a ``.pt`` checkpoint or a model ``.yaml`` (random weights).

    Random weights are drawn from ``torch.manual_seed(seed)`` (the global RNG state is
    restored afterwards), so an architecture file always gives the same model. A freshly
    initialised YOLO is degenerate: its activations shrink layer after layer (to ~1e-9 at the
    head of YOLOv8n), so every anchor gets the same score and there is nothing to compare.
    `calibrate_random_weights` gives it healthy activations (see there).
    """
    text = str(source)
    try:
        with ultralytics_environment():
            import torch
            from ultralytics import YOLO

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                yolo = YOLO(text)
                if Path(text).suffix.lower() in (".yaml", ".yml"):
                    calibrate_random_weights(yolo.model)
    except FileNotFoundError as exc:
        raise InputError(f"{text}: Ultralytics cannot find this model file ({exc})") from None
    except (TypeError, RuntimeError, ModuleNotFoundError, KeyError, ValueError) as exc:
        raise ModelError(f"{text}: Ultralytics could not load this model: {exc}") from None
    if yolo.task not in ULTRALYTICS_TASKS:
        raise ModelError(
            f"{text}: task {yolo.task!r}; detseg exports Ultralytics detect and segment models"
        )
    return yolo


def calibrate_random_weights(model: Any, batches: int = 4, imgsz: int = 320) -> None:
    """Give a random-weight model trained-like activations (random-weight models only).

    1. Every BatchNorm's running statistics are set from synthetic images
       (`ultralytics_parity.sample_images` with seeds 1..batches), so each normalises its
       input to zero mean and unit variance, as a trained network's do.
    2. The head's last class-score and mask-coefficient convolutions are rescaled so that each
       output channel has unit variance on the same images, and mean `SCORE_LOGIT_MEAN` (class
       logits) or 0 (mask coefficients): scores then vary from anchor to anchor instead of all
       saturating at 1 or all sitting at a fresh head's prior.

    Leaves the model in eval mode.
    """
    import torch

    images = _calibration_batches(batches, imgsz)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for x in images:
            model(x)
    model.eval()
    _standardize_head(model, images)


def _calibration_batches(batches: int, imgsz: int) -> list:
    import cv2
    import torch

    from detseg.weights.ultralytics_parity import sample_images

    return [
        torch.from_numpy(
            np.stack([cv2.resize(im, (imgsz, imgsz)) for im in sample_images(seed)])
            .transpose(0, 3, 1, 2).astype(np.float32) / 255
        )
        for seed in range(1, batches + 1)
    ]


def _standardize_head(model: Any, images: list) -> None:
    """Rescale the head's last cv3 (class) and cv4 (mask coefficient) convs, per channel."""
    import torch

    head = model.model[-1]
    cls_convs = [branch[-1] for branch in getattr(head, "cv3", [])]
    last = cls_convs + [branch[-1] for branch in getattr(head, "cv4", [])]
    last = [m for m in last if isinstance(m, torch.nn.Conv2d) and m.bias is not None]
    seen: dict[int, list] = {id(m): [] for m in last}
    hooks = [m.register_forward_hook(lambda m, i, o: seen[id(m)].append(o)) for m in last]
    with torch.no_grad():
        for x in images:
            model(x)
        for h in hooks:
            h.remove()
        for m in last:  # (B, C, H, W) outputs -> per-channel mean and standard deviation
            out = torch.cat([o.transpose(0, 1).flatten(1) for o in seen[id(m)]], dim=1)
            scale = 1.0 / out.std(dim=1).clamp_min(1e-6)
            shift = SCORE_LOGIT_MEAN if any(m is c for c in cls_convs) else 0.0
            m.weight.mul_(scale[:, None, None, None])
            m.bias.copy_((m.bias - out.mean(dim=1)) * scale + shift)


def export_ultralytics(
    source: str | Path,
    out_dir: Path,
    imgsz: int = DEFAULT_IMGSZ,
    *,
    source_sha256: str | None = None,
    source_label: str | None = None,
    sample_images: Sequence[np.ndarray] | None = None,
    seed: int = 0,
) -> UltralyticsExportResult:
    """Export an Ultralytics detect/segment model to ``out_dir/<stem>.onnx`` and check parity.

    Args:
        source: a local ``.pt`` checkpoint, or a model ``.yaml`` (a local file or a name that
            Ultralytics finds in its package, e.g. ``yolov8n-seg.yaml``; random weights).
        out_dir: output folder (created).
        imgsz: square input size, a multiple of the model stride (32).
        source_sha256: SHA-256 of the checkpoint, embedded in the metadata (computed from
            ``source`` when it is a local file and this is None).
        source_label: what to record as ``source`` (a registry name or URL); default ``source``.
        sample_images: (H, W, 3) uint8 RGB images for the parity check; default: synthetic
            images of several aspect ratios (`detseg.weights.ultralytics_parity.sample_images`).
        seed: seed of the random weights of an architecture file.

    Returns:
        `UltralyticsExportResult`; ``passed`` is the parity verdict (also in the report).
    """

    if not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
        raise InputError(f"imgsz: expected a multiple of 32 (>= 32), found {imgsz!r}")
    source_path = Path(source)
    is_architecture = source_path.suffix.lower() in (".yaml", ".yml")
    if source_sha256 is None and source_path.is_file():
        from detseg.weights.download import sha256_of

        source_sha256 = sha256_of(source_path)
    with ultralytics_environment():
        return _export(source, Path(out_dir), imgsz, source_sha256, source_label, sample_images,
                       seed, is_architecture)


def _export(source: str | Path, out_dir: Path, imgsz: int, source_sha256: str | None,
            source_label: str | None, sample_images: Sequence[np.ndarray] | None, seed: int,
            is_architecture: bool) -> UltralyticsExportResult:
    from detseg.weights import ultralytics_parity

    source_path = Path(source)
    yolo = load_yolo(source, seed=seed)
    stem = source_path.stem
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{stem}.onnx"
    report_path = out_dir / f"{stem}_parity.json"

    with tempfile.TemporaryDirectory(prefix="detseg-export-", dir=out_dir) as tmp:
        raw_path = _ultralytics_onnx(yolo, Path(tmp), stem, imgsz)
        metadata = {
            "channel_order": "RGB",
            "input_scale": "1/255",
            "letterbox": "center",
            "pad_value": "114",
            "source": source_label or str(source),
            "source_kind": f"architecture (random weights, seed {seed}, calibrated activations)"
            if is_architecture
            else "checkpoint",
            "source_sha256": source_sha256 or "",
            "detseg_version": _detseg_version(),
        }
        final_tmp = Path(tmp) / "final.onnx"
        _finish_onnx(raw_path, final_tmp, imgsz, metadata)
        os.replace(final_tmp, onnx_path)

    images = sample_images if sample_images is not None else ultralytics_parity.sample_images()
    checks = ultralytics_parity.check_parity(yolo, onnx_path, images)
    from detseg.weights.report import write_report

    report = write_report(
        report_path,
        checks.pop("passed"),
        model=onnx_path.name,
        source=metadata["source"],
        source_kind=metadata["source_kind"],
        source_sha256=metadata["source_sha256"],
        task=yolo.task,
        imgsz=imgsz,
        **checks,
    )
    return UltralyticsExportResult(onnx_path, report_path, report["passed"], report)


def _ultralytics_onnx(yolo: Any, folder: Path, stem: str, imgsz: int) -> Path:
    """Run Ultralytics' ONNX exporter, writing into ``folder``; returns the file."""
    # The exporter names its output after model.pt_path (next to a .pt, or in the current
    # folder for a .yaml); pointing it into our temporary folder keeps both clean.
    yolo.model.pt_path = str(folder / f"{stem}.pt")
    try:
        written = yolo.export(
            format="onnx", imgsz=imgsz, dynamic=True, simplify=False, opset=OPSET,
            batch=1, device="cpu", nms=False, verbose=False,
        )
    except Exception as exc:  # the exporter raises many types; all mean "export failed"
        raise ModelError(f"Ultralytics ONNX export failed: {type(exc).__name__}: {exc}") from exc
    path = Path(written)
    if not path.is_file():
        raise ModelError(f"Ultralytics ONNX export reported {path}, which does not exist")
    return path


def _finish_onnx(raw: Path, out: Path, imgsz: int, metadata: dict[str, str]) -> None:
    """Fix H and W to ``imgsz`` (batch stays dynamic), slim, add metadata, check, save."""
    import onnx
    import onnxslim

    model = onnx.load(str(raw))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelError(f"{raw}: expected a (batch, 3, H, W) input, found {len(dims)} dims")
    for axis in (2, 3):
        dims[axis].Clear()
        dims[axis].dim_value = imgsz
    model = onnxslim.slim(model)
    for output in model.graph.output:
        shape = output.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in shape[1:]):
            raise ModelError(f"{raw}: output {output.name} kept a dynamic non-batch axis after slimming")
    props = {p.key: p.value for p in model.metadata_props}
    props.update(metadata)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=str(value))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"exported ONNX model fails onnx.checker: {exc}") from None
    onnx.save(model, str(out))


def _detseg_version() -> str:
    from detseg import __version__

    return __version__
