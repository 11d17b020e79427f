"""The main job on the embedded defaults, offline: `python -m detseg.demo` (the README's `make demo`).

1. generate a held-out shapes dataset (a seed the shipped models never saw),
2. `detseg predict` with the embedded YOLOv8n-seg (no model argument),
3. `detseg eval` for boxes and masks (terminal tables, HTML/Markdown/JSON report),
4. the same on the real COCO images and YOLOX-Nano in ../shared/assets, when present,
5. `detseg serve` (the Gradio demo on 127.0.0.1) until Ctrl-C, unless ``--no-serve``; the
   real COCO photos are offered as samples (``--examples``) when present.

Each step is the CLI command it prints, run in this process: the demo holds no logic of its own.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HELD_OUT_SEED = 20261126  # training used seeds 1 and 2, the model cards' measurement seed 3
ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def _run(args: list[str]) -> None:
    from detseg.cli import app

    print(f"\n$ detseg {shlex.join(args)}", flush=True)
    app(args, standalone_mode=False)


def serve_args(port: int, assets: Path = ASSETS) -> list[str]:
    """`detseg serve` arguments of the demo: the real photos as samples when present."""
    args = ["serve", "--port", str(port)]
    photos = assets / "coco-val-11" / "images"
    if photos.is_dir():
        args += ["--examples", str(photos)]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detseg.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--images", type=int, default=60, help="held-out shapes images")
    parser.add_argument("--no-serve", action="store_true", help="stop after the evaluation")
    parser.add_argument("--port", type=int, default=7860, help="port of the demo server")
    opts = parser.parse_args(argv)

    out = opts.out
    shapes = out / "shapes-heldout"
    gt = shapes / "instances.json"
    results = out / "shapes-results.json"
    from detseg.errors import DetsegError

    try:
        _run(["data", "shapes", "--out", str(shapes), "--images", str(opts.images),
              "--seed", str(HELD_OUT_SEED)])
        _run(["predict", str(gt), "--preset", "coco-eval", "--out", str(results), "--no-resume"])
        _run(["eval", "--gt", str(gt), "--pred", str(results), "--iou-type", "bbox",
              "--json", str(out / "shapes-bbox.json"), "--out", str(out / "report-bbox")])
        _run(["eval", "--gt", str(gt), "--pred", str(results), "--iou-type", "segm", "--quiet",
              "--json", str(out / "shapes-segm.json"), "--out", str(out / "report-segm")])
        if (ASSETS / "coco-val-11" / "instances.json").is_file():
            real = out / "coco11-yolox-results.json"
            _run(["predict", str(ASSETS / "models" / "yolox_nano.onnx"),
                  str(ASSETS / "coco-val-11" / "instances.json"), "--head", "yolox",
                  "--preset", "coco-eval", "--out", str(real), "--no-resume"])
            _run(["eval", "--gt", str(ASSETS / "coco-val-11" / "instances.json"), "--pred",
                  str(real), "--iou-type", "bbox", "--quiet",
                  "--json", str(out / "coco11-bbox.json")])
        else:
            print(f"\n(real COCO assets not found at {ASSETS}: skipping the YOLOX-Nano step)")
        print(f"\nReports: {out / 'report-bbox' / 'report.html'}, "
              f"{out / 'report-segm' / 'report.html'}")
        if not opts.no_serve:
            print("\nServing the demo on the embedded defaults; press Ctrl-C to stop.")
            _run(serve_args(opts.port))
    except DetsegError as exc:
        print(f"detseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
