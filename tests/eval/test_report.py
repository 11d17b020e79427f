"""Report files (JSON, Markdown, CSV, PNG, self-contained HTML) and `compare`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from detseg.eval.compare import _flatten, _weighted_ap, compare
from detseg.eval.metrics import evaluate
from detseg.eval.report import build_report, to_json, write_report
from tests.eval.synthetic import make_problem


@pytest.fixture(scope="module")
def ev():
    gt, res = make_problem(31, n_images=30, n_cats=4)
    return evaluate(gt, res)


def test_write_report_files(ev, tmp_path):
    files = write_report(ev, tmp_path, iou=0.5, score=0.3)
    for name in ("report.json", "report.md", "report.html", "per_class.csv", "confusion_matrix.csv",
                 "pr_curves.png", "f1_confidence.png", "confusion_matrix.png", "tide_errors.png"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    data = json.loads(files["json"].read_text())
    assert data["stats"] == ev.stats.tolist()
    assert len(data["per_class"]) == len(ev.gt.cat_ids)
    html = files["html"].read_text()
    assert html.count("data:image/png;base64,") == 4 and "src='http" not in html
    rows = list(csv.reader(files["per_class_csv"].open()))
    assert len(rows) == 1 + len(ev.gt.cat_ids) + 1  # header, classes, "all"
    cm = list(csv.reader((tmp_path / "confusion_matrix.csv").open()))
    assert cm[0][-1] == "background" and cm[-1][0] == "background"
    assert len(cm) == len(ev.gt.cat_ids) + 2
    assert (tmp_path / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"
    md = files["markdown"].read_text()
    assert "Average Precision" in md and "| class |" in md


def test_report_json_has_no_nan(ev):
    text = json.dumps(to_json(build_report(ev)), allow_nan=False)
    assert '"stats"' in text


def test_bootstrap_ap_with_unit_weights_is_the_coco_ap(ev):
    f = _flatten(ev)
    ap, ap50 = _weighted_ap(f, np.ones(len(ev.gt.image_ids)), len(ev.gt.cat_ids), ev.params.rec_thrs)
    assert ap == pytest.approx(ev.stats[0], abs=1e-3)  # score ties are not ordered like pycocotools
    assert ap50 == pytest.approx(ev.stats[1], abs=1e-3)


def test_compare_same_and_better():
    gt, res = make_problem(32, n_images=40, n_cats=4)
    for a in gt["annotations"]:
        a["id"] += 1
    same = compare(gt, res, res, n_boot=50)
    assert same["diff"] == [0.0] * 12
    assert same["bootstrap"]["AP"]["ci_low"] == 0.0 == same["bootstrap"]["AP"]["ci_high"]
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0} for a in gt["annotations"] if not a["iscrowd"]]
    better = compare(gt, res, perfect, n_boot=200, seed=1)
    assert better["bootstrap"]["AP"]["ci_low"] > 0
    assert better["verdict"].startswith("B is better")
    worse = compare(gt, perfect, res, n_boot=200, seed=1)
    assert worse["bootstrap"]["AP"]["ci_high"] < 0
