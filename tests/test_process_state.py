"""detseg leaves the process as it found it: environment, onnxruntime's logger, file modes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detseg.data.coco import write_json_atomic, write_results
from detseg.fileio import current_umask


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_results_and_reports_follow_the_umask(tmp_path: Path, umask: int) -> None:
    # mkstemp made them 0600 whatever the umask; every other file the command wrote was 0644.
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        write_results(tmp_path / "results.json", [])
        write_json_atomic(tmp_path / "report.json", {"a": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("results.json", "report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_opening_sessions_leaves_onnxruntime_default_logger_alone(monkeypatch) -> None:
    from detseg.pipeline.session import Session, _ort
    from detseg.weights.builtin import default_detector

    ort = _ort()
    calls: list = []
    monkeypatch.setattr(ort, "set_default_logger_severity", lambda level: calls.append(level))
    for device in ("cpu", "auto"):
        session = Session(default_detector(), device=device)
        session.warmup()
    assert calls == []


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_importing_the_web_app_does_not_write_the_environment() -> None:
    pytest.importorskip("gradio")
    out = _python(
        "import os; before = dict(os.environ); import detseg.serve.app; "
        "print(sorted(set(os.environ.items()) ^ set(before.items())))"
    )
    assert out == "[]"


def test_ultralytics_environment_gives_everything_back(monkeypatch) -> None:
    pytest.importorskip("ultralytics", reason="the export extra is not installed")
    from detseg.weights.export_ultralytics import ultralytics_environment

    monkeypatch.setenv("YOLO_OFFLINE", "0")
    monkeypatch.delenv("ULTRALYTICS_SAFE_LOAD", raising=False)
    import ultralytics.utils as uutils

    before_env = dict(os.environ)
    before_globals = (uutils.AUTOINSTALL, uutils.ONLINE, getattr(uutils, "SAFE_LOAD", None))
    with ultralytics_environment():
        assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["ULTRALYTICS_SAFE_LOAD"] == "1"
        assert uutils.AUTOINSTALL is False and uutils.ONLINE is False
        with ultralytics_environment():  # nested blocks restore to the outer block's state
            pass
        assert os.environ["YOLO_OFFLINE"] == "1"
    assert dict(os.environ) == before_env
    assert (uutils.AUTOINSTALL, uutils.ONLINE, getattr(uutils, "SAFE_LOAD", None)) == before_globals


def test_library_code_does_not_print(capsys, tmp_path: Path) -> None:
    # A model named by path is resolved, loaded and run; nothing reaches stdout/stderr.
    from detseg.pipeline.detector import Detector
    from detseg.weights.builtin import default_detector
    from detseg.weights.onnx_models import detector_onnx

    det = Detector.load(detector_onnx(str(default_detector())), device="cpu")
    det.predict([np.zeros((64, 96, 3), np.uint8)])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_a_report_with_a_gallery_leaves_matplotlib_and_opencv_as_they_were(tmp_path: Path) -> None:
    # the gallery runs OpenCV single-threaded under its own workers, and the plots are drawn
    # without pyplot: neither OpenCV's thread count nor matplotlib's backend may change
    code = f"""
import sys, json, cv2, matplotlib, numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from tests.eval.synthetic import make_problem
from detseg.eval.metrics import evaluate
from detseg.eval.report import write_report
cv2.setNumThreads(3)
backend = dict.__getitem__(matplotlib.rcParams, "backend")  # get_backend() would import pyplot
gt, res = make_problem(7, n_images=8, n_cats=3)
images = {{i: np.full((240, 320, 3), 90, np.uint8) for i in range(8)}}
files = write_report(evaluate(gt, res), {str(tmp_path)!r}, gallery=2, load_image=images.get)
assert json.loads(files["json"].read_text())["gallery"]["n_examples"] > 0
print(cv2.getNumThreads(), dict.__getitem__(matplotlib.rcParams, "backend") == backend,
      "matplotlib.pyplot" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "True", "False"]
