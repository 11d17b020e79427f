"""Named models: where each one comes from, what it does, how to check the file.

`REGISTRY` is a plain dict ``name -> ModelSpec``. `resolve` turns what a user typed (a
registry name, a file name such as ``yolov8n.pt``, a local path, or an Ultralytics
architecture file such as ``yolov8n-seg.yaml``) into a `ModelSource`; a local path works
wherever a name does.

Checksums:
- Segment Anything: the hex in the published file names (``sam_vit_b_01ec64.pth``) is the
  first 6 digits of the file's **MD5**, not of its SHA-256 (the SHA-256 of
  ``sam_vit_b_01ec64.pth`` begins ``ec2df627``). Each SAM entry carries the full SHA-256 and
  the size, as published by several independent projects that pin these files, and the MD5
  prefix from the file name; a download must match all of them.
- SAM 2.1: Meta publishes no checksum beside the files; each entry carries the SHA-256 and
  the size that independent public projects pin for the same URL (cited at `_SAM2_FILES`).
- Ultralytics: the ``ultralytics/assets`` release files carry no published checksum (they
  have been re-uploaded between releases), so their entries have none; a download of one is
  reported with its SHA-256 so that it can be pinned.

This module imports nothing heavy.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from detseg.errors import InputError
from detseg.pipeline.meta import COCO80_NAMES

TASKS = ("detect", "segment", "sam")
SAM2_RELEASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
ULTRALYTICS_RELEASE = "https://github.com/ultralytics/assets/releases/download/v8.3.0"
SAM_RELEASE = "https://dl.fbaipublicfiles.com/segment_anything"
ULTRALYTICS_LICENSE = "AGPL-3.0 (https://ultralytics.com/license)"
SAM_LICENSE = "Apache-2.0 (https://github.com/facebookresearch/segment-anything)"


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable model.

    Attributes:
        name: registry key (``yolov8n-seg``, ``sam_vit_b``).
        url: where the file is published.
        filename: the file name in the cache (the published one).
        license: license of the weights.
        task: ``"detect"``, ``"segment"`` or ``"sam"``.
        family: ``"ultralytics"``, ``"sam"`` or ``"sam2"``.
        class_names: class index -> name (COCO-80 for the Ultralytics COCO models; empty for SAM).
        checksums: ``"algo:hex"`` strings (``sha256``, ``md5``); a hex shorter than the full
            digest is a prefix. Empty when none is published.
        size: file size in bytes, or None when unknown.
        sam_model_type: segment-anything's builder key (``vit_b``...) for SAM entries; the
            model name (``sam2.1_hiera_tiny``...) for SAM 2 entries.
    """

    name: str
    url: str
    filename: str
    license: str
    task: str
    family: str
    class_names: tuple[str, ...] = field(default=(), repr=False)
    checksums: tuple[str, ...] = ()
    size: int | None = None
    sam_model_type: str | None = None


def _ultralytics(stem: str) -> ModelSpec:
    return ModelSpec(
        name=stem,
        url=f"{ULTRALYTICS_RELEASE}/{stem}.pt",
        filename=f"{stem}.pt",
        license=ULTRALYTICS_LICENSE,
        task="segment" if stem.endswith("-seg") else "detect",
        family="ultralytics",
        class_names=COCO80_NAMES,
    )


