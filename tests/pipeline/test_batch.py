"""The batch runner with a fake detector: records, categories, bad images, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detseg.errors import InputError, ModelError
from detseg.pipeline.batch import run_predict
from detseg.pipeline.journal import journal_path_for
from detseg.pipeline.sources import open_source
from tests.pipeline.fake_detector import NAMES, FakeDetector

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 14


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """N_IMAGES small PNG/JPEG images of different sizes, some in a sub-folder."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        sub = root / "sub" if i % 3 == 0 else root
        sub.mkdir(parents=True, exist_ok=True)
        im = rng.integers(0, 256, (20 + i, 24 + 2 * i, 3), dtype=np.uint8)
        cv2.imwrite(str(sub / f"im{i:02d}.{'png' if i % 2 else 'jpg'}"), im)
    return root


def _records(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def _canon(records: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records)


def _expected(folder: Path, **kw) -> list[dict]:
    """Records of an uninterrupted run, for comparison."""
    out = folder.parent / "reference.json"
    run_predict(FakeDetector(), folder, out, batch_size=1, progress=False, conf=0.0, **kw)
    return _records(out)


# ---- plain runs -----------------------------------------------------------------------------
def test_folder_run_writes_every_image_once(folder: Path, tmp_path: Path) -> None:
    det = FakeDetector()
    out = tmp_path / "out.json"
    summary = run_predict(det, folder, out, batch_size=4, progress=False, conf=0.0)
    records = _records(out)
    keys = {it.key for it in open_source(folder)}
    assert {r["image_id"] for r in records} == keys
    assert summary.done == N_IMAGES and summary.skipped == 0 and not summary.failed
    assert summary.detections == len(records)
    assert summary.providers == ["FakeExecutionProvider"]
    assert max(det.batch_sizes) == 4 and sum(det.batch_sizes) == N_IMAGES
    assert not journal_path_for(out).exists()
    # class ids are written as category ids for plain folders; boxes as xywh
    assert {r["category_id"] for r in records} <= set(NAMES)
    r = next(r for r in records if r["image_id"] == "im01.png")
    assert r["bbox"][2:] == [(24 + 2) / 2, (20 + 1) / 2]


def test_batch_size_does_not_change_results(folder: Path, tmp_path: Path) -> None:
    ref = _expected(folder)
    out = tmp_path / "b5.json"
    run_predict(FakeDetector(), folder, out, batch_size=5, progress=False, conf=0.0)
    assert _canon(_records(out)) == _canon(ref)


@pytest.mark.parametrize("workers", [2, 3])
def test_concurrent_inference_workers_give_the_same_file(folder: Path, tmp_path: Path,
                                                         workers: int) -> None:
    out = tmp_path / "w.json"
    det = FakeDetector(delay=0.01)
    summary = run_predict(det, folder, out, batch_size=2, progress=False, conf=0.0,
                          workers=workers)
    assert _records(out) == _expected(folder)  # same records in the same (source) order
    assert summary.workers == workers and sum(det.batch_sizes) == N_IMAGES


def test_bad_images_are_reported_and_skipped(folder: Path, tmp_path: Path, capsys) -> None:
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out.json"
    summary = run_predict(FakeDetector(), folder, out, batch_size=3, progress=False, conf=0.0)
    assert summary.done == N_IMAGES
    assert sorted(f.path.name for f in summary.failed) == ["broken.jpg", "empty.png"]
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.jpg" in err and "empty.png" in err
    assert {r["image_id"] for r in _records(out)}.isdisjoint({"broken.jpg", "empty.png"})
    assert "failed: " in summary.format()


def test_an_image_refused_by_preprocess_costs_only_itself(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    # image 3 is 26 + 6 = 30 px wide
    summary = run_predict(FakeDetector(refuse_width=30), folder, out, batch_size=4,
                          progress=False, conf=0.0)
    assert [f.path.name for f in summary.failed] == ["im03.png"]
    assert "refused by the fake model" in summary.failed[0].reason
    assert summary.done == N_IMAGES - 1


def test_masks_are_written_as_rle_that_decodes_to_the_mask(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg.json"
    run_predict(FakeDetector(seg=True), folder, out, progress=False, conf=0.0)
    rec = next(r for r in _records(out) if r["image_id"] == "im01.png")
    m = mask_utils.decode(rec["segmentation"])
    assert m.shape == (21, 26) and m[:10, :13].all() and m.sum() == 10 * 13


def test_annotated_images_are_saved(folder: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "drawn"
    run_predict(FakeDetector(seg=True), folder, tmp_path / "o.json", progress=False, conf=0.0,
                save_images_dir=out_dir)
    drawn = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.*"))
    assert drawn == sorted(it.key for it in open_source(folder))
    im = cv2.imread(str(out_dir / "im01.png"))
    assert im.shape == (21, 26, 3)
    assert not np.array_equal(im, cv2.imread(str(folder / "im01.png")))


def test_annotated_images_inside_the_source_are_not_inputs_on_rerun(folder: Path,
                                                                    tmp_path: Path) -> None:
    for _ in range(2):
        summary = run_predict(FakeDetector(), folder, tmp_path / "o.json", progress=False,
                              save_images_dir=folder / "drawn")
        assert summary.total == N_IMAGES


def test_a_model_error_aborts_and_keeps_the_journal(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with pytest.raises(ModelError, match="on purpose"):
        run_predict(FakeDetector(fail_infer_after=2), folder, out, batch_size=1, progress=False)
    assert not out.exists()
    lines = journal_path_for(out).read_text().splitlines()
    assert 1 <= len(lines) <= 3  # header + at most the 2 good batches


# ---- COCO sources -------------------------------------------------------------------------
def _dataset(tmp_path: Path, folder: Path, categories: list[dict]):
    images = [{"id": 100 + i, "file_name": it.path.name, "width": 1, "height": 1}
              for i, it in enumerate(open_source(folder)) if "/" not in str(it.key)]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "categories": categories, "annotations": []}))
    return path


def test_coco_source_writes_dataset_ids_and_categories(tmp_path: Path, folder: Path) -> None:
    cats = [{"id": 11, "name": "cat"}, {"id": 12, "name": "dog"}, {"id": 13, "name": "bird"}]
    src = _dataset(tmp_path, folder, cats)
    out = tmp_path / "out.json"
    run_predict(FakeDetector(), src, out, progress=False, conf=0.0, images_dir=folder)
    records = _records(out)
    assert {r["image_id"] for r in records} == {im["id"] for im in json.loads(src.read_text())["images"]}
    assert {r["category_id"] for r in records} <= {11, 12, 13}


# ---- resume ---------------------------------------------------------------------------------
def _start(folder: Path, out: Path, delay: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.pipeline.fake_detector", str(folder), str(out),
         "--delay", str(delay), "--batch", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _wait_for_lines(proc: subprocess.Popen, journal: Path, n: int) -> None:
    """Wait until the journal holds ``n`` finished images (header excluded)."""
    while True:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= n + 1:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {n} images: {proc.communicate()[1]!r}")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_interruption_matches_an_uninterrupted_run(
    folder: Path, tmp_path: Path, sig: int
) -> None:
    out = tmp_path / "out.json"
    journal = journal_path_for(out)
    proc = _start(folder, out, delay=0.3)
    _wait_for_lines(proc, journal, 4)
    proc.send_signal(sig)
    _, err = proc.communicate()
    assert proc.returncode != 0
    if sig == signal.SIGINT:
        assert b"rerun the same command to resume" in err
    assert not out.exists() and journal.exists()
    n_done = journal.read_bytes().count(b"\n") - 1
    assert 4 <= n_done < N_IMAGES

    summary = run_predict(FakeDetector(), folder, out, batch_size=3, progress=False, conf=0.0)
    assert summary.skipped == n_done and summary.done == N_IMAGES - n_done
    records = _records(out)
    assert _canon(records) == _canon(_expected(folder))  # same records, no duplicates
    assert len({json.dumps(r, sort_keys=True) for r in records}) == len(records)
    assert not journal.exists()


def test_resume_tolerates_a_torn_last_line(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with pytest.raises(ModelError):
        run_predict(FakeDetector(fail_infer_after=3), folder, out, batch_size=1, progress=False,
                    conf=0.0)
    journal = journal_path_for(out)
    n_done = journal.read_bytes().count(b"\n") - 1  # the writer may not have caught up
    with journal.open("ab") as f:
        f.write(b'{"key": "im05.png", "records": [{"image_id": "im0')  # killed mid-write
    summary = run_predict(FakeDetector(), folder, out, batch_size=2, progress=False, conf=0.0)
    assert summary.skipped == n_done and summary.done == N_IMAGES - n_done
    assert _canon(_records(out)) == _canon(_expected(folder))


def test_resume_refuses_other_settings_and_no_resume_starts_over(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with pytest.raises(ModelError):
        run_predict(FakeDetector(fail_infer_after=2), folder, out, batch_size=1, progress=False,
                    conf=0.0)
    with pytest.raises(InputError, match="other settings .*conf: journal 0.0, this run 0.5"):
        run_predict(FakeDetector(), folder, out, progress=False, conf=0.5)
    summary = run_predict(FakeDetector(), folder, out, progress=False, conf=0.5, resume=False)
    assert summary.skipped == 0 and summary.done == N_IMAGES


def test_corrupt_middle_line_is_an_error_naming_the_journal(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with pytest.raises(ModelError):
        run_predict(FakeDetector(fail_infer_after=2), folder, out, batch_size=1, progress=False)
    journal = journal_path_for(out)
    header = journal.read_bytes().split(b"\n")[0]
    journal.write_bytes(header + b'\ngarbage\n{"key": "im01.png", "records": []}\n')
    with pytest.raises(InputError, match=r"partial.jsonl: line 2: corrupt"):
        run_predict(FakeDetector(), folder, out, progress=False)


def test_a_second_concurrent_run_is_refused(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = _start(folder, out, delay=0.3)
    try:
        _wait_for_lines(proc, journal_path_for(out), 1)
        with pytest.raises(InputError, match="another detseg run is writing"):
            run_predict(FakeDetector(), folder, out, progress=False, conf=0.0)
    finally:
        proc.kill()
        proc.communicate()


class _RectFake(FakeDetector):
    """A fake whose input size depends on the image's width parity (as a dynamic-size model's
    minimum rectangle depends on its shape): records the keys each batch mixes."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_keys: list[set] = []

    def input_size_for(self, image_size):
        return (32, 32 + image_size[1] % 4)

    def preprocess(self, images):
        self.batch_keys.append({self.input_size_for(im.shape[:2]) for im in images})
        return super().preprocess(images)


def test_batches_group_images_by_input_size(folder: Path, tmp_path: Path) -> None:
    """A detector with `input_size_for` gets batches of one input size each, every image once,
    and the same records as one-image batches."""
    det = _RectFake()
    out = tmp_path / "rect.json"
    summary = run_predict(det, folder, out, batch_size=3, progress=False, conf=0.0)
    assert summary.done == N_IMAGES
    assert all(len(keys) == 1 for keys in det.batch_keys), det.batch_keys
    assert sum(det.batch_sizes) == N_IMAGES and max(det.batch_sizes) == 3
    assert len({k for keys in det.batch_keys for k in keys}) == 2  # both groups were seen
    assert _canon(_records(out)) == _canon(_expected(folder))


# ---- disk full ------------------------------------------------------------------------------
def _disk_full_after(monkeypatch, n_writes: int) -> None:
    """Journal writes fail with ENOSPC after ``n_writes`` (the header is the first); the
    failing write gets half its bytes onto the disk first, as a real full disk may."""
    import errno

    from detseg.pipeline import journal as journal_mod

    real = journal_mod._os_write
    calls = {"n": 0}

    def write(fd: int, data) -> int:
        calls["n"] += 1
        if calls["n"] > n_writes:
            if len(data) > 1:
                real(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(journal_mod, "_os_write", write)


def test_disk_full_in_the_journal_is_one_line_and_resumes(folder: Path, tmp_path: Path,
                                                          monkeypatch) -> None:
    from detseg.errors import OutputError

    out = tmp_path / "out.json"
    with monkeypatch.context() as m:
        _disk_full_after(m, 1 + 5)
        with pytest.raises(OutputError) as info:
            run_predict(FakeDetector(), folder, out, batch_size=2, progress=False, conf=0.0)
    msg = str(info.value)
    assert "\n" not in msg and "No space left on device" in msg and "resume" in msg
    assert "5 images finished so far" in msg and not out.exists()
    summary = run_predict(FakeDetector(), folder, out, batch_size=2, progress=False, conf=0.0)
    assert summary.skipped == 5 and summary.done == N_IMAGES - 5  # the torn 6th line ran again
    assert _records(out) == _expected(folder)


def test_disk_full_at_the_final_write_keeps_the_journal(folder: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    import errno

    from detseg.errors import OutputError
    from detseg.pipeline import batch

    def full(path, records):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "out.json"
    with monkeypatch.context() as m:
        m.setattr(batch, "write_results", full)
        with pytest.raises(OutputError, match=f"all {N_IMAGES} finished images are kept"):
            run_predict(FakeDetector(), folder, out, progress=False, conf=0.0)
    assert journal_path_for(out).exists() and not out.exists()
    summary = run_predict(FakeDetector(), folder, out, progress=False, conf=0.0)
    assert summary.skipped == N_IMAGES and summary.done == 0
    assert _records(out) == _expected(folder)


def test_cli_disk_full_prints_one_line(yolox_nano: Path, coco11: Path, tmp_path: Path,
                                       monkeypatch, capsys) -> None:
    """`detseg predict` on a full disk: one `detseg: error:` line (no traceback), exit 2; the
    same command resumes once there is space."""
    from detseg.cli import main

    out = tmp_path / "yolox.json"
    argv = ["detseg", "predict", str(yolox_nano), str(coco11.parent / "images"), "--head",
            "yolox", "--out", str(out), "-q"]
    monkeypatch.setattr(sys, "argv", argv)
    with monkeypatch.context() as m:
        _disk_full_after(m, 1 + 3)
        with pytest.raises(SystemExit) as info:
            main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("detseg: error: ") and "Traceback" not in err
    assert "No space left on device" in err
    main()  # returns: exit status 0
    assert "3 resumed from the journal" in capsys.readouterr().out


@pytest.fixture()
def tiny_disk(tmp_path: Path):
    """A real 64 KiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:100]}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_really_full_disk_one_line_then_resume(yolox_nano: Path, coco11: Path, tmp_path: Path,
                                               tiny_disk: Path) -> None:
    """11 COCO images of YOLOX records (~80 KB of journal) on a 64 KiB disk: one error line;
    once the disk is grown the same command finishes with the uninterrupted run's records."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "detseg", "predict", str(yolox_nano), str(coco11.parent / "images"),
           "--head", "yolox", "--conf", "0.001", "--iou", "0.65", "--max-det", "100", "-q",
           "--out"]
    full = subprocess.run([*cmd, str(tiny_disk / "out.json")], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    assert full.returncode == 2, full.stderr[-2000:]
    assert full.stderr.count("\n") == 1 and "No space left on device" in full.stderr
    assert journal_path_for(tiny_disk / "out.json").exists()
    subprocess.run(["mount", "-o", "remount,size=2m", str(tiny_disk)], check=True)
    again = subprocess.run([*cmd, str(tiny_disk / "out.json")], env=env, cwd=ROOT,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from the journal, 0 failed" in again.stdout
    assert " 0 resumed" not in again.stdout
    ref = subprocess.run([*cmd, str(tmp_path / "ref.json")], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    assert ref.returncode == 0
    assert _records(tiny_disk / "out.json") == _records(tmp_path / "ref.json")
