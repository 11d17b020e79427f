"""The README's main job (`make demo` runs `python -m detseg.demo`), without the final serve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_whole_job_offline(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "detseg.demo", "--out", str(tmp_path),
                           "--images", "16", "--no-serve"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for iou_type in ("bbox", "segm"):
        stats = json.loads((tmp_path / f"shapes-{iou_type}.json").read_text())["stats"]
        assert len(stats) == 12 and stats[0] > 0.4, (iou_type, stats)
        assert (tmp_path / f"report-{iou_type}" / "report.html").stat().st_size > 10_000
    assert "$ detseg predict" in proc.stdout
