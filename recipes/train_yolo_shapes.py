"""Recipe: the built-in detector, YOLOv8n-seg trained from scratch on synthetic shapes.

The shipped ``detseg/weights/builtin/yolov8n_seg_shapes.onnx`` came from exactly these
commands, run on one NVIDIA H200 (16 CPU cores) with ultralytics 8.4.190 and torch 2.11
(see the model card ``yolov8n_seg_shapes.md`` for times and scores). Both stages ran while
``recipes/train_sam_shapes.py`` shared the same GPU. The environment first:
``PYTHONPATH=<wheels of ultralytics, ultralytics-thop, ultralytics-platform>:.``::

    python recipes/train_yolo_shapes.py --root /tmp/shapes --train-images 4000 \
        --val-images 300 --workers 14 --prepare-only
    # stage 1: from scratch, 0.075 h budget (16 epochs)
    python recipes/train_yolo_shapes.py --root /tmp/shapes --out /tmp/yolo_shapes --device 0 \
        --train-images 4000 --val-images 300 --epochs 60 --hours 0.075 --imgsz 320 \
        --batch 64 --workers 10
    # stage 2: continued from stage 1's best.pt, 0.083 h budget (14 epochs)
    python recipes/train_yolo_shapes.py --init /tmp/yolo_shapes/weights/best.pt \
        --root /tmp/shapes --out /tmp/yolo_stage2 --device 0 --train-images 4000 \
        --val-images 300 --epochs 60 --hours 0.083 --imgsz 320 --batch 64 --workers 13
    detseg export /tmp/yolo_stage2/weights/best.pt --out OUT --imgsz 320 \
        --images <8 images of the seed-3 held-out split>   # file renamed yolov8n_seg_shapes.pt first

- data: ``detseg data shapes`` train split seed 1 (4,000 images), validation split seed 2
  (300 images, used by Ultralytics for its per-epoch val and to pick best.pt), 320 x 320.
  The model card's scores come from a third split, seed 3, never used in training.
  (Trained with generator v1 labels: the same images, polygons through pixel centres; v2
  only moves the outlines out by half a pixel onto pixel edges.)
- model: ``YOLO("yolov8n-seg.yaml")``, random init (no pretrained weights), 6 classes;
- training: Ultralytics defaults (``optimizer=auto`` chose AdamW lr 0.001, mosaic, etc.)
  except the arguments below; ``--hours`` stops at a wall-clock budget (Ultralytics'
  ``time=``, which rescales the LR schedule to end in time); ``plots=False``; AMP on CUDA.
- on this project's 2-core CPU machine one epoch of 4,000 images takes about 8-9 minutes
  (measured: 64 images in ~8 s), so the same recipe with ``--device cpu`` needs hours.

Offline safety: ``YOLO_CONFIG_DIR`` is a temporary folder holding matplotlib's DejaVuSans as
``Arial.ttf`` (Ultralytics' dataset check otherwise downloads Arial), ``YOLO_OFFLINE=1``,
``YOLO_AUTOINSTALL=false``, and the AMP check (which downloads a model to compare against)
is replaced by "AMP on" on CUDA; on CPU Ultralytics never uses AMP.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 3


def offline_ultralytics_env() -> Path:
    """Set the environment that keeps Ultralytics from reaching the network; returns its config dir."""
    cfg = Path(tempfile.mkdtemp(prefix="yolo_cfg_"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copy(font, Path(os.environ["YOLO_CONFIG_DIR"]) / name)
    return Path(os.environ["YOLO_CONFIG_DIR"])


def prepare_splits(root: Path, train_images: int, val_images: int, workers: int) -> Path:
    """Generate the train/val splits under ``root`` (once) and the YAML that joins them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from detseg.data.shapes import CLASSES, generate_shapes, write_yolo_view

    for name, n, seed in (("train", train_images, TRAIN_SEED), ("val", val_images, VAL_SEED)):
        split = root / name
        if not (split / "data.yaml").is_file():
            generate_shapes(split, n, seed, workers=workers)
            write_yolo_view(split)
    yaml = root / "shapes.yaml"
    lines = [f"path: {root.resolve()}", "train: train/images", "val: val/images", "names:"]
    lines += [f"  {i}: {c}" for i, c in enumerate(CLASSES)]
    yaml.write_text("\n".join(lines) + "\n")
    return yaml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/shapes"))
    p.add_argument("--out", type=Path, default=Path("/tmp/yolo_shapes"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--val-images", type=int, default=300)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--hours", type=float, default=0.0, help="wall-clock budget (0: none)")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--init", default="yolov8n-seg.yaml", help="model YAML, or a .pt to continue from")
    args = p.parse_args()

    offline_ultralytics_env()
    t0 = time.time()
    yaml = prepare_splits(args.root, args.train_images, args.val_images, max(1, args.workers))
    print(f"data ready in {time.time() - t0:.1f}s: {yaml}", flush=True)
    if args.prepare_only:
        return

    import ultralytics.engine.trainer as trainer_mod
    from ultralytics import YOLO

    trainer_mod.check_amp = lambda model: model is not None and next(model.parameters()).is_cuda

    model = YOLO(args.init)
    t0 = time.time()
    model.train(
        data=str(yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
        device=args.device, workers=args.workers, project=str(args.out.parent),
        name=args.out.name, exist_ok=True, plots=False, seed=0, deterministic=False,
        pretrained=args.init.endswith(".pt"), cache="ram", verbose=True,
        **({"time": args.hours} if args.hours > 0 else {}),
    )
    print(f"training wall time: {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
