"""Export Segment Anything to two ONNX files and prove they match the PyTorch model.

- `<stem>_encoder.onnx`: uint8 RGB (h, w, 3) image whose longest side is `image_size`
  (resized in numpy by `detseg.pipeline.sam.resize_longest_side`, i.e. segment-anything's
  `ResizeLongestSide`) -> (1, C, E, E) embedding. Normalisation with the pixel mean/std and
  the bottom/right zero padding to `image_size` square are inside the graph (`Sam.preprocess`).
- `<stem>_decoder.onnx`: prompt encoder + mask decoder + mask upscaling, segment-anything's own
  `SamOnnxModel` with all four mask tokens returned and the crop
  to the unpadded size kept dynamic (`SamOnnxDecoder`) (dynamic number of points, box as two
  corners labelled 2/3, optional mask input, and a dynamic batch of prompts on one image
  embedding: `point_coords` (B, N, 2), metadata `prompt_batch=dynamic`). See `detseg.pipeline.sam` for the inputs/outputs.
- `<stem>_parity.json`: the parity report (`detseg.weights.sam_parity`), `"passed": true|false`.

Both files carry metadata: detseg_task, model_type, image_size, low_res_size, mask_threshold,
the architecture (JSON), pixel mean/std, the source checkpoint's SHA-256, the detseg version.
torch.onnx.export runs with dynamo=False at opset 17, as segment-anything's export script does.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel
from torch import nn
from torch.nn import functional as F

from detseg import __version__
from detseg.errors import InputError
from detseg.pipeline.sam import DECODER_TASK, ENCODER_TASK, PROMPT_BATCH_KEY
from detseg.weights.sam_arch import OFFICIAL_ARCHS, arch_of, build_sam_official, load_sam
from detseg.weights.sam_parity import check_sam_parity


@dataclass(frozen=True)
class SamExportResult:
    """Paths written by `export_sam` and whether the parity check passed."""

    encoder_path: Path
    decoder_path: Path
    report_path: Path
    passed: bool
    report: dict[str, Any] = field(default_factory=dict, repr=False)


class SamEncoderOnnx(nn.Module):
    """Image encoder with SAM's preprocessing: uint8 (h, w, 3) RGB -> (1, C, E, E) embedding."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(2, 0, 1).unsqueeze(0)
        # Sam.preprocess: normalise (uint8 promotes to float32 as in SamPredictor), then pad.
        return self.sam.image_encoder(self.sam.preprocess(x))


class SamOnnxDecoder(SamOnnxModel):
    """segment-anything's `SamOnnxModel` with the crop to the unpadded size kept dynamic.

    The original crops with `int(prepadded_size[0])`, which the tracer turns into a constant:
    the exported graph then crops every image as if it had the dummy input's aspect ratio.
    Slicing with the tensors themselves keeps the crop a function of `orig_im_size`.
    """

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        masks = F.interpolate(
            masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        prepadded_size = self.resize_longest_image_size(orig_im_size, self.img_size)
        masks = masks[..., : prepadded_size[0], : prepadded_size[1]]
        orig_im_size = orig_im_size.to(torch.int64)
        h, w = orig_im_size[0], orig_im_size[1]
        return F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)


