"""SOURCE resolution: file, folder, glob, COCO JSON, and the errors for bad sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detseg.errors import InputError
from detseg.pipeline.sources import SourceItem, open_source


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """root/{a.jpg, b.PNG, notes.txt, sub/c.jpeg, sub/deeper/d.webp, empty/}"""
    root = tmp_path / "root"
    for rel in ("a.jpg", "b.PNG", "notes.txt", "sub/c.jpeg", "sub/deeper/d.webp"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")  # content is only checked when read
    (root / "empty").mkdir()
    return root


def _coco(tmp_path: Path, images: list[dict], name: str = "instances.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({
        "images": images,
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [],
    }))
    return path


def test_folder_is_recursive_sorted_and_keyed_by_relative_path(tree: Path) -> None:
    src = open_source(tree)
    assert [it.key for it in src] == ["a.jpg", "b.PNG", "sub/c.jpeg", "sub/deeper/d.webp"]
    assert all(it.path == tree / it.key for it in src)
    assert src.dataset is None and src.kind == "files"


def test_single_file_is_keyed_by_its_name(tree: Path) -> None:
    src = open_source(tree / "sub" / "c.jpeg")
    assert src.items == [SourceItem("c.jpeg", tree / "sub" / "c.jpeg")]


@pytest.mark.parametrize(
    ("pattern", "keys"),
    [
        ("*.jpg", ["a.jpg"]),
        ("**/*.jp*g", ["a.jpg", "sub/c.jpeg"]),
        ("sub/**/*", ["c.jpeg", "deeper/d.webp"]),
        ("*", ["a.jpg", "b.PNG"]),  # notes.txt and folders are not images
    ],
)
def test_glob_keys_are_relative_to_the_fixed_prefix(tree: Path, pattern: str, keys: list) -> None:
    src = open_source(f"{tree}/{pattern}")
    assert [it.key for it in src] == keys


def test_coco_source_uses_image_ids_and_images_dir(tmp_path: Path) -> None:
    elsewhere = tmp_path / "pics"
    elsewhere.mkdir()
    (elsewhere / "x.jpg").write_bytes(b"x")
    path = _coco(tmp_path, [{"id": 7, "file_name": "x.jpg", "width": 4, "height": 3},
                            {"id": 3, "file_name": "y.jpg", "width": 4, "height": 3}])
    src = open_source(path, images_dir=elsewhere)
    assert [it.key for it in src] == [7, 3]  # the dataset's order
    assert src.items[0].path == elsewhere / "x.jpg"
    assert src.kind == "coco" and src.dataset is not None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root, tmp: root / "missing.jpg", "SOURCE not found"),
        (lambda root, tmp: root / "empty", "folder holds no images"),
        (lambda root, tmp: f"{root}/*.gif", "matches no image files"),
        (lambda root, tmp: _coco(tmp, []), "expected at least one image"),
    ],
)
def test_bad_sources_raise_clear_errors(tree: Path, tmp_path: Path, make, message: str) -> None:
    source = make(tree, tmp_path)
    with pytest.raises(InputError, match=message) as info:
        open_source(source)
    assert Path(str(source)).name in str(info.value) or "*" in str(source)


def test_images_dir_only_with_a_coco_source(tree: Path) -> None:
    with pytest.raises(InputError, match="only meaningful with a COCO"):
        open_source(tree, images_dir=tree)


def test_malformed_coco_source_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="broken.json: malformed JSON"):
        open_source(path)


def test_broken_and_looping_symlinks_are_listed_so_that_they_are_reported(tree: Path) -> None:
    # Left out silently before; now they are items whose reading fails (reported as failed).
    (tree / "dangling.jpg").symlink_to(tree / "nowhere.jpg")
    (tree / "loop1.png").symlink_to(tree / "loop2.png")
    (tree / "loop2.png").symlink_to(tree / "loop1.png")
    (tree / "good_link.jpg").symlink_to(tree / "a.jpg")
    keys = [it.key for it in open_source(tree)]
    assert {"dangling.jpg", "loop1.png", "loop2.png", "good_link.jpg"} <= set(keys)
    globbed = [it.key for it in open_source(str(tree / "*.*"))]
    assert {"dangling.jpg", "loop1.png", "loop2.png"} <= set(globbed)
