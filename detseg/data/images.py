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
  byte, which darkens the image by up to one level). 32-bit integer images (TIFF) have no
  agreed white level: values that fit in 8 bits are taken as they are, values that fit in 16
  bits are scaled as 16-bit, larger ones by their maximum; the last two are logged as warnings.
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

import errno
import io
import logging
import os
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from detseg.errors import InputError

logger = logging.getLogger(__name__)

# 100 megapixels: a 10,000 x 10,000 photo passes; a 40,000 x 40,000 bomb (1.6 Gpx, 4.8 GB
# decoded) is refused. Pillow's warning above its own limit is silenced in favour of this
# check; Pillow's hard error (above 2 x PIL.Image.MAX_IMAGE_PIXELS) still applies first.
# DETSEG_MAX_PIXELS raises (or lowers) the limit for every command, since no command should
# need an option of its own for it.
MAX_PIXELS_ENV = "DETSEG_MAX_PIXELS"
BUILTIN_MAX_PIXELS = 100_000_000


def _max_pixels_from_env() -> int:
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return BUILTIN_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise InputError(
            f"{MAX_PIXELS_ENV}={text!r}: expected a whole number of pixels, e.g. 400000000"
        ) from None
    if value < 1:
        raise InputError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels")
    return value


DEFAULT_MAX_PIXELS = BUILTIN_MAX_PIXELS

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


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB with EXIF orientation applied.

    max_pixels: largest width x height accepted; None: ``$DETSEG_MAX_PIXELS`` or 100 million.

    Raises:
        InputError: the file is missing, unreadable, empty, truncated, not an image, or larger
            than ``max_pixels`` (message names the file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(
                f"{path}: broken symbolic link (points to {os.readlink(path)}, which does not exist)"
            ) from None
        raise InputError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: expected an image file, found a directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: symbolic link loop (the link leads back to itself)") from None
        raise InputError(f"{path}: cannot read image file ({exc.strerror or exc})") from None
    return decode_image(data, str(path), max_pixels=max_pixels)


def decode_image(data: bytes, name: str, *, max_pixels: int | None = None,
                 limit_hint: str | None = None) -> np.ndarray:
    """Decode the bytes of an image file (``name`` is used in error messages only).

    max_pixels: as for `read_image`; limit_hint: what the refusal message tells the user to do
    when ``max_pixels`` is given (default: pass a larger ``max_pixels``).

    Returns:
        (H, W, 3) uint8 RGB array, C-contiguous, EXIF orientation applied.

    Raises:
        InputError: empty, truncated, not an image, or more than ``max_pixels`` pixels.
    """
    if len(data) == 0:
        raise InputError(f"{name}: empty file (0 bytes), expected an image")
    if max_pixels is None:
        max_pixels = _max_pixels_from_env()
        limit_hint = f"if you trust the file, set {MAX_PIXELS_ENV}={{pixels}} to allow it"
    elif limit_hint is None:
        limit_hint = "pass a larger max_pixels to allow it"
    im = _open_header(data, name, max_pixels, limit_hint)
    orientation = _orientation(im)
    try:
        arr = _decode_fast(data, im)
        if arr is None:
            arr = _decode_pillow(data, im, name)
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
def _open_header(data: bytes, name: str, max_pixels: int, limit_hint: str) -> Image.Image:
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
            f"{max_pixels:,} (a decompression bomb?); {limit_hint.replace('{pixels}', str(w * h))}"
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


def _declared_bits(im: Image.Image) -> int:
    """Bits per sample the file declares for a Pillow "I" image (16 for PNG, TIFF's tag 258)."""
    if im.format == "PNG":
        return 16
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        bits = tags.get(258)
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        if isinstance(bits, int):
            return bits
    return 32


def _int_to_uint8(arr: np.ndarray, bits: int, name: str) -> np.ndarray:
    """A greyscale integer image (Pillow mode "I" or "I;16") -> uint8.

    16-bit data is scaled by 255/65535. Wider data has no agreed white level, so its values
    decide: within 0..255 they are used as they are (a 32-bit TIFF of 8-bit values, common
    from scientific tools), within 0..65535 they are scaled as 16-bit, above that by their
    maximum; the last two cases are logged, since the brightness is then a guess.
    """
    if bits <= 16:
        # "I" from a 16-bit greyscale file holds 0..65535; anything outside is clipped.
        return _to_uint8_16bit(np.clip(arr, 0, 65535).astype(np.uint16))
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo >= 0 and hi <= 255:
        return arr.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        logger.warning("%s: %d-bit integer image with values up to %d: scaled as 16-bit",
                       name, bits, hi)
        return _to_uint8_16bit(arr.astype(np.uint16))
    logger.warning("%s: %d-bit integer image with values %d..%d: negative values clipped to 0, "
                   "scaled so that %d is white", name, bits, lo, hi, max(hi, 1))
    scaled = np.clip(arr.astype(np.float64), 0, None) * (255.0 / max(hi, 1))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _decode_pillow(data: bytes, im: Image.Image, name: str = "image") -> np.ndarray:
    im.load()  # raises on truncated data
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        bits = 16 if mode.startswith("I;16") else _declared_bits(im)
        arr = _int_to_uint8(np.asarray(im), bits, name)
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
