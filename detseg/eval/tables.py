"""Tables of a report as text: terminal (rich), Markdown and CSV.

All take the plain-data report of `detseg.eval.report.build_report` (lists of dicts), so
the three formats cannot disagree.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

# per-class columns: (key, header, kind) where kind "pct" prints value*100 with one decimal
CLASS_COLUMNS = (
    ("name", "class", "str"), ("AP", "AP", "pct"), ("AP50", "AP50", "pct"),
    ("AP75", "AP75", "pct"), ("APs", "APs", "pct"), ("APm", "APm", "pct"),
    ("APl", "APl", "pct"), ("AR", "AR", "pct"), ("n_gt", "#GT", "int"), ("n_det", "#det", "int"),
    ("precision", "P", "pct"), ("recall", "R", "pct"), ("f1", "F1", "pct"),
    ("best_threshold", "best thr", "thr"), ("best_f1", "best F1", "pct"),
)


def _cell(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}"
    if kind == "thr":
        return f"{value:.3f}"
    return str(value)


def class_rows(report: dict, all_classes: bool = False) -> list[list[str]]:
    """The per-class table as strings, plus an "all" row with the overall numbers.

    Classes with neither ground truth nor detections are left out unless ``all_classes``.
    """
    rows = [[_cell(r.get(k), kind) for k, _, kind in CLASS_COLUMNS] for r in report["per_class"]
            if all_classes or r["n_gt"] or r["n_det"]]
    o = report["overall"]
    rows.append([_cell(o.get(k), kind) for k, _, kind in CLASS_COLUMNS])
    return rows


def headers(report: dict) -> list[str]:
    hs = [h for _, h, _ in CLASS_COLUMNS]
    hs[hs.index("AR")] = f"AR{report['params']['max_dets'][-1]}"
    return hs


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in head) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def csv_text(head: Sequence[str], rows: Sequence[Sequence]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(rows)
    return buf.getvalue()


def per_class_csv(report: dict) -> str:
    """Raw numbers (not percentages) for spreadsheets; empty cells where undefined."""
    keys = [k for k, _, _ in CLASS_COLUMNS]
    head = ["category_id"] + keys
    rows = []
    for r in report["per_class"] + [dict(report["overall"], category_id="all")]:
        rows.append([r.get("category_id", "")] + [_raw(r.get(k)) for k in keys])
    return csv_text(head, rows)


def confusion_csv(report: dict) -> str:
    """Rows true class, columns predicted class; the last row and column are background."""
    c = report["confusion"]
    labels = c["labels"]
    return csv_text(["true \\ predicted"] + labels, [[lbl] + row for lbl, row in zip(labels, c["matrix"], strict=True)])


def print_terminal(report: dict, console=None) -> None:
    """The pycocotools summary and the per-class table, on the terminal."""
    import shutil
    import sys

    from rich.console import Console
    from rich.table import Table

    if console is None:  # piped output: wide enough that no column is cut
        tty = sys.stdout.isatty()
        console = Console(width=max(shutil.get_terminal_size().columns, 120) if tty else 200)
    console.print("\n".join(report["summary"]), highlight=False, markup=False)
    o = report["overall"]
    console.print(
        f"\nAt IoU {report['prf']['iou']:.2f}, score >= {report['prf']['score']:.3f}: "
        f"precision {_cell(o['precision'], 'pct')}, recall {_cell(o['recall'], 'pct')}, "
        f"F1 {_cell(o['f1'], 'pct')}; F1-optimal threshold {_cell(o['best_threshold'], 'thr')} "
        f"(F1 {_cell(o['best_f1'], 'pct')})", highlight=False, markup=False)
    table = Table(title=f"per class ({report['iou_type']}, values in %; classes with neither "
                        "ground truth nor detections left out)", show_lines=False)
    for i, h in enumerate(headers(report)):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    rows = class_rows(report)
    for r in rows[:-1]:
        table.add_row(*r)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    console.print(table)
    if report.get("tide"):
        t = report["tide"]
        parts = ", ".join(f"{k} {100 * v:+.2f}" for k, v in t["dAP"].items())
        console.print(f"TIDE-style dAP{int(round(100 * t['t_f']))} (points): {parts}",
                      highlight=False, markup=False)
    for w in report.get("warnings", []):
        console.print(f"warning: {w}", style="yellow", highlight=False, markup=False)


def _raw(value) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value
