"""Benchmark `detseg eval` end to end (file paths in, the 12 stats out) against its peers.

Two seeded problems, written once as JSON files (the json module's formatting):
- bbox: 5,000 images, 80 categories, ~36k ground-truth boxes (1% crowd), 500k detections;
- segm: 500 images, ~3.6k polygon ground-truth masks, 50k compressed-RLE detections.
Every tool runs in its own subprocess (its peak RSS is its own), from the two file paths,
including JSON parsing and whatever checking it does:
- pycocotools (the 1x baseline): COCO(gt) + loadRes(res) + evaluate/accumulate/summarize;
- faster-coco-eval: the same with its COCO and COCOeval_faster;
- hotcoco: its COCO(gt) + loadRes(res) + COCOeval;
- detseg: `detseg.eval.evaluate(gt_path, res_path)` (parsing, validation, metrics);
- detseg-report (only when named in --tools): the same plus the full report of
  `detseg eval --out DIR` (tables, P/R/F1, confusion matrix, TIDE-style errors, plots, HTML);
- detseg-report-gallery (only when named in --tools): the same with the HTML's error gallery
  (3 examples per class and error type, 12 image views), its images read from JPEG files
  (`--images DIR`, as a user's run reads them); the files are written once per problem,
  outside the timing (`synthetic_image`: photo-like texture, JPEG quality 90, ~110 KB at
  640x480, about a COCO photo's size); the HTML's size and, measured apart after the run, the
  CPU time of reading the images the gallery needed, are printed.
"metrics" is the step after loading: pycocotools' COCOeval evaluate/accumulate/summarize
from built COCO objects, detseg's `evaluate` from loaded `GroundTruth`/`Results`.
Every tool's precision/recall/scores and stats are compared with pycocotools' element by element.
Times are medians over --repeat runs (pycocotools: --pyco-repeat).

    .venv/bin/python bench/bench_eval.py                      # both problems, every tool
    .venv/bin/python bench/bench_eval.py --problems segm --tools hotcoco,detseg
    .venv/bin/python bench/bench_eval.py --memory 2000000     # detseg's peak RSS on 2M records
    .venv/bin/python bench/bench_eval.py --problems bbox --tools detseg,detseg-report
    .venv/bin/python bench/bench_eval.py --problems bbox --tools detseg,detseg-report,detseg-report-gallery
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: tests.eval.synthetic (a test fixture, not in the wheel)

TOOLS = ("pycocotools", "faster-coco-eval", "hotcoco", "detseg")
PROBLEMS = {"bbox": {"n_images": 5000, "dets_per_image": 100},
            "segm": {"n_images": 500, "dets_per_image": 100}}


def write_problem(kind: str, folder: Path, seed: int, n_images: int, dets: int) -> tuple[Path, Path]:
    """Write the problem's two JSON files (in a subprocess: on Linux a child inherits its
    parent's peak RSS, so the parent stays small to keep every tool's peak its own)."""
    gt_path, res_path = folder / f"{kind}_gt.json", folder / f"{kind}_res.json"
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "from tests.eval.synthetic import make_large_problem, make_large_segm_problem; "
            "make = make_large_segm_problem if sys.argv[2] == 'segm' else make_large_problem; "
            "gt, res = make(seed=int(sys.argv[3]), n_images=int(sys.argv[4]), dets_per_image=int(sys.argv[5])); "
            "open(sys.argv[6], 'w').write(json.dumps(gt)); open(sys.argv[7], 'w').write(json.dumps(res))")
    subprocess.run([sys.executable, "-c", code, str(ROOT), kind, str(seed), str(n_images), str(dets),
                    str(gt_path), str(res_path)], check=True)
    return gt_path, res_path


def synthetic_image(index: int, h: int, w: int) -> np.ndarray:
    """A deterministic photo-like (H, W, 3) uint8 RGB image: smooth colour fields plus grain
    (pure noise would make JPEG thumbnails unrealistically large, flat colour too small)."""
    import cv2

    rng = np.random.default_rng(index)
    low = rng.integers(0, 256, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(gt_path: Path, folder: Path) -> Path:
    """The ground truth's images as JPEG files in ``folder`` (once; in a subprocess, to keep
    the parent's peak RSS small)."""
    if (folder / "done").exists():
        return folder
    code = ("import json, sys, cv2; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from bench_eval import synthetic_image; out = Path(sys.argv[3]); out.mkdir(exist_ok=True)\n"
            "for im in json.load(open(sys.argv[2]))['images']:\n"
            "    rgb = synthetic_image(im['id'], im['height'], im['width'])\n"
            "    cv2.imwrite(str(out / im['file_name']), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])\n"
            "(out / 'done').touch()")
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(gt_path), str(folder)],
                   check=True)
    return folder


