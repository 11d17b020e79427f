"""The command line's last line of defence: no traceback reaches a user, whatever goes wrong.

Bad input is a one-line `detseg: error: ...` with exit status 2; an unexpected exception (a bug)
is one line naming the command and the exception and saying how to see the traceback
(`--debug` or DETSEG_DEBUG=1), exit status 70; usage errors are one line too.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

import detseg.cli as cli
import detseg.pipeline.session as session_module


def _run_main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["detseg", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
        raise SystemExit(0)
    return int(info.value.code or 0)


def _boom(exc: BaseException):
    def probe(*args, **kwargs):
        raise exc
    return probe


def test_a_bug_is_one_line_naming_the_command_and_how_to_get_the_traceback(monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.setattr(session_module, "probe_cuda", _boom(RuntimeError("the cause\nsecond line")))
    code = _run_main(monkeypatch, "version")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_INTERNAL
    assert len(err) == 1, err
    assert "internal error in `detseg version`: RuntimeError: the cause" in err[0]
    assert "--debug" in err[0] and "DETSEG_DEBUG=1" in err[0]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(monkeypatch, how):
    monkeypatch.setattr(session_module, "probe_cuda", _boom(RuntimeError("the cause")))
    args = ["version"]
    if how == "flag":
        args.append("--debug")
        monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    else:
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    monkeypatch.setattr(sys, "argv", ["detseg", *args])
    with pytest.raises(RuntimeError, match="the cause"):
        cli.main()


def test_disk_full_and_other_os_errors_are_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    exc = OSError(errno.ENOSPC, "No space left on device", "/data/results.json")
    monkeypatch.setattr(session_module, "probe_cuda", _boom(exc))
    code = _run_main(monkeypatch, "version")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["detseg: error: /data/results.json: No space left on device"]


def _detseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detseg", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


_CASES = ["serve --port 99999", "serve --port 0", "unknown option", "eval, ground truth not JSON",
          "eval, bad bbox field", "predict, missing source", "predict, folder without images",
          "shapes, negative count"]


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Command lines a user can get wrong, each with the text its one-line error must hold."""
    (tmp / "notjson.json").write_text("{ not json")
    (tmp / "gt.json").write_text(json.dumps({
        "images": [{"id": 1, "width": 10, "height": 10, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "a"}], "annotations": []}))
    (tmp / "res.json").write_text(json.dumps([{"image_id": 1, "category_id": 1,
                                               "bbox": [0, 0, "x", 1], "score": 0.5}]))
    (tmp / "empty").mkdir(exist_ok=True)
    return {
        "serve --port 99999": (["serve", "--port", "99999"], "--port"),
        "serve --port 0": (["serve", "--port", "0"], "--port"),
        "unknown option": (["predict", "--bogus"], "--bogus"),
        "eval, ground truth not JSON": (["eval", "--gt", "notjson.json", "--pred", "res.json"],
                                        "notjson.json"),
        "eval, bad bbox field": (["eval", "--gt", "gt.json", "--pred", "res.json"], "bbox"),
        "predict, missing source": (["predict", "nowhere/", "--out", "r.json"], "nowhere"),
        "predict, folder without images": (["predict", "empty", "--out", "r.json"], "empty"),
        "shapes, negative count": (["data", "shapes", "--out", "d", "--images", "-3", "--seed", "1"],
                                   "images"),
    }


@pytest.mark.parametrize("case", _CASES)
def test_bad_input_sweep_gives_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    args, needle = _bad_inputs(tmp_path)[case]
    proc = _detseg(*args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
