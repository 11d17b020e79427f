"""`detseg eval`: COCO metrics identical to pycocotools, tables, plots and reports.

    detseg eval --gt GT.json --pred RESULTS.json [--iou-type bbox|segm] [--json OUT.json]
                [--out REPORT_DIR] [--iou 0.5] [--score 0.5]
    detseg eval --model M.onnx --data GT.json [--head yolox] ...   (predict, then evaluate)
    detseg eval --data GT.json                                     (the same, embedded default model)
    detseg eval compare A.json B.json --gt GT.json                 (paired bootstrap over images)

A thin layer over `detseg.eval` (metrics, analysis, report, compare).
"""

from __future__ import annotations

import sys
import tempfile
from enum import Enum
from pathlib import Path

import typer


class IouType(str, Enum):
    bbox = "bbox"
    segm = "segm"


class Protocol(str, Enum):
    coco = "coco"
    lvis = "lvis"


eval_app = typer.Typer(
    help="Evaluate COCO results against COCO ground truth (numbers identical to pycocotools).",
    invoke_without_command=True,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
)


def _floats(text: str | None, name: str) -> list[float] | None:
    from detseg.errors import InputError

    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{name}: expected comma-separated numbers, found {text!r}") from None


def _warn(messages: list[str]) -> None:
    for w in messages:
        print(f"detseg: warning: {w}", file=sys.stderr)


