"""Parity of an exported SAM (encoder + decoder ONNX) against the PyTorch model it came from.

Three checks, on two synthetic images of different aspect ratios and five prompts:
1. resize: `detseg.pipeline.sam.resize_longest_side` (numpy/PIL) gives exactly the pixels of
   segment-anything's `ResizeLongestSide.apply_image`;
2. raw outputs: max abs difference of the ONNX encoder embedding and of the ONNX decoder's
   three outputs against PyTorch on the same inputs (`Sam.preprocess` + `image_encoder`;
   `SamOnnxModel`), against a tolerance scaled by the output's magnitude;
3. masks: detseg's onnxruntime `SamPredictor` against segment-anything's `SamPredictor`, mask
   IoU for the multimask and the single-mask answers of every prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything import SamPredictor as TorchSamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel
from segment_anything.utils.transforms import ResizeLongestSide

from detseg.pipeline.sam import SamPredictor, _open_session, prompt_arrays, resize_longest_side
from detseg.weights.report import mask_iou

RAW_RTOL = 1e-3  # max abs diff allowed per unit of the reference output's max magnitude
MIN_IOU = 0.99


def sample_images() -> list[np.ndarray]:
    """Two deterministic RGB uint8 images: landscape 240x360 and portrait 360x200."""
    images = []
    for seed, (h, w) in enumerate([(240, 360), (360, 200)]):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], -1)
        cy, cx, r = h // 2, w // 2, min(h, w) // 4
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (220, 40, 40)
        img[h // 8 : h // 4, w // 8 : w // 3] = (30, 30, 200)
        img = img + rng.integers(-10, 11, img.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images


def sample_prompts(h: int, w: int) -> dict[str, dict[str, Any]]:
    """Named prompts in original-image pixels for an (h, w) image."""
    box = np.array([0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h])
    return {
        "point": {"point_coords": np.array([[w / 2, h / 2]]), "point_labels": np.array([1])},
        "points_with_negative": {
            "point_coords": np.array([[w / 2, h / 2], [0.2 * w, 0.2 * h], [0.9 * w, 0.85 * h]]),
            "point_labels": np.array([1, 1, 0]),
        },
        "box": {"box": box},
        "box_and_point": {
            "box": box,
            "point_coords": np.array([[0.4 * w, 0.6 * h]]),
            "point_labels": np.array([0]),
        },
    }


def _diff(name: str, ours: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    ref = np.asarray(ref, np.float64)
    diff = float(np.abs(np.asarray(ours, np.float64) - ref).max()) if ref.size else 0.0
    tol = RAW_RTOL * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
    return {"output": name, "max_abs_diff": diff, "tolerance": tol, "passed": diff <= tol}


@torch.no_grad()
def check_sam_parity(sam: Sam, encoder_path: Path, decoder_path: Path) -> dict[str, Any]:
    """Run the three checks; returns the report dict (with `"passed"`)."""
    size = sam.image_encoder.img_size
    encoder = _open_session(Path(encoder_path), "cpu")
    decoder = _open_session(Path(decoder_path), "cpu")
    ours = SamPredictor(encoder, decoder, cache_size=2)
    ref = TorchSamPredictor(sam)
    onnx_decoder = SamOnnxModel(sam, return_single_mask=False)
    low_res = 4 * sam.prompt_encoder.image_embedding_size[0]

    raw: list[dict[str, Any]] = []
    masks: list[dict[str, Any]] = []
    resize_ok = True
    for index, image in enumerate(sample_images()):
        h, w = image.shape[:2]
        tag = f"image{index}_{h}x{w}"
        resized = resize_longest_side(image, size)
        resize_ok &= np.array_equal(resized, ResizeLongestSide(size).apply_image(image))
        x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).unsqueeze(0)
        emb_ref = sam.image_encoder(sam.preprocess(x))
        (emb_onnx,) = encoder.run({"image": resized})[:1]
        raw.append({"input": tag, **_diff("image_embeddings", emb_onnx, emb_ref.numpy())})

        ref.set_image(image)
        ours.set_image(image)
        prompts = list(sample_prompts(h, w).items())
        for name, prompt in prompts:
            coords, labels = prompt_arrays(
                prompt.get("point_coords"),
                prompt.get("point_labels"),
                prompt.get("box"),
                (h, w),
                size,
            )
            mask_in = prompt.get("mask_input", np.zeros((1, low_res, low_res), np.float32))
            feeds = {
                "image_embeddings": emb_ref.numpy(),
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": mask_in[None].astype(np.float32),
                "has_mask_input": np.array(["mask_input" in prompt], np.float32),
                "orig_im_size": np.array([h, w], np.float32),
            }
            out_ref = onnx_decoder(*(torch.as_tensor(v) for v in feeds.values()))
            out_onnx = decoder.run(feeds)[:3]
            for out_name, a, b in zip(
                ("masks", "iou_predictions", "low_res_masks"), out_onnx, out_ref, strict=True
            ):
                raw.append({"input": f"{tag}/{name}", **_diff(out_name, a, b.numpy())})

            for multimask in (True, False):
                m_ref, s_ref, lr_ref = ref.predict(**prompt, multimask_output=multimask)
                pred = ours.predict(**prompt, multimask_output=multimask)
                ious = [mask_iou(a, b) for a, b in zip(pred.masks, m_ref, strict=False)]
                masks.append(
                    {
                        "input": f"{tag}/{name}",
                        "multimask": multimask,
                        "iou": ious,
                        "mask_fraction": [float(m.mean()) for m in m_ref],
                        "score_max_abs_diff": float(np.abs(pred.scores - s_ref).max()),
                        "passed": len(ious) == len(m_ref) and min(ious) >= MIN_IOU,
                    }
                )
                if name == "point" and multimask:
                    # Refinement: the best low-res logits of the click go back in as mask input.
                    best = lr_ref[int(np.argmax(s_ref))][None]
                    prompts.append(("point_with_mask_input", {**prompt, "mask_input": best}))

    passed = resize_ok and all(r["passed"] for r in raw) and all(m["passed"] for m in masks)
    return {
        "passed": bool(passed),
        "criteria": {
            "resize": "numpy resize identical to segment_anything ResizeLongestSide",
            "raw": f"max_abs_diff <= {RAW_RTOL} * max(1, max|reference|) for every output",
            "masks": f"IoU >= {MIN_IOU} against segment_anything.SamPredictor",
        },
        "resize_identical": bool(resize_ok),
        "worst_raw": max(raw, key=lambda r: r["max_abs_diff"] / r["tolerance"]),
        "min_mask_iou": min(min(m["iou"]) for m in masks),
        "raw": raw,
        "masks": masks,
    }
