"""What `detseg predict` runs on: an image file, a folder, a glob or a COCO instances JSON.

`open_source` turns the user's SOURCE string into a `Source`: an ordered list of
`SourceItem` (a key and a path) and, for a COCO file, the `CocoDataset` it came from.
The key is what the results file calls the image:

- COCO instances JSON: the dataset's integer image id;
- folder: the path relative to the folder, with forward slashes (``"sub/a.jpg"``);
- glob: the path relative to the glob's first folder without wildcards;
- single file: its file name.

Nothing is read here beyond the COCO JSON: a missing or broken image is reported later, by
the batch runner, for that image alone.
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from detseg.data.coco import CocoDataset, load_dataset
from detseg.errors import InputError

#: File name endings (lower case) taken as images when a folder or glob is scanned.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jfif", ".pgm", ".ppm"}
)


@dataclass(frozen=True)
class SourceItem:
    """One image to run on: ``key`` names it in the results (int COCO id or str path)."""

    key: int | str
    path: Path


@dataclass
class Source:
    """An ordered, duplicate-free list of images, and the COCO dataset they came from if any."""

    description: str
    items: list[SourceItem]
    dataset: CocoDataset | None = None

    def __iter__(self) -> Iterator[SourceItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def kind(self) -> str:
        """``"coco"`` for a COCO instances file, else ``"files"``."""
        return "coco" if self.dataset is not None else "files"


def is_image_file(path: Path) -> bool:
    """Whether a path's name ends like an image (the content is checked when it is read)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _has_magic(text: str) -> bool:
    return globlib.has_magic(text)


def _listed(path: Path) -> bool:
    """Whether a scanned path is an image to run on.

    A symbolic link with an image name is kept even when it is broken or loops: reading it
    then fails and the run reports it as failed, instead of leaving it out unseen.
    """
    return is_image_file(path) and (path.is_file() or path.is_symlink())


def _scan_folder(folder: Path) -> list[SourceItem]:
    paths = sorted(
        (p for p in folder.rglob("*") if _listed(p)),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    return [SourceItem(p.relative_to(folder).as_posix(), p) for p in paths]


def _glob_root(pattern: str) -> Path:
    """The deepest leading folder of a glob pattern that holds no wildcard."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts:
        if _has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _scan_glob(pattern: str) -> list[SourceItem]:
    root = _glob_root(pattern)
    paths = sorted({Path(p) for p in globlib.glob(pattern, recursive=True)})
    items = []
    for p in paths:
        if not _listed(p):
            continue
        try:
            key = p.relative_to(root).as_posix()
        except ValueError:
            key = p.as_posix()
        items.append(SourceItem(key, p))
    return items


def _from_dataset(dataset: CocoDataset) -> list[SourceItem]:
    return [SourceItem(im.id, im.path) for im in dataset.images]


def open_source(source: str | Path, images_dir: str | Path | None = None) -> Source:
    """Resolve SOURCE into the images to run on.

    Args:
        source: an image file, a folder (searched recursively for image extensions), a glob
            pattern (``"data/**/*.jpg"``; ``**`` recurses) or a COCO instances ``.json``.
        images_dir: for a COCO file only, the folder holding its images (see
            `detseg.data.coco.resolve_image_path`).

    Raises:
        InputError: SOURCE does not exist, matches no image, or is a malformed COCO file.
    """
    text = str(source)
    path = Path(source)
    if images_dir is not None and not (path.is_file() and path.suffix.lower() == ".json"):
        raise InputError(
            f"--images {images_dir}: only meaningful with a COCO instances JSON source, "
            f"found SOURCE {text}"
        )
    if path.is_file():
        if path.suffix.lower() == ".json":
            if images_dir is not None and not Path(images_dir).is_dir():
                raise InputError(f"--images {images_dir}: folder not found")
            dataset = load_dataset(path, images_dir)
            if not dataset.images:
                raise InputError(f"{path}: field 'images': expected at least one image, found none")
            return Source(f"COCO dataset {path} ({len(dataset.images)} images)",
                          _from_dataset(dataset), dataset)
        return Source(f"image {path}", [SourceItem(path.name, path)])
    if path.is_dir():
        items = _scan_folder(path)
        if not items:
            raise InputError(
                f"{path}: folder holds no images (looked recursively for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        return Source(f"folder {path} ({len(items)} images)", items)
    if _has_magic(text):
        items = _scan_glob(text)
        if not items:
            raise InputError(f"{text}: glob pattern matches no image files")
        return Source(f"glob {text} ({len(items)} images)", items)
    raise InputError(
        f"{text}: SOURCE not found (expected an image file, a folder, a glob pattern or a "
        "COCO instances .json)"
    )
