"""Upload limits: sizes as users type them, and clear refusals of bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detseg.errors import InputError
from detseg.serve.limits import Limits, human_size, parse_size, read_upload


@pytest.mark.parametrize(
    ("text", "expected"),
    [("20MB", 20_000_000), ("20mb", 20_000_000), ("512kb", 512_000), ("1.5g", 1_500_000_000),
     ("100", 100), ("7 b", 7), (4096, 4096), ("2MiB", 2_000_000)],
)
def test_parse_size(text, expected) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "twenty", "-5mb", "0", "5 parsecs", "1e3"])
def test_parse_size_refuses(text) -> None:
    with pytest.raises(InputError, match="upload size limit"):
        parse_size(text)


def test_human_size_round_trips_with_parse_size() -> None:
    for n in (999, 20_000_000, 1_500_000_000):
        assert parse_size(human_size(n).replace(" ", "")) == pytest.approx(n, rel=1e-2)


def test_limits_must_be_positive() -> None:
    with pytest.raises(InputError, match="positive"):
        Limits(max_upload_bytes=0)
    assert "20 MB" in Limits().describe()


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_read_upload_decodes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(_png(30, 20))
    img = read_upload(path, "a.png", Limits())
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (b"", Limits(), "empty"),
        (b"%PDF-1.4 not an image at all", Limits(), "a.png"),
        (_png(30, 20)[:60], Limits(), "a.png"),  # truncated PNG
        (_png(30, 20), Limits(max_upload_bytes=50), "limit is 50 B"),
        (_png(300, 200), Limits(max_pixels=1000), "a.png"),
    ],
    ids=["empty", "not-an-image", "truncated", "too-many-bytes", "too-many-pixels"],
)
def test_read_upload_refuses_with_a_clear_message(tmp_path: Path, data, limits, message) -> None:
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    with pytest.raises(InputError, match=message):
        read_upload(path, "a.png", limits)


def test_read_upload_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="could not be read"):
        read_upload(tmp_path / "gone.png", "gone.png", Limits())