@eval_app.callback(invoke_without_command=True)
def eval_main(
    ctx: typer.Context,
    gt: Path | None = typer.Option(None, "--gt", help="COCO instances JSON (ground truth)."),
    pred: Path | None = typer.Option(None, "--pred", help="COCO results JSON (a list of detections)."),
    model: str | None = typer.Option(None, "--model", help="Instead of --pred: a model (ONNX file, registry name or checkpoint) to run over --data first."),
    data: Path | None = typer.Option(None, "--data", help="Predict on this COCO instances JSON, then evaluate against it (with --model, or the embedded default model when neither --model nor --pred is given)."),
    iou_type: IouType = typer.Option(IouType.bbox, "--iou-type", help="bbox or segm (masks)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write stats (the 12 COCO numbers in pycocotools' order), per-class table and analyses as JSON."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the full report to this folder: report.html (self-contained), report.md, report.json, per_class.csv, confusion_matrix.csv/.png, PR and F1 plots."),
    iou: float = typer.Option(0.5, "--iou", help="IoU threshold for P/R/F1, confusion matrix and TIDE (one of the evaluated thresholds)."),
    score: float = typer.Option(0.5, "--score", help="Score threshold for P/R/F1 and the confusion matrix."),
    iou_thrs: str | None = typer.Option(None, "--iou-thrs", help="Custom IoU thresholds, comma-separated (default .50:.05:.95)."),
    max_dets: str | None = typer.Option(None, "--max-dets", help="Custom maxDets, comma-separated (default 1,10,100)."),
    images: Path | None = typer.Option(None, "--images", help="Folder of the dataset's images (to predict on with --model; for the report's error gallery)."),
    gallery: int = typer.Option(3, "--gallery", min=1, help="With --out: examples per class and error type in the report's error gallery."),
    no_gallery: bool = typer.Option(False, "--no-gallery", help="With --out: leave the error gallery (image thumbnails) out of report.html."),
    head: str | None = typer.Option(None, "--head", help="With --model: output format of models without Ultralytics metadata (yolox, ultralytics)."),
    device: str = typer.Option("auto", "--device", help="With --model: auto, cpu or cuda."),
    pred_out: Path | None = typer.Option(None, "--pred-out", help="With --model: keep the predictions here (default: a temporary file)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the summary lines."),
    protocol: Protocol = typer.Option(Protocol.coco, "--protocol", help="coco (pycocotools' COCOeval) or lvis (the lvis package's LVISEval: federated labels, 300 detections per image, APr/APc/APf)."),
    engine: str = typer.Option("local", "--engine", help="With --model: local, or ray (predict on Ray Data actors, evaluate here; see detseg predict --help)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --engine ray: the Ray cluster (default: RAY_ADDRESS, a running local cluster, or a new local Ray)."),
    actors: int | None = typer.Option(None, "--actors", help="With --engine ray: model actors."),
) -> None:
    """Evaluate detections: `detseg eval --gt GT.json --pred RESULTS.json`."""
    if ctx.invoked_subcommand is not None:
        return
    from detseg.errors import InputError

    if protocol is Protocol.lvis:
        if model is not None or pred is None or gt is None:
            raise InputError("--protocol lvis evaluates existing results: give --gt LVIS.json and "
                             "--pred RESULTS.json (predict first with `detseg predict ... "
                             "--max-det 300`; --model/--data is COCO-only for now)")
        if out is not None or iou_thrs is not None or max_dets is not None:
            raise InputError("--protocol lvis: --out, --iou-thrs and --max-dets are COCO-only for "
                             "now (LVIS uses its fixed thresholds and 300 detections per image)")
        _evaluate_lvis(gt, pred, iou_type.value, json_out, quiet)
        return

    if model is not None or (data is not None and pred is None):
        if data is None:
            raise InputError("--model needs --data (a COCO instances JSON to predict on)")
        if pred is not None:
            raise InputError("give either --pred (existing results) or --model, not both")
        gt = gt or data
        with tempfile.TemporaryDirectory(prefix="detseg-eval-") as tmp:
            pred = pred_out or Path(tmp) / "predictions.json"
            _predict(model, data, pred, head, device, images, quiet,
                     dict(engine=engine, ray_address=ray_address, actors=actors))
            _evaluate(gt, pred, iou_type.value, json_out, out, iou, score, iou_thrs, max_dets, quiet,
                      gallery=None if no_gallery else gallery, images=images)
        return
    if gt is None or pred is None:
        raise InputError("expected --gt GT.json and --pred RESULTS.json (or --model M --data GT.json); "
                         "see `detseg eval --help`")
    _evaluate(gt, pred, iou_type.value, json_out, out, iou, score, iou_thrs, max_dets, quiet,
              gallery=None if no_gallery else gallery, images=images)


def _predict(model: str | None, data: Path, out: Path, head: str | None, device: str,
             images: Path | None, quiet: bool, engine_kw: dict | None = None) -> None:
    from detseg.pipeline.batch import run_predict  # onnxruntime only when a model runs
    from detseg.weights.onnx_models import detector_onnx

    summary = run_predict(detector_onnx(model), data, out, head=head, device=device, preset="coco-eval",
                          images_dir=images, progress=not quiet, resume=False, **(engine_kw or {}))
    print(summary.format(), file=sys.stderr)


def _evaluate(gt: Path, pred: Path, iou_type: str, json_out: Path | None, out: Path | None,
              iou: float, score: float, iou_thrs: str | None, max_dets: str | None,
              quiet: bool, gallery: int | None = None, images: Path | None = None) -> None:
    import warnings

    from detseg.data.coco import write_json_atomic
    from detseg.eval.metrics import EvalParams, evaluate
    from detseg.eval.report import build_report, make_report, to_json
    from detseg.eval.tables import print_terminal

    kw = {}
    if iou_thrs is not None:
        kw["iou_thrs"] = _floats(iou_thrs, "--iou-thrs")
    if max_dets is not None:
        kw["max_dets"] = [int(v) for v in _floats(max_dets, "--max-dets")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported below, once
        ev = evaluate(gt, pred, iou_type, EvalParams(**kw))
    if out is not None:  # the report's files, its gallery's images read beside its tables
        report, files = make_report(ev, out, iou, score, gallery=gallery, images_dir=images)
    else:
        report = build_report(ev, iou, score, with_errors=json_out is not None)
    if quiet:
        print("\n".join(report["summary"]))
        _warn(report["warnings"])
    else:
        print_terminal(report)
    if json_out is not None:
        write_json_atomic(json_out, to_json(report))
        print(f"wrote {json_out}", file=sys.stderr)
    if out is not None:
        note = (report.get("gallery") or {}).get("note")
        if note:
            print(f"detseg: note: {note}", file=sys.stderr)
        print(f"wrote {files['html']} (and report.md, report.json, CSV, PNG in {out})", file=sys.stderr)


def _evaluate_lvis(gt: Path, pred: Path, iou_type: str, json_out: Path | None, quiet: bool) -> None:
    from detseg.data.coco import write_json_atomic
    from detseg.eval.lvis import evaluate_lvis

    ev = evaluate_lvis(gt, pred, iou_type)
    print("\n".join(ev.summary_lines()))
    if not quiet:
        sizes = {f: len(g) for f, g in zip("rcf", ev.freq_groups, strict=True)}
        print(f"categories by frequency: rare {sizes['r']}, common {sizes['c']}, "
              f"frequent {sizes['f']}; detections evaluated: {len(ev.kept)}", file=sys.stderr)
    _warn(ev.warnings)
    if json_out is not None:
        write_json_atomic(json_out, {"protocol": "lvis", "iou_type": iou_type,
                                     "results": ev.results})
        print(f"wrote {json_out}", file=sys.stderr)


@eval_app.command("compare")
def compare_cmd(
    a: Path = typer.Argument(..., help="Results A (COCO results JSON), the baseline."),
    b: Path = typer.Argument(..., help="Results B, the candidate."),
    gt: Path = typer.Option(..., "--gt", help="COCO instances JSON both were made on."),
    iou_type: IouType = typer.Option(IouType.bbox, "--iou-type"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples of the images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the resampling."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence level of the interval."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the comparison as JSON."),
    markdown: Path | None = typer.Option(None, "--markdown", help="Write the comparison as Markdown."),
) -> None:
    """Compare two result files on the same ground truth: stats side by side, B - A, and a
    paired bootstrap confidence interval (over images) of the AP difference."""
    from detseg.data.coco import write_json_atomic
    from detseg.eval.compare import compare, compare_markdown, print_compare

    result = compare(gt, a, b, iou_type.value, n_boot=bootstrap, seed=seed, confidence=confidence)
    print_compare(result)
    if json_out is not None:
        write_json_atomic(json_out, result)
    if markdown is not None:
        markdown.write_text(compare_markdown(result))


@eval_app.command("robustness")
def robustness_cmd(
    model: str | None = typer.Argument(None, help="ONNX file or registry name (default: the embedded model)."),
    data: Path = typer.Option(..., "--data", help="COCO instances JSON: the images to corrupt and the ground truth."),
    corruptions: str | None = typer.Option(None, "--corruptions", help="Comma-separated names (default: all): gaussian_noise, shot_noise, motion_blur, defocus_blur, jpeg_compression, brightness, contrast, fog, pixelate."),
    severities: str | None = typer.Option(None, "--severities", help="Comma-separated severities in 1..5 (default: 1,2,3,4,5)."),
    out: Path = typer.Option(Path("robustness"), "--out", "-o", help="Folder for robustness.json/.md/.csv/.png, report.html and predictions/ (the resume state)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random corruptions (same seed, same pixels)."),
    images: Path | None = typer.Option(None, "--images", help="Folder of the dataset's images."),
    head: str | None = typer.Option(None, "--head", help="Output format of models without Ultralytics metadata (yolox, ultralytics)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """AP under image corruptions (Michaelis et al. 2019): per corruption x severity, mPC, rPC."""
    from detseg.eval.corruptions import parse_corruptions, parse_severities
    from detseg.eval.robustness import run_robustness, summary_line, table_rows, write_outputs
    from detseg.eval.tables import markdown_table

    parse_corruptions(corruptions)  # bad names fail before any model loads
    parse_severities(severities)
    result = run_robustness(model, data, out, corruptions=corruptions, severities=severities,
                            seed=seed, head=head, device=device, images_dir=images, progress=not quiet)
    head_row, rows = table_rows(result)
    print(f"AP (%) under corruptions, {result['n_images']} images, seed {seed}")
    print(markdown_table(head_row, rows))
    print(summary_line(result))
    files = write_outputs(result, out)
    print(f"wrote {files['json']} (and robustness.md, .csv, .png, report.html in {out})", file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add `detseg eval` (and `detseg eval compare`) to the top-level app."""
    app.add_typer(eval_app, name="eval")
