"""The COCO boundary: every COCO file detseg reads, checks or writes goes through here.

One rule for each thing that must agree between predict, eval and serve:
- ids (`check_ids`): integers (not bools, within int64) or strings, one type per section,
  unique; category names optional (the id stands in);
- boxes (`xyxy_to_xywh`, `xywh_to_xyxy`): xyxy pixels inside detseg, xywh only in files;
- rounding (`detections_to_records`): boxes to ``BOX_DECIMALS``, scores to ``SCORE_DECIMALS``,
  applied to results written by `detseg predict`/`serve` *and* to `Detections` evaluated in
  memory, so a result scores the same from memory and from its file;
- parsing (`read_json`, `read_results_records`): msgspec, with the json module's message
  (file, line, column) for a malformed file.
Reading validates the fields detseg relies on and raises `InputError` naming the file, the
field and the offending value. Writing is atomic (a temporary file then a rename) so that a
crash never leaves half a results file behind. The vectorised checks of evaluation live in
`detseg.eval.loader`, on these rules.
"""

from __future__ import annotations

import gc
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from detseg.errors import InputError
from detseg.fileio import follow_umask

#: The rounding rule of COCO results (pixels, score): ~1/1000 pixel, 5 decimals of score.
BOX_DECIMALS = 3
SCORE_DECIMALS = 5


@dataclass
class CocoImage:
    """One image entry of a COCO dataset, with its file resolved on disk."""

    id: int | str
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
    def category_ids(self) -> list[int | str]:
        """Category ids in ascending order (the usual model class index order)."""
        return sorted(c["id"] for c in self.categories)

    @property
    def class_names(self) -> dict[int | str, str]:
        """Category id -> name (the id as text where the file gives no name)."""
        return {c["id"]: str(c.get("name", c["id"])) for c in self.categories}


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of containers are created.

    Parsing creates objects that never form cycles; without this the collector walks the
    growing heap again and again (about 3x the parse time). Restores the previous state.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    return path.read_bytes()


def _stdlib_loads(path: Path, data: bytes) -> Any:
    """The reference parser: its error says where the fault is (and it reads NaN/Infinity)."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: expected UTF-8 JSON text, found undecodable bytes ({exc.reason})") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file with an error that names the file and the position of the fault.

    msgspec parses (several times faster than the json module); a file it refuses is parsed
    again by the json module, whose result (it also reads NaN and Infinity, as pycocotools
    does) or error message is the answer.
    """
    path = Path(path)
    data = _read_bytes(path, what)
    with _gc_paused():
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError:
            return _stdlib_loads(path, data)


# ---- typed results records: parsed and type-checked in one pass ---------------------------
class RleRecord(msgspec.Struct, gc=False):
    """A COCO RLE mask: ``counts`` compressed (str) or uncompressed (list of run lengths)."""

    size: tuple[int, int]
    counts: str | list[int]


class ResultRecord(msgspec.Struct, gc=False):
    """One COCO results record as `read_results_records` parses it (other fields ignored)."""

    image_id: int | str
    category_id: int | str
    score: float
    bbox: tuple[float, float, float, float] | None = None
    segmentation: RleRecord | list[list[float]] | None = None


_RESULTS_DECODER = msgspec.json.Decoder(list[ResultRecord])


def read_results_records(path: str | Path, what: str = "results file") -> list[ResultRecord] | None:
    """A COCO results file as typed records, or None when it does not fit `ResultRecord`.

    The fast path for well-formed files; on None, read the file with `read_json` and check
    it field by field, which names the culprit (the same messages as without this path).
    """
    path = Path(path)
    data = _read_bytes(path, what)
    with _gc_paused():
        try:
            return _RESULTS_DECODER.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None


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


def _fmt(value: Any) -> str:
    return f"{value!r:.80}"


