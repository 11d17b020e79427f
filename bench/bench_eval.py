"""Benchmark `detseg eval` against pycocotools (the baseline) and faster-coco-eval.

A seeded COCO-scale box problem (default: 5,000 images, 80 categories, ~36k ground-truth
boxes with ~1% crowd, 100 detections per image) is evaluated by each tool in its own
subprocess, so that each one's peak memory (max RSS) is its own. Timings start from the
parsed ground-truth dict and results list (JSON parsing costs the same for every tool) and
cover what each tool needs to produce the 12 numbers:
- pycocotools: COCO index + loadRes + evaluate + accumulate + summarize;
- faster-coco-eval: the same with its COCO and COCOeval_faster;
- detseg metrics: `detseg.eval.evaluate`;
- detseg full report: metrics + per-class table, P/R/F1, confusion matrix, TIDE-style errors,
  plots, and the Markdown/CSV/JSON/HTML report written to a temporary folder.
- detseg full report + error gallery (`gallery_report`): the same with the HTML's error
  gallery (3 examples per class and error type, 12 image views); the synthetic problem has
  no image files, so images are made in memory (`synthetic_image`, textured like a photo for
  JPEG's sake); the HTML's size is printed.
Every tool's precision/recall/scores arrays are compared with pycocotools' element by element.

    .venv/bin/python bench/bench_eval.py                # the full problem (pycocotools: minutes)
    .venv/bin/python bench/bench_eval.py --images 500   # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOOLS = ("pycocotools", "faster-coco-eval", "detseg", "detseg-report", "detseg-report-gallery")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _problem(args: argparse.Namespace):
    from detseg.eval.synthetic import make_large_problem

    return make_large_problem(seed=args.seed, n_images=args.images, n_cats=args.cats,
                              dets_per_image=args.dets)


def synthetic_image(index: int, h: int, w: int) -> np.ndarray:
    """A deterministic photo-like (H, W, 3) uint8 RGB image: smooth colour fields plus grain
    (pure noise would make JPEG thumbnails unrealistically large, flat colour too small)."""
    import cv2

    rng = np.random.default_rng(index)
    low = rng.integers(0, 256, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def gallery_report(ev, folder: Path) -> tuple[int, float, int]:
    """The full report with the error gallery over in-memory images: (HTML bytes, CPU
    seconds spent making images (what reading them from disk would cost instead), images)."""
    import threading

    from detseg.eval.report import write_report

    hw = ev.gt.image_hw
    spent = [0.0, 0]
    lock = threading.Lock()

    def load(i: int) -> np.ndarray:
        t = time.thread_time()
        img = synthetic_image(i, int(hw[i, 0]) or 480, int(hw[i, 1]) or 640)
        with lock:
            spent[0] += time.thread_time() - t
            spent[1] += 1
        return img

    files = write_report(ev, folder, gallery=3, load_image=load)
    return files["html"].stat().st_size, spent[0], spent[1]


def worker(tool: str, args: argparse.Namespace, out: Path) -> None:
    """Run one tool on the problem; write its timing, memory and arrays under ``out``."""
    gt, res = _problem(args)
    # imports outside the timed part: each tool's time is evaluation only
    if tool == "pycocotools":
        import pycocotools.coco  # noqa: F401
        import pycocotools.cocoeval  # noqa: F401
    elif tool == "faster-coco-eval":
        import faster_coco_eval  # noqa: F401
    else:
        import detseg.eval.metrics  # noqa: F401
    base = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    sink = io.StringIO()
    if tool == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(sink):
            c = COCO()
            c.dataset = gt
            c.createIndex()
            e = COCOeval(c, c.loadRes(res), "bbox")
            e.evaluate()
            e.accumulate()
            e.summarize()
        arrays, stats = e.eval, np.asarray(e.stats)
    elif tool == "faster-coco-eval":
        import warnings

        from faster_coco_eval import COCO as FCOCO
        from faster_coco_eval import COCOeval_faster

        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = FCOCO(gt)
            e = COCOeval_faster(c, c.loadRes(res), "bbox")
            e.evaluate()
            e.accumulate()
            e.summarize()
        arrays, stats = e.eval, np.asarray(e.stats[:12])
    else:
        from detseg.eval.metrics import evaluate

        ev = evaluate(gt, res, "bbox")
        html_bytes = image_s = n_images = None
        if tool == "detseg-report-gallery":
            with tempfile.TemporaryDirectory() as d:
                html_bytes, image_s, n_images = gallery_report(ev, Path(d))
        if tool == "detseg-report":
            from detseg.eval.report import write_report

            with tempfile.TemporaryDirectory() as d:
                write_report(ev, Path(d))
        arrays = {"precision": ev.precision, "recall": ev.recall, "scores": ev.scores}
        stats = ev.stats
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.savez(out / f"{tool}.npz", stats=stats, precision=arrays["precision"],
             recall=arrays["recall"], scores=arrays["scores"])
    (out / f"{tool}.json").write_text(json.dumps(
        {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak, "problem_rss_mb": base,
         **({"html_bytes": html_bytes, "image_cpu_s": image_s, "n_images": n_images}
            if tool == "detseg-report-gallery" else {})}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--cats", type=int, default=80)
    ap.add_argument("--dets", type=int, default=100, help="detections per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args, Path(args.out))
        return

    gt, res = _problem(args)
    n_crowd = sum(a["iscrowd"] for a in gt["annotations"])
    print(f"problem: {len(gt['images'])} images, {len(gt['categories'])} categories, "
          f"{len(gt['annotations'])} GT boxes ({n_crowd} crowd), {len(res)} detections, "
          f"seed {args.seed}")
    del gt, res
    tools = args.tools.split(",")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        rows = {}
        for tool in tools:
            cmd = [sys.executable, __file__, "--worker", tool, "--out", d, "--images", str(args.images),
                   "--cats", str(args.cats), "--dets", str(args.dets), "--seed", str(args.seed)]
            subprocess.run(cmd, check=True)
            rows[tool] = json.loads((out / f"{tool}.json").read_text())
            print(f"  {tool:<17} {rows[tool]['seconds']:8.2f} s wall, {rows[tool]['cpu_seconds']:8.2f} s CPU",
                  flush=True)
        ref = np.load(out / "pycocotools.npz") if "pycocotools" in rows else None
        base = rows.get("pycocotools")
        print(f"\n{'tool':<17} {'wall s':>8} {'CPU s':>8} {'x faster (wall)':>16} {'x faster (CPU)':>15} "
              f"{'peak RSS MB':>12} {'(eval only)':>11}  identical to pycocotools")
        for tool, r in rows.items():
            same = "-"
            if ref is not None and tool != "pycocotools":
                got = np.load(out / f"{tool}.npz")
                diffs = {k: float(np.abs(got[k] - ref[k]).max()) for k in
                         ("stats", "precision", "recall", "scores")}
                same = "yes (0 difference)" if not any(diffs.values()) else \
                    "NO: max |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
            sw = f"{base['seconds'] / r['seconds']:.1f}x" if base else "-"
            sc = f"{base['cpu_seconds'] / r['cpu_seconds']:.1f}x" if base else "-"
            mem = r["peak_rss_mb"] - r["problem_rss_mb"]
            print(f"{tool:<17} {r['seconds']:8.2f} {r['cpu_seconds']:8.2f} {sw:>16} {sc:>15} "
                  f"{r['peak_rss_mb']:>12.0f} {mem:>11.0f}  {same}")
        if "detseg" in rows and "detseg-report" in rows:
            d, dr = rows["detseg"], rows["detseg-report"]
            print(f"\nfull report / metrics: {dr['seconds'] / d['seconds']:.2f}x wall, "
                  f"{dr['cpu_seconds'] / d['cpu_seconds']:.2f}x CPU (target <= 5x)")
        if "detseg" in rows and "detseg-report-gallery" in rows:
            d, dg = rows["detseg"], rows["detseg-report-gallery"]
            print(f"full report + error gallery / metrics: {dg['seconds'] / d['seconds']:.2f}x wall, "
                  f"{dg['cpu_seconds'] / d['cpu_seconds']:.2f}x CPU (target <= 5x); report.html "
                  f"{dg['html_bytes'] / 1e6:.1f} MB (target < 20 MB)")
            rest = dg["cpu_seconds"] - dg["image_cpu_s"]
            print(f"  of which making {dg['n_images']} images (stands for reading them): "
                  f"{dg['image_cpu_s']:.2f} s CPU; without it {rest / d['cpu_seconds']:.2f}x CPU")
        print("The machine is shared: CPU seconds (time.process_time) are less sensitive to other "
              "load than wall seconds.")
        print("Peak RSS counts the whole worker process including the in-memory problem; "
              "'eval only' is the peak minus the RSS after building the problem.")


if __name__ == "__main__":
    main()
