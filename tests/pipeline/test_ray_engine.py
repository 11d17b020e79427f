"""`--engine ray` on one local Ray (module-scoped, 2 CPUs): the local engine's results, journal
and resume; bad images, a killed actor, Ctrl-C, sizing that cannot starve the readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from detseg.errors import EngineError, ModelError
from detseg.pipeline.batch import run_predict
from detseg.pipeline.journal import journal_path_for
from detseg.pipeline.ray_engine import READ_CPUS, size_actors
from tests.pipeline.fake_detector import FakeDetector, FakeLoader
from tests.pipeline.same_records import assert_same_records

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'detseg[ray]'")

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 24
HANG_GUARD_S = 600  # a run that has not ended by then is hung (not a speed limit)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (its start-up takes seconds on 2 loaded cores)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    rng = np.random.default_rng(1)
    for i in range(N_IMAGES):
        sub = root / "sub" if i % 5 == 0 else root
        sub.mkdir(parents=True, exist_ok=True)
        im = rng.integers(0, 256, (16 + i, 20 + 2 * i, 3), dtype=np.uint8)
        cv2.imwrite(str(sub / f"im{i:02d}.{'png' if i % 2 else 'jpg'}"), im)
    return root


def _records(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def _reference(folder: Path, **kw) -> list[dict]:
    out = folder.parent / "reference.json"
    run_predict(FakeDetector(**kw), folder, out, batch_size=3, progress=False, conf=0.0)
    return _records(out)


def _guarded(fn, *args, **kw):
    """Run fn in a thread; fail (instead of hanging the suite) if it never ends."""
    box: dict = {}

    def body() -> None:
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(HANG_GUARD_S)
    assert not t.is_alive(), f"the run did not end within {HANG_GUARD_S} s: hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---- sizing (no Ray needed) -----------------------------------------------------------------
@pytest.mark.parametrize("nodes", [[2], [1, 1], [2, 1], [4, 1], [3, 3, 2], [16], [0.5, 1.5]])
@pytest.mark.parametrize("actors", [None, 1, 2, 3, 5])
def test_actors_always_leave_cpu_for_reading(nodes: list[float], actors: int | None) -> None:
    """Wherever Ray puts the actors (every placement where they fit is tried), all of them fit
    and some node keeps READ_CPUS for the read tasks: the run cannot hang."""
    try:
        size = size_actors(nodes, actors)
    except EngineError as exc:  # too many actors for the cluster: said, not hung
        assert "fewer actors" in str(exc)
        return
    s, n = size.num_cpus, size.actors

    def placements(free: list[float], left: int):
        if left == 0:
            yield free
            return
        for i, f in enumerate(free):
            if f + 1e-9 >= s:
                yield from placements(free[:i] + [f - s] + free[i + 1:], left - 1)

    outcomes = list(placements(list(nodes), n))
    assert outcomes, f"{n} actors of {s} CPU do not fit on {nodes}"
    assert all(max(free) + 1e-9 >= READ_CPUS for free in outcomes), (nodes, size)
    assert size.threads >= 1


def test_two_cpus_two_actors_are_fractional() -> None:
    size = size_actors([2.0], 2)
    assert size.actors == 2 and 2 * size.num_cpus + READ_CPUS <= 2.0 and size.threads == 1


def test_cuda_asks_one_gpu_per_actor_and_refuses_missing_gpus() -> None:
    size = size_actors([8, 8], None, gpus=2, cuda=True)
    assert (size.actors, size.num_gpus) == (2, 1.0) and size.num_cpus <= 1
    with pytest.raises(EngineError, match="needs 3 GPUs"):
        size_actors([8], 3, gpus=1, cuda=True)


def test_missing_ray_extra_is_one_line(monkeypatch, folder: Path, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(EngineError, match=r"pip install 'detseg\[ray\]'") as info:
        run_predict(FakeLoader(), folder, tmp_path / "o.json", progress=False, engine="ray")
    assert "\n" not in str(info.value)


# ---- runs on the module's Ray ---------------------------------------------------------------
def test_fake_model_same_file_as_local_with_two_actors(local_ray, folder: Path,
                                                       tmp_path: Path) -> None:
    """Two actors on 2 CPUs (the case that hangs with 1 CPU each): ends, same results file
    (same records in the same source order), every image once."""
    out = tmp_path / "ray.json"
    summary = _guarded(run_predict, FakeLoader(seg=True), folder, out, batch_size=3,
                       progress=False, conf=0.0, engine="ray", actors=2)
    assert summary.done == N_IMAGES and summary.workers == 2 and summary.engine == "ray"
    assert _records(out) == _reference(folder, seg=True)
    assert not journal_path_for(out).exists()


def test_bad_images_same_reasons_as_local(local_ray, folder: Path, tmp_path: Path) -> None:
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "empty.png").write_bytes(b"")
    runs = {}
    for engine in ("local", "ray"):
        model = FakeLoader() if engine == "ray" else FakeDetector()
        runs[engine] = run_predict(model, folder, tmp_path / f"{engine}.json", batch_size=4,
                                   progress=False, conf=0.0, engine=engine)
    reasons = {e: sorted((f.path.name, f.reason) for f in s.failed) for e, s in runs.items()}
    assert reasons["ray"] == reasons["local"] and len(reasons["ray"]) == 2
    assert runs["ray"].done == N_IMAGES
    assert _records(tmp_path / "ray.json") == _records(tmp_path / "local.json")


@pytest.mark.slow
def test_resume_across_engines(local_ray, folder: Path, tmp_path: Path) -> None:
    """A run stopped under one engine resumes under the other: nothing lost or duplicated."""
    ref = _reference(folder)
    out = tmp_path / "a.json"
    with pytest.raises(ModelError, match="on purpose"):  # local run dies after 3 batches
        run_predict(FakeDetector(fail_infer_after=3), folder, out, batch_size=2, progress=False,
                    conf=0.0)
    kept = journal_path_for(out).read_bytes().count(b"\n") - 1
    summary = run_predict(FakeLoader(), folder, out, batch_size=2, progress=False, conf=0.0,
                          engine="ray")
    assert summary.skipped == kept > 0 and summary.done == N_IMAGES - kept
    assert _records(out) == ref

    out = tmp_path / "b.json"
    with pytest.raises(ModelError, match="on purpose"):  # the actor's model fails: one line
        run_predict(FakeLoader(fail_infer_after=4), folder, out, batch_size=2, progress=False,
                    conf=0.0, engine="ray", actors=1)
    kept = journal_path_for(out).read_bytes().count(b"\n") - 1
    summary = run_predict(FakeDetector(), folder, out, batch_size=2, progress=False, conf=0.0)
    assert summary.skipped == kept and summary.done == N_IMAGES - kept
    assert _records(out) == ref


@pytest.mark.slow
def test_killed_actor_process_every_image_once(local_ray, folder: Path, tmp_path: Path) -> None:
    """SIGKILL to an actor's worker process mid-run: Ray restarts it, the run completes, every
    image is in the results exactly once."""
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "k.json"
    journal = journal_path_for(out)
    done: dict = {}
    t = threading.Thread(target=lambda: done.update(s=run_predict(
        FakeLoader(delay=0.15, pid_dir=str(pids)), folder, out, batch_size=1, progress=False,
        conf=0.0, engine="ray", actors=1)), daemon=True)
    t.start()
    deadline = time.monotonic() + HANG_GUARD_S
    while not (journal.is_file() and journal.read_bytes().count(b"\n") >= 4):
        assert t.is_alive() and time.monotonic() < deadline, "run ended or hung before the kill"
        time.sleep(0.05)
    [victim] = [int(p.name) for p in pids.iterdir() if int(p.name) != os.getpid()]  # the actor
    os.kill(victim, signal.SIGKILL)
    t.join(HANG_GUARD_S)
    assert not t.is_alive() and "s" in done, "the run did not complete after the kill"
    assert len(list(pids.iterdir())) >= 3  # a new actor process loaded the model again
    records = _records(out)
    assert records == _reference(folder)
    assert done["s"].done == N_IMAGES and not done["s"].failed


def _fake_cli(folder: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.pipeline.fake_detector", str(folder), str(out), *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_ctrl_c_keeps_the_journal_and_local_resumes(local_ray, folder: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    journal = journal_path_for(out)
    proc = _fake_cli(folder, out, "--delay", "0.3", "--engine", "ray", "--ray-address",
                     local_ray, "--actors", "1")
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not (journal.is_file() and journal.read_bytes().count(b"\n") >= 4):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "hung before any result"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
    assert proc.returncode != 0 and b"rerun the same command to resume" in err
    assert not out.exists()
    kept = journal.read_bytes().count(b"\n") - 1
    assert 4 <= kept < N_IMAGES
    summary = run_predict(FakeDetector(), folder, out, batch_size=2, progress=False, conf=0.0)
    assert summary.skipped == kept
    assert _records(out) == _reference(folder)


# ---- real models ----------------------------------------------------------------------------
def test_yolox_coco11_equals_local(local_ray, yolox_nano: Path, coco11: Path,
                                   tmp_path: Path) -> None:
    kw = dict(head="yolox", conf=0.001, iou=0.65, max_det=100, progress=False)
    local = run_predict(yolox_nano, coco11, tmp_path / "local.json", **kw)
    remote = run_predict(yolox_nano, coco11, tmp_path / "ray.json", engine="ray", actors=2, **kw)
    assert remote.done == local.done == 11 and remote.detections == local.detections > 500
    assert_same_records(tmp_path / "local.json", tmp_path / "ray.json")


def test_embedded_segmentation_model_equals_local(local_ray, tmp_path: Path) -> None:
    from detseg.data.shapes import generate_shapes
    from detseg.weights.builtin import default_detector

    generate_shapes(tmp_path / "shapes", 6, 5)
    src = tmp_path / "shapes" / "instances.json"
    local = run_predict(default_detector(), src, tmp_path / "local.json", progress=False)
    remote = run_predict(default_detector(), src, tmp_path / "ray.json", progress=False,
                         engine="ray")
    assert remote.detections == local.detections > 0
    assert all("segmentation" in r for r in _records(tmp_path / "ray.json"))
    assert_same_records(tmp_path / "local.json", tmp_path / "ray.json")


def test_eval_with_ray_engine_scores_like_local(local_ray, yolox_nano: Path, coco11: Path,
                                                tmp_path: Path) -> None:
    """`detseg eval --model M --data GT.json --engine ray`: predicts on Ray, evaluates here."""
    from typer.testing import CliRunner

    from detseg.cli import app

    res = CliRunner().invoke(app, ["eval", "--model", str(yolox_nano), "--data", str(coco11),
                                   "--head", "yolox", "--engine", "ray", "--quiet",
                                   "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "m.json").read_text())["stats"]
    assert round(stats[0], 3) == 0.370  # AP@[.50:.95], as under the local engine
