"""GPU check of detseg's pipeline (run by bench/gpu_check.sh; `--device cpu` is a dry run here).

Checks, on the embedded YOLOv8n-seg (320, dynamic batch) and the YOLOX-Nano asset when present:

1. **provider**: the session runs on the device's execution provider, not a silent CPU
   fallback: `Session.providers` first entry, and an onnxruntime profile of a few runs in which
   the nodes' ``provider`` field says where each kernel ran (share of kernel time on the device).
2. **equal results**: the same images predicted on the CPU and on the device: every CPU
   detection (score >= conf + 0.02, away from the threshold) has a device detection of the same
   class with boxes within 1 px and, for masks, IoU >= 0.99.
3. **throughput** at batch 1 and 32: a bare ``run_with_iobinding`` loop (input and outputs on
   the device, the bound of the model alone), detseg's `run_predict` from files, and
   Ultralytics' predictor on the same ONNX file (when ultralytics and torch are importable).
4. **TensorRT**: the same model through TensorrtExecutionProvider (engine build time and
   batch-1 speed) when that provider is available; else says why not.
5. **SAM encoder**: the embedded SAM encoder's time per image on the device and on the CPU.

Prints one line per check and writes ``gpu_check.json`` to ``--out``. Exit 1 when check 1 or
2 fails.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ASSETS = ROOT.parent / "shared" / "assets"
_CPU, _CUDA, _TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def log(msg: str) -> None:
    print(msg, flush=True)


def provider_share(model: Path, provider: str, shape: tuple[int, ...]) -> dict:
    """Share of kernel time and nodes per execution provider over 3 profiled runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.log_severity_level = 3
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "detseg_gpu_check")
    providers = [provider, _CPU] if provider != _CPU else [_CPU]
    s = ort.InferenceSession(str(model), opts, providers=providers)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(3):
        s.run(None, {s.get_inputs()[0].name: x})
    events = json.loads(Path(s.end_profiling()).read_text())
    time_by, nodes_by = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            p = e.get("args", {}).get("provider", "?")
            time_by[p] += e.get("dur", 0)
            nodes_by[p] += 1
    total = sum(time_by.values()) or 1
    return {
        "session_providers": s.get_providers(),
        "kernel_time_share": {k: round(v / total, 4) for k, v in time_by.items()},
        "kernels": dict(nodes_by),
    }


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from detseg.pipeline.postprocess import iou_one_to_many

    return iou_one_to_many(a, b) if len(b) else np.zeros(0)


def compare_devices(model: Path, head: str | None, images: list[np.ndarray], device: str,
                    conf: float = 0.25) -> dict:
    """CPU vs device detections on the same images (see the module docstring)."""
    from detseg.pipeline.detector import Detector

    cpu = Detector.load(model, head=head, device="cpu")
    dev = Detector.load(model, head=head, device=device)
    worst_px, worst_iou, missing, checked = 0.0, 1.0, 0, 0
    for im in images:
        [a] = cpu.predict([im], conf=conf)
        [b] = dev.predict([im], conf=conf)
        for i in np.flatnonzero(a.scores >= conf + 0.02):
            same = np.flatnonzero(b.class_ids == a.class_ids[i])
            ious = _box_iou(a.boxes[i], b.boxes[same])
            if not ious.size or ious.max() < 0.5:
                missing += 1
                continue
            j = same[int(ious.argmax())]
            checked += 1
            worst_px = max(worst_px, float(np.abs(a.boxes[i] - b.boxes[j]).max()))
            if a.masks is not None and b.masks is not None:
                ma, mb = a.masks_as_array()[i], b.masks_as_array()[j]
                union = np.logical_or(ma, mb).sum()
                iou = 1.0 if union == 0 else np.logical_and(ma, mb).sum() / union
                worst_iou = min(worst_iou, float(iou))
    ok = missing == 0 and checked > 0 and worst_px <= 1.0 and worst_iou >= 0.99
    return {"providers": dev.providers, "detections_checked": checked, "missing": missing,
            "max_box_diff_px": round(worst_px, 4), "min_mask_iou": round(worst_iou, 4),
            "passed": bool(ok)}


