"""Export SAM 2 / 2.1 (the image predictor) to two ONNX files and prove they match PyTorch.

- `<stem>_encoder.onnx`: float32 (S, S, 3) RGB in [0, 1], the image already resized to the
  model's S x S square without keeping the aspect ratio (`detseg.pipeline.sam2.resize_square`,
  which equals sam2's `SAM2Transforms`: ToTensor then an antialiased bilinear Resize) ->
  `image_embed` (1, C, E, E), `high_res_feats_0` (1, C/8, 4E, 4E), `high_res_feats_1`
  (1, C/4, 2E, 2E). The ImageNet mean/std normalisation is inside the graph. The outputs are
  exactly what `SAM2ImagePredictor.set_image` keeps (`no_mem_embed` added, the high-resolution
  levels already projected by the mask decoder's `conv_s0` / `conv_s1`).
- `<stem>_decoder.onnx`: prompt encoder + mask decoder with a dynamic prompt batch N and a
  dynamic number of points K: `point_coords` (N, K, 2) in the S x S frame, `point_labels` (N, K)
  (1 positive, 0 negative, 2/3 box corners, -1 padding), `mask_input` (N, 1, 4E, 4E),
  `has_mask_input` (N,) -> `iou_predictions` (N, 4), `low_res_masks` (N, 4, 4E, 4E) logits,
  `object_score_logits` (N, 1). All four mask tokens come back; the runtime picks (multimask,
  or token 0 with SAM 2's "dynamic multimask via stability" fallback) and upsamples.
  `has_mask_input` is reshaped to (N, 1, 1, 1) inside the graph: in the usual export wrapper
  it broadcasts against the 64-wide embedding and only N = 1 (or N = 64) works.
- `<stem>_parity.json`: `detseg.weights.sam2_parity` against `SAM2ImagePredictor`.

Metadata on both files: detseg_task (sam_encoder / sam_decoder, as SAM 1), sam_generation "2",
model_type, image_size, low_res_size, embedding_size, mask_threshold, the dynamic-multimask
settings, pixel mean/std, the source checkpoint's SHA-256, the detseg version.
torch.onnx.export runs with dynamo=False at opset 17.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detseg import __version__
from detseg.errors import InputError, ModelError
from detseg.pipeline.sam import DECODER_TASK, ENCODER_TASK
from detseg.weights.export_sam import _sha256, _write_metadata

# model_type -> sam2's config name (inside the sam2 package).
SAM2_CONFIGS = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
PIXEL_MEAN = (0.485, 0.456, 0.406)  # sam2.utils.transforms.SAM2Transforms, on [0, 1] pixels
PIXEL_STD = (0.229, 0.224, 0.225)
MASK_THRESHOLD = 0.0  # SAM2ImagePredictor's default


@dataclass(frozen=True)
class Sam2ExportResult:
    """Paths written by `export_sam2` and whether the parity check passed."""

    encoder_path: Path
    decoder_path: Path
    report_path: Path
    passed: bool
    report: dict[str, Any] = field(default_factory=dict, repr=False)


def build_sam2_model(
    model_type: str, checkpoint: Path | None = None, image_size: int | None = None
) -> nn.Module:
    """sam2's `build_sam2` on the CPU (random weights when `checkpoint` is None).

    The checkpoint is read by sam2 with ``torch.load(weights_only=True)``. `image_size`
    overrides the config's 1024 (a multiple of 32; for fast tests with random weights only:
    the released weights are trained at 1024).
    """
    if model_type not in SAM2_CONFIGS:
        raise InputError(
            f"SAM 2 model type {model_type!r}: expected one of {', '.join(SAM2_CONFIGS)}"
        )
    from sam2.build_sam import build_sam2

    overrides = [f"++model.image_size={int(image_size)}"] if image_size else []
    try:
        return build_sam2(SAM2_CONFIGS[model_type], str(checkpoint) if checkpoint else None,
                          device="cpu", hydra_overrides_extra=overrides)
    except (RuntimeError, KeyError, OSError) as exc:
        raise ModelError(
            f"{checkpoint}: cannot load it as a {model_type} checkpoint ({type(exc).__name__}: "
            f"{exc}); expected the official SAM 2.1 .pt file (a dict with a 'model' state dict)"
        ) from None


class Sam2EncoderOnnx(nn.Module):
    """(S, S, 3) float32 [0, 1] RGB -> (image_embed, high_res_feats_0, high_res_feats_1).

    The body of `SAM2ImagePredictor.set_image` after its transforms.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (image.permute(2, 0, 1).unsqueeze(0) - self.mean) / self.std
        backbone_out = self.model.forward_image(x)
        _, vision_feats, _, feat_sizes = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        feats = [
            feat.permute(1, 2, 0).reshape(1, -1, *size)
            for feat, size in zip(vision_feats, feat_sizes, strict=True)
        ]
        return feats[-1], feats[0], feats[1]


