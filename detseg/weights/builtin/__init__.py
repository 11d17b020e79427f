"""The embedded default models, shipped as package data so that detseg works offline.

- ``yolov8n_seg_shapes.onnx``: a YOLOv8n-seg trained from scratch on the synthetic shapes
  dataset (`detseg.data.shapes`; 6 classes), exported with `detseg export` at 320 px.
- ``sam_shapes_encoder.onnx`` + ``sam_shapes_decoder.onnx``: a small Segment Anything
  (segment-anything's modules, 256 px input) trained on the same data to segment the shape
  under a click or inside a box, exported with `detseg.weights.export_sam`.

Each has a model card (``<name>.md``: recipe, training time, measured scores) and the parity
report written by its export (``*_parity.json``). The recipes live in ``recipes/``.
Only paths are returned here: loading is the pipeline's job (onnxruntime, no torch).
"""

from __future__ import annotations

from pathlib import Path

from detseg.errors import ModelError

BUILTIN_DIR = Path(__file__).resolve().parent
DETECTOR_FILE = "yolov8n_seg_shapes.onnx"
SAM_ENCODER_FILE = "sam_shapes_encoder.onnx"
SAM_DECODER_FILE = "sam_shapes_decoder.onnx"
CARDS: dict[str, str] = {
    "detector": "yolov8n_seg_shapes.md",
    "yolov8n_seg_shapes": "yolov8n_seg_shapes.md",
    "sam": "sam_shapes.md",
    "sam_shapes": "sam_shapes.md",
}


def _shipped(name: str) -> Path:
    path = BUILTIN_DIR / name
    if not path.is_file():
        raise ModelError(
            f"{path}: embedded default model file missing; reinstall detseg (the file is "
            f"package data) or pass a model explicitly (see recipes/ to rebuild it)"
        )
    return path


def default_detector() -> Path:
    """Path of the built-in instance-segmentation ONNX model (Ultralytics format, 320 px)."""
    return _shipped(DETECTOR_FILE)


def default_sam() -> tuple[Path, Path]:
    """Paths ``(encoder, decoder)`` of the built-in promptable segmenter's ONNX files."""
    return _shipped(SAM_ENCODER_FILE), _shipped(SAM_DECODER_FILE)


def model_card(name: str) -> str:
    """The Markdown model card of ``name``: "detector" or "sam" (or the file stems)."""
    if name not in CARDS:
        raise ModelError(f"model card {name!r}: expected one of {sorted(CARDS)}")
    return _shipped(CARDS[name]).read_text(encoding="utf-8")
