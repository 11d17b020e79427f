"""What a model expects and what its outputs mean: `ModelMeta`.

Sources, later ones overriding earlier ones field by field:

1. Family defaults (``ultralytics``: RGB, /255, centred letterbox; ``yolox``: BGR, 0-255,
   top-left letterbox, COCO-80 names, detect) and the model's input shape (imgsz).
2. The metadata Ultralytics writes into its ONNX exports (``task``, ``names``, ``imgsz``,
   ``stride``, ``end2end``...; values are Python literals written with ``str()``, parsed here
   with `ast.literal_eval`, never ``eval``).
3. A sidecar file next to the model: ``<stem>.detseg.json`` (``yolox_nano.detseg.json`` for
   ``yolox_nano.onnx``; ``yolox_nano.onnx.detseg.json`` is accepted too). Every key is optional::

       {
         "family": "yolox",             # "ultralytics" | "yolox"
         "task": "detect",              # "detect" | "segment"
         "names": ["person", "bicycle"],  # a list (index = class id) or {"0": "person", ...}
         "imgsz": [416, 416],           # model input (height, width)
         "stride": 32,
         "channels": "BGR",             # "RGB" | "BGR": order the model expects
         "scale": 1,                    # multiply 0-255 pixels by this: 1 or 0.00392156862745098
         "letterbox": "topleft",        # "center" | "topleft"
         "pad_value": 114,
         "end2end": false               # ultralytics NMS-free output (B, max_det, 6 [+ nm])
       }

4. Explicit arguments (``head="yolox"``, ``names=...``, ``imgsz=...``).

COCO-80 models: class index ``i`` maps to COCO category id ``sorted(COCO category ids)[i]``
(the 80 ids run from 1 to 90 with gaps; see `COCO80_CATEGORY_IDS`).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from detseg.errors import ModelError

FAMILIES = ("ultralytics", "yolox")
TASKS = ("detect", "segment")

COCO80_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# sorted(COCO category ids): class index i of a COCO-80 model is category COCO80_CATEGORY_IDS[i].
COCO80_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)  # fmt: skip


@dataclass(frozen=True)
class ModelMeta:
    """How to feed a model and read its outputs.

    Attributes:
        family: ``"ultralytics"`` or ``"yolox"`` (selects the head decoder).
        task: ``"detect"`` or ``"segment"``.
        names: class id -> name.
        imgsz: model input (height, width) in pixels.
        stride: largest feature stride (input sizes are multiples of it).
        channels: ``"RGB"`` or ``"BGR"``, the channel order the model expects.
        scale: factor applied to 0-255 pixel values (1/255 or 1).
        letterbox: ``"center"`` (Ultralytics LetterBox rounding) or ``"topleft"`` (YOLOX).
        pad_value: letterbox fill value (0-255 scale).
        end2end: Ultralytics NMS-free output (B, max_det, 6 [+ nm]) instead of (B, 4+nc [+nm], N).
    """

    family: str
    task: str = "detect"
    names: Mapping[int, str] = field(default_factory=lambda: dict(enumerate(COCO80_NAMES)))
    imgsz: tuple[int, int] = (640, 640)
    stride: int = 32
    channels: str = "RGB"
    scale: float = 1 / 255
    letterbox: str = "center"
    pad_value: int = 114
    end2end: bool = False

    def __post_init__(self) -> None:
        _check_choice("family", self.family, FAMILIES)
        _check_choice("task", self.task, TASKS)
        _check_choice("channels", self.channels, ("RGB", "BGR"))
        _check_choice("letterbox", self.letterbox, ("center", "topleft"))
        if self.family == "yolox" and self.task != "detect":
            raise ModelError("task: the yolox head decodes detection only, found 'segment'")
        if len(self.imgsz) != 2 or min(self.imgsz) <= 0:
            raise ModelError(f"imgsz: expected (height, width) > 0, found {self.imgsz}")


def family_defaults(family: str) -> ModelMeta:
    """The conventions of a model family (see module docstring)."""
    if family == "yolox":
        return ModelMeta(family="yolox", channels="BGR", scale=1.0, letterbox="topleft")
    _check_choice("head", family, FAMILIES)
    return ModelMeta(family="ultralytics")


def _parsed(value: Any, where: str, field: str, expected: str) -> Any:
    """A metadata value, parsed when it is a Python-literal string (never eval'd)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ModelError(
            f"{where}: field '{field}': expected {expected}, found {value[:80]!r}"
        ) from None