# (model_type, file name, sha256, size): SHA-256 and size agree across several independent
# public projects that pin these files; the file-name hex is the MD5 prefix (module docstring).
_SAM_FILES = (
    ("vit_b", "sam_vit_b_01ec64.pth",
     "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
    ("vit_l", "sam_vit_l_0b3195.pth",
     "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607),
    ("vit_h", "sam_vit_h_4b8939.pth",
     "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
)


def _sam(model_type: str, filename: str, sha256: str, size: int) -> ModelSpec:
    md5_prefix = re.search(r"_([0-9a-f]{6})\.pth$", filename).group(1)
    return ModelSpec(
        name=f"sam_{model_type}",
        url=f"{SAM_RELEASE}/{filename}",
        filename=filename,
        license=SAM_LICENSE,
        task="sam",
        family="sam",
        checksums=(f"sha256:{sha256}", f"md5:{md5_prefix}"),
        size=size,
        sam_model_type=model_type,
    )


# SAM 2.1 (release 2024-09-28): (model_type, sha256, size). Sources, all pinning the
# dl.fbaipublicfiles.com/segment_anything_2/092824 URLs: the four SHA-256 are micro-sam's HASHES
# (github.com/computational-cell-analytics/micro-sam, micro_sam/v2/util.py, checked by pooch
# on every download) and recur in many other public pinning files (download scripts, SPDX
# manifests). Sizes from such pinning files: tiny 156,008,466 (an SPDX manifest and a
# SAM2_TINY_CHECKPOINT_SIZE constant), small 184,416,285, base_plus 323,606,802 (a
# SAM2_WEIGHTS_SIZE constant), large 898,083,611 (two independent manifests, one pinning the
# Hugging Face facebook/sam2.1-hiera-large copy).
_SAM2_FILES = (
    ("sam2.1_hiera_tiny",
     "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156_008_466),
    ("sam2.1_hiera_small",
     "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", 184_416_285),
    ("sam2.1_hiera_base_plus",
     "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", 323_606_802),
    ("sam2.1_hiera_large",
     "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", 898_083_611),
)
SAM2_LICENSE = "Apache-2.0 (https://github.com/facebookresearch/sam2)"


def _sam2(model_type: str, sha256: str, size: int) -> ModelSpec:
    return ModelSpec(
        name=model_type,
        url=f"{SAM2_RELEASE}/{model_type}.pt",
        filename=f"{model_type}.pt",
        license=SAM2_LICENSE,
        task="sam",
        family="sam2",
        checksums=(f"sha256:{sha256}",),
        size=size,
        sam_model_type=model_type,
    )


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        *(_ultralytics(f"{family}{size}{suffix}")
          for family in ("yolov8", "yolo11") for suffix in ("", "-seg") for size in "nsmlx"),
        *(_sam(*row) for row in _SAM_FILES),
        *(_sam2(*row) for row in _SAM2_FILES),
    )
}

ARCHITECTURE_SUFFIXES = (".yaml", ".yml")
CHECKPOINT_SUFFIXES = {".pt": "ultralytics", ".pth": "sam"}


@dataclass(frozen=True)
class ModelSource:
    """What `resolve` found.

    Attributes:
        kind: ``"registry"`` (download ``spec``), ``"file"`` (a local file at ``path``) or
            ``"architecture"`` (an Ultralytics model .yaml, random weights: a local file at
            ``path``, or a bare name that Ultralytics finds in its package).
        name: what the user typed.
        family: ``"ultralytics"``, ``"sam"``, ``"sam2"`` or ``"onnx"``.
        spec: the registry entry (``kind="registry"``, or a local file whose name is that of a
            registry file, so it can be checked).
        path: the local file (``kind="file"``, or a local ``"architecture"`` file).
    """

    kind: str
    name: str
    family: str
    spec: ModelSpec | None = None
    path: Path | None = None


def get(name: str) -> ModelSpec:
    """The registry entry ``name`` (or its file name, ``yolov8n.pt``); `InputError` if unknown."""
    if name in REGISTRY:
        return REGISTRY[name]
    for spec in REGISTRY.values():
        if spec.filename == name:
            return spec
    close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(
        f"model {name!r}: not a file and not a known model name{hint} "
        f"(known: {', '.join(REGISTRY)}; or an Ultralytics architecture file such as yolov8n-seg.yaml)"
    )


def resolve(name_or_path: str | Path) -> ModelSource:
    """Tell what ``name_or_path`` names. Local files win over registry names.

    Raises:
        InputError: a path-like argument (with a directory part or a model file suffix) that
            does not exist, or an unknown name.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if suffix in ARCHITECTURE_SUFFIXES and (path.is_file() or path.parent == Path(".")):
        # Bare names such as yolov8n-seg.yaml are found by Ultralytics inside its package.
        return ModelSource(kind="architecture", name=text, family="ultralytics",
                           path=path if path.is_file() else None)
    if path.is_file():
        spec = _spec_for_filename(path.name)
        # A registry file name says more than its suffix (sam2.1_hiera_tiny.pt is not Ultralytics).
        family = spec.family if spec is not None else _family_of_file(path)
        return ModelSource(kind="file", name=text, family=family, spec=spec, path=path)
    if path.parent != Path(".") or suffix in (*ARCHITECTURE_SUFFIXES, *CHECKPOINT_SUFFIXES, ".onnx"):
        if _spec_for_filename(text) is None:
            raise InputError(f"{path}: model file not found")
    spec = get(text)
    return ModelSource(kind="registry", name=text, family=spec.family, spec=spec)


def _spec_for_filename(filename: str) -> ModelSpec | None:
    return next((s for s in REGISTRY.values() if s.filename == filename), None)


def _family_of_file(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in ARCHITECTURE_SUFFIXES:
        return "ultralytics"
    if suffix == ".onnx":
        return "onnx"
    if suffix in CHECKPOINT_SUFFIXES:
        return CHECKPOINT_SUFFIXES[suffix]
    raise InputError(
        f"{path}: unknown model file type {suffix or '(no suffix)'!r}; expected .pt (Ultralytics), "
        ".pth (Segment Anything), .yaml (Ultralytics architecture) or .onnx"
    )


def sam_model_type_from_name(filename: str) -> str | None:
    """``vit_b`` for ``sam_vit_b_01ec64.pth`` (any name containing vit_b/vit_l/vit_h), else None."""
    found = re.search(r"vit_([blh])(?![a-z])", filename.lower())
    return f"vit_{found.group(1)}" if found else None
