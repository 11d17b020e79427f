"""bench/gpu_check.py's steps, run on the CPU (the dry mode): no GPU is needed to test them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_provider_share_reads_where_kernels_ran(gpu_check):
    from detseg.weights.builtin import default_detector

    share = gpu_check.provider_share(default_detector(), gpu_check._CPU, (1, 3, 320, 320))
    assert share["session_providers"][0] == "CPUExecutionProvider"
    assert share["kernel_time_share"] == {"CPUExecutionProvider": 1.0}
    assert share["kernels"]["CPUExecutionProvider"] > 100


def test_compare_devices_checks_boxes_and_masks(gpu_check, tmp_path: Path):
    from detseg.data.images import read_image
    from detseg.data.shapes import generate_shapes
    from detseg.weights.builtin import default_detector

    generate_shapes(tmp_path, 3, 99)
    images = [read_image(p) for p in sorted((tmp_path / "images").glob("*.jpg"))]
    r = gpu_check.compare_devices(default_detector(), None, images, "cpu")
    assert r["passed"] and r["detections_checked"] > 3 and r["min_mask_iou"] == 1.0


def test_iobinding_loop_runs(gpu_check):
    from detseg.weights.builtin import default_detector

    ips = gpu_check.iobinding_throughput(default_detector(), gpu_check._CPU, 2, 1)
    assert np.isfinite(ips) and ips > 0
