"""A deterministic synthetic "shapes" instance-segmentation dataset in COCO format.

``generate_shapes(out, n_images, seed)`` writes ``out/instances.json`` (COCO instances with
polygon masks, xywh boxes, pixel areas, ``iscrowd`` 0) and ``out/images/NNNNNN.jpg``.
``write_yolo_view(out)`` adds the Ultralytics view beside it: ``out/labels/NNNNNN.txt``
(one line per instance: class index then the normalised polygon) and ``out/data.yaml``.

What is drawn, per image (each from its own random stream ``(seed, image index)``, so one
image never depends on another and the same seed gives byte-identical files):

- a textured background: gradients, stripes, checkers, smooth blotches, flat noise;
- distractor clutter that is not an object: thin lines, arcs, dots, scribbles, text;
- 1-10 shapes from ``CLASSES`` at sizes from about 6 to 110 px radius, random colours
  (kept apart from the background under them), solid, striped or shaded fills;
- overlaps: later shapes cover earlier ones, and the masks are the *visible* parts only.
  A placement is rejected when it would leave an earlier shape under 35 % visible, under
  30 px, or with a hole (COCO polygons cannot hold holes);
- sensor effects: an optional slight blur, then Gaussian noise.

Masks and pixels come from the same integer label map, so the annotation is exact at the
pixel level; polygons are the outlines (on pixel edges) of the visible pixels, so that
pycocotools rasterises them back to exactly those pixels (an occluded shape may have several
parts, hence several polygons).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detseg.errors import InputError

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "ellipse")
GENERATOR_VERSION = 2  # 2: polygons on pixel edges (1: through pixel centres); same images
_RNG_VERSION = 1  # part of every image's seed: changing it changes every image
_OUTLINE_SCALE = 4
MIN_VISIBLE_FRACTION = 0.35
MIN_VISIBLE_PIXELS = 30
_MAX_TRIES = 12
_IMAGE_FORMATS = {"jpg": [int(cv2.IMWRITE_JPEG_QUALITY), 92], "png": [int(cv2.IMWRITE_PNG_COMPRESSION), 6]}


@dataclass(frozen=True)
class ShapesSpec:
    """What to generate: ``n_images`` square images of ``size`` px from ``seed``."""

    n_images: int
    seed: int
    size: int = 320
    image_format: str = "jpg"

    def check(self) -> None:
        """Raise `InputError` naming the argument that is out of range."""
        if self.n_images < 1:
            raise InputError(f"--images: expected a count >= 1, found {self.n_images}")
        if not 64 <= self.size <= 4096:
            raise InputError(f"--size: expected 64..4096 pixels, found {self.size}")
        if self.seed < 0:
            raise InputError(f"--seed: expected an integer >= 0, found {self.seed}")
        if self.image_format not in _IMAGE_FORMATS:
            raise InputError(
                f"--format: expected one of {sorted(_IMAGE_FORMATS)}, found {self.image_format!r}"
            )


# ----------------------------------------------------------------------------- geometry


def _regular_polygon(n: int, radius: float, phase: float) -> np.ndarray:
    """(n, 2) float vertices of a regular n-gon centred on the origin."""
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(t), np.sin(t)], 1) * radius


def _outline(cls: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """(K, 2) float outline of one shape of class ``cls`` centred on the origin, rotated."""
    angle = rng.uniform(0, 2 * np.pi)
    if cls == "circle":
        pts = _regular_polygon(max(24, int(radius * 1.5)), radius, 0.0)
    elif cls == "ellipse":
        n = max(24, int(radius * 1.5))
        t = np.arange(n) * 2 * np.pi / n
        pts = np.stack([np.cos(t) * radius, np.sin(t) * radius * rng.uniform(0.4, 0.65)], 1)
    elif cls == "square":
        pts = _regular_polygon(4, radius, np.pi / 4)
    elif cls == "triangle":
        pts = _regular_polygon(3, radius, 0.0)
        pts = pts + rng.uniform(-0.12, 0.12, pts.shape) * radius
    elif cls == "hexagon":
        pts = _regular_polygon(6, radius, 0.0)
    elif cls == "star":
        outer = _regular_polygon(5, radius, 0.0)
        inner = _regular_polygon(5, radius * rng.uniform(0.38, 0.5), np.pi / 5)
        pts = np.stack([outer, inner], 1).reshape(10, 2)
    else:  # pragma: no cover - CLASSES is closed
        raise ValueError(cls)
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


# ----------------------------------------------------------------------------- painting


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A (3,) float BGR colour, from a random hue, saturation and value."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(40, 256), rng.integers(40, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32 BGR textured background in 0..255."""
    a, b = _random_colour(rng), _random_colour(rng)
    kind = int(rng.integers(0, 5))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # linear gradient
        t = np.clip(xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1) + rng.uniform(0, 1), 0, 1)
    elif kind == 1:  # stripes
        period = rng.uniform(0.03, 0.15)
        theta = rng.uniform(0, np.pi)
        t = (np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period) > 0) * 1.0
        b = a * 0.7 + b * 0.3
    elif kind == 2:  # checkerboard
        cells = int(rng.integers(4, 16))
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
        b = a * 0.6 + b * 0.4
    elif kind == 3:  # smooth blotches
        low = rng.random((int(rng.integers(3, 9)),) * 2).astype(np.float32)
        t = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    else:  # flat
        t = np.zeros((size, size), np.float32)
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    grain = rng.normal(0, rng.uniform(2, 14), (size // 4, size // 4, 3)).astype(np.float32)
    img += cv2.resize(grain, (size, size), interpolation=cv2.INTER_LINEAR)
    return img.astype(np.float32)


def _clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    """Draw distractor marks in place on ``img`` (S, S, 3) uint8: lines, arcs, dots, scribbles, text."""
    size = img.shape[0]
    for _ in range(int(rng.integers(0, 14))):
        colour = tuple(float(v) for v in _random_colour(rng))
        kind = int(rng.integers(0, 5))
        p = rng.integers(0, size, 2)
        if kind == 0:
            q = rng.integers(0, size, 2)
            cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, int(rng.integers(1, 3)))
        elif kind == 1:
            axes = (int(rng.integers(5, size // 3)), int(rng.integers(5, size // 3)))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, (int(p[0]), int(p[1])), axes, float(rng.uniform(0, 180)), start,
                        start + float(rng.uniform(30, 200)), colour, int(rng.integers(1, 3)))
        elif kind == 2:
            for q in rng.integers(0, size, (int(rng.integers(3, 20)), 2)):
                cv2.circle(img, (int(q[0]), int(q[1])), int(rng.integers(1, 3)), colour, -1)
        elif kind == 3:
            steps = rng.normal(0, size / 40, (int(rng.integers(5, 25)), 2)).cumsum(0) + p
            cv2.polylines(img, [steps.astype(np.int32)], False, colour, 1)
        else:
            letters = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(2, 7))))
            cv2.putText(img, letters, (int(p[0]), int(p[1])), cv2.FONT_HERSHEY_SIMPLEX,
                        float(rng.uniform(0.3, 0.9)), colour, 1)


