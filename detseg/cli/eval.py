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
    images: Path | None = typer.Option(None, "--images", help="With --model: folder of the dataset's images."),
    head: str | None = typer.Option(None, "--head", help="With --model: output format of models without Ultralytics metadata (yolox, ultralytics)."),
    device: str = typer.Option("auto", "--device", help="With --model: auto, cpu or cuda."),
    pred_out: Path | None = typer.Option(None, "--pred-out", help="With --model: keep the predictions here (default: a temporary file)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the summary lines."),
    engine: str = typer.Option("local", "--engine", help="With --model: local, or ray (predict on Ray Data actors, evaluate here; see detseg predict --help)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --engine ray: the Ray cluster (default: RAY_ADDRESS, a running local cluster, or a new local Ray)."),
    actors: int | None = typer.Option(None, "--actors", help="With --engine ray: model actors."),
) -> None:
    """Evaluate detections: `detseg eval --gt GT.json --pred RESULTS.json`."""
    if ctx.invoked_subcommand is not None:
        return
    from detseg.errors import InputError

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
            _evaluate(gt, pred, iou_type.value, json_out, out, iou, score, iou_thrs, max_dets, quiet)
        return
    if gt is None or pred is None:
        raise InputError("expected --gt GT.json and --pred RESULTS.json (or --model M --data GT.json); "
                         "see `detseg eval --help`")
    _evaluate(gt, pred, iou_type.value, json_out, out, iou, score, iou_thrs, max_dets, quiet)


def _predict(model: str | None, data: Path, out: Path, head: str | None, device: str,
             images: Path | None, quiet: bool, engine_kw: dict | None = None) -> None:
    from detseg.pipeline.batch import run_predict  # onnxruntime only when a model runs
    from detseg.weights.onnx_models import detector_onnx

    summary = run_predict(detector_onnx(model), data, out, head=head, device=device, preset="coco-eval",
                          images_dir=images, progress=not quiet, resume=False, **(engine_kw or {}))
    print(summary.format(), file=sys.stderr)


def _evaluate(gt: Path, pred: Path, iou_type: str, json_out: Path | None, out: Path | None,
              iou: float, score: float, iou_thrs: str | None, max_dets: str | None,
              quiet: bool) -> None:
    import warnings

    from detseg.data.coco import write_json_atomic
    from detseg.eval.metrics import EvalParams, evaluate
    from detseg.eval.report import build_report, to_json, write_report
    from detseg.eval.tables import print_terminal

    kw = {}
    if iou_thrs is not None:
        kw["iou_thrs"] = _floats(iou_thrs, "--iou-thrs")
    if max_dets is not None:
        kw["max_dets"] = [int(v) for v in _floats(max_dets, "--max-dets")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported below, once
        ev = evaluate(gt, pred, iou_type, EvalParams(**kw))
    report = build_report(ev, iou, score, with_errors=out is not None or json_out is not None)
    if quiet:
        print("\n".join(report["summary"]))
        _warn(report["warnings"])
    else:
        print_terminal(report)
    if json_out is not None:
        write_json_atomic(json_out, to_json(report))
        print(f"wrote {json_out}", file=sys.stderr)
    if out is not None:
        files = write_report(ev, out, iou, score, report=report)
        print(f"wrote {files['html']} (and report.md, report.json, CSV, PNG in {out})", file=sys.stderr)


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


def register(app: typer.Typer) -> None:
    """Add `detseg eval` (and `detseg eval compare`) to the top-level app."""
    app.add_typer(eval_app, name="eval")
