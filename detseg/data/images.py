"""Reading real-world image files into (H, W, 3) uint8 RGB arrays.

Every image that reaches the pipeline goes through `read_image` (a path) or `decode_image`
(bytes, e.g. an upload). What they guarantee:

- The result is a C-contiguous (H, W, 3) uint8 array in RGB order.
- EXIF orientation is applied, so the array is the image as a viewer shows it.
- Greyscale (1, L, I;16) is repeated into three channels.
- Transparency (RGBA, LA, PA, palette or greyscale with a transparent colour) is composited on
  a **white** background: a detector then sees what a viewer shows on a white page, and a
  transparent region never turns into black blobs.
- 16-bit PNGs are scaled to 8 bits by ``round(v * 255 / 65535)`` (not truncated to the high
  byte, which darkens the image by up to one level).
- CMYK JPEGs (including Adobe's inverted CMYK) are converted to RGB.
- An image whose header announces more than ``max_pixels`` pixels is refused **before** any
  pixel is decoded (a decompression bomb costs nothing).
- Empty, truncated, non-image and unreadable files raise `InputError` naming the file.

Speed: plain 8-bit JPEG and PNG files (the bulk of any dataset) are decoded by OpenCV's
``imdecode`` (on the 11 COCO val JPEGs: 2.3 ms per image against 2.8 ms for Pillow's decode
plus array conversion, 1.2x, identical pixels; ``bench/bench_read_image.py``); every other kind
goes through Pillow. The header is always parsed by Pillow, which reads only the
first bytes, so the size check and the EXIF orientation cost nothing measurable.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from detseg.errors import InputError

# 100 megapixels: a 10,000 x 10,000 photo passes; a 40,000 x 40,000 bomb (1.6 Gpx, 4.8 GB
# decoded) is refused. Pillow's warning above its own limit is silenced in favour of this
# check; Pillow's hard error (above 2 x PIL.Image.MAX_IMAGE_PIXELS) still applies first.
DEFAULT_MAX_PIXELS = 100_000_000

_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND\xaeB`\x82"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
_WHITE = 255

# Errors Pillow and its plugins raise on malformed data (it has no single base class).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    struct.error,
    IndexError,
    EOFError,
    KeyError,
    cv2.error,
)


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB with EXIF orientation applied.

    Raises:
        InputError: the file is missing, unreadable, empty, truncated, not an image, or larger
            than ``max_pixels`` (message names the file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: expected an image file, found a directory") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read image file ({exc.strerror or exc})") from None
    return decode_image(data, str(path), max_pixels=max_pixels)


def decode_image(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the bytes of an image file (``name`` is used in error messages only).

    Returns:
        (H, W, 3) uint8 RGB array, C-contiguous, EXIF orientation applied.

    Raises:
        InputError: empty, truncated, not an image, or more than ``max_pixels`` pixels.
    """
    if len(data) == 0:
        raise InputError(f"{name}: empty file (0 bytes), expected an image")
    im = _open_header(data, name, max_pixels)
    orientation = _orientation(im)
    try:
        arr = _decode_fast(data, im)
        if arr is None:
            arr = _decode_pillow(data, im)
    except InputError:
        raise
    except _DECODE_ERRORS as exc:
        raise InputError(f"{name}: cannot decode {im.format or 'image'} data ({exc})") from None
    return np.ascontiguousarray(apply_orientation(arr, orientation))


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (1-8) to an (H, W, ...) array; same as PIL's exif_transpose."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return image.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(image, -1)
    if orientation == 7:
        return image[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(image, 1)
    return image


# ---- internals ------------------------------------------------------------------------------
def _open_header(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Parse the header only (Pillow is lazy) and enforce the pixel limit."""
    try:
        with warnings.catch_warnings():
            # Our own limit replaces Pillow's: its warning would be noise, its error comes
            # at a different threshold. Both are handled below with one clear message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Pillow's hard limit (2 x Image.MAX_IMAGE_PIXELS) applies before ours; a max_pixels
        # above it also needs PIL.Image.MAX_IMAGE_PIXELS raised.
        raise InputError(
            f"{name}: refused, image too large, above Pillow's limit ({exc})"
        ) from None
    except (UnidentifiedImageError, ImportError):
        # ImportError: ultralytics, once imported, patches Image.open to load a HEIF plugin on
        # unidentified files, and fails with ImportError where that plugin is absent.
        raise InputError(
            f"{name}: not an image file, or a format Pillow cannot read (first bytes {data[:8]!r})"
        ) from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"{name}: cannot read image header ({exc})") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise InputError(f"{name}: image header gives an empty size {w}x{h}")
    if w * h > max_pixels:
        raise InputError(
            f"{name}: refused, {w}x{h} = {w * h:,} pixels is above the limit of "
            f"{max_pixels:,} (a decompression bomb?); pass a larger max_pixels to allow it"
        )
    return im


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:  # a broken EXIF block must not lose an otherwise good image
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _png_bit_depth(data: bytes) -> int:
    # IHDR is always the first chunk: signature(8) length(4) "IHDR"(4) width(4) height(4) depth(1)
    return data[24] if data.startswith(_PNG_SIGNATURE) and len(data) > 25 else 8


def _has_trailer(data: bytes, trailer: bytes) -> bool:
    """The file ends with its end marker (NUL padding allowed).

    Files with other bytes after the marker (camera trailers) go to Pillow: slower, correct.
    Searching further back could find the marker of an embedded EXIF thumbnail in a truncated
    small file and hand it to a decoder that fills the missing part with grey.
    """
    return data[-64:].rstrip(b"\0").endswith(trailer)


def _decode_fast(data: bytes, im: Image.Image) -> np.ndarray | None:
    """OpenCV for complete plain JPEG/PNG files and 16-bit PNGs; None means 'use Pillow'.

    A truncated file never takes this path (the end marker is checked first), so libjpeg's
    silent grey fill and libpng's stderr messages never happen; Pillow then reports it.
    """
    buf = np.frombuffer(data, np.uint8)
    if im.format == "JPEG" and im.mode in ("RGB", "L") and _has_trailer(data, _JPEG_EOI):
        arr = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        return None if arr is None else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if im.format != "PNG" or not _has_trailer(data, _PNG_IEND):
        return None
    if _png_bit_depth(data) == 16:
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        return None if arr is None else _from_opencv_16bit(arr)
    if im.mode in ("RGB", "L") and "transparency" not in im.info:
        arr = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        return None if arr is None else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return None


def _to_uint8_16bit(arr: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by round(v * 255 / 65535) (v / 257, exact for 0 and 65535)."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _from_opencv_16bit(arr: np.ndarray) -> np.ndarray:
    """OpenCV IMREAD_UNCHANGED output (grey, BGR or BGRA; uint16 or uint8) -> RGB uint8."""
    a = _to_uint8_16bit(arr) if arr.dtype == np.uint16 else arr.astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 4:
        rgb = cv2.cvtColor(a[:, :, :3], cv2.COLOR_BGR2RGB)
        return _composite_white(rgb, a[:, :, 3])
    if a.shape[2] == 2:  # grey + alpha
        grey = np.repeat(a[:, :, :1], 3, axis=2)
        return _composite_white(grey, a[:, :, 1])
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB)


def _composite_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-composite (H, W, 3) uint8 over white, rounding to nearest."""
    a = alpha.astype(np.uint16)[:, :, None]
    out = (rgb.astype(np.uint16) * a + _WHITE * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _decode_pillow(data: bytes, im: Image.Image) -> np.ndarray:
    im.load()  # raises on truncated data
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im)
        # "I" from a 16-bit greyscale file holds 0..65535; anything outside is clipped.
        arr = _to_uint8_16bit(np.clip(arr, 0, 65535).astype(np.uint16))
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.clip(np.asarray(im), 0, 255).round().astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("LA")
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"))
        return _composite_white(rgba[:, :, :3], rgba[:, :, 3])
    if im.mode == "L":
        return np.repeat(np.asarray(im)[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))
