"""Measure the shipped built-in models on a held-out shapes split (the model cards' figures).

    YOLO_AUTOINSTALL=false YOLO_OFFLINE=1 python recipes/measure_builtin.py \\
        --root /tmp/shapes_test --images 300 --seed 3 --json /tmp/builtin_scores.json

The split (``detseg data shapes --seed 3``) was never used in training (train seed 1,
Ultralytics' per-epoch val seed 2). Measured, all on CPU with the shipped ONNX files:

- detector, Ultralytics' own validator: ``YOLO(onnx).val(...)`` at 320 px, conf 0.001,
  NMS IoU 0.7 (its defaults), box and mask mAP50-95 / mAP50 (Ultralytics' interpolation);
- detector, detseg: ``detseg predict ONNX instances.json --preset coco-eval`` then
  ``detseg eval --iou-type bbox|segm`` (COCO AP, the numbers pycocotools gives);
- SAM, through detseg's onnxruntime `SamPredictor`: mean mask IoU over every annotated
  instance at the image's resolution, for one positive click at the mask pixel farthest
  from its border (multimask output, the mask with the highest predicted IoU), and for the
  exact box (single-mask output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detseg.data.shapes import generate_shapes, write_yolo_view  # noqa: E402
from detseg.weights.builtin import default_detector, default_sam  # noqa: E402


def ultralytics_val(onnx: Path, root: Path) -> dict:
    """Box and mask mAP from Ultralytics' validator on ``root`` (a YOLO view)."""
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo_cfg_"))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    import matplotlib
    from ultralytics import YOLO

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    (Path(os.environ["YOLO_CONFIG_DIR"]) / "Arial.ttf").write_bytes(font.read_bytes())
    m = YOLO(str(onnx), task="segment").val(
        data=str(root / "data.yaml"), imgsz=320, batch=1, device="cpu", plots=False,
        verbose=False, rect=False,
    )
    return {
        "box_map50_95": float(m.box.map), "box_map50": float(m.box.map50),
        "mask_map50_95": float(m.seg.map), "mask_map50": float(m.seg.map50),
    }


def detseg_eval(onnx: Path, root: Path, work: Path) -> dict:
    """COCO AP from `detseg predict` + `detseg eval` (bbox and segm)."""
    results = work / "results.json"
    detseg = [sys.executable, "-m", "detseg"]
    subprocess.run(detseg + ["predict", str(onnx), str(root / "instances.json"), "--out",
                             str(results), "--preset", "coco-eval", "--no-resume", "-q"], check=True)
    out = {}
    for iou_type in ("bbox", "segm"):
        js = work / f"eval_{iou_type}.json"
        subprocess.run(detseg + ["eval", "--gt", str(root / "instances.json"), "--pred",
                                 str(results), "--iou-type", iou_type, "--json", str(js)], check=True)
        stats = json.loads(js.read_text())["stats"]
        key = "box" if iou_type == "bbox" else "mask"
        out[f"{key}_ap50_95"], out[f"{key}_ap50"] = float(stats[0]), float(stats[1])
    return out


def sam_ious(root: Path) -> dict:
    """Mean mask IoU of the built-in SAM (ONNX) for a centre click and for the exact box."""
    from pycocotools import mask as mask_utils

    from detseg.pipeline.sam import SamPredictor

    enc, dec = default_sam()
    predictor = SamPredictor.load(enc, dec, device="cpu")
    data = json.loads((root / "instances.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    click, click0, box, areas = [], [], [], []
    for im in data["images"]:
        anns = by_image.get(im["id"], [])
        if not anns:
            continue
        predictor.set_image(cv2.imread(str(root / "images" / im["file_name"]))[..., ::-1].copy())
        for ann in anns:
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], im["height"], im["width"]))
            gt = mask_utils.decode(rle)  # pycocotools' own rasterisation: the reference
            dist = cv2.distanceTransform(np.pad(gt, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
            y, x = np.unravel_index(int(dist.argmax()), dist.shape)
            gt = gt.astype(bool)
            areas.append(int(gt.sum()))
            p = predictor.predict(np.array([[x + 0.5, y + 0.5]], np.float32), np.array([1]))
            best = int(p.scores.argmax())
            x0, y0, w, h = ann["bbox"]
            b = predictor.predict(box=np.array([x0, y0, x0 + w, y0 + h], np.float32),
                                  multimask_output=False)
            p0 = predictor.predict(np.array([[x + 0.5, y + 0.5]], np.float32), np.array([1]),
                                   multimask_output=False)
            for store, mask in ((click, p.masks[best]), (box, b.masks[0]), (click0, p0.masks[0])):
                store.append((mask & gt).sum() / max(1, (mask | gt).sum()))
    size = np.digitize(areas, [32**2, 96**2])  # COCO's small / medium / large
    by_size = {
        name: {"instances": int((size == i).sum()),
               "mean_iou_click": float(np.mean(np.array(click)[size == i])),
               "mean_iou_box": float(np.mean(np.array(box)[size == i]))}
        for i, name in enumerate(("small", "medium", "large")) if (size == i).any()
    }
    return {
        "by_size": by_size,
        "instances": len(box),
        "mean_iou_click": float(np.mean(click)),
        "mean_iou_click_single_mask": float(np.mean(click0)),
        "mean_iou_box": float(np.mean(box)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/shapes_test"))
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--skip", nargs="*", default=[], choices=["ultralytics", "detseg", "sam"])
    args = p.parse_args()
    if not (args.root / "data.yaml").is_file():
        generate_shapes(args.root, args.images, args.seed)
        write_yolo_view(args.root)
    scores: dict = {"split": {"root": str(args.root), "images": args.images, "seed": args.seed}}
    onnx = default_detector()
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (
            ("detseg", lambda: detseg_eval(onnx, args.root, Path(tmp))),
            ("ultralytics", lambda: ultralytics_val(onnx, args.root)),
            ("sam", lambda: sam_ious(args.root)),
        ):
            if name in args.skip:
                continue
            t0 = time.time()
            scores[name] = fn() | {"seconds": round(time.time() - t0, 1)}
            print(name, json.dumps(scores[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2) + "\n")


if __name__ == "__main__":
    main()
