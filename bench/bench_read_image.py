"""Image decoding speed: `read_image` (OpenCV fast path for plain JPEG/PNG) against Pillow alone.

Same files, same process, interleaved rounds; prints ms per image of each and the ratio
(Pillow / detseg: above 1 means the fast path pays). Pixels are checked identical.

    .venv/bin/python bench/bench_read_image.py [FOLDER] [--repeat 5]

FOLDER defaults to ../shared/assets/coco-val-11/images, else the images in the ultralytics
package.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from detseg.data.images import decode_image


def pillow_only(data: bytes) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    default = root.parent / "shared" / "assets" / "coco-val-11" / "images"
    if not default.is_dir():
        import ultralytics

        default = Path(ultralytics.__file__).parent / "assets"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=default)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    files = sorted(
        p for p in args.folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    blobs = [p.read_bytes() for p in files]
    for b, p in zip(blobs, files, strict=True):
        if not np.array_equal(decode_image(b, p.name), pillow_only(b)):
            print(f"note: {p.name}: pixels differ between the two decoders")
    times: dict[str, list[float]] = {"detseg": [], "pillow": []}
    for _ in range(args.repeat):
        for name, fn in (("detseg", lambda b: decode_image(b, "x")), ("pillow", pillow_only)):
            t = time.perf_counter()
            for b in blobs:
                fn(b)
            times[name].append((time.perf_counter() - t) / len(blobs) * 1000)
    best = {k: min(v) for k, v in times.items()}
    ratio = statistics.median(p / d for p, d in zip(times["pillow"], times["detseg"], strict=True))
    print(f"{len(files)} images from {args.folder}")
    print(
        f"detseg read_image: {best['detseg']:.2f} ms/image   pillow only: {best['pillow']:.2f} ms/image"
    )
    print(f"ratio pillow/detseg (median of rounds): {ratio:.2f}x")


if __name__ == "__main__":
    main()
