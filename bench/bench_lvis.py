"""Benchmark `detseg eval --protocol lvis` against the official lvis package (0.5.3).

A seeded LVIS-style problem (federated negative / not-exhaustive lists, r/c/f frequency
groups, some images over the 300-detection cut) is written to JSON; each tool is timed from
the two file paths to the 13 numbers (JSON parsing, checks, the 300 cut, matching,
accumulation, summary), and the results are compared (identical within 1e-12).

The lvis package still uses ``np.float`` (removed in numpy 1.24): it runs with the shim
``np.float = float``.

    .venv/bin/python bench/bench_lvis.py                          # 2,000 images, boxes
    .venv/bin/python bench/bench_lvis.py --images 300 --iou-type segm
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _lvis_package(gt: Path, res: Path, iou_type: str) -> dict:
    if not hasattr(np, "float"):
        np.float = float  # the package's alias, gone from numpy >= 1.24
    logging.getLogger("lvis").setLevel(logging.ERROR)
    from lvis import LVIS, LVISEval, LVISResults

    g = LVIS(str(gt))
    ev = LVISEval(g, LVISResults(g, str(res)), iou_type)
    ev.run()
    return dict(ev.results)


def _detseg(gt: Path, res: Path, iou_type: str) -> dict:
    from detseg.eval.lvis import evaluate_lvis

    return evaluate_lvis(gt, res, iou_type).results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--cats", type=int, default=300)
    ap.add_argument("--dets", type=int, default=100, help="most detections per image (uniform 0..N)")
    ap.add_argument("--iou-type", default="bbox", choices=["bbox", "segm"])
    ap.add_argument("--repeat", type=int, default=3, help="detseg runs (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from tests.eval.lvis_problem import make_lvis_problem

    gt, res = make_lvis_problem(args.seed, n_images=args.images, n_cats=args.cats,
                                dets_per_image=args.dets, segm=args.iou_type == "segm",
                                many_dets_images=max(1, args.images // 50))
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, res_path = Path(tmp) / "lvis_gt.json", Path(tmp) / "results.json"
        gt_path.write_text(json.dumps(gt))
        res_path.write_text(json.dumps(res))
        print(f"problem: {len(gt['images'])} images, {len(gt['categories'])} categories, "
              f"{len(gt['annotations'])} annotations, {len(res)} detections, {args.iou_type}")
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            ours = _detseg(gt_path, res_path, args.iou_type)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = _lvis_package(gt_path, res_path, args.iou_type)
        t_ref = time.perf_counter() - t
    diff = max(abs(ours[k] - ref[k]) for k in ref)
    t_ours = statistics.median(times)
    print(f"lvis 0.5.3 (baseline): {t_ref:8.2f} s  (from file paths to the 13 numbers)")
    print(f"detseg --protocol lvis: {t_ours:8.2f} s  (median of {args.repeat})  "
          f"= {t_ref / t_ours:.1f}x the lvis package")
    print(f"largest difference over the 13 numbers: {diff:.3g} (AP {ours['AP']:.4f}, "
          f"APr {ours['APr']:.4f}, APc {ours['APc']:.4f}, APf {ours['APf']:.4f})")


if __name__ == "__main__":
    main()