def _fill(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Paint ``mask`` (H, W bool) of ``img`` in place: solid, striped or shaded."""
    ys, xs = np.nonzero(mask)
    kind = int(rng.integers(0, 10))
    if kind < 6:
        img[ys, xs] = colour
        return
    other = np.clip(colour * rng.uniform(0.55, 0.8) + rng.uniform(-20, 20, 3), 0, 255)
    if kind < 8:
        theta, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
        t = (np.sin((xs * np.cos(theta) + ys * np.sin(theta)) * 2 * np.pi / period) > 0)[:, None]
    else:
        span = max(1.0, float(np.ptp(xs) + np.ptp(ys)))
        t = ((xs - xs.min() + ys - ys.min()) / span)[:, None]
    img[ys, xs] = colour[None] * (1 - t) + other[None] * t


# ----------------------------------------------------------------------------- one image


def _has_hole(mask: np.ndarray) -> bool:
    """True when the visible region ``mask`` (H, W uint8) encloses background."""
    _, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _place(labels: np.ndarray, areas: dict[int, int], new: np.ndarray) -> bool:
    """Whether drawing ``new`` (H, W bool) over the label map keeps every earlier shape usable."""
    covered = np.bincount(labels[new], minlength=len(areas) + 1)
    for inst, full in areas.items():
        if covered[inst] == 0:
            continue
        visible = int((labels == inst).sum()) - int(covered[inst])
        if visible < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * full):
            return False
        if _has_hole(((labels == inst) & ~new).astype(np.uint8)):
            return False
    return int(new.sum()) >= MIN_VISIBLE_PIXELS


def render_image(spec: ShapesSpec, index: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Render image ``index`` of the dataset.

    Returns ``(image, labels, classes)``: image (S, S, 3) uint8 BGR; labels (S, S) int32 where
    0 is background and k >= 1 is instance k (the visible pixels of its shape); classes, the
    class index into `CLASSES` of instance k at position k - 1.
    """
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, index, _RNG_VERSION]))
    size = spec.size
    img = np.clip(_background(size, rng), 0, 255).astype(np.uint8)
    _clutter(img, rng)  # OpenCV's text drawing needs uint8
    img = img.astype(np.float32)
    labels = np.zeros((size, size), np.int32)
    areas: dict[int, int] = {}
    classes: list[int] = []
    scale = size / 320
    for _ in range(int(rng.integers(1, 11))):
        cls = int(rng.integers(0, len(CLASSES)))
        radius = float(np.exp(rng.uniform(np.log(6), np.log(110)))) * scale
        canvas = np.zeros((size, size), np.uint8)
        for _try in range(_MAX_TRIES):
            centre = rng.uniform(-0.1 * radius, size + 0.1 * radius, 2)
            pts = _outline(CLASSES[cls], radius, rng) + centre
            canvas[:] = 0
            cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
            new = canvas.astype(bool)
            if _place(labels, areas, new):
                break
        else:
            continue
        colour = _random_colour(rng)
        under = img[new].mean(0)
        for _try in range(6):  # keep the shape visible against what it covers
            if np.abs(colour - under).sum() >= 90:
                break
            colour = _random_colour(rng)
        inst = len(areas) + 1
        labels[new] = inst
        areas[inst] = int(new.sum())
        classes.append(cls)
        _fill(img, new, colour, rng)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), float(rng.uniform(0.3, 0.9)))
    img += rng.normal(0, rng.uniform(0, 10), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), labels, classes


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` outlining the pixels of ``mask`` (H, W).

    Coordinates are continuous (pixel (x, y) covers [x, x+1] x [y, y+1], COCO's convention),
    so the outline follows pixel *edges*: pycocotools rasterises these polygons back to
    exactly ``mask`` (tested), where contours through pixel centres would shave half a pixel
    off every side (IoU 0.6 on the smallest shapes). Traced on a 4x nearest upsampling, then
    simplified by 3/8 px. One polygon per outer contour; parts are sorted top-left first.
    """
    k = _OUTLINE_SCALE
    up = cv2.resize(mask.astype(np.uint8), None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, 1.5, True).reshape(-1, 2)
        if len(c) >= 3:
            polys.append((c + 0.5) / k)
    polys.sort(key=lambda p: (float(p[:, 1].min()), float(p[:, 0].min())))
    return [[float(v) for v in p.reshape(-1)] for p in polys]


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of COCO polygons: the pixels whose centre lies inside.

    The numpy + OpenCV counterpart of pycocotools' ``annToMask`` for the polygons written
    here (filled at 4x with sub-pixel precision, then the sub-pixels around each centre vote).
    """
    k = _OUTLINE_SCALE
    canvas = np.zeros((height * k, width * k), np.uint8)
    pts = [np.round((np.asarray(p, np.float64).reshape(-1, 2) * k - 0.5) * 16).astype(np.int32)
           for p in polygons]
    cv2.fillPoly(canvas, pts, 1, lineType=cv2.LINE_8, shift=4)
    # The 2 x 2 sub-pixels around each pixel centre decide (a majority of them).
    centre = canvas.reshape(height, k, width, k)[:, 1:3, :, 1:3]
    return centre.sum(axis=(1, 3)) >= 2


def _annotations(labels: np.ndarray, classes: list[int], image_id: int, next_id: int) -> list[dict]:
    """COCO annotation dicts for the instances of one label map (H, W int32)."""
    out = []
    for k, cls in enumerate(classes, start=1):
        mask = labels == k
        polys = mask_polygons(mask)
        if not polys:
            continue
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        out.append({
            "id": next_id + len(out),
            "image_id": image_id,
            "category_id": cls + 1,
            "segmentation": polys,
            "area": float(mask.sum()),
            "bbox": [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)],
            "iscrowd": 0,
        })
    return out


def _make_one(job: tuple[ShapesSpec, int, Path]) -> list[dict]:
    """Render, encode and write image ``index``; returns its annotations (ids from 0)."""
    spec, index, images_dir = job
    img, labels, classes = render_image(spec, index)
    name = f"{index:06d}.{spec.image_format}"
    ok, buf = cv2.imencode(f".{spec.image_format}", img, _IMAGE_FORMATS[spec.image_format])
    if not ok:  # pragma: no cover - cv2 always encodes uint8 BGR
        raise InputError(f"{images_dir / name}: OpenCV could not encode the image")
    (images_dir / name).write_bytes(buf.tobytes())
    return _annotations(labels, classes, index + 1, 0)


def generate_shapes(
    out_dir: str | Path,
    n_images: int,
    seed: int,
    size: int = 320,
    image_format: str = "jpg",
    workers: int = 1,
) -> Path:
    """Write the dataset to ``out_dir``; returns the path of ``instances.json``.

    Category ids are 1..len(CLASSES) in `CLASSES` order; image ids are 1..n_images; the same
    arguments always give byte-identical files, whatever ``workers`` (processes) is.
    """
    spec = ShapesSpec(n_images=n_images, seed=seed, size=size, image_format=image_format)
    spec.check()
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(spec, index, images_dir) for index in range(n_images)]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            per_image = pool.map(_make_one, jobs, chunksize=16)
    else:
        per_image = [_make_one(job) for job in jobs]
    images = [
        {"id": i + 1, "file_name": f"{i:06d}.{image_format}", "width": size, "height": size}
        for i in range(n_images)
    ]
    annotations = [ann for anns in per_image for ann in anns]
    for next_id, ann in enumerate(annotations, start=1):
        ann["id"] = next_id
    dataset = {
        "info": {
            "description": "detseg synthetic shapes",
            "generator": f"detseg.data.shapes v{GENERATOR_VERSION}",
            "seed": seed,
            "size": size,
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)
        ],
    }
    json_path = out / "instances.json"
    json_path.write_text(json.dumps(dataset, separators=(",", ":")))
    return json_path


# ----------------------------------------------------------------------------- YOLO view


def merge_parts(parts: list[np.ndarray]) -> np.ndarray:
    """Join polygon parts (each (K, 2)) into one outline by zero-width bridges.

    YOLO segment labels hold one polygon per instance; Ultralytics' own COCO converter joins
    parts the same way (nearest points, there and back).
    """
    merged = parts[0]
    for part in parts[1:]:
        d = ((merged[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        loop = np.concatenate([np.roll(part, -j, 0), part[j : j + 1]])
        merged = np.concatenate([merged[: i + 1], loop, merged[i:]])
    return merged


def write_yolo_view(dataset_dir: str | Path) -> Path:
    """Write ``labels/*.txt`` and ``data.yaml`` beside ``images/``; returns the YAML path.

    Each label line is ``class x1 y1 x2 y2 ...`` with coordinates divided by the image width
    and height (class = category id - 1). The YAML uses the same folder for train and val;
    a training recipe writes its own YAML to point val at a held-out split.
    """
    root = Path(dataset_dir)
    data = json.loads((root / "instances.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    labels_dir = root / "labels"
    labels_dir.mkdir(exist_ok=True)
    for image in data["images"]:
        lines = []
        scale = np.array([image["width"], image["height"]], np.float64)
        for ann in by_image.get(image["id"], []):
            parts = [np.array(p, np.float64).reshape(-1, 2) for p in ann["segmentation"]]
            poly = merge_parts(parts) / scale
            coords = " ".join(f"{v:.6f}" for v in poly.reshape(-1))
            lines.append(f"{ann['category_id'] - 1} {coords}")
        stem = Path(image["file_name"]).stem
        (labels_dir / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
    names = {c["id"] - 1: c["name"] for c in data["categories"]}
    # No `path:` key: Ultralytics then resolves train/val against this file's folder, so the
    # view stays valid when the folder moves and the bytes do not depend on where it lives.
    yaml = ["train: images", "val: images", "names:"]
    yaml += [f"  {k}: {v}" for k, v in sorted(names.items())]
    yaml_path = root / "data.yaml"
    yaml_path.write_text("\n".join(yaml) + "\n")
    return yaml_path
