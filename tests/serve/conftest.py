"""Fixtures for the web demo: real models, and the app running on 127.0.0.1 inside the test.

Detector: the real YOLOX-Nano of ../shared/assets (skipped when absent). SAM: the embedded
default when it is packaged, else a tiny SAM in segment-anything's architecture (random
weights) exported with `detseg.weights.export_sam` into a temporary folder.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")


def builtin_sam() -> tuple[Path, Path] | None:
    """The packaged default SAM, or None while it is not packaged."""
    try:
        from detseg.weights.builtin import default_sam

        enc, dec = default_sam()
    except Exception:  # noqa: BLE001 - any failure means "not packaged here"
        return None
    return (Path(enc), Path(dec)) if Path(enc).is_file() and Path(dec).is_file() else None


def builtin_detector() -> Path | None:
    """The packaged default detector, or None while it is not packaged."""
    try:
        from detseg.weights.builtin import default_detector

        path = Path(default_detector())
    except Exception:  # noqa: BLE001
        return None
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(encoder, decoder) of a tiny random-weight SAM exported to ONNX."""
    torch = pytest.importorskip("torch", reason="torch is needed to export the tiny test SAM")
    pytest.importorskip("segment_anything", reason="segment-anything builds the tiny test SAM")
    from detseg.weights.export_sam import export_sam
    from detseg.weights.sam_arch import build_sam_small

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_sam")
    result = export_sam(None, "tiny", out, model=build_sam_small(image_size=256))
    return result.encoder_path, result.decoder_path


@pytest.fixture(scope="session")
def sam_paths(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """The SAM the app serves in these tests (the embedded one when packaged)."""
    return builtin_sam() or request.getfixturevalue("tiny_sam")


@pytest.fixture(scope="session")
def coco_images(assets: Path) -> list[Path]:
    return sorted((assets / "coco-val-11" / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def hub(yolox_nano: Path, sam_paths: tuple[Path, Path]):
    from detseg.serve.models import ModelHub, detector_specs

    models = [str(yolox_nano)] + (["builtin"] if builtin_detector() else [])
    return ModelHub(detector_specs(models, head="yolox"), sam_paths=sam_paths, device="cpu")


@pytest.fixture()
def ctx(hub, tmp_path: Path):
    from detseg.serve.app import make_context
    from detseg.serve.limits import Limits

    return make_context(hub, Limits(max_upload_bytes=2_000_000, max_pixels=4_000_000), tmp_path / "out")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the demo launched on 127.0.0.1 (free port) for this test module."""
    from detseg.serve.app import ServeOptions, build_app, launch, make_context
    from detseg.serve.limits import Limits

    ctx = make_context(
        hub, Limits(max_upload_bytes=2_000_000, max_pixels=4_000_000),
        tmp_path_factory.mktemp("serve_out"),
    )
    options = ServeOptions(concurrency_limit=2, max_queue=16)
    demo = build_app(ctx, options)
    url = launch(demo, ctx, host="127.0.0.1", port=free_port(), options=options, block=False, quiet=True)
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture()
def rgb_png(tmp_path: Path) -> Path:
    """A 64x48 PNG with a bright square on a dark background."""
    from PIL import Image

    img = np.full((48, 64, 3), 20, np.uint8)
    img[10:30, 20:44] = (250, 200, 40)
    path = tmp_path / "square.png"
    Image.fromarray(img).save(path)
    return path
