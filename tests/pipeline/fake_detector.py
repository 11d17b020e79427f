"""A tiny stand-in for `detseg.pipeline.detector.Detector` that follows its contract.

Its detections are a deterministic function of each image (its size and mean colour), so two
runs over the same images must give the same records. Options make it slow (to kill a run
part-way), make it refuse some images in ``preprocess``, or give instance masks.

Run as a module, it runs `run_predict` over a source (used by the resume tests, which kill
that subprocess part-way)::

    python -m tests.pipeline.fake_detector SOURCE OUT [--delay S] [--batch N]
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from detseg.detections import Detections
from detseg.errors import InputError, ModelError

NAMES = {0: "cat", 1: "dog", 2: "bird"}


@dataclass
class FakeMeta:
    task: str = "detect"
    names: dict = field(default_factory=lambda: dict(NAMES))
    imgsz: tuple = (32, 32)
    family: str = "fake"


class FakeDetector:
    """Follows `detseg.pipeline.plan.BatchDetector`: ``preprocess(images) -> (tensor,
    transforms)``, ``infer``, ``postprocess``, ``input_size_for``, ``warmup``."""

    def __init__(self, *, delay: float = 0.0, seg: bool = False, refuse_width: int | None = None,
                 fail_infer_after: int | None = None, names: dict | None = None,
                 records: int | None = None):
        self.meta = FakeMeta(task="segment" if seg else "detect",
                             names=dict(names) if names is not None else dict(NAMES))
        self.providers = ["FakeExecutionProvider"]
        self.batch_size = 8
        self.delay, self.seg, self.refuse_width = delay, seg, refuse_width
        self.fail_infer_after = fail_infer_after
        self.records = records  # detections per image (default: 1-4, from the image)
        self.infer_calls = 0
        self.batch_sizes: list[int] = []

    def input_size_for(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self.meta.imgsz  # one input size: every image may share a batch

    def warmup(self) -> None:
        pass

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        for im in images:
            if self.refuse_width is not None and im.shape[1] == self.refuse_width:
                raise InputError(f"image of width {im.shape[1]}: refused by the fake model")
        tensor = np.stack([im.reshape(-1, 3).mean(0) for im in images]).astype(np.float32)
        return tensor, [im.shape[:2] for im in images]

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        self.infer_calls += 1
        if self.fail_infer_after is not None and self.infer_calls > self.fail_infer_after:
            raise ModelError("fake model: inference failed on purpose")
        self.batch_sizes.append(len(tensor))
        if self.delay:
            time.sleep(self.delay)
        return tensor * 2.0

    def postprocess(self, outputs, transforms, conf, iou, max_det) -> list[Detections]:
        result = []
        for mean2, (h, w) in zip(outputs, transforms, strict=True):
            mean = mean2 / 2.0
            n = self.records or int(mean.sum()) % 4 + 1
            k = np.arange(n, dtype=np.float32)
            boxes = np.stack([k, k, w / 2 + k, h / 2 + k], axis=1)
            scores = np.clip(0.9 - 0.2 * k + (mean[0] % 7) / 100, 0, 1).astype(np.float32)
            class_ids = (k.astype(np.int64) + int(mean[1])) % len(self.meta.names)
            masks = None
            if self.seg:
                masks = np.zeros((n, h, w), bool)
                for i in range(n):
                    masks[i, i: h // 2 + i, i: w // 2 + i] = True
            det = Detections(boxes, scores, class_ids, masks, self.meta.names, (h, w))
            det = det[det.scores >= conf]
            result.append(det[np.argsort(-det.scores, kind="stable")[:max_det]])
        return result


@dataclass(frozen=True)
class FakeLoader:
    """A picklable `DetectorLoader` of `FakeDetector` (for the Ray engine's actors).

    ``pid_dir``: each load writes a file named after its process id there (to find and kill
    an actor's worker process). ``fail_infer_after``: as in `FakeDetector`, per actor.
    """

    delay: float = 0.0
    seg: bool = False
    fail_infer_after: int | None = None
    pid_dir: str | None = None
    records: int | None = None

    def load(self, threads: int | None = None, device: str | None = None) -> FakeDetector:
        import os
        from pathlib import Path

        if self.pid_dir is not None:
            (Path(self.pid_dir) / str(os.getpid())).write_text(str(threads))
        return FakeDetector(delay=self.delay, seg=self.seg,
                            fail_infer_after=self.fail_infer_after, records=self.records)


def main(argv: list[str]) -> None:
    from detseg.pipeline.batch import run_predict

    source, out = argv[0], argv[1]
    opts = dict(zip(argv[2::2], argv[3::2], strict=True))
    delay = float(opts.get("--delay", 0))
    engine = opts.get("--engine", "local")
    model = FakeLoader(delay=delay) if engine == "ray" else FakeDetector(delay=delay)
    run_predict(model, source, out, batch_size=int(opts.get("--batch", 1)), progress=False,
                conf=0.0, engine=engine, ray_address=opts.get("--ray-address"),
                actors=int(opts["--actors"]) if "--actors" in opts else None)


if __name__ == "__main__":
    main(sys.argv[1:])
