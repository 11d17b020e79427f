"""`detseg export`: a model name, checkpoint or architecture file -> ONNX + parity report.

A thin layer over `detseg.weights.export.export_model`. Exit status: 0 when the parity check
passed, 1 when it failed (the files and the report are still written, for inspection), 2 for
an error (bad argument, download or checksum failure, model that cannot be exported).
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``detseg export`` to the top-level app."""
    app.command("export")(export)


def export(
    model: str = typer.Argument(
        ...,
        help="Registry name (yolov8n, yolo11s-seg, sam_vit_b, sam2.1_hiera_tiny...), a local "
        ".pt/.pth file, or an "
        "Ultralytics architecture file such as yolov8n-seg.yaml (random weights).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    imgsz: int = typer.Option(None, "--imgsz", help="Ultralytics input size (multiple of 32; default 640)."),
    sam_type: str = typer.Option(
        None, "--sam-type", help="vit_b, vit_l or vit_h for a local SAM .pth, or sam2.1_hiera_tiny"
        " (small, base_plus, large) for a local SAM 2.1 .pt, whose name does not say it."
    ),
    images: list[Path] = typer.Option(
        None, "--images", help="Images (files or folders) for the Ultralytics parity check; "
        "default: synthetic images."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Download progress bar."),
) -> None:
    """Export to ONNX (metadata embedded) and prove parity with PyTorch in <stem>_parity.json."""
    from detseg.weights.export import export_model

    sample = _read_images(images) if images else None
    summary = export_model(model, out, imgsz=imgsz, sam_type=sam_type, sample_images=sample,
                           progress=progress)
    for path in summary.files:
        typer.echo(f"wrote {path}")
    verdict = "passed" if summary.passed else "FAILED"
    typer.echo(f"parity {verdict}: {summary.report_path}")
    if not summary.passed:
        raise typer.Exit(1)


def _read_images(paths: list[Path]) -> list:
    from detseg.data.images import read_image
    from detseg.errors import InputError

    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"--images: {p}: no such file or folder")
    if not files:
        raise InputError(f"--images: no image files found in {', '.join(map(str, paths))}")
    return [read_image(f) for f in files]
