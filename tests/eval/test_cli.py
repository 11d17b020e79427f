"""`detseg eval` from the command line: the acceptance command, reports, errors, compare."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.eval.reference import jitter_gt, pycoco_eval
from tests.eval.synthetic import make_problem


def _run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "detseg", "eval", *map(str, args)],
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_acceptance_command(coco11, tmp_path, iou_type):
    gt = json.loads(coco11.read_text())
    res = jitter_gt(gt, 3, segm=iou_type == "segm")
    pred = tmp_path / "results.json"
    pred.write_text(json.dumps(res))
    out = tmp_path / "out.json"
    proc = _run("--gt", coco11, "--pred", pred, "--iou-type", iou_type, "--json", out)
    stats = json.loads(out.read_text())["stats"]
    ref = pycoco_eval(gt, res, iou_type)
    assert stats == np.asarray(ref.stats).tolist()  # exactly, all 12 numbers
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in proc.stdout
    assert "per class" in proc.stdout and "person" in proc.stdout


def test_full_report_and_custom_thresholds(tmp_path):
    gt, res = make_problem(40, n_images=20)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    _run("--gt", tmp_path / "gt.json", "--pred", tmp_path / "res.json", "--out", tmp_path / "rep",
         "--iou", "0.75", "--score", "0.3", "--max-dets", "1,5,50", "--iou-thrs", "0.5,0.75,0.9",
         "--json", tmp_path / "o.json")
    assert (tmp_path / "rep" / "report.html").is_file()
    data = json.loads((tmp_path / "o.json").read_text())
    ref = pycoco_eval(gt, res, params={"maxDets": [1, 5, 50], "iouThrs": np.array([0.5, 0.75, 0.9])})
    assert data["stats"] == np.asarray(ref.stats).tolist()
    assert data["prf"] == {"iou": 0.75, "score": 0.3}


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[0].update(category_id=999), "field 'category_id': unknown category id 999"),
    (lambda r: r[0].update(score=float("nan")), "field 'score': expected a finite number"),
])
def test_bad_input_is_one_clear_line(tmp_path, mutate, message):
    gt, res = make_problem(41, n_images=5)
    mutate(res)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    proc = _run("--gt", tmp_path / "gt.json", "--pred", tmp_path / "res.json", check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert str(tmp_path / "res.json") in proc.stderr


def test_empty_results_warn_and_give_zeros(tmp_path):
    gt, _ = make_problem(42, n_images=5)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text("[]")
    proc = _run("--gt", tmp_path / "gt.json", "--pred", tmp_path / "res.json", "--json", tmp_path / "o.json")
    assert "no detections" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "o.json").read_text())["stats"][0] == 0.0


def test_malformed_json_and_missing_args(tmp_path):
    (tmp_path / "gt.json").write_text("{not json")
    proc = _run("--gt", tmp_path / "gt.json", "--pred", tmp_path / "gt.json", check=False)
    assert proc.returncode == 2 and "malformed JSON at line 1" in proc.stderr
    proc = _run(check=False)
    assert proc.returncode == 2 and "--gt" in proc.stderr


def test_compare_command(coco11, tmp_path):
    gt = json.loads(coco11.read_text())
    (tmp_path / "a.json").write_text(json.dumps(jitter_gt(gt, 0)))
    (tmp_path / "b.json").write_text(json.dumps(jitter_gt(gt, 1)))
    proc = _run("compare", tmp_path / "a.json", tmp_path / "b.json", "--gt", coco11,
                "--bootstrap", "100", "--json", tmp_path / "c.json", "--markdown", tmp_path / "c.md")
    data = json.loads((tmp_path / "c.json").read_text())
    assert len(data["stats_a"]) == 12 and data["bootstrap"]["resamples"] == 100
    assert "CI" in proc.stdout and (tmp_path / "c.md").read_text().startswith("# detseg eval compare")


def test_eval_imports_without_onnxruntime():
    code = ("import sys; sys.modules['onnxruntime'] = None; "
            "import detseg.eval, detseg.eval.report, detseg.eval.compare, detseg.cli.eval; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
def test_predict_then_evaluate(yolox_nano, coco11, tmp_path):
    pytest.importorskip("onnxruntime")
    proc = _run("--model", yolox_nano, "--head", "yolox", "--data", coco11, "--device", "cpu",
                "--json", tmp_path / "o.json", "--pred-out", tmp_path / "pred.json", "-q")
    stats = json.loads((tmp_path / "o.json").read_text())["stats"]
    gt = json.loads(coco11.read_text())
    ref = pycoco_eval(gt, json.loads((tmp_path / "pred.json").read_text()))
    assert stats == np.asarray(ref.stats).tolist()
    assert stats[1] > 0.2, proc.stdout  # a real COCO model on real COCO images finds things


@pytest.mark.slow
def test_data_alone_evaluates_the_embedded_default_model(tmp_path):
    """`detseg eval --data GT.json` with no model and no results: the embedded default runs."""
    pytest.importorskip("onnxruntime")
    gen = subprocess.run([sys.executable, "-m", "detseg", "data", "shapes", "--out", tmp_path / "d",
                          "--images", "12", "--seed", "778"], capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    gt_path = tmp_path / "d" / "instances.json"
    _run("--data", gt_path, "--iou-type", "segm", "--json", tmp_path / "o.json",
         "--pred-out", tmp_path / "pred.json", "-q")
    stats = json.loads((tmp_path / "o.json").read_text())["stats"]
    ref = pycoco_eval(json.loads(gt_path.read_text()),
                      json.loads((tmp_path / "pred.json").read_text()), "segm")
    assert stats == np.asarray(ref.stats).tolist()
    assert stats[0] > 0.4  # the shipped model's card: mask AP 0.71 on a held-out split
