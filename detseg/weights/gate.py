"""The accuracy gate of a quantized model: same held-out set, same settings, paired bootstrap.

`run_gate` predicts with the reference and the variant on a COCO-format set (``detseg
predict`` at the coco-eval preset), compares them with `detseg.eval.compare.compare` (both
models scored on the same resampled images), times both in the same run, and writes
``<stem>_gate.json``:

- ``ap_reference``, ``ap_variant``, ``ap_drop`` (points, reference - variant, AP@[.50:.95])
  and ``ap_drop_ci`` (its 95 % paired-bootstrap interval), for the worst of the IoU types
  scored (``bbox``; ``segm`` too for a segmentation model; ``per_type`` holds each);
- ``speedup``: model time of the reference / the variant (median over interleaved rounds
  of a bare ``session.run`` on the same letterboxed tensors, one image per call), and
  ``speedup_predict`` (the same for `Detector.predict`, pre- and post-processing included);
- ``passed``: ``ap_drop <= max_ap_drop`` for every type.

A set with few images gives a wide interval: ``warnings`` says so (under 100 images).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from detseg.errors import InputError

MAX_AP_DROP = 1.0  # AP points
FEW_IMAGES = 100


def run_gate(
    reference: Path,
    variant: Path,
    gt_json: Path,
    out_dir: Path,
    *,
    images_dir: Path | None = None,
    head: str | None = None,
    max_ap_drop: float = MAX_AP_DROP,
    rounds: int = 5,
    timing_images: int = 20,
    notes: list[str] | None = None,
    extra: dict | None = None,
) -> dict:
    """Score ``variant`` against ``reference`` on ``gt_json``; write and return the gate dict."""
    from detseg.data.coco import load_dataset
    from detseg.data.images import read_image
    from detseg.eval.compare import compare
    from detseg.pipeline.batch import run_predict
    from detseg.pipeline.detector import Detector

    if max_ap_drop < 0:
        raise InputError(f"--max-ap-drop: expected a number of AP points >= 0, found {max_ap_drop}")
    out_dir = Path(out_dir)
    work = out_dir / f"{variant.stem}_gate_runs"
    work.mkdir(parents=True, exist_ok=True)
    runs = {}
    for key, model in (("reference", reference), ("variant", variant)):
        s = run_predict(model, gt_json, work / f"{key}.json", head=head, device="cpu",
                        preset="coco-eval", images_dir=images_dir, resume=False, progress=False)
        if s.done == 0:
            raise InputError(f"{gt_json}: no image could be predicted ({len(s.failed)} failed)")
        runs[key] = s
    det_ref = Detector.load(reference, head=head, device="cpu")
    task = det_ref.meta.task
    iou_types = ["bbox", "segm"] if task == "segment" else ["bbox"]
    per_type = {}
    for iou_type in iou_types:
        c = compare(gt_json, work / "reference.json", work / "variant.json", iou_type=iou_type)
        ap = c["bootstrap"]["AP"]
        drop = -100 * ap["diff"]
        ci = (None if ap["ci_low"] is None
              else [round(-100 * ap["ci_high"], 3), round(-100 * ap["ci_low"], 3)])
        per_type[iou_type] = {
            "ap_reference": round(100 * c["stats_a"][0], 3),
            "ap_variant": round(100 * c["stats_b"][0], 3),
            "ap_drop": round(drop, 3),
            "ap_drop_ci": ci,
            "passed": bool(drop <= max_ap_drop),
        }
    worst = max(per_type, key=lambda k: per_type[k]["ap_drop"])
    dataset = load_dataset(gt_json, images_dir)
    paths = [im.path for im in dataset.images[:timing_images]]
    images = [read_image(p) for p in paths]
    speed = _model_speedup(det_ref, Detector.load(variant, head=head, device="cpu"), images,
                           rounds)
    e2e = {k: round(r.images_per_s, 2) for k, r in runs.items()}
    n_images = runs["reference"].total
    warnings = list(notes or [])
    if n_images < FEW_IMAGES:
        warnings.append(f"only {n_images} images: the AP-drop interval is wide; a tight gate "
                        f"needs a few hundred")
    result = {
        "reference": str(reference),
        "variant": str(variant),
        "ground_truth": str(gt_json),
        "images": n_images,
        "settings": runs["reference"].settings,
        "gate_iou_type": worst,
        **{k: per_type[worst][k] for k in ("ap_reference", "ap_variant", "ap_drop", "ap_drop_ci")},
        "max_ap_drop": max_ap_drop,
        "passed": all(v["passed"] for v in per_type.values()),
        "per_type": per_type,
        "speedup": speed["speedup"],
        "model_ms": speed["ms"],
        "speedup_predict": speed["speedup_predict"],
        "images_per_s_predict_runs": e2e,
        "timing": f"{len(images)} images x {rounds} interleaved rounds, batch 1, default "
                  f"threads; speedup: session.run alone, speedup_predict: Detector.predict "
                  f"(letterbox + model + NMS + masks); each the median over rounds of reference "
                  f"time / variant time. images_per_s_predict_runs: the two gate predict runs "
                  f"(one each, not interleaved: load drift shows there)",
        "warnings": warnings,
        **(extra or {}),
    }
    path = out_dir / f"{variant.stem}_gate.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    result["path"] = str(path)
    return result


def _model_speedup(ref, var, images: list[np.ndarray], rounds: int) -> dict:
    """Interleaved timing of both models on the same images: the session alone on the same
    letterboxed tensors, and `Detector.predict` (letterbox, model, NMS, masks) at the
    coco-eval settings, one image per call."""
    tensors = [ref.preprocess([im])[0] for im in images]
    times: dict[str, list[float]] = {k: [] for k in ("reference", "variant",
                                                     "reference_e2e", "variant_e2e")}
    for det in (ref, var):
        det.infer(tensors[0])  # warm-up
    for r in range(rounds):
        order = [("reference", ref), ("variant", var)]
        for key, det in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            for x in tensors:
                det.infer(x)
            t1 = time.perf_counter()
            for im in images:
                det.predict([im], conf=0.001, iou=0.7, max_det=100)
            t2 = time.perf_counter()
            times[key].append((t1 - t0) / len(tensors))
            times[f"{key}_e2e"].append((t2 - t1) / len(images))

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(times[a], times[b], strict=True)), 3)

    return {
        "speedup": ratio("reference", "variant"),
        "speedup_predict": ratio("reference_e2e", "variant_e2e"),
        "ms": {k: round(1000 * min(v), 2) for k, v in times.items()},
    }