def export_sam(
    checkpoint: Path | None,
    model_type: str,
    out_dir: Path,
    *,
    model: Sam | None = None,
    opset: int = 17,
) -> SamExportResult:
    """Export a SAM to `out_dir` (encoder, decoder, parity report) and check parity.

    The model is `model` when given (model_type is then a free label stored in the metadata),
    else read from `checkpoint` (its stored architecture, or the official `model_type`
    vit_b/vit_l/vit_h for a bare state dict), else an official architecture with random
    weights (for tests and benchmarks; recorded as such in the metadata).
    """
    out_dir = Path(out_dir)
    source = "in-memory model" if model is not None else str(checkpoint)
    if model is None:
        if checkpoint is not None:
            model = load_sam(checkpoint, model_type if model_type in OFFICIAL_ARCHS else None)
        elif model_type in OFFICIAL_ARCHS:
            model = build_sam_official(model_type)
            source = "no checkpoint: random weights"
        else:
            raise InputError(
                f"export_sam: model_type {model_type!r} is not one of {sorted(OFFICIAL_ARCHS)}; "
                f"give a checkpoint or a model"
            )
    model = model.eval().to("cpu")
    arch = arch_of(model)
    stem = Path(checkpoint).stem if checkpoint is not None else model_type
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder_path = out_dir / f"{stem}_encoder.onnx"
    decoder_path = out_dir / f"{stem}_decoder.onnx"
    report_path = out_dir / f"{stem}_parity.json"

    metadata = {
        "model_type": model_type,
        "image_size": str(arch.image_size),
        "low_res_size": str(arch.low_res_size),
        "embedding_size": str(arch.embedding_size),
        "mask_threshold": str(arch.mask_threshold),
        "arch": json.dumps(arch.to_dict(), sort_keys=True),
        "pixel_mean": json.dumps(list(arch.pixel_mean)),
        "pixel_std": json.dumps(list(arch.pixel_std)),
        "channel_order": "RGB",
        "source": source,
        "source_sha256": _sha256(Path(checkpoint)) if checkpoint is not None else "",
        "detseg_version": __version__,
    }
    _export_encoder(model, encoder_path, opset)
    _write_metadata(encoder_path, {**metadata, "detseg_task": ENCODER_TASK})
    _export_decoder(model, decoder_path, opset)
    _write_metadata(
        decoder_path, {**metadata, "detseg_task": DECODER_TASK, PROMPT_BATCH_KEY: "dynamic"}
    )

    report = check_sam_parity(model, encoder_path, decoder_path)
    report = {"model_type": model_type, "arch": arch.to_dict(), **report}
    report["encoder"] = encoder_path.name
    report["decoder"] = decoder_path.name
    tmp = report_path.with_name(report_path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(report_path)
    return SamExportResult(encoder_path, decoder_path, report_path, bool(report["passed"]), report)


def _export_encoder(sam: Sam, path: Path, opset: int) -> None:
    size = sam.image_encoder.img_size
    # A non-square dummy so that both sides are traced as dynamic.
    dummy = torch.randint(0, 256, (size, (3 * size) // 4, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        torch.onnx.export(
            SamEncoderOnnx(sam),
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=["image"],
            output_names=["image_embeddings"],
            dynamic_axes={"image": {0: "height", 1: "width"}},
        )


def _export_decoder(sam: Sam, path: Path, opset: int) -> None:
    onnx_model = SamOnnxDecoder(sam, return_single_mask=False)
    embed_dim = sam.prompt_encoder.embed_dim
    embed_size = sam.prompt_encoder.image_embedding_size
    mask_input_size = [4 * x for x in embed_size]
    size = sam.image_encoder.img_size
    # The dummy inputs of segment-anything's scripts/export_onnx_model.py.
    dummy = {
        "image_embeddings": torch.randn(1, embed_dim, *embed_size, dtype=torch.float),
        "point_coords": torch.randint(low=0, high=size, size=(1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, *mask_input_size, dtype=torch.float),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            onnx_model,
            tuple(dummy.values()),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=list(dummy),
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes=PROMPT_AXES,
        )


#: Dynamic axes of the decoder's prompt inputs: a batch of prompts (one mask set each, all on
#: the one image embedding) and any number of points per prompt. `mask_input` and
#: `has_mask_input` stay batch 1 (shared by the batch): in `SamOnnxModel._embed_masks`
#: a `has_mask_input` of shape (B,) would broadcast against the embedding's last axis.
PROMPT_AXES = {
    "point_coords": {0: "num_prompts", 1: "num_points"},
    "point_labels": {0: "num_prompts", 1: "num_points"},
}


def make_prompt_batch_dynamic(path: Path) -> None:
    """Declare the prompt batch axis of an exported decoder dynamic, in place.

    For decoders exported before the batch axis was declared (e.g. the embedded shapes SAM,
    whose checkpoint is not shipped): the traced graph already computes every batch-dependent
    shape from the inputs (`Shape` ops), only the declared input shape pins it to 1. Weights
    and operators are untouched; `tests/weights/test_export_sam.py` checks batch N against N
    single-prompt runs. Marks the model with metadata `prompt_batch=dynamic`.
    """
    model = onnx.load(str(path))
    for inp in model.graph.input:
        for axis, name in PROMPT_AXES.get(inp.name, {}).items():
            dim = inp.type.tensor_type.shape.dim[axis]
            dim.ClearField("dim_value")
            dim.dim_param = name
    onnx.save(model, str(path))
    _write_metadata(path, {PROMPT_BATCH_KEY: "dynamic"})


def _write_metadata(path: Path, props: dict[str, str]) -> None:
    """Add metadata_props and re-save, keeping weights external when the model is large."""
    model = onnx.load(str(path), load_external_data=False)
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)
    # Weights already stored externally (exports over 2 GiB) stay where torch put them.
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
