"""`detseg serve`: the interactive web demo (Gradio), a thin layer over `detseg.serve`."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import typer

from detseg.errors import DetsegError, InputError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise InputError("--auth: expected USER:PASSWORD with both parts non-empty, found no ':' "
                         "or an empty part")
    return user, password


def serve(
    model: list[str] = typer.Option(
        None, "--model", "-m",
        help="Detector to offer: a local .onnx file, a registry name or .pt checkpoint (exported "
        "to ONNX once and cached), or 'builtin' (the embedded default). Repeat to offer "
        "several; the first is selected. Default: builtin.",
    ),
    head: str = typer.Option(None, help="Decoder head for ONNX files without detseg metadata (e.g. yolox)."),
    sam: str = typer.Option(
        None, help="Segment Anything to use: a registry name (sam_vit_b, ...) or a .pth checkpoint, "
        "exported to ONNX once and cached. Default: the embedded SAM.",
    ),
    sam_encoder: Path = typer.Option(None, help="SAM image encoder ONNX (default: the embedded SAM)."),
    sam_decoder: Path = typer.Option(None, help="SAM prompt decoder ONNX (give with --sam-encoder)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes the demo to your network."),
    port: int = typer.Option(7860, min=1, max=65535, help="Port to listen on (1-65535)."),
    share: bool = typer.Option(False, "--share", help="Also open a public gradio.live link."),
    auth: str = typer.Option(
        None, envvar="DETSEG_SERVE_AUTH",
        help="USER:PASSWORD required to open the page (or set DETSEG_SERVE_AUTH).",
    ),
    max_upload: str = typer.Option("20MB", help="Largest upload, e.g. 20MB."),
    max_pixels: float = typer.Option(25e6, help="Largest image, in pixels (width x height)."),
    concurrency: int = typer.Option(2, min=1, help="Model calls running at once."),
    max_queue: int = typer.Option(64, min=1, help="Requests allowed to wait in the queue."),
    gt: Path = typer.Option(None, "--gt", help="COCO ground truth: open the Evaluate tab on it (with --pred)."),
    pred: list[Path] = typer.Option(
        None, "--pred", help="COCO results JSON to evaluate against --gt; give twice to compare A and B.",
    ),
    images: Path = typer.Option(None, "--images", help="Folder of the --gt images (default: beside the JSON)."),
    iou_type: str = typer.Option("bbox", "--iou-type", help="Evaluate tab: bbox or segm."),
    examples: list[Path] = typer.Option(
        None, "--examples",
        help="A folder of photos to offer as samples beside the synthetic shapes (its image "
        "files, at most 24). Repeat for several folders.",
    ),
) -> None:
    """Open the demo: detection and segmentation with sliders, and Segment Anything prompts."""
    from detseg.serve.app import ServeOptions, build_app, launch, make_context
    from detseg.serve.limits import Limits, parse_size
    from detseg.serve.models import ModelHub, detector_specs

    credentials = _parse_auth(auth)
    if sam is not None and sam_encoder is not None:
        raise InputError("--sam and --sam-encoder/--sam-decoder: give one or the other")
    if (sam_encoder is None) != (sam_decoder is None):
        raise InputError("--sam-encoder/--sam-decoder: expected both or neither, found one")
    for path in (sam_encoder, sam_decoder):
        if path is not None and not path.is_file():
            raise InputError(f"{path}: SAM model file not found")
    evalset = _load_evaluation(gt, pred or [], images, iou_type)  # bad files: refused before serving
    from detseg.serve.handlers import example_images

    for folder in examples or []:
        example_images(folder)  # refuse a missing or empty folder before loading models
    limits = Limits(max_upload_bytes=parse_size(max_upload), max_pixels=int(max_pixels))
    sam_paths = (sam_encoder, sam_decoder) if sam_encoder is not None else None
    hub = ModelHub(detector_specs(model or [], head), sam_paths=sam_paths, sam_name=sam, device=device)

    # Load now so that a broken model is reported here rather than on the first click.
    try:
        hub.detector(hub.default_name)
        print(f"detector: {hub.default_name}")
    except DetsegError as exc:  # shown here, and again in the page
        print(f"detector {hub.default_name!r} not available: {exc}")
    sam_note = hub.sam_status()
    print(f"segment anything: {sam_note or 'ready'}")

    if host not in ("127.0.0.1", "localhost", "::1") and credentials is None:
        print(f"warning: serving on {host} without --auth; anyone who can reach it can use it")
    options = ServeOptions(concurrency_limit=concurrency, max_queue=max_queue,
                           examples=tuple(Path(p) for p in examples or []))
    ctx = make_context(hub, limits)
    # Stop on SIGTERM as on Ctrl-C (Gradio closes the server on KeyboardInterrupt), so that
    # the session downloads below are removed either way.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo = build_app(ctx, options, evalset)
        try:
            launch(demo, ctx, host=host, port=port, share=share, auth=credentials, options=options)
        except OSError as exc:
            if "empty port" not in str(exc):
                raise
            raise InputError(f"--port {port}: {host}:{port} is in use; choose another port") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(ctx.out_dir, ignore_errors=True)  # downloads written for the sessions


def _load_evaluation(gt: Path | None, preds: list[Path], images: Path | None, iou_type: str):
    """Evaluate --pred against --gt once, before the page opens (None when not asked)."""
    if gt is None and not preds:
        return None
    if gt is None or not preds:
        raise InputError("--gt and --pred: give both (one ground truth, one or two results files)")
    if len(preds) > 2:
        raise InputError(f"--pred: expected one or two results files, found {len(preds)}")
    if iou_type not in ("bbox", "segm"):
        raise InputError(f"--iou-type: expected bbox or segm, found {iou_type!r}")
    if images is not None and not images.is_dir():
        raise InputError(f"--images {images}: folder not found")
    from detseg.serve.evalset import load_evalset

    es = load_evalset(gt, preds, iou_type, images)
    n = len(es.image_paths)
    aps = ", ".join(f"{r.name} AP {r.ev.stats[0]:.3f}" for r in es.runs)
    print(f"evaluate: {gt.name}: {n} images ({es.n_found} found on disk); {aps}")
    return es


def register(app: typer.Typer) -> None:
    """Add `detseg serve` to the top-level app."""
    app.command(name="serve")(serve)
