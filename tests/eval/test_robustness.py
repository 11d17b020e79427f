"""`detseg eval robustness`: AP under corruptions with the embedded model on shapes data."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from detseg.data.shapes import generate_shapes
from detseg.eval.corruptions import CORRUPTIONS
from detseg.eval.metrics import evaluate
from detseg.eval.robustness import CorruptedDetector, run_robustness, write_outputs

pytest.importorskip("onnxruntime", reason="robustness predicts with onnxruntime")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    d = tmp_path_factory.mktemp("shapes")
    return generate_shapes(d, n_images=10, seed=5, size=256)


@pytest.fixture(scope="module")
def detector():
    from detseg.pipeline.detector import Detector
    from detseg.weights.onnx_models import detector_onnx

    return Detector.load(detector_onnx(None), device="cpu")


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_ap_falls_with_severity_and_outputs(shapes, detector, tmp_path):
    before = _digest(shapes.parent)
    out = tmp_path / "rob"
    r = run_robustness(None, shapes, out, corruptions="gaussian_noise,contrast", severities="1,5",
                       seed=3, detector=detector, progress=False)
    assert _digest(shapes.parent) == before  # the user's files are only read
    assert set(r["table"]) == {"gaussian_noise", "contrast"}
    for name, row in r["table"].items():
        assert r["clean_ap"] > row[5], name
        assert row[1] >= row[5], name
    vals = [v for row in r["table"].values() for v in row.values()]
    assert r["mpc"] == pytest.approx(sum(vals) / len(vals))
    assert r["rpc"] == pytest.approx(r["mpc"] / r["clean_ap"])
    # clean AP is the AP of a plain evaluation of the clean predictions
    assert r["clean_ap"] == evaluate(shapes, out / "predictions" / "clean.json").stats[0]
    files = write_outputs(r, out)
    js = json.loads(files["json"].read_text())
    assert {"clean_ap", "mpc", "rpc", "table"} <= set(js)
    assert js["table"]["contrast"]["5"] == pytest.approx(r["table"]["contrast"][5])
    assert "data:image/png;base64," in files["html"].read_text()
    assert files["csv"].read_text().startswith("corruption,severity,ap\nclean,0,")
    assert "| gaussian_noise |" in files["markdown"].read_text()

    # a second run reuses the finished predictions (nothing predicted again) ...
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "predictions").glob("*.json")}
    again = run_robustness(None, shapes, out, corruptions="gaussian_noise,contrast", severities="1,5",
                           seed=3, detector=detector, progress=False)
    assert again["table"] == r["table"]
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "predictions").glob("*.json")}
    # ... and a run cut short resumes from its journal: the same table
    (out / "predictions" / "contrast-5.json").unlink()

    class Interrupted:
        """The detector, interrupted (Ctrl-C) at its second batch."""

        def __init__(self, det):
            self._det, self.calls = det, 0

        def infer(self, tensor):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            return self._det.infer(tensor)

        def __getattr__(self, name):
            return getattr(self._det, name)

    with pytest.raises(KeyboardInterrupt):
        run_robustness(None, shapes, out, corruptions="gaussian_noise,contrast", severities="1,5",
                       seed=3, detector=Interrupted(detector), progress=False)
    journal = out / "predictions" / "contrast-5.json.partial.jsonl"
    assert journal.is_file() and len(journal.read_text().splitlines()) >= 2  # settings + images
    resumed = run_robustness(None, shapes, out, corruptions="gaussian_noise,contrast",
                             severities="1,5", seed=3, detector=detector, progress=False)
    assert resumed["table"] == r["table"] and not journal.exists()


@pytest.mark.slow
def test_same_seed_same_table_and_severity_zero_is_the_clean_ap(shapes, detector, tmp_path):
    from detseg.pipeline.batch import run_predict

    a = run_robustness(None, shapes, tmp_path / "a", corruptions="shot_noise", severities="4",
                       seed=11, detector=detector, progress=False)
    b = run_robustness(None, shapes, tmp_path / "b", corruptions="shot_noise", severities="4",
                       seed=11, detector=detector, progress=False)
    assert a["table"] == b["table"] and a["clean_ap"] == b["clean_ap"]
    for name in ("gaussian_noise", "fog"):
        res = tmp_path / f"{name}-0.json"
        run_predict(CorruptedDetector(detector, name, 0, seed=11), shapes, res, preset="coco-eval",
                    progress=False)
        assert evaluate(shapes, res).stats[0] == a["clean_ap"]  # exactly


def test_unknown_names_fail_before_any_work(tmp_path):
    for args, expect in ((["--corruptions", "gaussian_noise,snow"], "snow"),
                         (["--severities", "1,7"], "'7'")):
        p = subprocess.run([sys.executable, "-m", "detseg", "eval", "robustness", "--data",
                            tmp_path / "missing.json", "--out", tmp_path / "o", *args],
                           capture_output=True, text=True)
        assert p.returncode == 2
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0] and "valid:" in lines[0], p.stderr
        if "snow" in expect:
            assert all(n in lines[0] for n in CORRUPTIONS)
    assert not (tmp_path / "o").exists()