class Sam2DecoderOnnx(nn.Module):
    """Prompt encoder + mask decoder for a batch of N prompts on one image.

    The same calls as `SAM2ImagePredictor._predict` (points already padded by the caller with a
    (0, 0) point labelled -1, as sam2's prompt encoder pads when no separate box is given),
    without the token selection, which the runtime does on the returned four tokens.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder

    @torch.no_grad()
    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        sparse = pe._embed_points(point_coords, point_labels, pad=False)
        # (N,) -> (N, 1, 1, 1): as given, (N,) would broadcast against the embedding's last
        # axis (64 wide) and the graph would work for N = 1 or 64 only.
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask * pe.mask_downscaling(mask_input) + (1.0 - has_mask) * no_mask
        n = point_coords.shape[0]
        masks, iou_pred, _, object_score_logits = self.mask_decoder.predict_masks(
            image_embeddings=image_embed.expand(n, -1, -1, -1),
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        return iou_pred, masks, object_score_logits


def export_sam2(
    checkpoint: Path | None,
    model_type: str,
    out_dir: Path,
    *,
    model: nn.Module | None = None,
    opset: int = 17,
    check_parity: bool = True,
) -> Sam2ExportResult:
    """Export a SAM 2 to `out_dir` (encoder, decoder, parity report) and check parity.

    The model is `model` when given, else built from sam2's config for `model_type` with the
    weights of `checkpoint`, else random weights (tests and benchmarks; recorded as such).
    """
    out_dir = Path(out_dir)
    source = "in-memory model" if model is not None else str(checkpoint)
    if model is None:
        model = build_sam2_model(model_type, checkpoint)
        if checkpoint is None:
            source = "no checkpoint: random weights"
    model = model.eval().to("cpu")
    stem = Path(checkpoint).stem if checkpoint is not None else model_type
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder_path = out_dir / f"{stem}_encoder.onnx"
    decoder_path = out_dir / f"{stem}_decoder.onnx"
    report_path = out_dir / f"{stem}_parity.json"

    size = int(model.image_size)
    decoder = model.sam_mask_decoder
    embed = model.sam_prompt_encoder.image_embedding_size[0]
    metadata = {
        "sam_generation": "2",
        "model_type": model_type,
        "image_size": str(size),
        "low_res_size": str(4 * embed),
        "embedding_size": str(embed),
        "mask_threshold": str(MASK_THRESHOLD),
        "dynamic_multimask_via_stability": str(bool(decoder.dynamic_multimask_via_stability)),
        "dynamic_multimask_stability_delta": str(float(decoder.dynamic_multimask_stability_delta)),
        "dynamic_multimask_stability_thresh": str(float(decoder.dynamic_multimask_stability_thresh)),
        # The pair check in SamPredictor.load compares "arch" between the two files.
        "arch": json.dumps({"model_type": model_type, "image_size": size,
                            "params": sum(p.numel() for p in model.parameters())}),
        "pixel_mean": json.dumps(list(PIXEL_MEAN)),
        "pixel_std": json.dumps(list(PIXEL_STD)),
        "pixel_scale": "1/255",
        "channel_order": "RGB",
        "source": source,
        "source_sha256": _sha256(Path(checkpoint)) if checkpoint is not None else "",
        "detseg_version": __version__,
    }
    _export_encoder(model, encoder_path, opset)
    _write_metadata(encoder_path, {**metadata, "detseg_task": ENCODER_TASK})
    _export_decoder(model, decoder_path, opset)
    _write_metadata(decoder_path, {**metadata, "detseg_task": DECODER_TASK})

    if not check_parity:
        return Sam2ExportResult(encoder_path, decoder_path, report_path, False, {})
    from detseg.weights.report import write_report
    from detseg.weights.sam2_parity import check_sam2_parity

    found = check_sam2_parity(model, encoder_path, decoder_path)
    report = write_report(
        report_path, found.pop("passed"), model_type=model_type, source=source,
        encoder=encoder_path.name, decoder=decoder_path.name, **found,
    )
    return Sam2ExportResult(encoder_path, decoder_path, report_path, bool(report["passed"]),
                            report)


def _export_encoder(model: nn.Module, path: Path, opset: int) -> None:
    size = int(model.image_size)
    dummy = torch.rand(size, size, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        torch.onnx.export(
            Sam2EncoderOnnx(model),
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=["image"],
            output_names=["image_embed", "high_res_feats_0", "high_res_feats_1"],
        )


def _export_decoder(model: nn.Module, path: Path, opset: int) -> None:
    pe = model.sam_prompt_encoder
    c = pe.embed_dim
    e = pe.image_embedding_size[0]
    size = int(model.image_size)
    # N = 2 prompts of K = 3 points in the dummy, so neither axis can be traced as a constant 1.
    dummy = {
        "image_embed": torch.randn(1, c, e, e),
        "high_res_feats_0": torch.randn(1, c // 8, 4 * e, 4 * e),
        "high_res_feats_1": torch.randn(1, c // 4, 2 * e, 2 * e),
        "point_coords": torch.randint(0, size, (2, 3, 2)).float(),
        "point_labels": torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]),
        "mask_input": torch.randn(2, 1, 4 * e, 4 * e),
        "has_mask_input": torch.tensor([1.0, 0.0]),
    }
    prompts = {0: "num_prompts"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Sam2DecoderOnnx(model),
            tuple(dummy.values()),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=list(dummy),
            output_names=["iou_predictions", "low_res_masks", "object_score_logits"],
            dynamic_axes={
                "point_coords": {0: "num_prompts", 1: "num_points"},
                "point_labels": {0: "num_prompts", 1: "num_points"},
                "mask_input": prompts,
                "has_mask_input": prompts,
                "iou_predictions": prompts,
                "low_res_masks": prompts,
                "object_score_logits": prompts,
            },
        )
