"""Batch inference over a SOURCE into a COCO results file: the entry point of `detseg predict`.

`run_predict` makes a plan (`detseg.pipeline.plan`: the images still to run, the settings,
the category mapping, the open resume journal), has an engine execute it — local threads
(`detseg.pipeline.local_engine`) or Ray Data actors (`detseg.pipeline.ray_engine`) — and
writes the results file from the journal.

Every finished image is appended to the resume journal (`detseg.pipeline.journal`) before
anything else happens to it, so a crash or Ctrl-C loses at most the batches in flight; a
rerun (under either engine) skips what the journal holds. The results file is written
atomically at the end, streamed from the journal in source order, and the journal removed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detseg.data.coco import write_results
from detseg.errors import InputError, OutputError
from detseg.pipeline.plan import (  # noqa: F401 - re-exported: part of the runner's API
    DEFAULT_BATCH_SIZE,
    BatchDetector,
    DetectorLoader,
    Failure,
    OnnxDetectorSpec,
    PredictPlan,
    Recorder,
    as_loader,
    check_out_path,
    make_plan,
    open_plan_source,
)
from detseg.pipeline.settings import (  # noqa: F401 - re-exported: part of the runner's API
    DEFAULTS,
    PRESETS,
    category_map,
    model_family,
    resolve_settings,
)
from detseg.pipeline.sources import Source

ENGINES = ("local", "ray")
_MAX_LISTED = 20  # failures listed one by one in the summary text


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
    engine: str = "local"

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
            f"{'workers' if self.engine == 'local' else self.engine + ' actors'} {self.workers}",
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
    engine: str = "local",
    ray_address: str | None = None,
    actors: int | None = None,
    agnostic_nms: bool = False,
) -> PredictSummary:
    """Run a detector over SOURCE and write a COCO results JSON to ``out``.

    Args:
        model_or_detector: a path to an ONNX model (loaded with `Detector.load` and ``head``,
            ``device``, ``threads``), a `DetectorLoader`, or an already loaded detector (a
            `BatchDetector`; local engine only).
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
            bench/bench_predict.py), else 1. Local engine only.
        engine: ``"local"`` (threads in this process) or ``"ray"`` (Ray Data actors, one
            detector each, on a local Ray or a cluster: see `detseg.pipeline.ray_engine`).
            Both write the same journal and results file; a run stopped under one resumes
            under the other.
        ray_address: Ray engine: the cluster to use (``"host:port"``, ``"ray://..."``,
            ``"auto"``, ``"local"``); None: a Ray already initialised in this process, else
            ``RAY_ADDRESS``, else a running local cluster, else a new local Ray.
        actors: Ray engine: detector actors (default: one per GPU with ``device="cuda"``,
            else one per 2 CPUs of the cluster, at least 2).

    Returns:
        A `PredictSummary`. Bad images are listed in ``failed``; they never abort the run.

    Raises:
        InputError, ModelError: bad arguments, SOURCE or model. OutputError: the journal or the
        results file cannot be written (disk full); the journal keeps what was finished.
        EngineError: the Ray engine is not installed or its cluster cannot be reached. KeyboardInterrupt is re-raised
        after the journal is safely closed (rerun to resume).
    """
    out = check_out_path(out)
    if engine not in ENGINES:
        raise InputError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    if workers is not None and int(workers) < 1:
        raise InputError(f"--workers: expected an integer >= 1, found {workers}")
    if actors is not None and int(actors) < 1:
        raise InputError(f"--actors: expected an integer >= 1, found {actors}")
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"--batch: expected an integer >= 1, found {batch_size}")
    loader = as_loader(model_or_detector, head, device)
    src = open_plan_source(source, images_dir, save_images_dir)
    plan_kw = dict(preset=preset, conf=conf, iou=iou, max_det=max_det, batch_size=batch_size,
                   save_images_dir=save_images_dir, resume=resume, agnostic_nms=agnostic_nms)
    t_load = time.perf_counter()
    if engine == "ray":
        from detseg.pipeline.ray_engine import RayEngine

        if loader is None:
            raise InputError(
                "--engine ray: each Ray actor loads its own detector: pass a model path (or a "
                "DetectorLoader), not a loaded detector"
            )
        if save_images_dir is not None:
            raise InputError("--save-images: not available with --engine ray (the images are "
                             "read on the cluster's nodes); use the local engine")
        runner: Any = RayEngine(loader, address=ray_address, actors=actors, device=device)
        runner.start()  # a wrong address fails here, before any file is touched
        try:
            probe = runner.describe()  # the model's metadata, read on the driver's CPU
            plan = make_plan(loader, probe, src, out, **plan_kw)
        except BaseException:
            runner.stop()
            raise
        n_workers = 0
    else:
        from detseg.pipeline.local_engine import LocalEngine

        probe, n_workers = _load_local(model_or_detector, loader, threads, workers)
        runner = LocalEngine(probe, n_workers)
        plan = make_plan(model_or_detector if loader is None else loader, probe, src, out,
                         **plan_kw)
    load_s = time.perf_counter() - t_load
    return execute(plan, runner, progress=progress, load_s=load_s, workers=n_workers,
                   providers=list(probe.providers or []) if engine == "local" else None)


def _load_local(model: Any, loader: DetectorLoader | None, threads: int | None,
                workers: int | None) -> tuple[BatchDetector, int]:
    """The local engine's detector (loaded and warmed up here unless given) and its number of
    inference threads: see ``workers`` in `run_predict`."""
    cores = os.cpu_count() or 1
    auto_workers = workers is None and threads is None and cores >= 2 and loader is not None
    if threads is None and (auto_workers or (workers or 1) > 1):
        threads = max(1, cores // (workers or 2))
    detector = model if loader is None else loader.load(threads=threads)
    detector.warmup()  # lazy onnxruntime setup belongs to loading, not to images/s
    if workers is None:
        on_cpu = list(detector.providers or ["CPUExecutionProvider"])[0] == "CPUExecutionProvider"
        workers = 2 if auto_workers and on_cpu else 1
    return detector, int(workers)


def execute(plan: PredictPlan, engine: Any, *, progress: bool = True, load_s: float = 0.0,
            workers: int = 1, providers: list[str] | None = None) -> PredictSummary:
    """Run ``plan`` with ``engine`` (anything with ``run(plan, recorder)``), then write the
    results file from the journal and remove the journal.

    The journal is closed (kept on disk) on any error or Ctrl-C, so the same command resumes.
    """
    recorder = Recorder(plan, progress=progress)
    journal = plan.journal
    t0 = time.perf_counter()
    try:
        try:
            info = engine.run(plan, recorder) or {}
        finally:
            elapsed = time.perf_counter() - t0
            recorder.close()
        n = write_final(plan)
    except KeyboardInterrupt:
        journal.close()
        recorder.warn(f"interrupted: {len(journal)} finished images are kept in {journal.path}; "
                      "rerun the same command to resume")
        raise
    except BaseException:
        journal.close()
        raise
    journal.remove()
    start_s = float(info.get("start_s", 0.0))  # connecting to / starting Ray: not images/s
    return PredictSummary(
        out=plan.out, total=len(plan.source.items), done=recorder.done, skipped=plan.skipped,
        failed=recorder.failed_items, detections=n,
        providers=providers if providers is not None else list(info.get("providers", [])),
        batch_size=plan.batch_size, elapsed_s=elapsed - start_s, load_s=load_s + start_s,
        settings=plan.settings,
        workers=int(info.get("actors", workers)), engine=getattr(engine, "name", "local"),
    )


def write_final(plan: PredictPlan) -> int:
    """Write the results file from the journal, in source order, one image at a time.

    Raises:
        OutputError: the file cannot be written (disk full...); the journal is untouched.
    """
    keys = (it.key for it in plan.source.items)
    records = (r for _, recs in plan.journal.iter_records(keys) for r in recs)
    try:
        return write_results(plan.out, records)
    except OSError as exc:
        raise OutputError(
            f"{plan.out}: cannot write the results file ({exc.strerror or exc}); all "
            f"{len(plan.journal)} finished images are kept in {plan.journal.path}: free space "
            "and rerun the same command (it resumes and only writes the results)"
        ) from None
