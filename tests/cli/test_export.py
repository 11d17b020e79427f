"""`detseg export`: the acceptance commands, exit statuses, and dispatch to the SAM exporter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detseg.cli import app
from detseg.weights.export import ExportSummary

ROOT = Path(__file__).resolve().parents[2]


def _detseg(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m detseg`` as a user would, with a private cache and Ultralytics config."""
    full_env = {
        **os.environ,
        "DETSEG_CACHE": str(tmp_path / "cache"),
        "YOLO_CONFIG_DIR": str(tmp_path / "yolo-config"),
        "YOLO_AUTOINSTALL": "false",
        **env,
    }
    return subprocess.run([sys.executable, "-m", "detseg", *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True)


@pytest.mark.parametrize(
    "name, url",
    [
        ("sam_vit_b", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),
        ("yolov8n", "https://github.com/ultralytics/assets/releases/download/v8.3.0/yolov8n.pt"),
    ],
)
def test_offline_export_names_the_url(tmp_path: Path, name: str, url: str) -> None:
    proc = _detseg(["export", name, "--out", str(tmp_path / "out")], tmp_path, DETSEG_OFFLINE="1")
    assert proc.returncode != 0
    assert url in proc.stderr
    assert str(tmp_path / "cache") in proc.stderr  # where to place the file by hand
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_export_seg_architecture_acceptance(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics", reason="export needs the [export] extra")
    out = tmp_path / "out"
    proc = _detseg(["export", "yolov8n-seg.yaml", "--imgsz", "320", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "yolov8n-seg.onnx").is_file()
    report = json.loads((out / "yolov8n-seg_parity.json").read_text())
    assert report["passed"] is True and report["task"] == "segment" and report["imgsz"] == 320
    assert "parity passed" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["yolov8n-seg.onnx", "yolov8n-seg_parity.json"]
    assert not (tmp_path / "yolov8n-seg.onnx").exists()  # nothing written outside --out


def test_failed_parity_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import detseg.weights.export as export_module

    report = tmp_path / "m_parity.json"

    def fake_export(*args, **kwargs):
        return ExportSummary("ultralytics", [tmp_path / "m.onnx"], report, False)

    monkeypatch.setattr(export_module, "export_model", fake_export)
    result = CliRunner().invoke(app, ["export", "yolov8n.yaml", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "parity FAILED" in result.output and str(report) in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["yolov8n.yaml", "--sam-type", "vit_b"], "not a Segment Anything model"),
        (["sam_vit_b", "--imgsz", "320"], "fixed by the model"),
        (["nope-model"], "not a file and not a known model name"),
        (["yolov8n.yaml", "--images", "/no/such/dir"], "no such file or folder"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _detseg(["export", *args, "--out", str(tmp_path / "out")], tmp_path, DETSEG_OFFLINE="1")
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sam_checkpoint_dispatches_to_sam_exporter(tmp_path: Path) -> None:
    """A local SAM .pth goes to detseg.weights.export_sam (helper H5's exporter)."""
    pytest.importorskip("segment_anything", reason="SAM export needs segment-anything")
    sam_arch = pytest.importorskip("detseg.weights.sam_arch")
    pytest.importorskip("detseg.weights.export_sam")
    ckpt = sam_arch.save_sam_checkpoint(sam_arch.build_sam_small(image_size=256), tmp_path / "tiny_sam.pth")
    out = tmp_path / "out"
    proc = _detseg(["export", str(ckpt), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "tiny_sam_encoder.onnx").is_file() and (out / "tiny_sam_decoder.onnx").is_file()
    assert json.loads((out / "tiny_sam_parity.json").read_text())["passed"] is True


def test_onnx_input_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really")
    proc = _detseg(["export", str(model), "--out", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 2 and "already an ONNX model" in proc.stderr


@pytest.mark.slow
def test_registry_name_downloads_then_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry name: fetched from its URL (a local server here), checked, exported."""
    import dataclasses
    import functools
    import hashlib
    import http.server
    import threading

    pytest.importorskip("ultralytics", reason="export needs the [export] extra")
    from detseg.weights import registry
    from detseg.weights.export_ultralytics import load_yolo

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))
    monkeypatch.setenv("DETSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DETSEG_OFFLINE", raising=False)
    served = tmp_path / "served"
    served.mkdir()
    load_yolo("yolov8n.yaml", seed=5).save(served / "yolov8n.pt")
    sha = hashlib.sha256((served / "yolov8n.pt").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/yolov8n.pt"
        spec = dataclasses.replace(registry.REGISTRY["yolov8n"], url=url, checksums=(f"sha256:{sha}",))
        monkeypatch.setitem(registry.REGISTRY, "yolov8n", spec)
        out = tmp_path / "out"
        result = CliRunner().invoke(app, ["export", "yolov8n", "--imgsz", "256", "--out", str(out),
                                          "--no-progress"])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cache" / "yolov8n.pt").is_file()
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out / "yolov8n.onnx")).metadata_props}
    assert meta["source"] == url and meta["source_sha256"] == sha
    assert json.loads((out / "yolov8n_parity.json").read_text())["passed"] is True
