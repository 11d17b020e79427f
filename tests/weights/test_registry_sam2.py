"""SAM 2.1 registry entries: official URLs, pinned SHA-256 and sizes, and name resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from detseg.weights.registry import REGISTRY, resolve

SAM2_NAMES = ["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus",
              "sam2.1_hiera_large"]


@pytest.mark.parametrize("name", SAM2_NAMES)
def test_sam2_entries(name: str) -> None:
    spec = REGISTRY[name]
    assert spec.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt"
    assert spec.filename == f"{name}.pt" and spec.family == "sam2" and spec.task == "sam"
    assert spec.sam_model_type == name
    (checksum,) = spec.checksums
    algo, digest = checksum.split(":")
    assert algo == "sha256" and len(digest) == 64 and int(digest, 16) >= 0
    assert spec.size is not None and 100e6 < spec.size < 1e9
    assert "Apache-2.0" in spec.license


def test_sizes_grow_with_the_model() -> None:
    sizes = [REGISTRY[name].size for name in SAM2_NAMES]
    assert sizes == sorted(sizes)


def test_sam2_file_names_resolve_to_sam2_not_ultralytics(tmp_path: Path, monkeypatch) -> None:
    assert resolve("sam2.1_hiera_tiny.pt").spec is REGISTRY["sam2.1_hiera_tiny"]
    local = tmp_path / "sam2.1_hiera_small.pt"
    local.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    source = resolve(str(local))
    assert source.kind == "file" and source.family == "sam2"
    assert source.spec is REGISTRY["sam2.1_hiera_small"]
    other = tmp_path / "yolo_custom.pt"
    other.write_bytes(b"x")
    assert resolve(str(other)).family == "ultralytics"