def parse_names(value: Any, where: str) -> dict[int, str]:
    """Class names from a list, a dict (str or int keys), or their Python-literal string."""
    value = _parsed(value, where, "names", "a dict or list literal")
    if isinstance(value, Mapping):
        try:
            return {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            raise ModelError(
                f"{where}: field 'names': expected integer class ids as keys"
            ) from None
    if isinstance(value, Sequence):
        return {i: str(v) for i, v in enumerate(value)}
    raise ModelError(
        f"{where}: field 'names': expected a dict or a list, found {type(value).__name__}"
    )


def _parse_imgsz(value: Any, where: str) -> tuple[int, int]:
    value = _parsed(value, where, "imgsz", "[h, w] or an int")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ModelError(f"{where}: field 'imgsz': expected [height, width] or an int, found {value!r}")


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def from_ultralytics_metadata(metadata: Mapping[str, str], where: str) -> dict[str, Any]:
    """ModelMeta fields from the custom metadata of an Ultralytics ONNX export ({} if none)."""
    if "names" not in metadata and "task" not in metadata:
        return {}
    fields: dict[str, Any] = {"family": "ultralytics"}
    if "task" in metadata:
        task = str(metadata["task"])
        if task not in TASKS:
            raise ModelError(
                f"{where}: metadata 'task' is {task!r}; detseg runs detect and segment models"
            )
        fields["task"] = task
    if "names" in metadata:
        fields["names"] = parse_names(metadata["names"], where)
    if "imgsz" in metadata:
        fields["imgsz"] = _parse_imgsz(metadata["imgsz"], where)
    if "stride" in metadata:
        fields["stride"] = int(_literal(metadata["stride"]))
    if "end2end" in metadata:
        fields["end2end"] = bool(_literal(metadata["end2end"]))
    return fields


def sidecar_path(model: Path) -> Path | None:
    """The sidecar file of ``model`` if one exists (``<stem>.detseg.json`` first)."""
    for candidate in (
        model.with_suffix(".detseg.json"),
        model.with_name(model.name + ".detseg.json"),
    ):
        if candidate.is_file():
            return candidate
    return None


_SIDECAR_KEYS = {
    "family",
    "task",
    "names",
    "imgsz",
    "stride",
    "channels",
    "scale",
    "letterbox",
    "pad_value",
    "end2end",
}


def from_sidecar(path: Path) -> dict[str, Any]:
    """ModelMeta fields from a sidecar JSON file (format in the module docstring)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read model sidecar JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(data).__name__}")
    unknown = set(data) - _SIDECAR_KEYS
    if unknown:
        raise ModelError(
            f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_SIDECAR_KEYS)}"
        )
    fields = dict(data)
    choices = {
        "family": FAMILIES,
        "task": TASKS,
        "channels": ("RGB", "BGR"),
        "letterbox": ("center", "topleft"),
    }
    for key, allowed in choices.items():
        if key in fields and fields[key] not in allowed:
            raise ModelError(
                f"{path}: field '{key}': expected one of {', '.join(allowed)}, found {fields[key]!r}"
            )
    if "names" in fields:
        fields["names"] = parse_names(fields["names"], str(path))
    if "imgsz" in fields:
        fields["imgsz"] = _parse_imgsz(fields["imgsz"], str(path))
    return fields


def resolve_meta(
    model: Path,
    metadata: Mapping[str, str],
    input_shape: Sequence[Any],
    head: str | None = None,
    names: Any = None,
    imgsz: int | Sequence[int] | None = None,
) -> ModelMeta:
    """Combine the sources listed in the module docstring into one `ModelMeta`.

    ``input_shape`` is the model's (B, 3, H, W) input shape (dynamic dims as str/None).
    Raises `ModelError` when the family cannot be told (no metadata, no sidecar, no ``head``).
    """
    where = str(model)
    fields: dict[str, Any] = {}
    fields.update(from_ultralytics_metadata(metadata, where))
    side = sidecar_path(model)
    if side is not None:
        fields.update(from_sidecar(side))
    if head is not None:
        _check_choice("head", head, FAMILIES)
        if fields.get("family") not in (None, head):
            # An explicit head replaces the metadata's conventions, not just its name.
            fields = {k: v for k, v in fields.items() if k in ("names", "task")}
        fields["family"] = head
    if names is not None:
        fields["names"] = parse_names(names, "names argument")
    if imgsz is not None:
        fields["imgsz"] = _parse_imgsz(
            list(imgsz) if not isinstance(imgsz, int) else imgsz, "imgsz argument"
        )
    family = fields.get("family")
    if family is None:
        raise ModelError(
            f"{where}: no Ultralytics metadata and no sidecar file {model.with_suffix('.detseg.json').name}; "
            "say which head decodes this model (head='yolox' or head='ultralytics', CLI --head)"
        )
    if "imgsz" not in fields:
        h, w = (input_shape[2], input_shape[3]) if len(input_shape) == 4 else (None, None)
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            fields["imgsz"] = (h, w)
    meta = replace(family_defaults(family), **{k: v for k, v in fields.items() if k != "family"})
    return meta


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ModelError(f"{name}: expected one of {', '.join(choices)}, found {value!r}")