def check_ids(items: list, where: str, kinds: tuple[type, ...] = (int, str)) -> list:
    """The id rule: each item's ``id`` an int (not bool, |id| < 2**63) or, where ``kinds``
    allows, a str; all of one type; unique. Returns the ids.

    Args:
        items: the section's objects (dicts); where: file and section, for messages.
    """
    try:
        ids = [r["id"] for r in items]
    except (KeyError, TypeError):
        for i, r in enumerate(items):
            if not isinstance(r, dict):
                raise InputError(f"{where}[{i}]: expected an object, found {type(r).__name__} {_fmt(r)}") from None
            if "id" not in r:
                raise InputError(f"{where}[{i}]: missing field 'id'") from None
        raise
    types = set(map(type, ids))
    if not ids:
        return ids
    if types == {int}:  # the usual case, checked without a Python loop
        ok = not ids or (-2**63 < min(ids) and max(ids) < 2**63)
    else:
        ok = types == {str} and str in kinds
    want = "an integer or a string (one type for all)" if str in kinds else "an integer"
    for i, v in ([] if ok else enumerate(ids)):
        if isinstance(v, bool) or not isinstance(v, kinds) or (isinstance(v, int) and abs(v) >= 2**63):
            raise InputError(f"{where}[{i}]: field 'id': expected {want}, found {type(v).__name__} {_fmt(v)}")
    if not ok:
        first = type(ids[0])
        i = next(i for i, v in enumerate(ids) if type(v) is not first)
        raise InputError(f"{where}[{i}]: field 'id': expected {want}, found {type(ids[i]).__name__} "
                         f"{_fmt(ids[i])} after {first.__name__} ids")
    if len(set(ids)) != len(ids):
        seen: set = set()
        for i, v in enumerate(ids):
            if v in seen:
                raise InputError(f"{where}[{i}]: duplicate id {v!r}")
            seen.add(v)
    return ids


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
        check_ids(items, f"{path}: {section}", (int, str) if section != "annotations" else (int,))
    for i, c in enumerate(categories):
        if "name" in c:
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
        images.append(CocoImage(im["id"], file_name, width, height,
                                resolve_image_path(path, file_name, img_dir)))
    image_ids = {im.id for im in images}
    cat_ids = {c["id"] for c in categories}
    for i, a in enumerate(annotations):
        where = f"annotations[{i}]"
        if _field(path, where, a, "image_id", (int, str)) not in image_ids:
            raise InputError(f"{path}: {where}: field 'image_id': unknown image id {a['image_id']!r}")
        if _field(path, where, a, "category_id", (int, str)) not in cat_ids:
            raise InputError(
                f"{path}: {where}: field 'category_id': unknown category id {a['category_id']!r}"
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
        follow_umask(fd)  # mkstemp makes it 0600; the results are the user's ordinary files
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
        follow_umask(fd)  # mkstemp makes it 0600; the results are the user's ordinary files
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


# ---- results: the one conversion from Detections ----------------------------------------
def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N, 4) float64 COCO ``[x, y, width, height]`` (same pixels)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) COCO ``[x, y, width, height]`` -> (N, 4) float64 xyxy."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def detections_to_records(det: Any, image_id: int | str,
                          category_ids: Sequence[int] | Mapping[int, int] | None = None,
                          with_masks: bool = True) -> list[dict]:
    """COCO results records of one image's `Detections`: the one writer of results.

    ``bbox`` is xywh rounded to `BOX_DECIMALS`, ``score`` rounded to `SCORE_DECIMALS`,
    ``segmentation`` compressed RLE (``counts`` as str). ``category_ids`` maps class ids to
    category ids (a sequence indexed by class id, or a mapping); without it the class id is
    the category id.
    """
    # Python's round (correctly rounded decimals), not np.round (scale, rint, unscale)
    xywh = [[round(v, BOX_DECIMALS) for v in row] for row in xyxy_to_xywh(det.boxes).tolist()]
    scores = [round(v, SCORE_DECIMALS) for v in np.asarray(det.scores, np.float64).tolist()]
    cats = np.asarray(det.class_ids).tolist()
    if category_ids is not None:
        try:
            cats = [category_ids[c] for c in cats]
            cats = [c if isinstance(c, str) else int(c) for c in cats]
        except (IndexError, KeyError) as exc:
            raise InputError(f"category_ids: no COCO category id for class id {exc.args[0]}") from None
    rles = det.masks_as_rle() if (with_masks and det.masks is not None) else None
    records = []
    for i in range(len(xywh)):
        rec = {"image_id": image_id, "category_id": cats[i], "bbox": xywh[i], "score": scores[i]}
        if rles is not None:
            rec["segmentation"] = rles[i]
        records.append(rec)
    return records


def results_from_detections(dets: Mapping[Any, Any]) -> list[dict]:
    """``{image_id: Detections}`` (class ids = category ids) -> COCO results records,
    exactly as `detseg predict` writes them (`detections_to_records`)."""
    records: list[dict] = []
    for image_id, d in dets.items():
        if not hasattr(d, "boxes") or not hasattr(d, "scores") or not hasattr(d, "masks_as_rle"):
            raise InputError(f"results[{image_id!r}]: expected a Detections object (results given as "
                             f"a mapping image_id -> Detections), found {type(d).__name__}")
        records += detections_to_records(d, image_id)
    return records
