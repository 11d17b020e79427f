"""The Ray engine against the local engine, on the same images in the same run.

Throughput: `run_predict` over the same >= 200 images (copies of the 11 real COCO images,
YOLOX-Nano asset, ``--head yolox --conf 0.001 --iou 0.65 --max-det 100``; or the embedded
shapes model on generated images with ``--model builtin``) with

- **local**: the local engine (its default: 2 inference threads on a >= 2-core CPU);
- **ray N**: the Ray engine with N actors (default 1 and 2), on one local Ray started once
  here with this machine's CPUs. Ray's start-up (``ray.init``) is printed apart.

Two figures per run: **total** (first image to results file written, actor start-up and
model loading in the actors included; local model loading excluded) and **steady** (images/s
between the first and the last journal line: what a long run sees once started). Printed:
the ratio ray / local of each, as the median over ``--repeat`` interleaved rounds. Target on
2 cores: steady ray / local >= 0.8.

Driver memory (``--memory-images N``): N tiny images through a fake detector writing 20
records per image (the driver's work without the model's): peak RSS of the driver process
during the run and the final write, against a run of N/10 images: flat means the journal and
the writer hold no record in memory.

    .venv/bin/python bench/bench_ray.py [--copies 20] [--actors 1,2] [--repeat 2]
    .venv/bin/python bench/bench_ray.py --memory-images 20000 [--engine local|ray]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ASSETS = ROOT.parent / "shared" / "assets"


class JournalWatch:
    """Times of the first and last journal lines of a run (polled every 5 ms)."""

    def __init__(self, journal: Path):
        self.journal, self.first, self.last, self.lines = journal, None, None, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.journal.read_bytes().count(b"\n") - 1
            except OSError:
                n = 0
            now = time.perf_counter()
            if n >= 1 and self.first is None:
                self.first, self.first_n = now, n
            if n > self.lines:
                self.lines, self.last = n, now
            time.sleep(0.005)

    def __enter__(self) -> JournalWatch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    def steady(self) -> float:
        if self.first is None or self.last is None or self.last <= self.first:
            return float("nan")
        return (self.lines - self.first_n) / (self.last - self.first)


def _images(folder: Path, copies: int, model: str) -> tuple[Path, dict]:
    if model == "builtin":
        from detseg.data.shapes import generate_shapes
        from detseg.weights.builtin import default_detector

        generate_shapes(folder / "shapes", copies * 11, 7)
        return folder / "shapes" / "images", {"model": default_detector()}
    src = ASSETS / "coco-val-11" / "images"
    if not src.is_dir():
        sys.exit(f"real assets not found at {ASSETS}; use --model builtin")
    out = folder / "images"
    out.mkdir()
    for c in range(copies):
        for p in sorted(src.iterdir()):
            shutil.copy(p, out / f"{c:03d}_{p.name}")
    return out, {"model": ASSETS / "models" / "yolox_nano.onnx", "head": "yolox", "conf": 0.001,
                 "iou": 0.65, "max_det": 100}


def _run(folder: Path, out: Path, kw: dict, **engine) -> tuple[float, float, int]:
    from detseg.pipeline.batch import run_predict
    from detseg.pipeline.journal import journal_path_for

    kw = dict(kw)
    model = kw.pop("model")
    with JournalWatch(journal_path_for(out)) as watch:
        t0 = time.perf_counter()
        s = run_predict(model, folder, out, progress=False, resume=False, **kw, **engine)
        total = time.perf_counter() - t0 - s.load_s  # Ray's start-up and local loading out
    return s.done / total, watch.steady(), s.done


def throughput(args: argparse.Namespace) -> None:
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        folder, kw = _images(tmp, args.copies, args.model)
        n = len(list(folder.iterdir()))
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        ray.data.range(1).take_all()  # Ray Data's own first-use set-up
        start = time.perf_counter() - t0
        print(f"{n} images, model {Path(kw['model']).name}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"Ray start-up (ray.init + first Ray Data job): {start:.1f} s (printed apart, "
              "not in any figure below)")
        actors = [int(a) for a in args.actors.split(",")]
        rows: dict[str, list[tuple[float, float]]] = {"local": []}
        rows.update({f"ray {a}": [] for a in actors})
        ratios: dict[str, list[tuple[float, float]]] = {k: [] for k in rows if k != "local"}
        for r in range(args.repeat):
            local = _run(folder, tmp / "local.json", kw)
            rows["local"].append(local[:2])
            for a in actors:
                res = _run(folder, tmp / f"ray{a}.json", kw, engine="ray", actors=a)
                rows[f"ray {a}"].append(res[:2])
                ratios[f"ray {a}"].append((res[0] / local[0], res[1] / local[1]))
            print(f"round {r + 1}: " + ", ".join(
                f"{k} {v[-1][0]:.2f}/{v[-1][1]:.2f}" for k, v in rows.items()) +
                " images/s (total/steady)", flush=True)
        print(f"\n{'engine':10s} {'total img/s':>12s} {'steady img/s':>13s} "
              f"{'total ratio':>12s} {'steady ratio':>13s}")
        for k, v in rows.items():
            best_total, best_steady = max(x[0] for x in v), max(x[1] for x in v)
            if k == "local":
                print(f"{k:10s} {best_total:12.2f} {best_steady:13.2f} {'1.00':>12s} {'1.00':>13s}")
                continue
            rt = statistics.median(x[0] for x in ratios[k])
            rs = statistics.median(x[1] for x in ratios[k])
            print(f"{k:10s} {best_total:12.2f} {best_steady:13.2f} {rt:12.2f} {rs:13.2f}")
        print("(best pass of each; ratios: median over rounds of ray / local in the same round; "
              "target steady >= 0.8)")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


# ---- driver memory --------------------------------------------------------------------------
class RssWatch:
    """Peak resident memory of this process, sampled every 20 ms."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak = psutil.Process(), 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> RssWatch:
        self.peak = self.proc.memory_info().rss
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def memory(args: argparse.Namespace) -> None:
    import cv2
    import numpy as np

    from detseg.pipeline.batch import run_predict
    from tests.pipeline.fake_detector import FakeDetector, FakeLoader

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-mem-"))
    try:
        n = args.memory_images
        folder = tmp / "tiny"
        rng = np.random.default_rng(0)
        for i in range(n):
            sub = folder / f"{i // 1000:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(sub / f"{i:06d}.png"), rng.integers(0, 256, (8, 8, 3), np.uint8))
        small = tmp / "small"
        for p in sorted(folder.rglob("*.png"))[: n // 10]:
            (small / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, small / p.parent.name / p.name)
        if args.engine == "ray":
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        print(f"engine {args.engine}; fake detector, 20 records per image; load average "
              f"{os.getloadavg()[0]:.1f}")
        for src, label in ((small, f"{n // 10} images"), (folder, f"{n} images")):
            model = (FakeLoader(records=20) if args.engine == "ray"
                     else FakeDetector(records=20))
            out = tmp / f"{src.name}.json"
            with RssWatch() as w:
                before = w.peak
                t0 = time.perf_counter()
                s = run_predict(model, src, out, progress=False, conf=0.0, batch_size=32,
                                resume=False, engine=args.engine)
                dt = time.perf_counter() - t0
            print(f"{label}: {s.detections} records, results {out.stat().st_size / 2**20:.1f} "
                  f"MiB, driver RSS before {before / 2**20:.0f} MiB, peak {w.peak / 2**20:.0f} "
                  f"MiB (+{(w.peak - before) / 2**20:.0f} MiB), {dt:.0f} s", flush=True)
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=20, help="copies of the 11 COCO images")
    ap.add_argument("--model", default="yolox", choices=["yolox", "builtin"])
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--memory-images", type=int, default=0)
    ap.add_argument("--engine", default="local", choices=["local", "ray"])
    args = ap.parse_args()
    memory(args) if args.memory_images else throughput(args)


if __name__ == "__main__":
    main()
