"""`--engine ray` on a real two-node Ray cluster (Ray's own `ray.cluster_utils.Cluster`: a head
and a second node, 1 CPU each, on this machine), and cluster addresses that are wrong."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from detseg.pipeline.batch import run_predict
from tests.pipeline.same_records import assert_same_records

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'detseg[ray]'")

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 300  # an address check that has not answered by then is hung (not a speed limit)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True,
                head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.mark.slow
def test_two_node_cluster_equals_local(cluster, yolox_nano: Path, coco11: Path,
                                       tmp_path: Path) -> None:
    """YOLOX-Nano on the 11 COCO images, two actors (one per 1-CPU node), reached through
    --ray-address: the local engine's records."""
    kw = dict(head="yolox", conf=0.001, iou=0.65, max_det=100, progress=False)
    local = run_predict(yolox_nano, coco11, tmp_path / "local.json", **kw)
    remote = run_predict(yolox_nano, coco11, tmp_path / "ray.json", engine="ray", actors=2,
                         ray_address=cluster.address, **kw)
    assert not ray.is_initialized()  # connected for the run only, then left as found
    assert remote.workers == 2 and remote.done == local.done == 11
    assert_same_records(tmp_path / "local.json", tmp_path / "ray.json")


@pytest.mark.slow
def test_wrong_or_silent_addresses_are_one_line_errors(coco11: Path, tmp_path: Path) -> None:
    """A refused port, and a port where something that is not Ray listens: `detseg predict`
    says so in one line (exit 2) instead of waiting for Ray's own minutes-long retries."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "detseg", "predict", str(coco11.parent / "images"), "--out",
             str(tmp_path / f"{name}.json"), "--engine", "ray", "--ray-address", addr, "-q"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, addr in (("refused", f"127.0.0.1:{refused_port}"),
                           ("silent", f"127.0.0.1:{silent.getsockname()[1]}"))
    }
    try:
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=HANG_GUARD_S)
            lines = [ln for ln in err.splitlines() if ln.startswith("detseg:")]
            assert proc.returncode == 2, err[-2000:]
            assert len(lines) == 1 and "--ray-address 127.0.0.1:" in lines[0], err[-2000:]
            assert "Traceback" not in err and not (tmp_path / f"{name}.json.partial.jsonl").exists()
            assert ("cannot reach" if name == "refused" else "no Ray cluster answers") in lines[0]
    finally:
        for proc in procs.values():
            proc.kill()
        silent.close()
