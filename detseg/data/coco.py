"""COCO-format datasets (instances JSON) and results files.

Reading validates the fields detseg relies on and raises `InputError` naming the file, the
field and the offending value. Writing is atomic (a temporary file then a rename) so that a
crash never leaves half a results file behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detseg.errors import InputError


@dataclass
class CocoImage:
    """One image entry of a COCO dataset, with its file resolved on disk."""

    id: int
    file_name: str
    width: int
    height: int
    path: Path


@dataclass
class CocoDataset:
    """A COCO instances file: images (resolved to paths), categories and annotations."""

    json_path: Path
    images: list[CocoImage]
    categories: list[dict]
    annotations: list[dict]
    raw: dict = field(repr=False)

    @property
    def category_ids(self) -> list[int]:
        """Category ids in ascending order (the usual model class index order)."""
        return sorted(int(c["id"]) for c in self.categories)

    @property
    def class_names(self) -> dict[int, str]:
        """Category id -> name."""
        return {int(c["id"]): str(c["name"]) for c in self.categories}


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file with an error that names the file and the position of the fault."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: expected UTF-8 JSON text, found undecodable bytes ({exc.reason})") from None


def _field(path: Path, where: str, obj: Mapping, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise InputError(f"{path}: {where}: missing field '{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(
            f"{path}: {where}: field '{key}': expected {names}, found {type(value).__name__} "
            f"{value!r:.60}"
        )
    return value


def _check_unique(path: Path, section: str, items: list[dict]) -> None:
    seen: set[int] = set()
    for i, item in enumerate(items):
        _id = _field(path, f"{section}[{i}]", item, "id", int)
        if _id in seen:
            raise InputError(f"{path}: {section}[{i}]: duplicate id {_id}")
        seen.add(_id)


def resolve_image_path(json_path: Path, file_name: str, images_dir: Path | None) -> Path:
    """Where an image of a COCO file lies.

    Tried in order: ``images_dir / file_name`` (when given), ``images/`` beside the JSON,
    ``file_name`` relative to the JSON's folder. The first existing path wins; if none exists
    the first candidate is returned so that the read error names a sensible path.
    """
    base = json_path.parent
    candidates = []
    if images_dir is not None:
        candidates += [images_dir / file_name, images_dir / Path(file_name).name]
    candidates += [base / "images" / file_name, base / "images" / Path(file_name).name,
                   base / file_name]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def load_dataset(json_path: str | Path, images_dir: str | Path | None = None) -> CocoDataset:
    """Read and validate a COCO instances JSON.

    Args:
        json_path: the instances file.
        images_dir: folder holding the images; see `resolve_image_path` for the search order.
    """
    path = Path(json_path)
    data = read_json(path, "COCO instances file")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with 'images', found {type(data).__name__}")
    images_raw = _field(path, "top level", data, "images", list)
    categories = data.get("categories", [])
    annotations = data.get("annotations", [])
    if not isinstance(categories, list):
        raise InputError(f"{path}: field 'categories': expected a list, found {type(categories).__name__}")
    if not isinstance(annotations, list):
        raise InputError(f"{path}: field 'annotations': expected a list, found {type(annotations).__name__}")
    for section, items in (("images", images_raw), ("categories", categories),
                           ("annotations", annotations)):
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InputError(f"{path}: {section}[{i}]: expected an object, found {type(item).__name__}")
        _check_unique(path, section, items)
    for i, c in enumerate(categories):
        _field(path, f"categories[{i}]", c, "name", str)
    img_dir = Path(images_dir) if images_dir is not None else None
    images = []
    for i, im in enumerate(images_raw):
        where = f"images[{i}]"
        file_name = _field(path, where, im, "file_name", str)
        width = _field(path, where, im, "width", int) if "width" in im else 0
        height = _field(path, where, im, "height", int) if "height" in im else 0
        for key, value in (("width", width), ("height", height)):
            if value < 0:
                raise InputError(f"{path}: {where}: field '{key}': expected a size >= 0, found {value}")
        images.append(CocoImage(int(im["id"]), file_name, width, height,
                                resolve_image_path(path, file_name, img_dir)))
    image_ids = {im.id for im in images}
    cat_ids = {int(c["id"]) for c in categories}
    for i, a in enumerate(annotations):
        where = f"annotations[{i}]"
        if _field(path, where, a, "image_id", int) not in image_ids:
            raise InputError(f"{path}: {where}: field 'image_id': unknown image id {a['image_id']}")
        if _field(path, where, a, "category_id", int) not in cat_ids:
            raise InputError(
                f"{path}: {where}: field 'category_id': unknown category id {a['category_id']}"
            )
        bbox = _field(path, where, a, "bbox", list)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     and math.isfinite(v) for v in bbox) or min(bbox[2:]) < 0:
            raise InputError(
                f"{path}: {where}: field 'bbox': expected [x, y, w, h] of finite numbers with "
                f"w, h >= 0, found {bbox!r:.80}"
            )
    return CocoDataset(path, images, categories, annotations, data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write COCO results records (a JSON list) atomically; returns how many were written.

    The records are streamed, one at a time, so a generator keeps memory flat on runs of
    millions of images; the bytes are those `json.dump` writes for the same list.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    n = 0
    try:
        with os.fdopen(fd, "w") as f:
            f.write("[")
            for rec in records:
                f.write(", " if n else "")
                f.write(json.dumps(rec))
                n += 1
            f.write("]")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
