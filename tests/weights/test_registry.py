"""The model registry and `resolve`: names, file names, local paths, architecture files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from detseg.errors import InputError
from detseg.pipeline.meta import COCO80_NAMES
from detseg.weights.registry import (
    REGISTRY,
    get,
    resolve,
    sam_model_type_from_name,
)


@pytest.mark.parametrize("family", ["yolov8", "yolo11"])
@pytest.mark.parametrize("size", "nsm")
@pytest.mark.parametrize("suffix, task", [("", "detect"), ("-seg", "segment")])
def test_ultralytics_entries(family: str, size: str, suffix: str, task: str) -> None:
    spec = REGISTRY[f"{family}{size}{suffix}"]
    assert spec.task == task and spec.family == "ultralytics"
    assert spec.url == f"https://github.com/ultralytics/assets/releases/download/v8.3.0/{spec.filename}"
    assert spec.filename == f"{family}{size}{suffix}.pt"
    assert spec.class_names == COCO80_NAMES and len(spec.class_names) == 80
    assert "AGPL" in spec.license


@pytest.mark.parametrize(
    "name, filename, md5_prefix",
    [
        ("sam_vit_b", "sam_vit_b_01ec64.pth", "01ec64"),
        ("sam_vit_l", "sam_vit_l_0b3195.pth", "0b3195"),
        ("sam_vit_h", "sam_vit_h_4b8939.pth", "4b8939"),
    ],
)
def test_sam_entries(name: str, filename: str, md5_prefix: str) -> None:
    spec = REGISTRY[name]
    assert spec.url == f"https://dl.fbaipublicfiles.com/segment_anything/{filename}"
    assert spec.task == "sam" and spec.sam_model_type == name.removeprefix("sam_")
    assert spec.size and spec.size > 300_000_000
    sha = [c for c in spec.checksums if c.startswith("sha256:")]
    assert len(sha) == 1 and re.fullmatch(r"sha256:[0-9a-f]{64}", sha[0])
    assert f"md5:{md5_prefix}" in spec.checksums  # the file-name hex is an MD5 prefix
    assert "Apache" in spec.license


def test_resolve_registry_name_and_file_name() -> None:
    assert resolve("yolov8n").spec is REGISTRY["yolov8n"]
    src = resolve("yolo11s-seg.pt")
    assert src.kind == "registry" and src.spec is REGISTRY["yolo11s-seg"]
    assert resolve("sam_vit_b_01ec64.pth").spec is REGISTRY["sam_vit_b"]


def test_local_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "yolov8n.pt").write_bytes(b"x")
    src = resolve("yolov8n.pt")
    assert src.kind == "file" and src.path == Path("yolov8n.pt")
    assert src.spec is REGISTRY["yolov8n"]  # a local copy of a registry file can be checked
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"x")
    assert resolve(str(mine)).family == "sam"
    assert resolve(mine).kind == "file"


@pytest.mark.parametrize("name", ["yolov8n-seg.yaml", "yolo11n.yaml", "yolov8n.yml"])
def test_architecture_names_pass_through(name: str) -> None:
    src = resolve(name)
    assert src.kind == "architecture" and src.family == "ultralytics" and src.path is None
    assert src.name == name


def test_local_architecture_file(tmp_path: Path) -> None:
    f = tmp_path / "custom.yaml"
    f.write_text("nc: 3\n")
    src = resolve(f)
    assert src.kind == "architecture" and src.path == f


@pytest.mark.parametrize(
    "arg, message",
    [
        ("yolov8q", "did you mean"),
        ("nothing-like-it", "not a file and not a known model name"),
        ("some/dir/model.pt", "model file not found"),
        ("missing.pth", "model file not found"),
        ("missing.onnx", "model file not found"),
        ("dir/arch.yaml", "model file not found"),
    ],
)
def test_resolve_errors(arg: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        resolve(arg)


def test_unknown_file_type(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="unknown model file type"):
        resolve(f)


def test_get_lists_known_names() -> None:
    with pytest.raises(InputError) as err:
        get("resnet50")
    assert "yolov8n" in str(err.value) and "sam_vit_h" in str(err.value)


@pytest.mark.parametrize(
    "filename, expected",
    [("sam_vit_b_01ec64.pth", "vit_b"), ("my_vit_h.pth", "vit_h"), ("SAM_VIT_L.pth", "vit_l"),
     ("sam.pth", None), ("vit_base.pth", None)],
)
def test_sam_model_type_from_name(filename: str, expected: str | None) -> None:
    assert sam_model_type_from_name(filename) == expected
