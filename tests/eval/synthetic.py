"""Seeded COCO-like evaluation problems (ground truth + results) for tests and benchmarks.

The problems are built to hit pycocotools' corner cases: crowd regions, images without
ground truth or without detections, categories absent from the ground truth or from the
results, score ties, identical boxes (IoU ties), zero-size boxes, an annotation with id 0,
and GT ``area`` that differs from the box area (as segmentation areas do).
"""

from __future__ import annotations

import numpy as np


def _poly(x: float, y: float, w: float, h: float, rng: np.random.Generator) -> list[list[float]]:
    """A random polygon (4 to 7 corners) inside the box, as COCO's flat [x1, y1, ...]."""
    k = int(rng.integers(4, 8))
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    r = rng.uniform(0.6, 1.0, k)
    cx, cy = x + w / 2, y + h / 2
    xs = cx + np.cos(ang) * r * w / 2
    ys = cy + np.sin(ang) * r * h / 2
    return [np.round(np.stack([xs, ys], 1).reshape(-1), 2).tolist()]


def _blob(x: float, y: float, w: float, h: float, rng: np.random.Generator) -> list[list[float]]:
    """A roundish 12-corner polygon filling most of the box (masks of jittered boxes overlap)."""
    ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    r = rng.uniform(0.85, 1.0, 12)
    xs = x + w / 2 + np.cos(ang) * r * w / 2
    ys = y + h / 2 + np.sin(ang) * r * h / 2
    return [np.round(np.stack([xs, ys], 1).reshape(-1), 2).tolist()]


def make_problem(
    seed: int = 0,
    n_images: int = 40,
    n_cats: int = 6,
    gt_per_image: float = 4.0,
    dets_per_image: int = 12,
    crowd_frac: float = 0.05,
    segm: bool = False,
    image_size: tuple[int, int] = (240, 320),
    score_decimals: int | None = 2,
) -> tuple[dict, list[dict]]:
    """A ground-truth dict and a results list.

    Args:
        gt_per_image: mean number of objects per image (Poisson); ~10% of images get none.
        dets_per_image: detections per image (some images get none): jittered copies of the
            ground truth with the right or a wrong class, plus random false positives.
        segm: add polygon segmentations to the ground truth (crowd as uncompressed RLE) and
            compressed-RLE masks to the results.
        score_decimals: round scores to create ties (None keeps full precision).
    """
    rng = np.random.default_rng(seed)
    h_img, w_img = image_size
    # Category ids are sparse like COCO's; the last one never appears in the ground truth.
    cat_ids = sorted(rng.choice(np.arange(1, 4 * n_cats + 1), n_cats, replace=False).tolist())
    cats = [{"id": c, "name": f"class_{c}"} for c in cat_ids]
    gt_cats = cat_ids[:-1] if n_cats > 1 else cat_ids
    images = [{"id": int(i), "file_name": f"{i:06d}.jpg", "height": h_img, "width": w_img}
              for i in rng.choice(np.arange(1, 10 * n_images), n_images, replace=False)]
    anns: list[dict] = []
    results: list[dict] = []
    ann_id = 0  # pycocotools treats a match to annotation id 0 as no match: keep one.
    if segm:
        from pycocotools import mask as mask_utils
    for im in images:
        n_gt = 0 if rng.random() < 0.1 else int(rng.poisson(gt_per_image))
        boxes = []
        for _ in range(n_gt):
            scale = rng.choice([8.0, 24.0, 60.0, 150.0])
            w = float(np.round(rng.uniform(0.3, 1.0) * scale, 1))
            h = float(np.round(rng.uniform(0.3, 1.0) * scale, 1))
            x = float(np.round(rng.uniform(0, max(1, w_img - w)), 1))
            y = float(np.round(rng.uniform(0, max(1, h_img - h)), 1))
            c = int(rng.choice(gt_cats))
            crowd = int(rng.random() < crowd_frac)
            ann = {"id": ann_id, "image_id": im["id"], "category_id": c, "bbox": [x, y, w, h],
                   "area": float(np.round(w * h * rng.uniform(0.5, 1.0), 2)), "iscrowd": crowd}
            if segm:
                poly = _poly(x, y, w, h, rng)
                rle = mask_utils.merge(mask_utils.frPyObjects(poly, h_img, w_img))
                ann["area"] = float(mask_utils.area(rle))
                if crowd:
                    m = mask_utils.decode(rle)
                    counts, prev, run = [], 0, 0
                    for v in m.ravel(order="F"):
                        if v != prev:
                            counts.append(run)
                            run, prev = 0, v
                        run += 1
                    counts.append(run)
                    ann["segmentation"] = {"size": [h_img, w_img], "counts": counts}
                else:
                    ann["segmentation"] = poly
            anns.append(ann)
            boxes.append((x, y, w, h, c))
            ann_id += 1
        if rng.random() < 0.1:
            continue  # an image without detections
        for j in range(dets_per_image):
            if boxes and rng.random() < 0.7:
                x, y, w, h, c = boxes[int(rng.integers(len(boxes)))]
                jit = rng.choice([0.0, 0.05, 0.2, 0.5])
                x, y = x + rng.normal(0, jit * w + 1e-9), y + rng.normal(0, jit * h + 1e-9)
                w, h = w * rng.uniform(1 - jit, 1 + jit), h * rng.uniform(1 - jit, 1 + jit)
                if rng.random() < 0.15:
                    c = int(rng.choice(cat_ids))
            else:
                w, h = rng.uniform(0, 120, 2)
                x, y = rng.uniform(0, w_img - 1), rng.uniform(0, h_img - 1)
                c = int(rng.choice(cat_ids))
            if j == 0 and rng.random() < 0.1:
                w = 0.0  # zero-size box
            score = float(rng.random())
            if score_decimals is not None:
                score = round(score, score_decimals)
            rec = {"image_id": im["id"], "category_id": c,
                   "bbox": [round(float(v), 2) for v in (x, y, max(w, 0.0), max(h, 0.0))],
                   "score": score}
            if segm:
                bx, by, bw, bh = rec["bbox"]
                poly = _poly(bx, by, max(bw, 2.0), max(bh, 2.0), rng)
                rle = mask_utils.merge(mask_utils.frPyObjects(poly, h_img, w_img))
                rle["counts"] = rle["counts"].decode("ascii")
                rec["segmentation"] = rle
            results.append(rec)
            if rng.random() < 0.05:
                results.append(dict(rec))  # an exact duplicate: IoU and score ties
    gt = {"images": images, "annotations": anns, "categories": cats}
    return gt, results


