"""`detseg predict MODEL SOURCE --out results.json`: a thin layer over `run_predict`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer


class Head(str, Enum):
    yolox = "yolox"
    ultralytics = "ultralytics"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Preset(str, Enum):
    coco_eval = "coco-eval"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


def predict(
    # One list, so that MODEL can be left out: one value means SOURCE alone.
    inputs: list[str] = typer.Argument(..., metavar="[MODEL] SOURCE", show_default=False, help="MODEL (optional; default: the embedded shapes YOLOv8n-seg): an ONNX file (Ultralytics export, or YOLOX with --head yolox), a registry name such as yolov8n (downloaded and exported once; needs the export extra) or a .pt checkpoint. SOURCE: an image, a folder (recursive), a glob such as 'data/**/*.jpg', or a COCO instances .json."),
    out: Path = typer.Option(..., "--out", "-o", help="COCO results JSON to write (bbox xywh; RLE masks for segmentation models)."),
    head: Head | None = typer.Option(None, "--head", help="Output format of models without Ultralytics metadata."),
    device: Device = typer.Option(Device.auto, "--device", help="auto uses CUDA only when it really loads."),
    conf: float | None = typer.Option(None, "--conf", help="Score threshold (default 0.25, or the preset's)."),
    iou: float | None = typer.Option(None, "--iou", help="NMS IoU threshold (default 0.45, or the preset's)."),
    max_det: int | None = typer.Option(None, "--max-det", help="Detections kept per image (default 300, or the preset's)."),
    preset: Preset | None = typer.Option(None, "--preset", help="coco-eval: conf 0.001, max-det 100, iou 0.65 (YOLOX) or 0.7 (Ultralytics); explicit options win."),
    agnostic_nms: bool = typer.Option(False, "--agnostic-nms", help="Class-agnostic NMS: a box suppresses overlapping boxes of any class (Ultralytics' agnostic_nms, YOLOX's class_agnostic)."),
    batch: int | None = typer.Option(None, "--batch", help="Images per inference call (default 8, or the model's fixed batch)."),
    images: Path | None = typer.Option(None, "--images", help="Folder of the images of a COCO SOURCE."),
    save_images: Path | None = typer.Option(None, "--save-images", help="Also write annotated images (boxes, labels, masks) to this folder."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over instead of resuming an unfinished run of the same --out."),
    threads: int | None = typer.Option(None, "--threads", help="onnxruntime intra-op threads (default onnxruntime's)."),
    workers: int | None = typer.Option(None, "--workers", help="Batches run through the model at once (default: 2 on a multi-core CPU when --threads is not given, else 1); each gets cpu_count/N threads unless --threads is given."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    engine: Engine = typer.Option(Engine.local, "--engine", help="local: threads in this process. ray: Ray Data actors, one model each, on a local Ray or a cluster (needs the ray extra); same results, journal and resume."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --engine ray: the cluster (host:port, ray://host:port, auto, local); default RAY_ADDRESS, else a running local cluster, else a new local Ray."),
    actors: int | None = typer.Option(None, "--actors", help="With --engine ray: model actors (default one per GPU with --device cuda, else one per 2 CPUs, at least 2)."),
    sam: str | None = typer.Option(None, "--sam", help="Give every detection a Segment Anything mask prompted by its box: 'builtin' (the embedded shapes SAM), a registry name (sam_vit_b, ...) or a checkpoint. Turns any detector into an instance segmenter."),
) -> None:
    """Run a detector over images and write COCO results; resumable, bad images skipped."""
    from detseg.errors import InputError
    from detseg.pipeline.batch import run_predict
    from detseg.weights.onnx_models import detector_onnx

    if len(inputs) not in (1, 2):
        raise InputError(
            f"expected [MODEL] SOURCE (one or two arguments), found {len(inputs)}: "
            f"{' '.join(inputs)}"
        )
    model, source = (None, inputs[0]) if len(inputs) == 1 else inputs
    runner_model = detector_onnx(model)
    if sam is not None:
        from detseg.pipeline.sam_boxes import load_sam_boxes_detector

        runner_model = load_sam_boxes_detector(runner_model, sam, head.value if head else None,
                                               device.value, threads)
    summary = run_predict(
        runner_model, source, out,
        head=head.value if head else None, device=device.value,
        conf=conf, iou=iou, max_det=max_det, preset=preset.value if preset else None,
        batch_size=batch, images_dir=images, save_images_dir=save_images,
        resume=not no_resume, progress=not quiet, threads=threads, workers=workers,
        engine=engine.value, ray_address=ray_address, actors=actors,
        agnostic_nms=agnostic_nms,
    )
    print(summary.format())
    if summary.failed:
        raise typer.Exit(1 if summary.done == 0 and summary.skipped == 0 else 0)


def register(app: typer.Typer) -> None:
    """Add `detseg predict` to the top-level app."""
    app.command("predict")(predict)
