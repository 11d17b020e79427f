"""`detseg data`: dataset tools (for now: the synthetic shapes generator)."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(help="Dataset tools.", no_args_is_help=True)


@data_app.command("shapes")
def shapes(
    out: Path = typer.Option(..., "--out", help="Folder to write instances.json and images/ to."),
    images: int = typer.Option(..., "--images", help="Number of images."),
    seed: int = typer.Option(..., "--seed", help="Random seed: the same seed gives identical files."),
    size: int = typer.Option(320, "--size", help="Image side in pixels."),
    image_format: str = typer.Option("jpg", "--format", help="Image file format: jpg or png."),
    yolo: bool = typer.Option(False, "--yolo", help="Also write labels/*.txt and data.yaml for Ultralytics."),
) -> None:
    """Generate the deterministic synthetic shapes dataset (COCO instances with polygon masks)."""
    from detseg.data.shapes import generate_shapes, write_yolo_view

    json_path = generate_shapes(out, images, seed, size=size, image_format=image_format)
    print(f"wrote {json_path} ({images} images)")
    if yolo:
        print(f"wrote {write_yolo_view(out)}")


def register(app: typer.Typer) -> None:
    """Add `detseg data ...` to the top-level app."""
    app.add_typer(data_app, name="data")