def gallery_report(ev, folder: Path, images: Path) -> tuple[int, list[int]]:
    """The full report with the error gallery, images read from ``images``: (HTML bytes,
    the image indices the gallery drew)."""
    from detseg.eval.report import write_report

    files = write_report(ev, folder, gallery=3, images_dir=images)
    g = json.loads(files["json"].read_text())["gallery"]
    views = {r["img"] for r in g["images"][:g["n_views"]]}  # the costliest images, all readable here
    return files["html"].stat().st_size, sorted({e["image"] for e in g["examples"]} | views)


EXTRA: dict = {}  # figures a tool adds to its row (the gallery's HTML size)
AFTER: dict = {}  # what the worker measures after the timed run (the gallery's image reading)


def _run_tool(tool: str, gt: str, res: str, iou_type: str, images_dir: str | None = None):
    """(stats, arrays, seconds of the metrics step) of one tool, from the two paths."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if tool in ("detseg", "detseg-report", "detseg-report-gallery"):
            from detseg.eval.loader import load_ground_truth, load_results
            from detseg.eval.metrics import evaluate

            g = load_ground_truth(gt, iou_type)
            r = load_results(res, g, iou_type)
            t = time.perf_counter()
            ev = evaluate(g, r, iou_type)
            inner = time.perf_counter() - t
            if tool == "detseg-report":  # everything `detseg eval --out DIR` writes
                from detseg.eval.report import write_report

                with tempfile.TemporaryDirectory() as d:
                    write_report(ev, Path(d))
            if tool == "detseg-report-gallery":
                with tempfile.TemporaryDirectory() as d:
                    html_bytes, drawn = gallery_report(ev, Path(d), Path(images_dir))
                EXTRA.update(html_bytes=html_bytes, n_images=len(drawn))
                AFTER.update(ev=ev, drawn=drawn)
            return ev.stats, {k: getattr(ev, k) for k in ("precision", "recall", "scores")}, inner
        if tool == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        elif tool == "faster-coco-eval":
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval
        else:
            from hotcoco import COCO, COCOeval
        c = COCO(gt)
        d = c.loadRes(res)
        t = time.perf_counter()
        e = COCOeval(c, d, iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
        inner = time.perf_counter() - t
        return np.asarray(e.stats)[:12], {k: np.asarray(e.eval[k]) for k in ("precision", "recall", "scores")}, inner


def worker(args: argparse.Namespace) -> None:
    """One tool, one problem: time from paths to stats; write the figures and arrays."""
    tool, out = args.worker, Path(args.out)
    # imports outside the timed part
    if tool.startswith("detseg"):
        import detseg.eval.metrics  # noqa: F401
    elif tool == "pycocotools":
        import pycocotools.cocoeval  # noqa: F401
    elif tool == "faster-coco-eval":
        import faster_coco_eval  # noqa: F401
    else:
        import hotcoco  # noqa: F401
    t0, c0 = time.perf_counter(), time.process_time()
    stats, arrays, inner = _run_tool(tool, args.gt, args.res, args.iou_type, args.images_dir)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if AFTER:  # reading the gallery's images alone, one by one (the page cache is warm for both)
        from detseg.eval.gallery import dataset_image_loader

        load, _, _ = dataset_image_loader(args.gt, AFTER["ev"].gt.image_ids, args.images_dir)
        c1 = time.process_time()
        for i in AFTER["drawn"]:
            load(i)
        EXTRA["image_cpu_s"] = time.process_time() - c1
    np.savez(out / f"{tool}.npz", stats=stats, **arrays)
    (out / f"{tool}.json").write_text(json.dumps(
        {"seconds": seconds, "cpu_seconds": cpu, "metrics_seconds": inner, "peak_rss_mb": peak,
         **EXTRA}))


def _spawn(tool: str, gt: Path, res: Path, iou_type: str, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", tool, "--out", str(out), "--gt", str(gt),
           "--res", str(res), "--iou-type", iou_type]
    if tool == "detseg-report-gallery":
        cmd += ["--images-dir", str(write_images(gt, out / f"{iou_type}_images"))]
    subprocess.run(cmd, check=True)
    return json.loads((out / f"{tool}.json").read_text())


def _identical(out: Path, tool: str) -> str:
    if not (out / "pycocotools.npz").exists():
        return "-"
    ref, got = np.load(out / "pycocotools.npz"), np.load(out / f"{tool}.npz")
    diffs = {k: float(np.abs(got[k] - ref[k]).max()) if got[k].shape == ref[k].shape else float("inf")
             for k in ("stats", "precision", "recall", "scores")}
    if not any(diffs.values()):
        return "yes (0 difference)"
    return "NO: max |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items() if v)


def bench_problem(kind: str, args: argparse.Namespace, folder: Path) -> dict:
    spec = PROBLEMS[kind]
    n_images = args.images if args.images else spec["n_images"]
    gt, res = write_problem(kind, folder, args.seed, n_images, spec["dets_per_image"])
    mb = res.stat().st_size / 2**20
    print(f"\n== {kind}: {n_images} images, results file {mb:.1f} MB, ground truth "
          f"{gt.stat().st_size / 2**20:.1f} MB (seed {args.seed})", flush=True)
    rows = {}
    for tool in args.tools.split(","):
        runs = []
        for _ in range(args.pyco_repeat if tool == "pycocotools" else args.repeat):
            runs.append(_spawn(tool, gt, res, kind, folder))
            print(f"  {tool:<17} {runs[-1]['seconds']:8.2f} s wall, {runs[-1]['cpu_seconds']:8.2f} s CPU, "
                  f"metrics {runs[-1]['metrics_seconds']:.2f} s", flush=True)
        rows[tool] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows[tool]["identical"] = _identical(folder, tool)
    base = rows.get("pycocotools")
    print(f"\n{kind}: medians. 'x' = pycocotools time / tool time; 'vs hotcoco' = hotcoco time / tool "
          "time (> 1: faster than hotcoco); wall and CPU (process time, all threads)")
    print(f"{'tool':<17} {'total s':>8} {'CPU s':>8} {'metrics s':>9} {'x total':>8} {'x CPU':>7} "
          f"{'x metrics':>9} {'vs hotcoco':>10} {'(CPU)':>6} {'peak MB':>8}  identical to pycocotools")
    hot = rows.get("hotcoco")
    for tool, r in rows.items():
        xt = f"{base['seconds'] / r['seconds']:.1f}x" if base else "-"
        xc = f"{base['cpu_seconds'] / r['cpu_seconds']:.1f}x" if base else "-"
        xm = f"{base['metrics_seconds'] / r['metrics_seconds']:.1f}x" if base else "-"
        vh = f"{hot['seconds'] / r['seconds']:.2f}x" if hot else "-"
        vc = f"{hot['cpu_seconds'] / r['cpu_seconds']:.2f}x" if hot else "-"
        print(f"{tool:<17} {r['seconds']:8.2f} {r['cpu_seconds']:8.2f} {r['metrics_seconds']:9.3f} "
              f"{xt:>8} {xc:>7} {xm:>9} {vh:>10} {vc:>6} {r['peak_rss_mb']:8.0f}  {r['identical']}")
    d = rows.get("detseg")
    if d and "detseg-report" in rows:
        dr = rows["detseg-report"]
        print(f"full report / evaluation, both from file paths: {dr['seconds'] / d['seconds']:.2f}x wall, "
              f"{dr['cpu_seconds'] / d['cpu_seconds']:.2f}x CPU (target <= 5x)")
    if d and "detseg-report-gallery" in rows:
        dg = rows["detseg-report-gallery"]
        print(f"full report + error gallery / evaluation, both from file paths: {dg['seconds'] / d['seconds']:.2f}x wall, "
              f"{dg['cpu_seconds'] / d['cpu_seconds']:.2f}x CPU (target <= 5x); report.html "
              f"{dg['html_bytes'] / 1e6:.1f} MB (target < 20 MB)")
        rest = dg["cpu_seconds"] - dg["image_cpu_s"]
        print(f"  reading the {dg['n_images']:.0f} images it draws, alone: {dg['image_cpu_s']:.2f} s CPU; "
              f"without it {rest / d['cpu_seconds']:.2f}x CPU")
    return rows


def bench_memory(n_records: int, args: argparse.Namespace, folder: Path) -> None:
    """detseg's peak RSS evaluating a results file of ``n_records`` boxes (100 per image)."""
    n_images = max(1, n_records // 100)
    gt, res = write_problem("bbox", folder, args.seed, n_images, 100)
    print(f"\n== memory: {n_images} images, {n_records} detections, results file "
          f"{res.stat().st_size / 2**20:.0f} MB", flush=True)
    r = _spawn("detseg", gt, res, "bbox", folder)
    print(f"detseg: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB (target <= 1024 MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="bbox,segm")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--images", type=int, default=0, help="override the number of images")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pyco-repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory", type=int, default=0, help="also measure detseg's peak RSS on this many records")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--gt", help=argparse.SUPPRESS)
    ap.add_argument("--res", help=argparse.SUPPRESS)
    ap.add_argument("--iou-type", help=argparse.SUPPRESS)
    ap.add_argument("--images-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as d:
        for kind in [p for p in args.problems.split(",") if p]:
            bench_problem(kind, args, Path(d))
        if args.memory:
            bench_memory(args.memory, args, Path(d))
    print("\nThe machine may be shared: compare ratios measured in the same run, not absolute times.")


if __name__ == "__main__":
    main()
