"""Upload limits of the web demo: file size and pixel count, with messages a user can act on.

The byte limit is enforced twice: by Gradio's upload route (``launch(max_file_size=...)``, so an
oversized upload never reaches the disk in full) and again here, because API callers can hand
the app a file that is already on the server. The pixel limit protects memory: a small PNG can
decode to gigabytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detseg.errors import InputError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_size(text: str | int) -> int:
    """Bytes from ``"20MB"``, ``"512kb"``, ``"1.5g"`` or a plain integer (decimal units)."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise InputError(
                f"upload size limit: expected a size such as 20MB or 512KB, found {text!r}"
            )
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "")[:1].lower()])
    if value <= 0:
        raise InputError(f"upload size limit: expected a positive size, found {text!r}")
    return value


def human_size(n: int) -> str:
    """``20000000`` -> ``"20 MB"`` (decimal units, as `parse_size` reads them)."""
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Limits:
    """What one upload may be.

    Attributes:
        max_upload_bytes: largest accepted file, in bytes.
        max_pixels: largest accepted image, width * height after decoding.
    """

    max_upload_bytes: int = 20 * 10**6
    max_pixels: int = 25_000_000

    def describe(self) -> str:
        """``"20 MB and 25 megapixels"`` (for the page)."""
        return f"{human_size(self.max_upload_bytes)} and {self.max_pixels / 1e6:.3g} megapixels"

    def __post_init__(self) -> None:
        if self.max_upload_bytes <= 0 or self.max_pixels <= 0:
            raise InputError(
                f"Limits: expected positive limits, found max_upload_bytes={self.max_upload_bytes}, "
                f"max_pixels={self.max_pixels}"
            )


def read_upload(path: str | Path, name: str, limits: Limits) -> np.ndarray:
    """Decode an uploaded file into an (H, W, 3) uint8 RGB array, enforcing ``limits``.

    ``name`` is the file name the user gave (shown in messages). Raises `InputError` with a
    message fit for the UI for a missing, oversized, non-image, corrupt or too-large image.
    """
    from detseg.data.images import decode_image

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{name}: the uploaded file could not be read ({exc.strerror})") from None
    if size > limits.max_upload_bytes:
        raise InputError(
            f"{name}: file is {human_size(size)}, the limit is "
            f"{human_size(limits.max_upload_bytes)}; upload a smaller image"
        )
    if size == 0:
        raise InputError(f"{name}: the file is empty; expected an image (JPEG, PNG, ...)")
    data = path.read_bytes()
    return decode_image(data, name, max_pixels=limits.max_pixels,
                        limit_hint="the server's limit is set by `detseg serve --max-pixels`")
