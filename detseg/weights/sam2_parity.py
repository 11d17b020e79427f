"""Parity of an exported SAM 2 (encoder + decoder ONNX) against the PyTorch model it came from.

Four checks, on the synthetic images of `detseg.weights.sam_parity.sample_images` (landscape
and portrait) or the images given:
1. resize: `detseg.pipeline.sam2.resize_square` against sam2's `SAM2Transforms` (max abs
   difference of the normalised input, <= 1e-4);
2. raw outputs: the ONNX encoder's three maps against `SAM2ImagePredictor.set_image`'s
   features (every image), and the ONNX decoder's outputs against the PyTorch decoder wrapper
   on the same inputs (first image, every prompt), within a tolerance scaled by the output's
   magnitude;
3. prompt batch (first image): N = 1, 2 and 8 prompts through the decoder at once equal the
   same prompts one at a time (the `has_mask_input` broadcast trap makes N = 2 and 8 fail);
4. masks: detseg's onnxruntime `Sam2Predictor` against `SAM2ImagePredictor`, mask IoU >= 0.99
   for the multimask and single-mask answers of point, points with a negative, box, box with a
   point, and a point with the previous low-res mask as mask input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor

from detseg.pipeline.sam import _open_session
from detseg.pipeline.sam2 import Sam2Predictor, resize_square, sam2_prompt_arrays
from detseg.weights.export_sam2 import PIXEL_MEAN, PIXEL_STD, Sam2DecoderOnnx
from detseg.weights.report import array_diff, mask_iou
from detseg.weights.sam_parity import sample_images, sample_prompts

RAW_RTOL = 1e-3  # max abs diff allowed per unit of the reference output's max magnitude
RAW_ATOL = 1e-4
RESIZE_ATOL = 1e-4
MIN_IOU = 0.99
BATCH_SIZES = (1, 2, 8)


@torch.no_grad()
def check_sam2_parity(
    model: torch.nn.Module,
    encoder_path: Path,
    decoder_path: Path,
    images: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run the four checks; returns the report fields (with `"passed"`)."""
    encoder = _open_session(Path(encoder_path), "cpu")
    decoder = _open_session(Path(decoder_path), "cpu")
    ours = Sam2Predictor(encoder, decoder, cache_size=2)
    ref = SAM2ImagePredictor(model)
    # The predictor hard-codes the feature sizes of a 1024 px model; the same for other sizes.
    s = int(model.image_size)
    ref._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    wrapper = Sam2DecoderOnnx(model).eval()
    size = ours.image_size

    raw: list[dict[str, Any]] = []
    masks: list[dict[str, Any]] = []
    batch: list[dict[str, Any]] = []
    resize_diff = 0.0
    for index, image in enumerate(images if images is not None else sample_images()):
        h, w = image.shape[:2]
        tag = f"image{index}_{h}x{w}"
        normalised = (resize_square(image, size) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
        reference_input = ref._transforms(image).permute(1, 2, 0).numpy()
        resize_diff = max(resize_diff, float(np.abs(normalised - reference_input).max()))

        ref.set_image(image)
        emb = ours.embed(image)
        feats = ref._features
        for name, found, want in (
            ("image_embed", emb.features, feats["image_embed"]),
            ("high_res_feats_0", emb.high_res_features[0], feats["high_res_feats"][0]),
            ("high_res_feats_1", emb.high_res_features[1], feats["high_res_feats"][1]),
        ):
            raw.append({"input": tag, **array_diff(name, found, want.numpy(), RAW_RTOL, RAW_ATOL)})

        prompts = list(sample_prompts(h, w).items())
        for name, prompt in prompts:
            if index == 0:  # raw decoder outputs on the first image (the masks cover all)
                feeds = _feeds(emb, prompt, size, ours.low_res_size)
                out_onnx = decoder.run(feeds)[:2]
                out_ref = wrapper(*(torch.as_tensor(v) for v in feeds.values()))[:2]
                for out_name, a, b in zip(("iou_predictions", "low_res_masks"), out_onnx,
                                          out_ref, strict=True):
                    raw.append({"input": f"{tag}/{name}",
                                **array_diff(out_name, a, b.numpy(), RAW_RTOL, RAW_ATOL)})
            for multimask in (True, False):
                m_ref, s_ref, lr_ref = ref.predict(**prompt, multimask_output=multimask)
                pred = ours.predict(**prompt, multimask_output=multimask, embedding=emb)
                ious = [mask_iou(a, b) for a, b in zip(pred.masks, m_ref > 0, strict=False)]
                masks.append({
                    "input": f"{tag}/{name}",
                    "multimask": multimask,
                    "iou": ious,
                    "mask_fraction": [float((m > 0).mean()) for m in m_ref],
                    "score_max_abs_diff": float(np.abs(pred.scores - s_ref).max()),
                    "passed": len(ious) == len(m_ref) and min(ious) >= MIN_IOU,
                })
                if name == "point" and multimask:
                    best = lr_ref[int(np.argmax(s_ref))][None]
                    prompts.append(("point_with_mask_input", {**prompt, "mask_input": best}))
        if index == 0:
            batch.extend(_batch_check(decoder, emb, tag, size, ours.low_res_size))

    resize_ok = resize_diff <= RESIZE_ATOL
    passed = (resize_ok and all(r["passed"] for r in raw) and all(m["passed"] for m in masks)
              and all(b["passed"] for b in batch))
    return {
        "passed": bool(passed),
        "criteria": {
            "resize": f"max |resize_square - SAM2Transforms| <= {RESIZE_ATOL} (normalised input)",
            "raw": f"max_abs_diff <= {RAW_ATOL} + {RAW_RTOL} * max|reference| for every output",
            "batch": f"N = {list(BATCH_SIZES)} prompts at once equal one at a time",
            "masks": f"IoU >= {MIN_IOU} against sam2.SAM2ImagePredictor",
        },
        "resize_max_abs_diff": resize_diff,
        "worst_raw": max(raw, key=lambda r: r.get("max_abs_diff", np.inf) / r.get("tolerance", 1)),
        "min_mask_iou": min(min(m["iou"]) for m in masks),
        "raw": raw,
        "batch": batch,
        "masks": masks,
    }


def _feeds(emb, prompt: dict[str, Any], size: int, low_res: int) -> dict[str, np.ndarray]:
    coords, labels = sam2_prompt_arrays(prompt.get("point_coords"), prompt.get("point_labels"),
                                        prompt.get("box"), emb.original_size, size)
    mask = prompt.get("mask_input")
    return {
        "image_embed": emb.features,
        "high_res_feats_0": emb.high_res_features[0],
        "high_res_feats_1": emb.high_res_features[1],
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": (np.zeros((1, 1, low_res, low_res), np.float32) if mask is None
                       else np.asarray(mask, np.float32)[None]),
        "has_mask_input": np.array([float(mask is not None)], np.float32),
    }


