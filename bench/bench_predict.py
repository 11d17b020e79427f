"""Throughput of detseg's batch runner on CPU against its bound and against Ultralytics.

For each model and batch size, on the same images and the same ONNX file, it measures
images/s of:

- **bound**: a bare loop of ``InferenceSession.run`` on tensors prepared beforehand (no
  reading, no pre- or post-processing: what no runner can beat). The tensors are the very
  ones `run_predict` feeds the model, recorded from one detseg run: same batches, same input
  sizes (on the dynamic-size YOLOv8n, images grouped by their minimum rectangle, e.g.
  640x480 or 448x640, as detseg does), so the bound does exactly detseg's model work;
- **detseg**: `run_predict` from image files to a written COCO results JSON (reading,
  letterbox, inference, NMS, encoding, journal), model loading excluded; with one worker
  and onnxruntime's default threads ("w1"), and with ``workers=2``, two model calls at once
  with half the cores each ("w2": what `detseg predict` does by default on a CPU with >= 2
  cores);
- **ultralytics**: ``YOLO(onnx).predict(paths, batch=B, stream=True)`` from the same files,
  model loading and its first call excluded (Ultralytics-exported models only).

Models: YOLOv8n built from ``yolov8n.yaml`` (no pretrained weights, none can be downloaded
here), exported by Ultralytics at 640 with a dynamic batch in a temporary folder: the network's
cost is that of the real model, but its freshly initialised class scores stay below 0.001, so
no box reaches NMS for either contender (post-processing is light); and the YOLOX-Nano asset
(416, fixed batch 1, real COCO weights: real detections, real NMS work).

Rows with real detections at eval settings (``--eval-rows``; conf 0.001, max_det 100, the
coco-eval preset's IoU): the embedded YOLOv8n-seg (320, trained on the synthetic shapes, masks
for every box) on a held-out shapes split generated in the run (``--shapes`` images, seed
20261129), against Ultralytics' predictor on the same ONNX file; and the YOLOX-Nano asset on
the COCO images (Ultralytics cannot run YOLOX: bound only). Target: detseg w2 /
ultralytics >= 1.5 on the seg row.

The contenders' timed passes are interleaved, in an order that rotates each round,
``--repeat`` rounds. Printed: images/s of the
best pass of each, and each ratio as the median over rounds of detseg / contender measured in
the same round (on a shared machine, load drifts between rounds; a ratio of neighbouring
passes is steadier than a ratio of bests). Targets: detseg/bound >= 0.90, detseg/ultralytics
>= 1.3. "bound" is one sequential loop with the default threads; w2 runs two calls at once,
so it can pass that bound: "bound w2" is its own bound, two threads each running a bare loop
over half the tensors on a session with half the cores.

    .venv/bin/python bench/bench_predict.py [--copies 2] [--repeat 5] [--batches 1,8]
    .venv/bin/python bench/bench_predict.py --eval-rows --only-eval-rows --batches 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"


def make_images(folder: Path, copies: int) -> list[Path]:
    """``copies`` copies of the 11 COCO val images (different names, same pixels)."""
    src = sorted((ASSETS / "coco-val-11" / "images").glob("*.jpg"))
    if not src:
        sys.exit(f"bench_predict: no images at {ASSETS / 'coco-val-11' / 'images'}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(copies):
        for p in src:
            dst = folder / f"{k}_{p.name}"
            shutil.copyfile(p, dst)
            paths.append(dst)
    return sorted(paths)


def export_yolov8n(workdir: Path) -> Path:
    """Ultralytics' own ONNX export of yolov8n.yaml (random weights), imgsz 640, dynamic batch."""
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(workdir / "yolo_config"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model = YOLO("yolov8n.yaml")
            onnx = model.export(format="onnx", imgsz=640, dynamic=True, simplify=True, opset=17)
    finally:
        os.chdir(cwd)
    return (workdir / onnx).resolve()


def bare_session(onnx: Path, threads: int | None):
    """An onnxruntime session with the same options detseg's Session uses."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])


def time_bound(session, tensors: list[np.ndarray], n_images: int) -> float:
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) else None
    t0 = time.perf_counter()
    for x in tensors:
        if fixed is None or len(x) == fixed:
            session.run(None, {name: x})
        else:  # a fixed-batch model gets its batch in fixed-size pieces
            for i in range(0, len(x), fixed):
                session.run(None, {name: x[i: i + fixed]})
    return n_images / (time.perf_counter() - t0)


def time_bound_parallel(session, tensors: list[np.ndarray], n_images: int,
                        workers: int = 2) -> tuple[float, None]:
    """The bound of ``workers=2``: ``workers`` threads, each a bare loop over its share."""
    import threading

    shares = [tensors[i::workers] for i in range(workers)]
    threads = [threading.Thread(target=time_bound, args=(session, share, 1)) for share in shares]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n_images / (time.perf_counter() - t0), None


def time_bound_pair(session, tensors: list[np.ndarray], n_images: int) -> tuple[float, None]:
    return time_bound(session, tensors, n_images), None


def fed_tensors(detector, folder: Path, out: Path, batch: int, settings: dict) -> list[np.ndarray]:
    """The tensors `run_predict` feeds ``detector`` on ``folder`` (its batches and input
    sizes), recorded during one untimed run."""
    from detseg.pipeline.batch import run_predict

    seen: list[np.ndarray] = []
    preprocess = detector.preprocess

    def record(images):
        tensor, transforms = preprocess(images)
        seen.append(tensor)
        return tensor, transforms

    detector.preprocess = record  # an instance attribute, removed below
    try:
        run_predict(detector, folder, out, batch_size=batch, progress=False, resume=False,
                    **settings)
    finally:
        del detector.preprocess
    return seen


def time_detseg(detector, folder: Path, out: Path, batch: int, settings: dict,
                workers: int = 1) -> tuple[float, int]:
    from detseg.pipeline.batch import run_predict

    t0 = time.perf_counter()
    s = run_predict(detector, folder, out, batch_size=batch, progress=False, resume=False,
                    workers=workers, **settings)
    wall = time.perf_counter() - t0 - s.load_s  # warm-up excluded, as for the others
    if s.failed or s.done != s.total:
        sys.exit(f"bench_predict: detseg run incomplete: {s.format()}")
    return s.total / wall, s.detections


def make_shapes(folder: Path, n: int) -> list[Path]:
    """A held-out split of the synthetic shapes (a seed the embedded model never saw)."""
    from detseg.data.shapes import generate_shapes

    generate_shapes(folder, n, 20261129)
    return sorted((folder / "images").glob("*.jpg"))


def time_ultralytics(model, paths: list[Path], batch: int, settings: dict,
                     rect: bool, imgsz: int = 640) -> tuple[float, int]:
    """``rect=True`` is Ultralytics' default: a dynamic-shape ONNX model gets each batch of
    equal-shape images letterboxed to the smallest stride multiple (640x480 for a 4:3 photo),
    not to 640x640, which is less work than detseg's square input."""
    n_det = 0
    t0 = time.perf_counter()
    for r in model.predict([str(p) for p in paths], batch=batch, stream=True, verbose=False,
                           conf=settings["conf"], iou=settings["iou"], max_det=settings["max_det"],
                           imgsz=imgsz, device="cpu", rect=rect):
        n_det += len(r.boxes)
    return len(paths) / (time.perf_counter() - t0), n_det


def bench_model(name: str, onnx: Path, head: str | None, paths: list[Path], folder: Path,
                batches: list[int], repeat: int, threads: int | None, ultra, settings: dict,
                tmp: Path, imgsz: int = 640) -> list[dict]:
    from detseg.data.images import read_image
    from detseg.pipeline.detector import Detector

    detector = Detector.load(onnx, head=head, device="cpu", threads=threads)
    # `--workers 2`: two model calls at once, each with half the cores (what run_predict
    # does by itself when it loads the model with workers=2 and no thread count).
    half = max(1, (os.cpu_count() or 1) // 2) if threads is None else threads
    detector_w2 = Detector.load(onnx, head=head, device="cpu", threads=half)
    session = bare_session(onnx, threads)
    session_half = bare_session(onnx, half)
    images = [read_image(p) for p in paths]
    rows = []
    for b in batches:
        out = tmp / "results.json"
        tensors = fed_tensors(detector, folder, out, b, settings)
        if sum(len(x) for x in tensors) != len(images):
            sys.exit("bench_predict: the recorded tensors do not cover every image")
        pixels = sum(x.shape[0] * x.shape[2] * x.shape[3] for x in tensors) / len(images)
        full = detector.meta.imgsz[0] * detector.meta.imgsz[1]
        shapes = sorted({x.shape[2:] for x in tensors})
        contenders = {
            "bound": partial(time_bound_pair, session, tensors, len(images)),
            "detseg": partial(time_detseg, detector, folder, out, b, settings, workers=1),
            "detseg_w2": partial(time_detseg, detector_w2, folder, out, b, settings, workers=2),
            "bound_w2": partial(time_bound_parallel, session_half, tensors, len(images)),
        }
        if ultra is not None:
            contenders["ultralytics"] = partial(time_ultralytics, ultra, paths, b, settings, True,
                                                imgsz)
            contenders["ultralytics_square"] = partial(time_ultralytics, ultra, paths, b,
                                                       settings, False, imgsz)
        time_bound(session, tensors[:1], 1)  # warm-ups
        time_bound(session_half, tensors[:1], 1)
        detector.warmup()
        detector_w2.warmup()
        if ultra is not None:
            ultra.predict(str(paths[0]), verbose=False, imgsz=imgsz, device="cpu", batch=b)
        runs: dict[str, list[float]] = {k: [] for k in contenders}
        dets: dict[str, int | None] = {}
        names = list(contenders)
        for r in range(repeat):
            # Interleaved, and the order rotates each round, so that no contender always runs
            # first (or last) when the shared machine's load drifts.
            for key in names[r % len(names):] + names[: r % len(names)]:
                ips, dets[key] = contenders[key]()
                runs[key].append(ips)
        rows.append({"model": name, "batch": b, "runs": runs, "dets": dets,
                     "fed": f"{len(tensors)} calls, input sizes {shapes}, "
                            f"{pixels / full:.3f} of imgsz pixels per image"})
    return rows


def eval_rows(args, batches: list[int], tmp: Path, coco_paths: list[Path],
              coco_folder: Path) -> list[dict]:
    """Rows with real detections at eval settings (see the module docstring)."""
    from detseg.pipeline.settings import resolve_settings
    from detseg.weights.builtin import default_detector

    rows = []
    seg = default_detector()
    shapes_folder = tmp / "shapes"
    shapes = make_shapes(shapes_folder, args.shapes)
    seg_settings = resolve_settings("coco-eval", "ultralytics")
    print(f"eval rows: {len(shapes)} held-out shapes images (320x320) for the embedded seg "
          f"model, settings {seg_settings}; YOLOX-Nano on the COCO images, "
          f"{resolve_settings('coco-eval', 'yolox')}")
    ultra = None
    if not args.no_ultralytics and "seg" in args.eval_models:
        os.environ.setdefault("YOLO_AUTOINSTALL", "false")
        os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp / "yolo_config"))
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        ultra = YOLO(str(seg), task="segment")
    wanted = set(args.eval_models.split(","))
    if "seg" in wanted:
        rows += bench_model("yolov8n-seg shapes (embedded, 320), eval settings", seg, None,
                            shapes, shapes_folder / "images", batches, args.repeat, args.threads,
                            ultra, seg_settings, tmp, imgsz=320)
    if "yolox" in wanted:
        yolox = ASSETS / "models" / "yolox_nano.onnx"
        rows += bench_model("yolox_nano asset (416, fixed batch 1), eval settings", yolox,
                            "yolox", coco_paths, coco_folder, batches, args.repeat, args.threads,
                            None, resolve_settings("coco-eval", "yolox"), tmp)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=2, help="copies of the 11 images (default 2)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--batches", default="1,8", help="batch sizes (default 1,8)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--no-ultralytics", action="store_true", help="YOLOX asset only")
    ap.add_argument("--eval-rows", action="store_true",
                    help="add rows with real detections at eval settings (embedded seg model on "
                         "a shapes split vs Ultralytics; YOLOX-Nano)")
    ap.add_argument("--only-eval-rows", action="store_true", help="only the --eval-rows rows")
    ap.add_argument("--shapes", type=int, default=60, help="shapes images (default 60)")
    ap.add_argument("--eval-models", default="seg,yolox",
                    help="which eval rows: seg, yolox or both (default seg,yolox)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    settings = {"conf": 0.25, "iou": 0.7, "max_det": 300}

    with tempfile.TemporaryDirectory(prefix="detseg-bench-") as tmp_str:
        tmp = Path(tmp_str)
        folder = tmp / "images"
        paths = make_images(folder, args.copies)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
              f"CPUs, load average {os.getloadavg()[0]:.2f}; python {platform.python_version()}")
        print(f"images: {len(paths)} ({args.copies} x 11 COCO val JPEGs); conf {settings['conf']}, "
              f"iou {settings['iou']}, max_det {settings['max_det']}; {args.repeat} rounds")
        rows = []
        if args.eval_rows or args.only_eval_rows:
            rows += eval_rows(args, batches, tmp, paths, folder)
        if args.only_eval_rows:
            pass
        elif not args.no_ultralytics:
            onnx = export_yolov8n(tmp)
            from ultralytics import YOLO

            ultra = YOLO(str(onnx), task="detect")
            rows += bench_model("yolov8n (Ultralytics export, 640, dynamic batch)", onnx, None,
                                paths, folder, batches, args.repeat, args.threads, ultra,
                                settings, tmp)
        if not args.only_eval_rows:
            yolox = ASSETS / "models" / "yolox_nano.onnx"
            rows += bench_model("yolox_nano asset (416, fixed batch 1)", yolox, "yolox", paths,
                                folder, batches, args.repeat, args.threads, None, settings, tmp)

    print()
    keys = ["bound", "bound_w2", "detseg", "detseg_w2", "ultralytics", "ultralytics_square"]
    print("| model | batch | bound | bound w2 | detseg w1 | detseg w2 (CLI default) | ultralytics "
          "(default, rect) | ultralytics (square) | w1/bound | w2/bound | w2/bound w2 "
          "| w1/ultralytics | w2/ultralytics | w2/ultralytics square |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        runs = r["runs"]

        def ratio(a: str, b: str, runs=runs) -> str:
            if not runs.get(a) or not runs.get(b):
                return "-"
            return f"{statistics.median(x / y for x, y in zip(runs[a], runs[b], strict=True)):.2f}"

        cells = [f"{max(runs[k]):.2f}" if runs.get(k) else "-" for k in keys]
        ratios = [ratio("detseg", "bound"), ratio("detseg_w2", "bound"),
                  ratio("detseg_w2", "bound_w2"), ratio("detseg", "ultralytics"),
                  ratio("detseg_w2", "ultralytics"), ratio("detseg_w2", "ultralytics_square")]
        print(f"| {r['model']} | {r['batch']} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    print("(images/s: best pass; ratios: median over passes of detseg / the contender in the "
          "same pass)")
    print()
    for r in rows:
        print(f"detections ({r['model']}, batch {r['batch']}): {r['dets']}")
        print(f"detseg/bound fed ({r['model']}, batch {r['batch']}): {r['fed']}")


if __name__ == "__main__":
    main()