def iobinding_throughput(model: Path, provider: str, batch: int, iters: int) -> float:
    """Images/s of a bare run_with_iobinding loop, input and outputs on the device."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(model), opts,
                             providers=[provider, _CPU] if provider != _CPU else [_CPU])
    inp = s.get_inputs()[0]
    h, w = (d if isinstance(d, int) else 640 for d in inp.shape[2:4])
    where = "cuda" if provider in (_CUDA, _TRT) else "cpu"
    x = ort.OrtValue.ortvalue_from_numpy(
        np.random.default_rng(0).random((batch, 3, h, w), dtype=np.float32), where, 0)
    binding = s.io_binding()
    binding.bind_ortvalue_input(inp.name, x)
    for o in s.get_outputs():
        binding.bind_output(o.name, where)
    for _ in range(3):
        s.run_with_iobinding(binding)
    t0 = time.perf_counter()
    for _ in range(iters):
        s.run_with_iobinding(binding)
    binding.synchronize_outputs()
    return batch * iters / (time.perf_counter() - t0)


def detseg_throughput(model: Path, head: str | None, folder: Path, device: str, batch: int,
                      out: Path) -> float:
    from detseg.pipeline.batch import run_predict

    s = run_predict(model, folder, out, head=head, device=device, batch_size=batch,
                    progress=False, resume=False, preset="coco-eval")
    return s.images_per_s


def ultralytics_throughput(model: Path, paths: list[Path], device: str, batch: int,
                           imgsz: int) -> float | str:
    try:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_AUTOINSTALL", "false")
        os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="detseg-yolo-"))
        from ultralytics import YOLO
    except Exception as exc:  # noqa: BLE001 - reported, not raised: optional contender
        return f"not run: ultralytics not importable ({type(exc).__name__}: {exc})"
    dev = 0 if device == "cuda" else "cpu"
    y = YOLO(str(model), task="segment")
    kw = dict(batch=batch, verbose=False, imgsz=imgsz, device=dev, conf=0.001, iou=0.7,
              max_det=100)
    list(y.predict([str(p) for p in paths[:batch]], stream=True, **kw))  # warm-up
    t0 = time.perf_counter()
    n = sum(1 for _ in y.predict([str(p) for p in paths], stream=True, **kw))
    return n / (time.perf_counter() - t0)


def tensorrt_check(model: Path, iters: int) -> dict:
    import onnxruntime as ort

    if _TRT not in ort.get_available_providers():
        return {"status": "TensorrtExecutionProvider not in this onnxruntime build"}
    from detseg.errors import ModelError
    from detseg.pipeline.session import probe_cuda

    reason = probe_cuda(tensorrt=True)
    if reason:
        return {"status": f"not usable: {reason}"}
    cache = tempfile.mkdtemp(prefix="detseg-trt-")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    t0 = time.perf_counter()
    try:
        trt = (_TRT, {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                      "trt_profile_min_shapes": "images:1x3x320x320",
                      "trt_profile_opt_shapes": "images:1x3x320x320",
                      "trt_profile_max_shapes": "images:32x3x320x320"})
        s = ort.InferenceSession(str(model), opts, providers=[trt, _CUDA, _CPU])
        x = np.zeros((1, 3, 320, 320), np.float32)
        s.run(None, {"images": x})
    except (ModelError, RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail) as exc:
        return {"status": f"failed: {exc}"[:400]}
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iters):
        s.run(None, {"images": x})
    return {"status": "ran", "providers": s.get_providers(), "engine_build_s": round(build, 1),
            "batch1_images_per_s_numpy_io": round(iters / (time.perf_counter() - t0), 1)}


def sam_encoder_times(device_provider: str, iters: int) -> dict:
    import onnxruntime as ort

    from detseg.weights.builtin import default_sam

    enc, _ = default_sam()
    out = {}
    for name, prov in (("cpu", _CPU), ("device", device_provider)):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        s = ort.InferenceSession(str(enc), opts,
                                 providers=[prov, _CPU] if prov != _CPU else [_CPU])
        inp = s.get_inputs()[0]
        # (height, width, 3) uint8 resized so that the longest side is the model's (256 for
        # the embedded one, 1024 for SAM's); 4:3 like a photo.
        side = int(s.get_modelmeta().custom_metadata_map.get("image_size", 256))
        shape = [d if isinstance(d, int) else v for d, v in zip(inp.shape, (side * 3 // 4, side), strict=False)]
        dtype = np.uint8 if "uint8" in inp.type else np.float32
        x = (np.random.default_rng(0).random(shape) * 255).astype(dtype)
        s.run(None, {inp.name: x})
        t0 = time.perf_counter()
        for _ in range(iters):
            s.run(None, {inp.name: x})
        out[name] = {"ms": round(1000 * (time.perf_counter() - t0) / iters, 2),
                     "providers": s.get_providers()}
    return {"encoder": str(enc.name), "input": shape, **out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cuda on a GPU machine; cpu: a dry run of every step on the CPU")
    ap.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    ap.add_argument("--images", type=int, default=64, help="shapes images (default 64)")
    ap.add_argument("--iters", type=int, default=20, help="timed iterations per measure")
    ap.add_argument("--batches", default="1,32")
    args = ap.parse_args()
    import onnxruntime as ort

    from detseg.data.images import read_image
    from detseg.data.shapes import generate_shapes
    from detseg.weights.builtin import default_detector

    args.out.mkdir(parents=True, exist_ok=True)
    provider = _CUDA if args.device == "cuda" else _CPU
    report: dict = {"device": args.device, "python": platform.python_version(),
                    "onnxruntime": ort.__version__,
                    "available_providers": ort.get_available_providers()}
    log(f"onnxruntime {ort.__version__}; available providers: {report['available_providers']}")
    seg = default_detector()
    data = Path(tempfile.mkdtemp(prefix="detseg-gpu-check-"))
    generate_shapes(data / "shapes", args.images, 20261129)
    paths = sorted((data / "shapes" / "images").glob("*.jpg"))
    images = [read_image(p) for p in paths]
    failed = []

    share = provider_share(seg, provider, (1, 3, 320, 320))
    on_device = share["kernel_time_share"].get(provider, 0.0)
    report["provider"] = share
    ok = share["session_providers"][0] == provider and on_device > 0.5
    log(f"[1 provider] session {share['session_providers']}; kernel time on {provider}: "
        f"{100 * on_device:.1f}%; kernels {share['kernels']} -> {'OK' if ok else 'FAILED'}")
    if not ok:
        failed.append("provider")

    models = [("yolov8n-seg shapes", seg, None, images[:16])]
    yolox = ASSETS / "models" / "yolox_nano.onnx"
    coco = sorted((ASSETS / "coco-val-11" / "images").glob("*.jpg"))
    if yolox.is_file() and coco:
        models.append(("yolox_nano", yolox, "yolox", [read_image(p) for p in coco]))
    report["equal"] = {}
    for name, model, head, ims in models:
        r = compare_devices(model, head, ims, args.device)
        report["equal"][name] = r
        log(f"[2 equal] {name}: {r['detections_checked']} detections, max box diff "
            f"{r['max_box_diff_px']} px, min mask IoU {r['min_mask_iou']}, missing {r['missing']}"
            f" -> {'OK' if r['passed'] else 'FAILED'}")
        if not r["passed"]:
            failed.append(f"equal:{name}")

    report["throughput"] = []
    for b in [int(x) for x in args.batches.split(",")]:
        row = {"batch": b,
               "iobinding_bound": round(iobinding_throughput(seg, provider, b, args.iters), 1),
               "detseg": round(detseg_throughput(seg, None, data / "shapes" / "images",
                                                 args.device, b, data / "r.json"), 1)}
        u = ultralytics_throughput(seg, paths, args.device, b, 320)
        row["ultralytics"] = round(u, 1) if isinstance(u, float) else u
        report["throughput"].append(row)
        log(f"[3 throughput] batch {b}: images/s {row}")

    report["tensorrt"] = tensorrt_check(seg, args.iters) if args.device == "cuda" else {
        "status": "skipped on --device cpu"}
    log(f"[4 tensorrt] {report['tensorrt']}")
    report["sam_encoder"] = sam_encoder_times(provider, max(3, args.iters // 4))
    log(f"[5 sam encoder] {report['sam_encoder']}")
    report["failed"] = failed
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out / 'gpu_check.json'}; {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