def _batch_check(decoder, emb, tag: str, size: int, low_res: int) -> list[dict[str, Any]]:
    """N prompts (two points each, every other one with a mask input) at once vs one by one."""
    h, w = emb.original_size
    rng = np.random.default_rng(0)
    results = []
    for n in BATCH_SIZES:
        singles = []
        for i in range(n):
            pts = rng.uniform([0, 0], [w, h], (2, 2))
            prompt = {"point_coords": pts, "point_labels": np.array([1, i % 2])}
            if i % 2:
                prompt["mask_input"] = rng.normal(0, 4, (1, low_res, low_res))
            singles.append(_feeds(emb, prompt, size, low_res))
        stacked = {k: singles[0][k] for k in ("image_embed", "high_res_feats_0", "high_res_feats_1")}
        for key in ("point_coords", "point_labels", "mask_input", "has_mask_input"):
            stacked[key] = np.concatenate([s[key] for s in singles])
        try:
            iou, low = decoder.run(stacked)[:2]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; report them
            results.append({"input": tag, "num_prompts": n, "error": str(exc)[:300],
                            "passed": False})
            continue
        one = [decoder.run(s)[:2] for s in singles]
        iou_ref = np.concatenate([o[0] for o in one])
        low_ref = np.concatenate([o[1] for o in one])
        d_iou = array_diff("iou_predictions", iou, iou_ref, RAW_RTOL, RAW_ATOL)
        d_low = array_diff("low_res_masks", low, low_ref, RAW_RTOL, RAW_ATOL)
        results.append({"input": tag, "num_prompts": n, "iou_predictions": d_iou,
                        "low_res_masks": d_low, "passed": d_iou["passed"] and d_low["passed"]})
    return results
