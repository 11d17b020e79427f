"""Robustness under image corruptions: AP per corruption x severity, mPC and rPC.

After Michaelis et al. 2019 ("Benchmarking Robustness in Object Detection"): the model
predicts on corrupted copies of the dataset's images (see `detseg.eval.corruptions`), each
copy is evaluated against the same ground truth, and

- **mPC** = mean AP over every (corruption, severity) run,
- **rPC** = mPC / clean AP.

AP is COCO's AP@[.50:.95] (bbox). Corrupted images are made in memory, inside the batch
runner's preprocess step (`CorruptedDetector`): the user's files are only read. Predictions
of each (corruption, severity) go through `run_predict` to their own results file under
``DIR/predictions/``, with its resume journal, so an interrupted run resumes where it stopped
and finished runs are not predicted again.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detseg.eval.corruptions import corrupt, definitions_digest, parse_corruptions, parse_severities

log = logging.getLogger(__name__)


class CorruptedDetector:
    """A detector whose ``preprocess`` corrupts each image first; everything else delegates.

    Satisfies what `run_predict` needs of a detector (``preprocess``/``infer``/``postprocess``,
    ``meta``, ``input_size_for``...). Corruptions keep the image size, so batching by input
    size is unchanged.
    """

    def __init__(self, detector: Any, corruption: str, severity: int, seed: int = 0) -> None:
        self._detector = detector
        self.corruption, self.severity, self.seed = corruption, int(severity), int(seed)
        self._lock = threading.Lock()  # albumentations pipelines keep their RNG on the object

    def preprocess(self, images: Sequence[np.ndarray]) -> Any:
        with self._lock:
            bad = [im for im in images if getattr(im, "ndim", 0) != 3 or im.shape[2] != 3]
            if bad:  # let the detector reject it with its own message
                return self._detector.preprocess(images)
            images = [corrupt(im, self.corruption, self.severity, self.seed) for im in images]
        return self._detector.preprocess(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)


def _file_id(path: Path) -> dict:
    st = path.stat()
    return {"file": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def run_robustness(
    model: str | Path | None,
    data: str | Path,
    out_dir: str | Path,
    *,
    corruptions: str | Sequence[str] | None = None,
    severities: str | Sequence[int] | None = None,
    seed: int = 0,
    head: str | None = None,
    device: str = "auto",
    images_dir: str | Path | None = None,
    progress: bool = True,
    detector: Any = None,
) -> dict:
    """Predict on corrupted copies of ``data``'s images and evaluate each run.

    Args:
        model: ONNX file, registry name, or None for the embedded default (ignored when
            ``detector`` is given).
        data: COCO instances JSON (ground truth and image list).
        out_dir: where ``predictions/`` (results and journals) and the report files go.
        corruptions: names (list or comma-separated; None: all of `CORRUPTIONS`).
        severities: in 1..5 (list or comma-separated; None: all five).
        seed: seeds every corruption (per image, see `corruptions.image_seed`).
        detector: an already loaded detector (tests, the API).

    Returns:
        ``{"clean_ap", "mpc", "rpc", "table": {corruption: {severity: AP}}, "metric", "seed",
        "corruptions", "severities", "n_images"}``; AP in [0, 1].
    """
    from detseg.eval.metrics import evaluate
    from detseg.pipeline.batch import run_predict
    from detseg.pipeline.journal import journal_path_for
    from detseg.pipeline.sources import open_source

    names = parse_corruptions(corruptions if not isinstance(corruptions, (list, tuple))
                              else ",".join(corruptions))
    sevs = parse_severities(severities if not isinstance(severities, (list, tuple))
                            else ",".join(map(str, severities)))
    data = Path(data)
    out = Path(out_dir)
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    source = open_source(data, images_dir)
    if detector is None:
        from detseg.pipeline.detector import Detector
        from detseg.weights.onnx_models import detector_onnx

        path = detector_onnx(model)
        detector = Detector.load(path, head=head, device=device)
        model_id = _file_id(Path(path))
    else:
        sp = getattr(getattr(detector, "session", None), "path", None)
        model_id = _file_id(Path(sp)) if sp and Path(sp).is_file() else {"object": repr(detector)}
    run_id = {"model": model_id, "head": head, "data": _file_id(data), "seed": int(seed),
              "corruptions": definitions_digest(),
              "images_dir": str(images_dir) if images_dir else None}
    _check_run(pred_dir, run_id)

    def predictions(name: str | None, severity: int) -> Path:
        tag = "clean" if name is None else f"{name}-{severity}"
        res = pred_dir / f"{tag}.json"
        if res.is_file() and not journal_path_for(res).exists():
            return res  # finished earlier
        det = detector if name is None else CorruptedDetector(detector, name, severity, seed)
        summary = run_predict(det, source, res, preset="coco-eval", progress=progress, resume=True)
        if summary.failed:
            log.warning("%s: %d images failed (%s)", tag, len(summary.failed), summary.failed[0])
        return res

    def ap(res: Path) -> float:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(evaluate(data, res, "bbox").stats[0])

    clean = ap(predictions(None, 0))
    table: dict[str, dict[int, float]] = {}
    for name in names:
        table[name] = {}
        for s in sevs:
            table[name][s] = ap(predictions(name, s))
            if progress:
                log.info("%s severity %d: AP %.4f", name, s, table[name][s])
    vals = [v for row in table.values() for v in row.values()]
    mpc = float(np.mean(vals)) if vals else float("nan")
    rpc = mpc / clean if clean > 0 else float("nan")
    return {"metric": "AP@[.50:.95] bbox (COCO)", "clean_ap": clean, "mpc": mpc, "rpc": rpc,
            "table": table, "seed": int(seed), "corruptions": names, "severities": sevs,
            "n_images": len(source), "data": str(data)}


def _check_run(pred_dir: Path, run_id: dict) -> None:
    """Keep earlier predictions only if they came from the same model, data and seed."""
    manifest = pred_dir / "run.json"
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        if old == run_id:
            return
        stale = [p for p in pred_dir.iterdir() if p.name != "run.json"
                 and (p.suffix == ".json" or p.name.endswith(".partial.jsonl"))]
        log.warning("%s: model, data, seed or corruption definitions changed; %d earlier "
                    "prediction files dropped",
                    pred_dir, len(stale))
        for p in stale:
            p.unlink()
    manifest.write_text(json.dumps(run_id, indent=1))


# ---- output -------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (AP in %): one row per corruption, a column per severity, their mean."""
    sevs = result["severities"]
    head = ["corruption", *[f"s{s}" for s in sevs], "mean"]
    rows = []
    for name, row in result["table"].items():
        vals = [row.get(s, row.get(str(s))) for s in sevs]
        rows.append([name, *[_fmt(v) for v in vals], _fmt(float(np.mean(vals)))])
    return head, rows


