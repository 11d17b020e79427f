"""An evaluation report as plain data, and its files: JSON, Markdown, CSV, PNG, one HTML.

`build_report` gathers everything (the 12 stats, per-class table, P/R/F1 at a threshold,
F1-optimal thresholds, confusion matrix, TIDE-style errors) into JSON-ready dicts and
lists; every writer reads that, so the formats agree. `write_report` writes them all.
"""

from __future__ import annotations

import base64
import html
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from detseg.data.coco import write_json_atomic
from detseg.eval import analysis, error_analysis, plots, tables
from detseg.eval.metrics import STAT_NAMES, CocoEvaluation


def _clean(x):
    """numpy -> Python, NaN/inf -> None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def build_report(ev: CocoEvaluation, iou: float = 0.5, score: float = 0.5,
                 with_errors: bool = True) -> dict:
    """Everything about one evaluation as JSON-ready data.

    Args:
        iou: IoU threshold for P/R/F1, the confusion matrix (one of the evaluated ones).
        score: score threshold for P/R/F1 and the confusion matrix.
        with_errors: compute the confusion matrix and the TIDE-style breakdown.
    """
    p = ev.params
    per_class = analysis.per_class_table(ev)
    prf = analysis.prf_at(ev, iou, score)
    curves = analysis.f1_curves(ev, iou)
    ar_key = f"AR{p.max_dets[-1]}"
    for k, row in enumerate(per_class):
        row["AR"] = row.pop(ar_key)
        pc = prf["per_class"][k]
        row.update(precision=pc["precision"], recall=pc["recall"], f1=pc["f1"], tp=pc["tp"],
                   fp=pc["fp"], fn=pc["fn"], best_threshold=curves["best_threshold"][k],
                   best_f1=curves["best_f1"][k])
    stats = dict(zip(STAT_NAMES, ev.stats.tolist(), strict=True))
    overall = {"name": "all", "AP": stats["AP"], "AP50": stats["AP50"], "AP75": stats["AP75"],
               "APs": stats["APs"], "APm": stats["APm"], "APl": stats["APl"],
               "AR": stats["AR100"], "n_gt": int(sum(r["n_gt"] for r in per_class)),
               "n_det": len(ev.results), **prf["overall"],
               "best_threshold": curves["overall_best_threshold"],
               "best_f1": curves["overall_best_f1"]}
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR"):
        if overall[key] == -1:
            overall[key] = float("nan")
    report = {
        "iou_type": ev.iou_type,
        "ground_truth": ev.gt.source,
        "results": ev.results.source,
        "n_images": int(ev.gt.image_ids.shape[0]),
        "stats": ev.stats.tolist(),
        "stat_names": list(STAT_NAMES),
        "summary": ev.summary_lines(),
        "params": {"iou_thrs": p.iou_thrs.tolist(), "max_dets": list(p.max_dets),
                   "area_rng": p.area_rng, "area_lbl": list(p.area_lbl),
                   "n_rec_thrs": int(p.rec_thrs.shape[0])},
        "per_class": per_class,
        "overall": overall,
        "prf": {"iou": iou, "score": score},
        "f1_curves": {"thresholds": curves["thresholds"], "overall_f1": curves["overall_f1"],
                      "overall_precision": curves["overall_precision"],
                      "overall_recall": curves["overall_recall"]},
        "warnings": list(ev.warnings),
    }
    if with_errors:
        cm = error_analysis.confusion_matrix(ev, iou, score)
        report["confusion"] = {"iou": iou, "score": score,
                               "labels": list(ev.gt.cat_names) + ["background"],
                               "matrix": cm.tolist()}
        report["tide"] = error_analysis.tide_errors(ev, t_f=iou)
    report["_curves"] = curves  # for the plots; not written to JSON
    return report


def to_json(report: dict) -> dict:
    return _clean({k: v for k, v in report.items() if not k.startswith("_")})


def to_markdown(report: dict, images: dict[str, str] | None = None) -> str:
    """The report as Markdown; ``images`` maps a title to a relative PNG path to link."""
    o = report["overall"]
    md = [f"# detseg eval ({report['iou_type']})", "",
          f"- ground truth: `{report['ground_truth']}` ({report['n_images']} images)",
          f"- results: `{report['results']}` ({o['n_det']} detections)", "",
          "## COCO metrics (identical to pycocotools)", "", "```", *report["summary"], "```", "",
          f"## Per class (values in %; P/R/F1 at IoU {report['prf']['iou']:.2f}, "
          f"score >= {report['prf']['score']:.3f})", "",
          tables.markdown_table(tables.headers(report), tables.class_rows(report)), ""]
    if "tide" in report:
        t = report["tide"]
        md += [f"## TIDE-style errors (dAP{int(round(100 * t['t_f']))}, points)", "",
               tables.markdown_table(["error", "dAP", "count"],
                                     [[k, f"{100 * v:.2f}", str(t["counts"].get(k, ""))]
                                      for k, v in t["dAP"].items()]), ""]
    for title, path in (images or {}).items():
        md += [f"## {title}", "", f"![{title}]({path})", ""]
    if "gallery" in report:
        g = report["gallery"]
        md += [f"Error gallery: {g['n_examples']} examples and {g['n_views']} image views in report.html"
               + (f" ({g['note']})" if g["note"] else ""), ""]
    for w in report.get("warnings", []):
        md.append(f"> warning: {w}")
    return "\n".join(md) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right}td:first-child,th:first-child{text-align:left}tr:last-child{font-weight:bold}
pre{background:#f6f6f6;padding:.8em}img{max-width:100%;border:1px solid #eee}"""


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def to_html(report: dict, pngs: dict[str, Path], sections: list[str] | tuple[str, ...] = ()) -> str:
    """One self-contained HTML page: tables and the PNGs embedded as data URIs; ``sections``
    are extra HTML fragments (the error gallery) placed after the plots."""
    css = _CSS
    if sections:
        from detseg.eval.gallery import GALLERY_CSS

        css += GALLERY_CSS

    o = report["overall"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>detseg eval</title>"
             f"<style>{css}</style></head><body>",
             f"<h1>detseg eval ({html.escape(report['iou_type'])})</h1>",
             f"<p>ground truth <code>{html.escape(report['ground_truth'])}</code> "
             f"({report['n_images']} images); results <code>{html.escape(report['results'])}</code> "
             f"({o['n_det']} detections)</p>",
             "<h2>COCO metrics (identical to pycocotools)</h2><pre>"
             + html.escape("\n".join(report["summary"])) + "</pre>",
             f"<h2>Per class</h2><p>values in %; P/R/F1 at IoU {report['prf']['iou']:.2f}, "
             f"score &ge; {report['prf']['score']:.3f}; best thr = F1-optimal score threshold</p>",
             _html_table(tables.headers(report), tables.class_rows(report))]
    if "tide" in report:
        t = report["tide"]
        parts.append(f"<h2>TIDE-style errors (dAP{int(round(100 * t['t_f']))}, points)</h2>")
        parts.append(_html_table(["error", "dAP", "count"],
                                 [[k, f"{100 * v:.2f}", t["counts"].get(k, "")] for k, v in t["dAP"].items()]))
    for title, path in pngs.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.extend(sections)
    for w in report.get("warnings", []):
        parts.append(f"<p><b>warning:</b> {html.escape(w)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(ev: CocoEvaluation, out_dir: str | Path, iou: float = 0.5, score: float = 0.5,
                 report: dict | None = None, gallery: int | None = None,
                 images_dir: str | Path | None = None, load_image=None) -> dict[str, Path]:
    """Write report.json, report.md, per_class.csv, confusion_matrix.csv, the PNGs and
    report.html (self-contained) under ``out_dir``; returns name -> path.

    ``gallery``: examples per class and error type in the HTML's error gallery (None or 0:
    no gallery); its images are looked for in ``images_dir``, then beside the ground truth,
    unless ``load_image`` (image index -> RGB array or None, see `gallery.build_gallery`)
    provides them. ``report``: a `build_report` of the same ``iou`` and ``score`` (made
    here when None, beside the gallery's image reading).
    """
    return make_report(ev, out_dir, iou, score, report=report, gallery=gallery,
                       images_dir=images_dir, load_image=load_image)[1]


