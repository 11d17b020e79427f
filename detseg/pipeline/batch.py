"""Batch inference over a SOURCE into a COCO results file: the engine of `detseg predict`.

`run_predict` loads a model once, then runs three stages in their own threads, joined by
bounded queues so that memory stays flat whatever the dataset size::

    reader:     read images (bad ones reported, skipped) -> detector.preprocess (batched)
    inference:  detector.infer (onnxruntime releases the GIL while it runs)
    writer:     detector.postprocess -> COCO records -> resume journal (+ annotated images)

Every finished image is appended to the resume journal (`detseg.pipeline.journal`) before
anything else happens to it, so a crash or Ctrl-C loses at most the batches in flight; a
rerun skips what the journal holds. The results file is written atomically at the end and
the journal removed.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from detseg.data.coco import write_results
from detseg.errors import DetsegError, InputError
from detseg.pipeline.journal import Journal, journal_path_for
from detseg.pipeline.settings import (  # noqa: F401 - re-exported: part of the runner's API
    DEFAULTS,
    PRESETS,
    category_map,
    model_family,
    resolve_settings,
)
from detseg.pipeline.sources import Source, SourceItem, open_source

DEFAULT_BATCH_SIZE = 8
_QUEUE_DEPTH = 2  # batches waiting between two stages
_MAX_LISTED = 20  # failures listed one by one in the summary text


@dataclass
class Failure:
    """An image that could not be processed, and why."""

    path: Path
    reason: str


@dataclass
class PredictSummary:
    """What a `run_predict` call did."""

    out: Path
    total: int  #: images in the source
    done: int  #: images run in this call
    skipped: int  #: images already in the resume journal
    failed: list[Failure]
    detections: int  #: records in the results file
    providers: list[str]
    batch_size: int
    elapsed_s: float  #: wall time of the run itself (model loading excluded)
    load_s: float  #: model loading (and warm-up) time
    settings: dict = field(default_factory=dict)
    workers: int = 1

    @property
    def images_per_s(self) -> float:
        """Throughput of this call: images run / elapsed seconds."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def format(self) -> str:
        """A human-readable multi-line summary (what the CLI prints)."""
        lines = [
            f"images: {self.total} ({self.done} run, {self.skipped} resumed from the journal, "
            f"{len(self.failed)} failed)",
            f"detections: {self.detections} written to {self.out}",
            f"settings: conf {self.settings.get('conf')}, iou {self.settings.get('iou')}, "
            f"max_det {self.settings.get('max_det')}, "
            f"{'class-agnostic NMS, ' if self.settings.get('agnostic_nms') else ''}"
            f"batch {self.batch_size}, "
            f"workers {self.workers}",
            f"providers: {', '.join(self.providers) or 'unknown'}",
            f"speed: {self.images_per_s:.1f} images/s ({self.elapsed_s:.2f} s run, "
            f"{self.load_s:.2f} s model load)",
        ]
        for f in self.failed[:_MAX_LISTED]:
            lines.append(f"failed: {f.path}: {f.reason}")
        if len(self.failed) > _MAX_LISTED:
            lines.append(f"failed: ... and {len(self.failed) - _MAX_LISTED} more (see the warnings "
                         "above, or PredictSummary.failed)")
        return "\n".join(lines)


def _load_detector(model: Any, head: str | None, device: str, threads: int | None) -> Any:
    if isinstance(model, (str, Path)):
        from detseg.pipeline.detector import Detector

        return Detector.load(model, head=head, device=device, threads=threads)
    for name in ("preprocess", "infer", "postprocess"):
        if not callable(getattr(model, name, None)):
            raise InputError(
                f"model: expected a path to an ONNX file or a Detector, found "
                f"{type(model).__name__} without .{name}()"
            )
    return model


def _model_identity(model: Any, detector: Any) -> dict:
    """What the resume journal remembers about the model, to refuse mixing two models."""
    names = getattr(getattr(detector, "meta", None), "names", None) or {}
    ident: dict[str, Any] = {"classes": len(names), "family": model_family(detector)}
    path = model if isinstance(model, (str, Path)) else getattr(
        getattr(detector, "session", None), "path", getattr(detector, "path", None))
    if path is not None and Path(path).is_file():
        st = Path(path).stat()
        ident.update(file=Path(path).name, bytes=st.st_size)
    return ident


# ---- the three stages -----------------------------------------------------------------------
_END = object()


@dataclass
class _Batch:
    items: list[SourceItem]
    images: list[np.ndarray] | None  #: kept only when annotated images are saved
    tensor: Any = None
    transforms: Any = None
    outputs: Any = None


class _Stop(Exception):
    """Raised inside a stage when another stage failed or the user interrupted."""


