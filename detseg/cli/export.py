"""`detseg export`: a model name, checkpoint or architecture file -> ONNX + parity report.

A thin layer over `detseg.weights.export.export_model`. Exit status: 0 when the parity check
passed, 1 when it failed (the files and the report are still written, for inspection), 2 for
an error (bad argument, download or checksum failure, model that cannot be exported).

With ``--quantize int8|fp16`` (MODEL may then be an ONNX file, or ``builtin``), a thin layer
over `detseg.weights.quantize.export_variant`: the variant and ``<stem>_gate.json``; exit 1
when the gate failed (AP drop over ``--max-ap-drop``).
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
    quantize: str = typer.Option(None, "--quantize", help="int8 or fp16: write a quantized variant of MODEL (an ONNX file, 'builtin', or anything exported first) and accept it only through the accuracy gate."),
    calib: str = typer.Option(None, "--calib", help="Calibration images for int8 (folder, glob or COCO .json; letterboxed as at inference). Default: a shapes split, for the embedded model only."),
    calib_images: int = typer.Option(64, "--calib-images", help="Calibration images used (at most 200)."),
    gate: Path = typer.Option(None, "--gate", help="Held-out COCO instances .json for the gate. Default: a shapes split, for the embedded model only."),
    gate_images: Path = typer.Option(None, "--gate-images", help="Folder of the --gate images."),
    max_ap_drop: float = typer.Option(1.0, "--max-ap-drop", help="Largest accepted AP@[.50:.95] drop, in points."),
    head: str = typer.Option(None, "--head", help="yolox or ultralytics, for an ONNX model without Ultralytics metadata."),
    int8_ops: str = typer.Option("conv", "--int8-ops", help="conv: quantize Conv/MatMul/Gemm only; wide: also the backbone's Sigmoid/Mul/Add/Concat/MaxPool/Resize/Split/Slice (fewer Q/DQ pairs). The head stays float either way."),
) -> None:
    """Export to ONNX (metadata embedded) and prove parity with PyTorch in <stem>_parity.json."""
    if quantize is not None:
        _quantize(model, quantize, out, calib, calib_images, gate, gate_images, max_ap_drop, head,
                  int8_ops)
        return
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


def _quantize(model, mode, out, calib, calib_images, gate, gate_images, max_ap_drop, head,
              int8_ops) -> None:
    from detseg.weights.quantize import export_variant

    r = export_variant(model, mode, out, calib=calib, gate=gate, gate_images_dir=gate_images,
                       head=head, max_ap_drop=max_ap_drop, calib_images=calib_images,
                       int8_ops=int8_ops)
    typer.echo(f"wrote {r['variant']}")
    ci = r["ap_drop_ci"]
    ci_text = f" (95% CI {ci[0]:+.2f} to {ci[1]:+.2f})" if ci else ""
    typer.echo(
        f"gate ({r['gate_iou_type']} AP@[.50:.95], {r['images']} images): reference "
        f"{r['ap_reference']:.2f}, {mode} {r['ap_variant']:.2f}, drop {r['ap_drop']:.2f} points"
        f"{ci_text}; speedup {r['speedup']:.2f}x model, {r['speedup_predict']:.2f}x predict")
    for w in r["warnings"]:
        typer.echo(f"note: {w}")
    verdict = "passed" if r["passed"] else f"FAILED (drop over {r['max_ap_drop']} points)"
    typer.echo(f"gate {verdict}: {r['path']}")
    if not r["passed"]:
        raise typer.Exit(1)
