"""SAM on CPU: detseg's onnxruntime predictor against segment-anything's PyTorch predictor.

Same model, same image, same prompts. For each architecture it exports the model with
`detseg.weights.export_sam.export_sam` (parity report included: the numbers below are only
printed when parity passed) and measures:

- **encoder**: `set_image(image)` end to end (resize, normalise, pad, image encoder), the
  embedding cache cleared before each detseg call so that the encoder really runs;
- **click**: one `predict()` with one positive point, multimask output, masks at the
  original resolution (prompt encoder, mask decoder, upscaling, threshold).

Architectures: `small` (`build_sam_small()` defaults: 256 px input, a 2-block ViT of width 96),
`vit_b` (the official ViT-B at 1024 px, random weights: the cost does not depend on the
weights) and SAM 2.1 `sam2.1_hiera_tiny` (also `_small`, `_base_plus`, `_large`: sam2's
`build_sam2` config at 1024 px, random weights, against sam2's `SAM2ImagePredictor`, exported
by `detseg.weights.export_sam2`; its click includes the upsampling of three masks in numpy). Each figure is the best of `--repeat` runs (the machine is shared; the best run is
the least disturbed one), runs of the two predictors interleaved. Printed: milliseconds and
the ratio torch/detseg (> 1: detseg is faster).

    .venv/bin/python bench/bench_sam.py [--archs small,vit_b] [--repeat 5] [--clicks 20] [--threads 1]
        [--append]

**Segment everything** (`--everything builtin,small`, `--archs ""` to skip the table above):
`detseg.pipeline.sam_auto.SamMaskGenerator` against segment-anything's
`SamAutomaticMaskGenerator` with the same weights and the same (default) settings, from the
image array to the list of masks (encoder included): `builtin` is the embedded shapes SAM
(PyTorch weights recovered exactly from its ONNX files) on a held-out shapes image, `small`
the random-weight small SAM on the image above. Best of `--repeat-everything` runs each,
interleaved; also printed: masks found by each and how many of the reference masks have a
match with IoU >= 0.99.

`--append` adds the table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_anything import SamPredictor as TorchSamPredictor

from detseg.pipeline.sam import SamPredictor
from detseg.weights.export_sam import export_sam
from detseg.weights.sam_arch import build_sam_official, build_sam_small

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT.parent / "shared" / "assets" / "coco-val-11" / "images" / "000000000139.jpg"


def load_image() -> tuple[np.ndarray, str]:
    if IMAGE.is_file():
        return np.asarray(Image.open(IMAGE).convert("RGB")), f"COCO {IMAGE.name}"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (426, 640, 3), dtype=np.uint8), "random 640x426"


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def bench_arch(
    name: str, image: np.ndarray, repeat: int, clicks: int, threads: int
) -> dict[str, float]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result, ref = _export(name, Path(tmp))
        export_s = time.perf_counter() - start
        if not result.passed:
            sys.exit(f"bench_sam: parity failed for {name}, see {result.report_path}")
        ours = SamPredictor.load(
            result.encoder_path, result.decoder_path, device="cpu", threads=threads
        )

        def ours_encode() -> None:
            ours.clear_cache()
            ours.set_image(image)

        with torch.no_grad():
            ref.set_image(image)  # warm-up
            ours_encode()
            enc_torch, enc_ours = [], []
            for _ in range(repeat):
                enc_torch.append(best_ms(lambda: ref.set_image(image), 1))
                enc_ours.append(best_ms(ours_encode, 1))

            h, w = image.shape[:2]
            rng = np.random.default_rng(1)
            points = rng.uniform((0, 0), (w, h), size=(clicks, 1, 2))
            label = np.array([1])
            click_torch, click_ours = [], []
            for point in points:
                click_torch.append(best_ms(lambda p=point: ref.predict(p, label), 1))
                click_ours.append(best_ms(lambda p=point: ours.predict(p, label), 1))
    return {
        "export_s": export_s,
        "worst_raw": result.report["worst_raw"]["max_abs_diff"],
        "min_iou": result.report["min_mask_iou"],
        "enc_torch": min(enc_torch),
        "enc_ours": min(enc_ours),
        "click_torch": float(np.median(click_torch)),
        "click_ours": float(np.median(click_ours)),
    }


def _export(name: str, out: Path):
    """(export result with its parity report, the PyTorch reference predictor) for `name`."""
    if name.startswith("sam2"):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        from detseg.weights.export_sam2 import build_sam2_model, export_sam2

        model = build_sam2_model(name)
        return export_sam2(None, name, out, model=model), SAM2ImagePredictor(model)
    sam = build_sam_small() if name == "small" else build_sam_official(name)
    return export_sam(None, name, out, model=sam), TorchSamPredictor(sam)


def bench_everything(name: str, repeat: int, threads: int) -> dict[str, float]:
    from pycocotools import mask as mask_utils
    from segment_anything import SamAutomaticMaskGenerator

    from detseg.pipeline.sam_auto import SamMaskGenerator

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if name == "builtin":
            from detseg.data.shapes import ShapesSpec, render_image
            from detseg.weights.builtin import default_sam
            from detseg.weights.sam_recover import recover_sam

            encoder, decoder = default_sam()
            sam = recover_sam(encoder, decoder)
            image = render_image(ShapesSpec(4, 3), 0)[0]
        else:
            sam = build_sam_small() if name == "small" else build_sam_official(name)
            result = export_sam(None, name, Path(tmp), model=sam)
            if not result.passed:
                sys.exit(f"bench_sam: parity failed for {name}, see {result.report_path}")
            encoder, decoder = result.encoder_path, result.decoder_path
            image = load_image()[0]
        ours = SamPredictor.load(encoder, decoder, device="cpu", threads=threads)
        ref_gen = SamAutomaticMaskGenerator(sam, output_mode="coco_rle")
        our_gen = SamMaskGenerator(ours)
        t_ref, t_ours = [], []
        with torch.no_grad():
            for _ in range(repeat):
                start = time.perf_counter()
                ref = ref_gen.generate(image)
                t_ref.append(time.perf_counter() - start)
                ours.clear_cache()
                start = time.perf_counter()
                got = our_gen.generate(image)
                t_ours.append(time.perf_counter() - start)
    matched = 0
    if ref and len(got):
        r = [dict(a["segmentation"], counts=a["segmentation"]["counts"].encode()) for a in ref]
        g = [dict(m, counts=m["counts"].encode()) for m in got.rles]
        matched = int((mask_utils.iou(g, r, [0] * len(r)).max(axis=0) >= 0.99).sum())
    return {"image": f"{image.shape[1]}x{image.shape[0]}", "torch_s": min(t_ref),
            "ours_s": min(t_ours), "n_ref": len(ref), "n_ours": len(got), "matched": matched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="small,vit_b,sam2.1_hiera_tiny")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=1, help="threads for both torch and onnxruntime"
    )
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--everything", default="", help="segment-everything rows, e.g. builtin,small")
    parser.add_argument("--repeat-everything", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    image, image_name = load_image()
    rows = []
    load_before = os.getloadavg()[0]
    for name in [a for a in args.archs.split(",") if a]:
        r = bench_arch(name, image, args.repeat, args.clicks, args.threads)
        rows.append(
            f"| {name} | {r['enc_torch']:.1f} | {r['enc_ours']:.1f} | "
            f"{r['enc_torch'] / r['enc_ours']:.2f} | {r['click_torch']:.1f} | "
            f"{r['click_ours']:.1f} | {r['click_torch'] / r['click_ours']:.2f} | "
            f"{r['export_s']:.0f} | {r['worst_raw']:.1e} | {r['min_iou']:.4f} |"
        )
        print(rows[-1], flush=True)

    cmd = "python bench/bench_sam.py " + " ".join(sys.argv[1:])
    table = "\n".join(
        [
            "## SAM predictor on CPU: detseg (onnxruntime) vs segment-anything / sam2 (PyTorch)",
            "",
            f"{dt.date.today()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores (shared), torch {torch.__version__}, "
            f"{args.threads} thread(s) for both torch and onnxruntime, image {image_name} "
            f"({image.shape[1]}x{image.shape[0]}). Command: `{cmd.strip()}`. Encoder: best of "
            f"{args.repeat} `set_image` calls; click: median of {args.clicks} one-point "
            f"`predict` calls (3 masks at original resolution). Ratio = torch / detseg "
            f"(> 1: detseg faster). Both models random-weight, exported with a passing parity report. "
            f"Load average (1 min) {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at "
            f"the end: other jobs shared the 2 cores, so absolute times are inflated.",
            "",
            "| model | encoder torch ms | encoder detseg ms | ratio | click torch ms "
            "| click detseg ms | ratio | export + parity s | parity max abs diff | parity min IoU |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    if rows:
        print()
        print(table)
    else:
        table = ""
    every = []
    for name in [a for a in args.everything.split(",") if a]:
        r = bench_everything(name, args.repeat_everything, args.threads)
        every.append(
            f"| {name} | {r['image']} | {r['torch_s']:.2f} | {r['ours_s']:.2f} | "
            f"{r['torch_s'] / r['ours_s']:.2f} | {r['n_ref']} | {r['n_ours']} | {r['matched']} |"
        )
        print(every[-1], flush=True)
    if every:
        table += "\n".join([
            "" if not table else "\n",
            "## Segment everything on CPU: detseg `SamMaskGenerator` (onnxruntime) vs "
            "segment-anything `SamAutomaticMaskGenerator` (PyTorch)",
            "",
            f"{dt.date.today()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, "
            f"{args.threads} thread(s) for both. Command: `{cmd.strip()}`. Same weights, "
            f"default settings (32x32 points, 64 per batch, thresholds 0.88 / 0.95, NMS 0.7), "
            f"image array to masks, encoder included; best of {args.repeat_everything}. "
            f"Ratio = torch / detseg. Load average (1 min) {load_before:.1f} at the start and "
            f"{os.getloadavg()[0]:.1f} at the end (shared machine).",
            "",
            "| model | image | torch s | detseg s | ratio | masks torch | masks detseg "
            "| torch masks matched (IoU >= 0.99) |",
            "|---|---|---|---|---|---|---|---|",
            *every,
        ])
        print()
        print(table)
    if args.append:
        with (ROOT / "BENCHMARKS.md").open("a") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
