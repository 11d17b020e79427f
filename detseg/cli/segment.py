"""`detseg segment SOURCE --everything --out masks.json`: a thin layer over `SamMaskGenerator`."""

from __future__ import annotations

from pathlib import Path

import typer

from detseg.cli.predict import Device


def segment(
    source: str = typer.Argument(..., metavar="SOURCE", help="An image, a folder (recursive), a glob or a COCO instances .json."),
    out: Path = typer.Option(..., "--out", "-o", help="COCO results JSON to write: RLE masks, one class-agnostic category (id 1), score = predicted IoU."),
    everything: bool = typer.Option(False, "--everything", help="Segment everything (automatic mask generation, as segment-anything's SamAutomaticMaskGenerator)."),
    sam: str | None = typer.Option(None, "--sam", help="Segment Anything to use: a registry name (sam_vit_b, ...) or a checkpoint; default: the embedded shapes SAM."),
    points_per_side: int = typer.Option(32, help="Grid of points_per_side^2 clicks."),
    points_per_batch: int = typer.Option(64, help="Clicks per decoder run."),
    pred_iou_thresh: float = typer.Option(0.88, help="Keep masks whose predicted IoU is above this."),
    stability_score_thresh: float = typer.Option(0.95, help="Keep masks at least this stable."),
    stability_score_offset: float = typer.Option(1.0, help="Logit offset of the stability score."),
    box_nms_thresh: float = typer.Option(0.7, help="Box NMS IoU between masks."),
    crop_n_layers: int = typer.Option(0, help="Layers of image crops to run again (0: whole image only)."),
    min_mask_region_area: int = typer.Option(0, help="Remove holes and islands smaller than this (pixels)."),
    images: Path | None = typer.Option(None, "--images", help="Folder of the images of a COCO SOURCE."),
    device: Device = typer.Option(Device.auto, "--device", help="auto uses CUDA only when it really loads."),
    threads: int | None = typer.Option(None, "--threads", help="onnxruntime intra-op threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Segment everything in images with Segment Anything (onnxruntime) and write COCO results."""
    from detseg.errors import InputError
    from detseg.pipeline.sam import SamPredictor
    from detseg.pipeline.sam_auto import (
        MaskGeneratorSettings,
        SamMaskGenerator,
        segment_everything_files,
    )
    from detseg.weights.onnx_models import sam_onnx

    if not everything:
        raise InputError("detseg segment: only --everything is implemented (prompted "
                         "segmentation is in `detseg serve` and the Python API); add --everything")
    settings = MaskGeneratorSettings(
        points_per_side=points_per_side, points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
        stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
        crop_n_layers=crop_n_layers, min_mask_region_area=min_mask_region_area,
    )
    encoder, decoder = sam_onnx(sam)
    predictor = SamPredictor.load(encoder, decoder, device=device.value, threads=threads)
    summary = segment_everything_files(
        SamMaskGenerator(predictor, settings), source, out, images_dir=images, progress=not quiet
    )
    print(summary.format())
    if summary.failed:
        raise typer.Exit(1 if summary.done == 0 else 0)


def register(app: typer.Typer) -> None:
    """Add `detseg segment` to the top-level app."""
    app.command("segment")(segment)