def summary_line(result: dict) -> str:
    return (f"clean AP {_fmt(result['clean_ap'])}  mPC {_fmt(result['mpc'])}  "
            f"rPC {100 * result['rpc']:.1f}%" if math.isfinite(result["rpc"]) else
            f"clean AP {_fmt(result['clean_ap'])}  mPC {_fmt(result['mpc'])}  rPC -")


def to_markdown(result: dict) -> str:
    from detseg.eval.tables import markdown_table

    head, rows = table_rows(result)
    return "\n".join([f"# Robustness under corruptions ({result['metric']}, values in %)", "",
                      f"{summary_line(result)}; {result['n_images']} images, seed {result['seed']}",
                      "", markdown_table(head, rows), ""])


def to_csv(result: dict) -> str:
    lines = ["corruption,severity,ap"]
    lines.append(f"clean,0,{result['clean_ap']:.6f}")
    for name, row in result["table"].items():
        for s, v in row.items():
            lines.append(f"{name},{s},{v:.6f}")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str | Path) -> Path:
    """AP against severity, one line per corruption, the clean AP as a dashed line."""
    from detseg.eval.plots import figure

    fig = figure((7, 4.2), dpi=100)
    ax = fig.subplots()
    sevs = result["severities"]
    for name, row in result["table"].items():
        ax.plot([0, *sevs], [100 * result["clean_ap"], *[100 * row[s] for s in sevs]],
                marker="o", label=name)
    ax.axhline(100 * result["clean_ap"], color="k", ls="--", lw=1, label="clean")
    ax.set_xlabel("severity")
    ax.set_ylabel("AP (%)")
    ax.set_xticks([0, *sevs])
    ax.set_title(f"AP under corruptions (mPC {_fmt(result['mpc'])}, rPC "
                 f"{100 * result['rpc']:.0f}%)" if math.isfinite(result["rpc"]) else "AP under corruptions")
    ax.grid(alpha=.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """robustness.json (clean_ap, mpc, rpc, table...), .md, .csv, .png and report.html."""
    import base64
    import html

    from detseg.data.coco import write_json_atomic
    from detseg.eval.report import _clean, _html_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "robustness.json", "markdown": out / "robustness.md",
             "csv": out / "robustness.csv", "png": out / "robustness.png", "html": out / "report.html"}
    js = dict(result)
    js["table"] = {k: {str(s): v for s, v in row.items()} for k, row in result["table"].items()}
    write_json_atomic(files["json"], _clean(js))
    files["markdown"].write_text(to_markdown(result))
    files["csv"].write_text(to_csv(result))
    plot(result, files["png"])
    head, rows = table_rows(result)
    png = base64.b64encode(files["png"].read_bytes()).decode("ascii")
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>detseg robustness</title>",
            "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
            "padding:2px 6px;text-align:right}td:first-child{text-align:left}</style></head><body>",
            f"<h1>Robustness under corruptions</h1><p>{html.escape(result['data'])}: "
            f"{result['n_images']} images, seed {result['seed']}; {html.escape(result['metric'])}</p>",
            f"<p><b>{html.escape(summary_line(result))}</b> (mPC: mean AP over corruptions and "
            "severities; rPC = mPC / clean AP)</p>",
            _html_table(head, rows),
            f"<h2>AP against severity</h2><img alt='AP against severity' src='data:image/png;base64,{png}'>",
            "</body></html>"]
    files["html"].write_text("\n".join(page))
    return files
