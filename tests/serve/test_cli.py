"""Acceptance: `detseg serve --port P` listens on 127.0.0.1:P only, the page loads, and
gradio_client sees the named endpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detseg.cli import app
from detseg.serve.app import API_NAMES
from tests.serve.conftest import builtin_sam, free_port

STARTUP_S = 300  # a safety net against a hung server on a busy 2-core machine, not a timing


def _wait_listening(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"detseg serve exited with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:  # noqa: S310
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"detseg serve did not answer on port {port}")


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process(pid)
    conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections(kind="inet")
    return {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}


def _serve(args: list[str]):
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "detseg", "serve", *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env, cwd=Path(__file__).resolve().parents[2],
    )


def _check_served(proc: subprocess.Popen, port: int) -> None:
    from gradio_client import Client

    _wait_listening(proc, port)
    assert _listening_addresses(proc.pid) == {("127.0.0.1", port)}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as r:  # noqa: S310
        assert b"<html" in r.read().lower()
    api = Client(f"http://127.0.0.1:{port}/", verbose=False).view_api(
        return_format="dict", print_info=False
    )
    assert set(api["named_endpoints"]) == {f"/{n}" for n in API_NAMES}


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def test_serve_listens_on_loopback_only(yolox_nano: Path, sam_paths, coco_images) -> None:
    port = free_port()
    proc = _serve(["--port", str(port), "--model", str(yolox_nano), "--head", "yolox",
                   "--sam-encoder", str(sam_paths[0]), "--sam-decoder", str(sam_paths[1]),
                   "--examples", str(coco_images[0].parent)])
    try:
        _check_served(proc, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config") as r:  # noqa: S310
            config = r.read().decode()
        for photo in coco_images:  # --examples: the real photos are offered as samples
            assert f'"{photo.stem}"' in config, photo.name
    finally:
        out = _stop(proc)
    assert "detector: yolox_nano.onnx" in out and "segment anything: ready" in out
    assert proc.returncode == 0  # SIGTERM closes the server cleanly


def test_serve_without_arguments_uses_the_embedded_models() -> None:
    if builtin_sam() is None:
        pytest.skip("the embedded default models are not packaged yet (detseg.weights.builtin)")
    port = free_port()
    proc = _serve(["--port", str(port)])
    try:
        _check_served(proc, port)
    finally:
        out = _stop(proc)
    assert "detector: builtin" in out and "segment anything: ready" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--auth", "nopassword"], "--auth: expected USER:PASSWORD"),
     (["--auth", ":pw"], "--auth: expected USER:PASSWORD"),
     (["--sam-encoder", "enc.onnx"], "expected both or neither"),
     (["--sam-encoder", "enc.onnx", "--sam-decoder", "dec.onnx"], "enc.onnx: SAM model file not found"),
     (["--max-upload", "lots"], "upload size limit"),
     (["--examples", "no/such/folder"], "--examples no/such/folder: not a folder"),
     (["--examples", "tests/serve"], "no image files found")],
)
def test_bad_options_are_refused_before_serving(args, message) -> None:
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code != 0
    assert message in str(result.exception) + result.output


def test_make_demo_offers_the_coco_photos_when_present(assets: Path, tmp_path: Path) -> None:
    from detseg.demo import serve_args

    assert serve_args(7860, assets) == [
        "serve", "--port", "7860", "--examples", str(assets / "coco-val-11" / "images")]
    assert serve_args(7860, tmp_path) == ["serve", "--port", "7860"]


def test_busy_port_is_explained(yolox_nano: Path, sam_paths) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, [
            "serve", "--port", str(port), "--model", str(yolox_nano), "--head", "yolox",
            "--sam-encoder", str(sam_paths[0]), "--sam-decoder", str(sam_paths[1]),
        ])
    assert result.exit_code != 0
    assert f"127.0.0.1:{port} is in use" in str(result.exception)