def make_large_problem(
    seed: int = 0,
    n_images: int = 5000,
    n_cats: int = 80,
    gt_per_image: float = 8.0,
    dets_per_image: int = 100,
    crowd_frac: float = 0.01,
    image_size: tuple[int, int] = (480, 640),
) -> tuple[dict, list[dict]]:
    """A COCO-scale box problem, generated vectorised (seconds, not minutes).

    Defaults give about 36k ground-truth boxes (~10% of images have none, 1% crowd) and
    100 detections per image: 60% jittered ground truth (15% with a wrong class), 40%
    random boxes, scores with 3 decimals (so some ties).
    """
    rng = np.random.default_rng(seed)
    h_img, w_img = image_size
    cat_ids = sorted(rng.choice(np.arange(1, 91), n_cats, replace=False).tolist())
    img_ids = np.sort(rng.choice(np.arange(1, 100 * n_images), n_images, replace=False))
    images = [{"id": int(i), "file_name": f"{i:012d}.jpg", "height": h_img, "width": w_img}
              for i in img_ids]
    n_gt = rng.poisson(gt_per_image, n_images) * (rng.random(n_images) >= 0.1)
    g_img = np.repeat(np.arange(n_images), n_gt)
    ng = g_img.size
    scale = rng.choice([12.0, 40.0, 90.0, 250.0], ng)
    gw = np.round(rng.uniform(0.3, 1.0, ng) * scale, 1)
    gh = np.round(rng.uniform(0.3, 1.0, ng) * scale, 1)
    gx = np.round(rng.uniform(0, 1, ng) * np.maximum(1, w_img - gw), 1)
    gy = np.round(rng.uniform(0, 1, ng) * np.maximum(1, h_img - gh), 1)
    gc = rng.integers(0, n_cats, ng)
    crowd = rng.random(ng) < crowd_frac
    garea = np.round(gw * gh * rng.uniform(0.5, 1.0, ng), 2)
    anns = [{"id": i + 1, "image_id": int(img_ids[g_img[i]]), "category_id": cat_ids[gc[i]],
             "bbox": [gx[i], gy[i], gw[i], gh[i]], "area": garea[i], "iscrowd": int(crowd[i])}
            for i in range(ng)]
    for a in anns:
        a["bbox"] = [float(v) for v in a["bbox"]]
        a["area"] = float(a["area"])
    nd = n_images * dets_per_image
    d_img = np.repeat(np.arange(n_images), dets_per_image)
    starts = np.r_[0, np.cumsum(n_gt)[:-1]]
    has_gt = n_gt[d_img] > 0
    from_gt = has_gt & (rng.random(nd) < 0.6)
    pick = starts[d_img] + (rng.random(nd) * np.maximum(n_gt[d_img], 1)).astype(np.int64)
    pick = np.where(from_gt, pick, 0)
    jit = rng.choice([0.02, 0.1, 0.3], nd)
    bw = np.where(from_gt, gw[pick] * rng.uniform(1 - jit, 1 + jit), rng.uniform(2, 200, nd))
    bh = np.where(from_gt, gh[pick] * rng.uniform(1 - jit, 1 + jit), rng.uniform(2, 200, nd))
    bx = np.where(from_gt, gx[pick] + rng.normal(0, 1, nd) * jit * gw[pick],
                  rng.uniform(0, w_img, nd))
    by = np.where(from_gt, gy[pick] + rng.normal(0, 1, nd) * jit * gh[pick],
                  rng.uniform(0, h_img, nd))
    wrong = rng.random(nd) < 0.15
    dc = np.where(from_gt & ~wrong, gc[pick], rng.integers(0, n_cats, nd))
    score = np.round(np.where(from_gt, rng.beta(4, 2, nd), rng.beta(1, 4, nd)), 3)
    box = np.round(np.stack([bx, by, bw, bh], 1), 2).tolist()
    cat_arr = np.asarray(cat_ids)[dc].tolist()
    img_arr = img_ids[d_img].tolist()
    sc = score.tolist()
    results = [{"image_id": img_arr[i], "category_id": cat_arr[i], "bbox": box[i], "score": sc[i]}
               for i in range(nd)]
    cats = [{"id": c, "name": f"class_{c}"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": cats}, results


def make_large_segm_problem(
    seed: int = 0,
    n_images: int = 500,
    n_cats: int = 80,
    gt_per_image: float = 8.0,
    dets_per_image: int = 100,
    crowd_frac: float = 0.01,
    image_size: tuple[int, int] = (480, 640),
    with_bbox: bool = True,
) -> tuple[dict, list[dict]]:
    """A COCO-scale mask problem: `make_large_problem`'s boxes with polygon masks inside.

    Ground truth gets polygons (crowd: uncompressed RLE, as in COCO), ``area`` the mask
    area; results get compressed RLE (``counts`` as str) and, unless ``with_bbox`` is False,
    their box. Defaults: 500 images, ~3.6k ground-truth masks, 50k result masks.
    """
    from pycocotools import mask as mask_utils

    gt, res = make_large_problem(seed, n_images, n_cats, gt_per_image, dets_per_image,
                                 crowd_frac, image_size)
    rng = np.random.default_rng(seed + 1)
    h_img, w_img = image_size
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        poly = _blob(x, y, max(w, 2.0), max(h, 2.0), rng)
        rle = mask_utils.merge(mask_utils.frPyObjects(poly, h_img, w_img))
        a["area"] = float(mask_utils.area(rle))
        if a["iscrowd"]:
            m = mask_utils.decode(rle).ravel(order="F")
            change = np.flatnonzero(np.diff(m)) + 1
            a["segmentation"] = {"size": [h_img, w_img],
                                 "counts": np.diff(np.r_[0, change, m.size]).tolist()
                                 if m[0] == 0 else [0] + np.diff(np.r_[0, change, m.size]).tolist()}
        else:
            a["segmentation"] = poly
    for r in res:
        x, y, w, h = r["bbox"]
        x, y = min(max(x, 0.0), w_img - 2.0), min(max(y, 0.0), h_img - 2.0)
        rle = mask_utils.merge(mask_utils.frPyObjects(_blob(x, y, max(w, 2.0), max(h, 2.0), rng),
                                                      h_img, w_img))
        r["segmentation"] = {"size": [h_img, w_img], "counts": rle["counts"].decode("ascii")}
        if not with_bbox:
            del r["bbox"]
    return gt, res
