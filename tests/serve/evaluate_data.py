"""Inputs for the Evaluate tab tests: real COCO images with YOLOX-Nano results (A) and a
degraded copy of them (B: boxes shifted, scores shuffled), and a synthetic set whose images
are missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.serve.conftest import free_port


def yolox_results(yolox_nano: Path, coco11: Path, out: Path) -> Path:
    """YOLOX-Nano on the 11 real COCO images (its COCO settings), as a COCO results file."""
    from detseg.data.coco import load_dataset
    from detseg.data.images import read_image
    from detseg.pipeline.detector import Detector

    ds = load_dataset(coco11)
    det = Detector.load(yolox_nano, head="yolox", device="cpu")
    records: list[dict] = []
    for im in ds.images:
        (d,) = det.predict([read_image(im.path)], conf=0.001, iou=0.65, max_det=100)
        records += d.to_coco(im.id, ds.category_ids, with_masks=False)
    out.write_text(json.dumps(records))
    return out


def degraded(results: Path, out: Path, seed: int = 0) -> Path:
    """Model "B": the same records with boxes moved by ~15% of their size and scores shuffled
    among a third of them (fewer true positives, different errors)."""
    rng = np.random.default_rng(seed)
    recs = json.loads(results.read_text())
    for r in recs:
        x, y, w, h = r["bbox"]
        r["bbox"] = [x + float(rng.normal(0, 0.15)) * w, y + float(rng.normal(0, 0.15)) * h, w, h]
        if rng.random() < 0.33:
            r["score"] = float(rng.random())
    out.write_text(json.dumps(recs))
    return out


def synthetic_set(folder: Path, n_images: int = 300, seed: int = 7) -> tuple[Path, Path]:
    """(ground truth, results) of a seeded synthetic problem; its images do not exist."""
    from tests.eval.synthetic import make_problem

    folder.mkdir(parents=True, exist_ok=True)
    gt, res = make_problem(seed=seed, n_images=n_images, n_cats=5, dets_per_image=12)
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "res.json").write_text(json.dumps(res))
    return folder / "gt.json", folder / "res.json"


# ---- fixtures shared by test_evaluate.py and test_evaluate_browser.py --------------------
@pytest.fixture(scope="module")
def files(yolox_nano: Path, coco11: Path, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("evaluate")
    a = yolox_results(yolox_nano, coco11, d / "yolox_nano.json")
    gt, res = synthetic_set(d / "synthetic")
    return {"gt": coco11, "a": a, "b": degraded(a, d / "yolox_shifted.json"), "syn_gt": gt, "syn_res": res}


@pytest.fixture(scope="module")
def evalset(files):
    from detseg.serve import evalset as es_mod

    return es_mod.load_evalset(files["gt"], [files["a"], files["b"]])


@pytest.fixture(scope="module")
def eval_served(evalset, tmp_path_factory):
    from detseg.serve.app import ServeOptions, build_app, launch, make_context
    from detseg.serve.limits import Limits
    from detseg.serve.models import ModelHub, detector_specs

    ctx = make_context(ModelHub(detector_specs([])), Limits(), tmp_path_factory.mktemp("eval_out"))
    options = ServeOptions(samples=False)
    demo = build_app(ctx, options, evalset)
    url = launch(demo, ctx, port=free_port(), options=options, block=False, quiet=True)
    try:
        yield url
    finally:
        demo.close()


