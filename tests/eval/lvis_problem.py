"""Seeded synthetic LVIS-style problems (federated fields, frequency groups, no crowd)."""

from __future__ import annotations

import numpy as np


def _poly(x: float, y: float, w: float, h: float, rng: np.random.Generator) -> list[list[float]]:
    n = int(rng.integers(5, 9))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(0.6, 1.0, n)
    px = x + w / 2 + np.cos(ang) * r * w / 2
    py = y + h / 2 + np.sin(ang) * r * h / 2
    return [np.round(np.stack([px, py], 1).ravel(), 2).tolist()]


def make_lvis_problem(seed: int = 0, n_images: int = 30, n_cats: int = 12,
                      gt_per_image: float = 5.0, dets_per_image: int = 40,
                      segm: bool = False, image_size: tuple[int, int] = (200, 260),
                      many_dets_images: int = 2) -> tuple[dict, list[dict]]:
    """An LVIS ground-truth dict and a results list.

    Each image gets a negative list (some categories absent from its ground truth), a
    not-exhaustive list (some of its categories, and sometimes an absent one), and
    `many_dets_images` images get more than 300 detections so that the per-image cut acts.
    Scores are rounded to 2 decimals so that ties occur; annotation ids start at 1 on purpose
    except one problem in four, which has an annotation with id 0 (the package's quirk).
    """
    rng = np.random.default_rng(seed)
    h_img, w_img = image_size
    cat_ids = sorted(rng.choice(np.arange(1, 5 * n_cats), n_cats, replace=False).tolist())
    freqs = ["r", "c", "f"]
    cats = [{"id": c, "name": f"c{c}", "frequency": freqs[i % 3] if i < 3 else str(rng.choice(freqs))}
            for i, c in enumerate(cat_ids)]
    images = [{"id": int(i), "height": h_img, "width": w_img, "file_name": f"{i}.jpg"}
              for i in rng.choice(np.arange(1, 20 * n_images), n_images, replace=False)]
    ann_id = 0 if seed % 4 == 0 else 1
    anns: list[dict] = []
    results: list[dict] = []
    if segm:
        from pycocotools import mask as mask_utils
    many = set(rng.choice(len(images), min(many_dets_images, len(images)), replace=False).tolist())
    for idx, im in enumerate(images):
        n_gt = 0 if rng.random() < 0.1 else int(rng.poisson(gt_per_image))
        present: set[int] = set()
        boxes = []
        for _ in range(n_gt):
            scale = rng.choice([10.0, 30.0, 70.0, 140.0])
            w, h = (float(np.round(rng.uniform(0.3, 1.0) * scale, 1)) for _ in range(2))
            x = float(np.round(rng.uniform(0, max(1, w_img - w)), 1))
            y = float(np.round(rng.uniform(0, max(1, h_img - h)), 1))
            c = int(rng.choice(cat_ids[: max(1, n_cats - 2)]))
            ann = {"id": ann_id, "image_id": im["id"], "category_id": c, "bbox": [x, y, w, h],
                   "area": float(np.round(w * h * rng.uniform(0.5, 1.0), 2))}
            if segm:
                poly = _poly(x, y, w, h, rng)
                ann["segmentation"] = poly
                ann["area"] = float(mask_utils.area(mask_utils.merge(
                    mask_utils.frPyObjects(poly, h_img, w_img))))
            anns.append(ann)
            boxes.append((x, y, w, h, c))
            present.add(c)
            ann_id += 1
        absent = [c for c in cat_ids if c not in present]
        im["neg_category_ids"] = sorted(int(c) for c in absent if rng.random() < 0.5)
        nel = [c for c in present if rng.random() < 0.3]
        if absent and rng.random() < 0.2:
            nel.append(int(rng.choice(absent)))
        im["not_exhaustive_category_ids"] = sorted(int(c) for c in nel)
        n_det = 320 if idx in many else int(rng.integers(0, dets_per_image + 1))
        for _ in range(n_det):
            if boxes and rng.random() < 0.6:
                x, y, w, h, c = boxes[int(rng.integers(len(boxes)))]
                jit = rng.choice([0.0, 0.05, 0.2, 0.5])
                x, y = x + rng.normal(0, jit * w + 1e-9), y + rng.normal(0, jit * h + 1e-9)
                w, h = w * rng.uniform(1 - jit, 1 + jit), h * rng.uniform(1 - jit, 1 + jit)
                if rng.random() < 0.2:
                    c = int(rng.choice(cat_ids))
            else:
                w, h = rng.uniform(2, 100, 2)
                x, y = rng.uniform(0, w_img - 1), rng.uniform(0, h_img - 1)
                c = int(rng.choice(cat_ids))
            rec = {"image_id": im["id"], "category_id": int(c),
                   "bbox": [round(float(v), 2) for v in (x, y, max(w, 0.0), max(h, 0.0))],
                   "score": round(float(rng.random()), 2)}
            if segm:
                bx, by, bw, bh = rec["bbox"]
                rle = mask_utils.merge(mask_utils.frPyObjects(
                    _poly(bx, by, max(bw, 2.0), max(bh, 2.0), rng), h_img, w_img))
                rle["counts"] = rle["counts"].decode("ascii")
                rec["segmentation"] = rle
            results.append(rec)
    return {"images": images, "annotations": anns, "categories": cats}, results
