"""Shared fixtures: the real assets in ../shared/assets (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared real-asset folder (YOLOX-Nano ONNX, 11 COCO val images)."""
    if not (ASSETS / "coco-val-11" / "instances.json").is_file():
        pytest.skip(f"real assets not found at {ASSETS} (see the project README)")
    return ASSETS


@pytest.fixture(scope="session")
def yolox_nano(assets: Path) -> Path:
    return assets / "models" / "yolox_nano.onnx"


@pytest.fixture(scope="session")
def coco11(assets: Path) -> Path:
    """instances.json of the 11 real COCO val images."""
    return assets / "coco-val-11" / "instances.json"
