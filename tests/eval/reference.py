"""pycocotools, the reference every metric is checked against."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np


def pycoco_eval(gt: dict, results: list, iou_type: str = "bbox", params: dict | None = None):
    """COCOeval on deep copies (pycocotools edits its inputs); returns the COCOeval object."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dt, iou_type)
        for key, value in (params or {}).items():
            setattr(ev.params, key, value)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def assert_identical(ours, ref) -> None:
    """Every element of precision/recall/scores and the 12 stats, with 0 difference."""
    for name in ("precision", "recall", "scores"):
        a, b = getattr(ours, name), ref.eval[name]
        assert a.shape == b.shape, f"{name}: shape {a.shape} != pycocotools {b.shape}"
        bad = np.argwhere(a != b)
        assert bad.size == 0, (f"{name}: {len(bad)} elements differ, first at {bad[0].tolist()}: "
                               f"{a[tuple(bad[0])]!r} vs pycocotools {b[tuple(bad[0])]!r}")
    assert np.array_equal(ours.stats, np.asarray(ref.stats)), (ours.stats, ref.stats)


def jitter_gt(gt: dict, seed: int = 0, segm: bool = False) -> list[dict]:
    """Plausible detections from ground truth: shifted/scaled boxes (and shifted masks),
    wrong classes, duplicates and background boxes, with scores that tie sometimes."""
    rng = np.random.default_rng(seed)
    imgs = {im["id"]: im for im in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    out = []
    if segm:
        from pycocotools import mask as mask_utils
    for ann in gt["annotations"]:
        im = imgs[ann["image_id"]]
        for _ in range(int(rng.integers(0, 3))):
            x, y, w, h = ann["bbox"]
            dx, dy = rng.normal(0, 0.1 * w), rng.normal(0, 0.1 * h)
            s = rng.uniform(0.8, 1.2)
            cat = ann["category_id"] if rng.random() > 0.15 else int(rng.choice(cat_ids))
            rec = {"image_id": ann["image_id"], "category_id": cat,
                   "bbox": [x + dx, y + dy, w * s, h * s], "score": round(float(rng.random()), 2)}
            if segm:
                seg = ann["segmentation"]
                hgt, wid = im["height"], im["width"]
                if isinstance(seg, list):
                    rle = mask_utils.merge(mask_utils.frPyObjects(seg, hgt, wid))
                elif isinstance(seg["counts"], list):
                    rle = mask_utils.frPyObjects(seg, hgt, wid)
                else:
                    rle = seg
                m = mask_utils.decode(rle)
                m = np.roll(m, (int(round(dy)), int(round(dx))), axis=(0, 1))
                enc = mask_utils.encode(np.asfortranarray(m))
                enc["counts"] = enc["counts"].decode("ascii")
                rec["segmentation"] = enc
            out.append(rec)
    for im in gt["images"]:  # background detections
        for _ in range(3):
            w, h = rng.uniform(5, im["width"] / 2), rng.uniform(5, im["height"] / 2)
            x, y = rng.uniform(0, im["width"] - w), rng.uniform(0, im["height"] - h)
            rec = {"image_id": im["id"], "category_id": int(rng.choice(cat_ids)),
                   "bbox": [x, y, w, h], "score": round(float(rng.random()) * 0.5, 2)}
            if segm:
                m = np.zeros((im["height"], im["width"]), np.uint8)
                m[int(y):int(y + h), int(x):int(x + w)] = 1
                enc = mask_utils.encode(np.asfortranarray(m))
                enc["counts"] = enc["counts"].decode("ascii")
                rec["segmentation"] = enc
            out.append(rec)
    return out