def make_report(ev: CocoEvaluation, out_dir: str | Path, iou: float = 0.5, score: float = 0.5, *,
                report: dict | None = None, gallery: int | None = None,
                images_dir: str | Path | None = None, load_image=None
                ) -> tuple[dict, dict[str, Path]]:
    """`write_report`, returning the report too (with its ``gallery`` entry)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    with ThreadPoolExecutor(1) as background:
        # the gallery reads, draws and encodes images in OpenCV, mostly without the GIL:
        # started first, it runs beside the report's tables and plots (which hold the GIL).
        # It first classifies the errors (TIDE, cached on ``ev``); the PR curves need no
        # classification and are drawn meanwhile; `build_report` then waits for it if it is
        # not done (error_analysis computes each cached result once).
        pending = None
        if gallery:
            from detseg.eval.gallery import gallery_for, gallery_html, gallery_json

            pending = background.submit(gallery_for, ev, images_dir, per_class=int(gallery),
                                        score=score, iou=iou, load_image=load_image)
        pngs = {"Precision-recall curves": plots.pr_curves(ev, out / "pr_curves.png")}
        report = report or build_report(ev, iou, score)
        pngs["F1 vs confidence"] = plots.f1_confidence(report["_curves"], out / "f1_confidence.png")
        if "confusion" in report:
            c = report["confusion"]
            pngs["Confusion matrix"] = plots.confusion(np.asarray(c["matrix"]), list(ev.gt.cat_names),
                                                       out / "confusion_matrix.png", c["iou"], c["score"])
            pngs["TIDE-style errors"] = plots.tide_bars(report["tide"], out / "tide_errors.png")
            (out / "confusion_matrix.csv").write_text(tables.confusion_csv(report))
        if pending is not None:
            g, names = pending.result()
            report["gallery"] = gallery_json(g)
            sections.append(gallery_html(g, list(ev.gt.cat_names), names))
    files = {"json": out / "report.json", "markdown": out / "report.md",
             "per_class_csv": out / "per_class.csv", "html": out / "report.html"}
    write_json_atomic(files["json"], to_json(report))
    files["markdown"].write_text(to_markdown(report, {t: p.name for t, p in pngs.items()}))
    files["per_class_csv"].write_text(tables.per_class_csv(report))
    files["html"].write_text(to_html(report, pngs, sections))
    if "confusion" in report:
        files["confusion_csv"] = out / "confusion_matrix.csv"
    files.update({p.stem: p for p in pngs.values()})
    return report, files


def dumps(report: dict) -> str:
    return json.dumps(to_json(report), indent=1)
