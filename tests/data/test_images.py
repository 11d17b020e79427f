"""Image reading: every bad-file kind and every conversion, on files generated in tmp_path."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from detseg.data.images import apply_orientation, decode_image, read_image
from detseg.errors import InputError


def _rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth gradient: JPEG keeps it within a few levels."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], 2).astype(
        np.uint8
    )


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


# ---- conversions ------------------------------------------------------------------------------
def test_png_rgb_exact(tmp_path):
    a = _rgb()
    out = read_image(_save(Image.fromarray(a), tmp_path / "a.png", "PNG"))
    assert out.dtype == np.uint8 and out.shape == a.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)


def test_jpeg_matches_pillow_decode(tmp_path):
    p = _save(Image.fromarray(_rgb(60, 80)), tmp_path / "a.jpg", "JPEG", quality=90)
    np.testing.assert_array_equal(read_image(p), np.asarray(Image.open(p).convert("RGB")))


@pytest.mark.parametrize(
    "fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("TIFF", "tif")]
)
def test_greyscale_becomes_three_equal_channels(tmp_path, fmt, ext):
    g = _smooth()[:, :, 0]
    out = read_image(_save(Image.fromarray(g, "L"), tmp_path / f"g.{ext}", fmt))
    assert out.shape == (*g.shape, 3)
    assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
    assert np.abs(out[:, :, 0].astype(int) - g).max() <= (0 if fmt != "JPEG" else 3)


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., :3] = (200, 10, 50)
    a[0, :, 3] = 255  # opaque row keeps its colour
    a[1, :, 3] = 0  # transparent row becomes white
    a[2, :, 3] = 128  # half: round((c * 128 + 255 * 127) / 255)
    out = read_image(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png", "PNG"))
    np.testing.assert_array_equal(out[0, 0], (200, 10, 50))
    np.testing.assert_array_equal(out[1, 0], (255, 255, 255))
    np.testing.assert_array_equal(
        out[2, 0], [round((c * 128 + 255 * 127) / 255) for c in (200, 10, 50)]
    )


def test_greyscale_alpha_composited_on_white(tmp_path):
    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 0] = 40
    la[0, :, 1] = 255
    out = read_image(_save(Image.fromarray(la, "LA"), tmp_path / "la.png", "PNG"))
    np.testing.assert_array_equal(out[0, 0], (40, 40, 40))
    np.testing.assert_array_equal(out[1, 0], (255, 255, 255))


def test_palette_and_palette_with_transparency(tmp_path):
    p = Image.new("P", (3, 2))
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    p.putdata([0, 1, 2, 0, 1, 2])
    out = read_image(_save(p, tmp_path / "p.png", "PNG"))
    np.testing.assert_array_equal(out[0], [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    p.info["transparency"] = 1  # palette entry 1 is transparent -> white
    out = read_image(_save(p, tmp_path / "pt.png", "PNG", transparency=1))
    np.testing.assert_array_equal(out[0], [(255, 0, 0), (255, 255, 255), (0, 0, 255)])
    gif = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)).quantize(2)
    out = read_image(_save(gif, tmp_path / "p.gif", "GIF"))
    np.testing.assert_array_equal(out[0, 0], (255, 0, 0))


def test_16bit_grey_png_scaled_not_truncated(tmp_path):
    values = np.array([[0, 257, 32767, 32896], [40000, 65000, 65534, 65535]], np.uint16)
    path = tmp_path / "g16.png"
    cv2.imwrite(str(path), values)
    out = read_image(path)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert (out[:, :, 2] == out[:, :, 0]).all()


def test_16bit_rgb_and_rgba_png(tmp_path):
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1])  # cv2 writes BGR
    expected = np.round(rgb16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "c16.png"), expected)

    rgba16 = np.concatenate([rgb16, np.full((5, 7, 1), 65535, np.uint16)], axis=2)
    rgba16[0, 0, 3] = 0
    cv2.imwrite(str(tmp_path / "a16.png"), rgba16[:, :, [2, 1, 0, 3]])
    out = read_image(tmp_path / "a16.png")
    np.testing.assert_array_equal(out[1:], expected[1:])
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))


def test_cmyk_jpeg_converted_to_rgb(tmp_path):
    rgb = _smooth()
    cmyk = Image.fromarray(rgb).convert("CMYK")  # naive: C = 255 - R, ..., K = 0
    p = _save(cmyk, tmp_path / "cmyk.jpg", "JPEG", quality=95)
    assert Image.open(p).mode == "CMYK"
    out = read_image(p)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 3


def test_bilevel_and_float_modes(tmp_path):
    b = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    out = read_image(_save(b, tmp_path / "b.png", "PNG"))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 255], [255, 0]])
    f = Image.fromarray(np.array([[0.0, 100.4], [300.0, -5.0]], np.float32), "F")
    out = read_image(_save(f, tmp_path / "f.tif", "TIFF"))
    np.testing.assert_array_equal(out[:, :, 1], [[0, 100], [255, 0]])


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_matches_pillow(tmp_path, orientation, fmt):
    im = Image.fromarray(_smooth(30, 50))
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = _save(
        im,
        tmp_path / f"o{orientation}.{fmt.lower()}",
        fmt,
        exif=exif.tobytes(),
        **({"quality": 95} if fmt == "JPEG" else {}),
    )
    out = read_image(p)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_equals_pillow_transpose(orientation):
    a = _rgb(3, 5, seed=orientation)
    im = Image.fromarray(a)
    im.getexif()[0x0112] = orientation
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(buf)))
    np.testing.assert_array_equal(apply_orientation(a, orientation), expected)


def test_decode_image_from_bytes():
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, "PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue(), "upload.png"), _rgb())


# ---- bad files ----------------------------------------------------------------------------------
def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, "JPEG")
    return buf.getvalue()


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with almost no data (never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


BAD_FILES = [
    ("empty", lambda: b"", "empty file"),
    ("text", lambda: b"hello, I am not an image\n" * 10, "not an image"),
    ("truncated_jpeg", lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated"),
    ("truncated_jpeg_no_eoi", lambda: _jpeg_bytes()[:-2], "truncated"),
    ("truncated_png", lambda: _png_bytes()[: len(_png_bytes()) // 2], "truncated"),
    ("header_only_png", lambda: _png_bytes()[:40], "cannot"),
    ("bomb", lambda: _bomb_png(12_000, 12_000), "144,000,000 pixels is above the limit"),
    ("huge_bomb", lambda: _bomb_png(60_000, 60_000), "too large"),
]


@pytest.mark.parametrize("kind,make,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_raise_input_error_naming_the_file(tmp_path, kind, make, message):
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(make())
    with pytest.raises(InputError, match=str(path).replace(".", r"\.")) as info:
        read_image(path)
    assert any(m in str(info.value) for m in message.split("|")), str(info.value)


def test_pixel_limit_is_configurable(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_rgb(10, 10)).save(path)
    with pytest.raises(InputError, match="100 pixels is above the limit of 99"):
        read_image(path, max_pixels=99)
    assert read_image(path, max_pixels=100).shape == (10, 10, 3)


def test_missing_directory_and_unreadable(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(InputError, match="directory"):
        read_image(tmp_path)
    p = tmp_path / "secret.png"
    p.write_bytes(_png_bytes())
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):  # running as root: permissions do not apply
            pytest.skip("running as root, file permissions are not enforced")
        with pytest.raises(InputError, match="secret.png: cannot read"):
            read_image(p)
    finally:
        p.chmod(0o600)


def test_permission_error_is_an_input_error(tmp_path, monkeypatch):
    p = tmp_path / "locked.png"
    p.write_bytes(_png_bytes())

    def deny(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(
        InputError, match="locked.png: cannot read image file \\(Permission denied\\)"
    ):
        read_image(p)


def test_32bit_tiff_with_8bit_values_is_not_darkened(tmp_path):
    # A 32-bit integer TIFF of 0..255 values (common from scientific tools) was scaled as if
    # 16-bit and came out near black; its values are its 8-bit levels.
    values = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.int32)
    path = tmp_path / "i32.tif"
    Image.fromarray(values, mode="I").save(path)
    assert Image.open(path).mode == "I"
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out[:, :, 0], values.astype(np.uint8))


def test_32bit_tiff_with_16bit_values_is_scaled_and_logged(tmp_path, caplog):
    values = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.int32)  # up to 64,491
    path = tmp_path / "i32w.tif"
    Image.fromarray(values, mode="I").save(path)
    with caplog.at_level("WARNING", logger="detseg.data.images"):
        out = read_image(path)
    expected = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert any("i32w.tif" in r.getMessage() and "16-bit" in r.getMessage() for r in caplog.records)


def test_pixel_limit_refusal_says_what_the_user_can_do(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    monkeypatch.setenv("DETSEG_MAX_PIXELS", "100")
    with pytest.raises(InputError, match=r"set DETSEG_MAX_PIXELS=600 to allow it"):
        read_image(path)
    monkeypatch.setenv("DETSEG_MAX_PIXELS", "600")
    assert read_image(path).shape == (20, 30, 3)
    monkeypatch.setenv("DETSEG_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match="DETSEG_MAX_PIXELS='lots': expected a whole number"):
        read_image(path)


def test_broken_symbolic_link_is_named_as_such(tmp_path):
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "never-there.jpg")
    with pytest.raises(InputError, match="gone.jpg: broken symbolic link"):
        read_image(link)
