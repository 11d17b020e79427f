"""Thresholds and category ids of a batch run: presets, explicit values, dataset mapping.

Kept apart from the runner (`detseg.pipeline.batch`) because the web demo and the eval
commands ask the same questions: which thresholds does "coco-eval" mean for this model, and
which COCO category id does model class ``i`` stand for in this dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detseg.data.coco import CocoDataset
from detseg.errors import InputError

#: Settings a preset stands for. ``iou`` may depend on the model family: each family's own
#: COCO evaluation uses its own NMS IoU (YOLOX 0.65, Ultralytics 0.7).
PRESETS: dict[str, dict[str, Any]] = {
    "coco-eval": {"conf": 0.001, "iou": {"yolox": 0.65, "default": 0.7}, "max_det": 100},
}
DEFAULTS = {"conf": 0.25, "iou": 0.45, "max_det": 300}


def model_family(detector: Any) -> str | None:
    """The head family of a loaded detector (``"yolox"``, ``"ultralytics"``...), if it says."""
    meta = getattr(detector, "meta", None)
    for name in ("head", "family"):
        value = getattr(meta, name, None) or getattr(detector, name, None)
        if isinstance(value, str):
            return value.lower()
    return None


def resolve_settings(
    preset: str | None,
    family: str | None,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    agnostic_nms: bool = False,
) -> dict[str, float | int | bool]:
    """Thresholds of a run: explicit values win, then the preset's, then `DEFAULTS`.

    ``agnostic_nms`` adds ``"agnostic_nms": True`` (class-agnostic NMS); it is left out when
    False, so that the settings of a class-aware run (and the resume journals that hold them)
    stay as they were.
    """
    base: dict[str, Any] = dict(DEFAULTS)
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"--preset {preset}: unknown preset; expected one of {sorted(PRESETS)}")
        for k, v in PRESETS[preset].items():
            base[k] = v.get(family or "", v["default"]) if isinstance(v, dict) else v
    for k, v in (("conf", conf), ("iou", iou), ("max_det", max_det)):
        if v is not None:
            base[k] = v
    if not 0.0 <= float(base["conf"]) <= 1.0:
        raise InputError(f"--conf: expected a value in [0, 1], found {base['conf']}")
    if not 0.0 < float(base["iou"]) <= 1.0:
        raise InputError(f"--iou: expected a value in (0, 1], found {base['iou']}")
    if int(base["max_det"]) < 1:
        raise InputError(f"--max-det: expected an integer >= 1, found {base['max_det']}")
    out: dict[str, float | int | bool] = {
        "conf": float(base["conf"]), "iou": float(base["iou"]), "max_det": int(base["max_det"])
    }
    if agnostic_nms:
        out["agnostic_nms"] = True
    return out


def category_map(names: Mapping[int, str], dataset: CocoDataset | None) -> dict[int, int] | None:
    """Model class id -> dataset category id, or None to write class ids as they are.

    For a COCO dataset: by name when every class name of the model is a category name of the
    dataset (case and ``_``/space differences ignored); else by position,
    ``sorted(category ids)[class id]``, when the counts match (the convention of COCO-80
    models such as YOLOX: class i -> the i-th COCO category id).

    Raises:
        InputError: neither rule applies (the model was not trained on these categories).
    """
    if dataset is None:
        return None

    def norm(s: str) -> str:
        return " ".join(str(s).lower().replace("_", " ").split())

    by_name: dict[str, list[int]] = {}
    for cid, cname in dataset.class_names.items():
        by_name.setdefault(norm(cname), []).append(cid)
    if names and all(len(by_name.get(norm(n), [])) == 1 for n in names.values()):
        return {int(c): by_name[norm(n)][0] for c, n in names.items()}
    ids = dataset.category_ids
    if len(names) == len(ids):
        return {int(c): ids[i] for i, c in enumerate(sorted(names))}
    missing = [n for n in names.values() if norm(n) not in by_name][:5]
    raise InputError(
        f"{dataset.json_path}: field 'categories': cannot map the model's {len(names)} classes "
        f"to the dataset's {len(ids)} categories: names differ (e.g. {missing}) and the counts "
        "differ; run on the image folder instead to write the model's class ids"
    )