class _Runner:
    def __init__(self, detector: Any, items: Sequence[SourceItem], batch_size: int,
                 settings: dict, journal: Journal, encode: Callable[[SourceItem, Any], list],
                 draw: Callable[[SourceItem, np.ndarray, Any], None] | None,
                 warn: Callable[[str], None], tick: Callable[[int], None], workers: int = 1):
        self.detector, self.items, self.batch_size = detector, items, batch_size
        self.workers = self._infer_running = workers
        self._lock = threading.Lock()
        self.settings, self.journal, self.encode, self.draw = settings, journal, encode, draw
        self.warn, self.tick = warn, tick
        self.failed: list[Failure] = []
        self.done = 0
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

    def _fail(self, item: SourceItem, reason: str) -> None:
        prefix = f"{item.path}: "
        reason = reason[len(prefix):] if reason.startswith(prefix) else reason
        self.failed.append(Failure(item.path, reason))
        self.warn(f"warning: skipped {item.path}: {reason}")
        self.tick(1)

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
        from detseg.data.images import read_image

        # Images are batched with images that get the same model input size (one group on a
        # fixed-size model; one per minimum rectangle on a dynamic-size Ultralytics model, see
        # `Detector.input_size_for`). At most 2 x batch_size images wait: past that the
        # largest group goes, full or not.
        size_for = getattr(self.detector, "input_size_for", None)
        groups: dict[Any, list[tuple[SourceItem, np.ndarray]]] = {}
        waiting = 0
        for item in self.items:
            if self.stop.is_set():
                raise _Stop
            try:
                image = read_image(item.path)
            except DetsegError as exc:
                self._fail(item, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - one unreadable file must not end the run
                self._fail(item, f"cannot read ({type(exc).__name__}: {exc})")
                continue
            key = size_for(image.shape[:2]) if size_for is not None else None
            group = groups.setdefault(key, [])
            group.append((item, image))
            waiting += 1
            if len(group) < self.batch_size and waiting <= 2 * self.batch_size:
                continue
            if len(group) < self.batch_size:
                key = max(groups, key=lambda k: len(groups[k]))
            batch = groups.pop(key)
            waiting -= len(batch)
            self._preprocess(batch)
        for batch in groups.values():
            self._preprocess(batch)

    def _preprocess(self, pending: list[tuple[SourceItem, np.ndarray]]) -> None:
        try:
            tensor, transforms = self.detector.preprocess([im for _, im in pending])
        except DetsegError:
            if len(pending) == 1:
                raise
            # One image the model cannot take must not cost the others: find it alone.
            good = []
            for item, im in pending:
                try:
                    self.detector.preprocess([im])
                    good.append((item, im))
                except DetsegError as exc:
                    self._fail(item, str(exc))
            if good:
                self._preprocess(good)
            return
        images = [im for _, im in pending] if self.draw is not None else None
        self._put(self.q_infer, _Batch([it for it, _ in pending], images, tensor, transforms))

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
        s = self.settings
        while (batch := self._get(self.q_post)) is not _END:
            extra = {"agnostic": True} if s.get("agnostic_nms") else {}
            dets = self.detector.postprocess(batch.outputs, batch.transforms, s["conf"], s["iou"],
                                             s["max_det"], **extra)
            for i, (item, det) in enumerate(zip(batch.items, dets, strict=True)):
                self.journal.append(item.key, self.encode(item, det))
                self.done += 1
                if self.draw is not None and batch.images is not None:
                    try:
                        self.draw(item, batch.images[i], det)
                    except (DetsegError, OSError) as exc:  # results are safe; say so, go on
                        self.warn(f"warning: annotated image of {item.path} not saved: {exc}")
                self.tick(1)

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


# ---- the public entry point -----------------------------------------------------------------
def _annotated_path(folder: Path, item: SourceItem) -> Path:
    rel = Path(item.key) if isinstance(item.key, str) else Path(item.path.name)
    if rel.suffix.lower() not in {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}:
        rel = rel.with_name(rel.name + ".png")
    return folder / rel


def run_predict(
    model_or_detector: Any,
    source: str | Path | Source,
    out: str | Path,
    *,
    head: str | None = None,
    device: str = "auto",
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    batch_size: int | None = None,
    images_dir: str | Path | None = None,
    save_images_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    preset: str | None = None,
    threads: int | None = None,
    workers: int | None = None,
    agnostic_nms: bool = False,
) -> PredictSummary:
    """Run a detector over SOURCE and write a COCO results JSON to ``out``.

    Args:
        model_or_detector: a path to an ONNX model (loaded with `Detector.load` and ``head``,
            ``device``, ``threads``) or an already loaded detector.
        source: image file, folder, glob or COCO instances JSON (see `open_source`).
        out: the results file: a JSON list of COCO records, ``bbox`` as xywh in pixels and,
            for segmentation models, ``segmentation`` as compressed RLE. ``image_id`` is the
            dataset's id for a COCO source, else the image path relative to the source.
        conf, iou, max_det: score threshold, NMS IoU, detections kept per image; None takes
            the ``preset``'s value, else `DEFAULTS`.
        batch_size: images per inference call (default: the detector's ``batch_size``, i.e. a
            fixed-batch model's batch, else `DEFAULT_BATCH_SIZE`).
        images_dir: folder of the images of a COCO source.
        save_images_dir: when given, annotated copies of the images are written there.
        resume: skip images already in ``<out>.partial.jsonl`` from an unfinished run with the
            same settings; False starts over.
        progress: show a progress bar and warnings on stderr.
        preset: ``"coco-eval"``: conf 0.001, max_det 100, IoU 0.65 (YOLOX) or 0.7.
        agnostic_nms: class-agnostic NMS (boxes of different classes suppress each other).
        threads: onnxruntime intra-op threads of a model loaded here (None: onnxruntime's
            default, or ``cpu_count // workers`` when ``workers`` > 1 or automatic).
        workers: batches run through the model at the same time (results do not depend on
            it). None: automatic, i.e. 2 when this call loads the model itself, ``threads`` is
            not given, the machine has >= 2 cores and the model runs on the CPU (two calls with
            half the cores each beat one call with all of them on small CPU models: see
            bench/bench_predict.py), else 1.

    Returns:
        A `PredictSummary`. Bad images are listed in ``failed``; they never abort the run.

    Raises:
        InputError, ModelError: bad arguments, SOURCE or model. KeyboardInterrupt is re-raised
        after the journal is safely closed (rerun to resume).
    """
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise InputError(f"--out {out}: expected a .json results file name")
    if workers is not None and int(workers) < 1:
        raise InputError(f"--workers: expected an integer >= 1, found {workers}")
    cores = os.cpu_count() or 1
    auto_workers = (workers is None and threads is None and cores >= 2
                    and isinstance(model_or_detector, (str, Path)))
    if threads is None and (auto_workers or (workers or 1) > 1):
        threads = max(1, cores // (workers or 2))
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"--batch: expected an integer >= 1, found {batch_size}")
    src = source if isinstance(source, Source) else open_source(source, images_dir)
    if save_images_dir is not None:  # annotated images saved inside SOURCE are not new inputs
        drawn = Path(save_images_dir).resolve()
        src = replace(src, items=[it for it in src.items
                                  if not it.path.resolve().is_relative_to(drawn)])
    t_load = time.perf_counter()
    detector = _load_detector(model_or_detector, head, device, threads)
    if callable(getattr(detector, "warmup", None)):
        detector.warmup()  # lazy onnxruntime setup belongs to loading, not to images/s
    load_s = time.perf_counter() - t_load
    if workers is None:
        on_cpu = list(getattr(detector, "providers", None) or ["CPUExecutionProvider"])[0] == (
            "CPUExecutionProvider")
        workers = 2 if auto_workers and on_cpu else 1
    names = dict(getattr(detector.meta, "names", None) or {})
    settings = resolve_settings(preset, model_family(detector), conf, iou, max_det,
                                agnostic_nms=agnostic_nms)
    cats = category_map(names, src.dataset)
    bs = int(batch_size or getattr(detector, "batch_size", None) or DEFAULT_BATCH_SIZE)

    journal = Journal.open(
        journal_path_for(out),
        {**settings, "model": _model_identity(model_or_detector, detector),
         "categories": sorted(cats.items()) if cats else None},
        resume=resume,
    )
    todo = [it for it in src.items if it.key not in journal.done]
    skipped = len(src.items) - len(todo)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(src.items), initial=skipped, unit="img", desc="predict",
                   file=sys.stderr, dynamic_ncols=True)

    def warn(msg: str) -> None:
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def encode(item: SourceItem, det: Any) -> list[dict]:
        return det.to_coco(item.key, category_ids=cats)

    draw = None
    if save_images_dir is not None:
        from detseg.pipeline.draw import save_annotated

        folder = Path(save_images_dir)

        def draw(item: SourceItem, image: np.ndarray, det: Any) -> None:
            save_annotated(_annotated_path(folder, item), image, det, names)

    tick_lock = threading.Lock()  # the reader (failures) and the writer both advance the bar

    def tick(n: int) -> None:
        if bar is not None:
            with tick_lock:
                bar.update(n)

    runner = _Runner(detector, todo, bs, settings, journal, encode, draw, warn, tick,
                     int(workers))
    t0 = time.perf_counter()
    try:
        try:
            runner.run()
        finally:
            elapsed = time.perf_counter() - t0
            if bar is not None:
                bar.close()
        records = [r for it in src.items if it.key in journal.done for r in journal.done[it.key]]
        n = write_results(out, records)
    except KeyboardInterrupt:
        journal.close()
        warn(f"interrupted: {len(journal.done)} finished images are kept in {journal.path}; "
             "rerun the same command to resume")
        raise
    except BaseException:
        journal.close()
        raise
    journal.remove()
    return PredictSummary(
        out=out, total=len(src.items), done=runner.done, skipped=skipped,
        failed=runner.failed, detections=n,
        providers=list(getattr(detector, "providers", []) or []), batch_size=bs,
        elapsed_s=elapsed, load_s=load_s, settings=settings, workers=int(workers),
    )
