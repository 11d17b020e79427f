"""The local engine: a `PredictPlan` run by threads in this process.

Three stages in their own threads, joined by bounded queues so that memory stays flat
whatever the dataset size::

    reader:     read images (bad ones reported, skipped) -> detector.preprocess (batched)
    inference:  detector.infer, ``workers`` threads (onnxruntime releases the GIL while it runs)
    writer:     detector.postprocess -> COCO records -> Recorder (journal) (+ annotated images)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detseg.errors import DetsegError
from detseg.pipeline.journal import records_json
from detseg.pipeline.plan import (
    BatchDetector,
    PredictPlan,
    Recorder,
    preprocess_apart,
    read_item,
)
from detseg.pipeline.sources import SourceItem

_QUEUE_DEPTH = 2  # batches waiting between two stages
_END = object()
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class _Batch:
    items: list[SourceItem]
    images: list[np.ndarray] | None  #: kept only when annotated images are saved
    tensor: Any = None
    transforms: Any = None
    outputs: Any = None


class _Stop(Exception):
    """Raised inside a stage when another stage failed or the user interrupted."""


def annotated_path(folder: Path, item: SourceItem) -> Path:
    """Where the annotated copy of ``item`` goes under ``folder`` (its key, as an image name)."""
    rel = Path(item.key) if isinstance(item.key, str) else Path(item.path.name)
    if rel.suffix.lower() not in _IMAGE_SUFFIXES:
        rel = rel.with_name(rel.name + ".png")
    return folder / rel


class LocalEngine:
    """Runs a plan with one loaded detector: a reader, ``workers`` inference threads, a writer."""

    name = "local"

    def __init__(self, detector: BatchDetector, workers: int = 1):
        self.detector, self.workers = detector, int(workers)

    def run(self, plan: PredictPlan, recorder: Recorder) -> None:
        """Run every image of ``plan.todo``; raises the first error of a stage (the journal
        keeps what was finished) and KeyboardInterrupt after stopping the stages."""
        draw = None
        if plan.save_images_dir is not None:
            from detseg.pipeline.draw import save_annotated

            folder = plan.save_images_dir

            def draw(item: SourceItem, image: np.ndarray, det: Any) -> None:
                save_annotated(annotated_path(folder, item), image, det, plan.names)

        _Runner(self.detector, plan, recorder, draw, self.workers).run()


class _Runner:
    def __init__(self, detector: BatchDetector, plan: PredictPlan, recorder: Recorder,
                 draw: Callable[[SourceItem, np.ndarray, Any], None] | None, workers: int):
        self.detector, self.plan, self.rec, self.draw = detector, plan, recorder, draw
        self.workers = self._infer_running = workers
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.q_infer: queue.Queue = queue.Queue(_QUEUE_DEPTH)
        self.q_post: queue.Queue = queue.Queue(_QUEUE_DEPTH)

    def _put(self, q: queue.Queue, obj: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                q.put(obj, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue) -> Any:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    def _stage(self, body: Callable[[], None], downstream: queue.Queue | None) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
                if downstream is not None:
                    self._put(downstream, _END)
            except _Stop:
                pass
            except BaseException as exc:  # handed to the main thread, which re-raises it
                self.errors.append(exc)
                self.stop.set()
        return run

    # reader: decode + preprocess
    def _read(self) -> None:
        # Images are batched with images that get the same model input size (one group on a
        # fixed-size model; one per minimum rectangle on a dynamic-size Ultralytics model, see
        # `Detector.input_size_for`). At most 2 x batch_size images wait: past that the
        # largest group goes, full or not.
        bs = self.plan.batch_size
        groups: dict[Any, list[tuple[SourceItem, np.ndarray]]] = {}
        waiting = 0
        for item in self.plan.todo:
            if self.stop.is_set():
                raise _Stop
            image, reason = read_item(item.path)
            if image is None:
                self.rec.fail(item, reason)
                continue
            key = self.detector.input_size_for(image.shape[:2])
            group = groups.setdefault(key, [])
            group.append((item, image))
            waiting += 1
            if len(group) < bs and waiting <= 2 * bs:
                continue
            if len(group) < bs:
                key = max(groups, key=lambda k: len(groups[k]))
            batch = groups.pop(key)
            waiting -= len(batch)
            self._preprocess(batch)
        for batch in groups.values():
            self._preprocess(batch)

    def _preprocess(self, pending: list[tuple[SourceItem, np.ndarray]]) -> None:
        tensor, transforms, kept, failed = preprocess_apart(self.detector,
                                                            [im for _, im in pending])
        for i, reason in failed.items():
            self.rec.fail(pending[i][0], reason)
        if not kept:
            return
        images = [pending[i][1] for i in kept] if self.draw is not None else None
        self._put(self.q_infer, _Batch([pending[i][0] for i in kept], images, tensor, transforms))

    # inference: ``workers`` threads may call the model at once (onnxruntime allows it)
    def _infer(self) -> None:
        while (batch := self._get(self.q_infer)) is not _END:
            batch.outputs = self.detector.infer(batch.tensor)
            batch.tensor = None
            self._put(self.q_post, batch)
        self._put(self.q_infer, _END)  # let the sibling workers see the end too
        with self._lock:
            self._infer_running -= 1
            last = self._infer_running == 0
        if last:
            self._put(self.q_post, _END)

    # writer: postprocess + encode + journal (+ draw)
    def _write(self) -> None:
        while (batch := self._get(self.q_post)) is not _END:
            dets = self.detector.postprocess(batch.outputs, batch.transforms, **self.plan.settings)
            for i, (item, det) in enumerate(zip(batch.items, dets, strict=True)):
                self.rec.record(item, records_json(self.plan.encode(item, det)))
                if self.draw is not None and batch.images is not None:
                    try:
                        self.draw(item, batch.images[i], det)
                    except (DetsegError, OSError) as exc:  # results are safe; say so, go on
                        self.rec.warn(f"warning: annotated image of {item.path} not saved: {exc}")

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._stage(self._read, self.q_infer), name="detseg-read",
                             daemon=True),
            *(threading.Thread(target=self._stage(self._infer, None), name=f"detseg-infer-{i}",
                               daemon=True) for i in range(self.workers)),
            threading.Thread(target=self._stage(self._write, None), name="detseg-write",
                             daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.1)
        finally:  # Ctrl-C: stop the stages; what the writer journaled is kept
            self.stop.set()
            for t in threads:
                t.join()
        if self.errors:
            raise self.errors[0]
