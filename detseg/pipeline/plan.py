"""A batch job as data (`PredictPlan`), what an engine needs of a detector, and the steps every
engine shares.

A ``detseg predict`` run is first a plan: the images of the source still to run, the
thresholds, the model-class -> dataset-category mapping, the open resume journal (and so the
set of finished images) and the output path. An engine then executes it — the threaded local
engine (`detseg.pipeline.local_engine`) or Ray Data actors (`detseg.pipeline.ray_engine`) —
handing every finished or failed image to one `Recorder` on the driver, which writes the
journal. The final results file is written from the journal (`detseg.pipeline.batch`), so the
engines share the journal, the resume rule and the writer, and a run stopped under one engine
resumes under the other.

What an engine needs of a detector is `BatchDetector`; `detseg.pipeline.detector.Detector`
is one. The Ray engine builds one detector per actor through a `DetectorLoader` (picklable),
such as `OnnxDetectorSpec`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from detseg.detections import Detections
from detseg.errors import DetsegError, InputError
from detseg.pipeline.journal import Journal, journal_path_for
from detseg.pipeline.settings import category_map, resolve_settings
from detseg.pipeline.sources import Source, SourceItem, open_source

DEFAULT_BATCH_SIZE = 8


# ---- what an engine needs of a detector -----------------------------------------------------
class DetectorMeta(Protocol):
    """The model facts the runner reads: class names, head family, task."""

    names: Mapping[int, str]
    family: str | None
    task: str


@runtime_checkable
class BatchDetector(Protocol):
    """What the batch runner calls on a detector, and nothing more.

    The calls happen in this order for each batch (possibly from different threads, one
    batch at a time per call; ``infer`` may run for several batches at once)::

        key = input_size_for((h, w))            # images of one key are batched together
        tensor, transforms = preprocess(images) # DetsegError: an image the model cannot take
        outputs = infer(tensor)
        dets = postprocess(outputs, transforms, conf=..., iou=..., max_det=...)

    ``warmup()`` is called once after loading; ``providers`` and ``batch_size`` are read once.
    ``postprocess`` receives the plan's settings as keyword arguments (``conf``, ``iou``,
    ``max_det``, and ``agnostic_nms=True`` when asked; a new setting of `resolve_settings`
    reaches it the same way) and returns
    one `Detections` per image, boxes xyxy in original-image pixels.
    """

    meta: DetectorMeta
    batch_size: int

    @property
    def providers(self) -> list[str]: ...

    def input_size_for(self, image_size: tuple[int, int]) -> Hashable: ...

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[Any, Sequence[Any]]: ...

    def infer(self, tensor: Any) -> Any: ...

    def postprocess(self, outputs: Any, transforms: Sequence[Any], conf: float, iou: float,
                    max_det: int) -> list[Detections]: ...

    def warmup(self) -> None: ...


@runtime_checkable
class DetectorLoader(Protocol):
    """Builds a `BatchDetector`; picklable, so that each Ray actor builds its own."""

    def load(self, threads: int | None = None, device: str | None = None) -> BatchDetector:
        """``threads``: onnxruntime intra-op threads; ``device``: overrides the loader's."""
        ...


@dataclass(frozen=True)
class OnnxDetectorSpec:
    """An ONNX detector by path: what `Detector.load` needs, minus the thread count."""

    model: Path
    head: str | None = None
    device: str = "auto"

    def load(self, threads: int | None = None, device: str | None = None) -> BatchDetector:
        from detseg.pipeline.detector import Detector  # onnxruntime only when a model loads

        return Detector.load(self.model, head=self.head, device=device or self.device,
                             threads=threads)


def as_loader(model: Any, head: str | None, device: str) -> DetectorLoader | None:
    """A loader for a model path or a `DetectorLoader`; None for an already loaded detector.

    Raises:
        InputError: ``model`` is none of a path, a `DetectorLoader` or a `BatchDetector`.
    """
    if isinstance(model, (str, Path)):
        return OnnxDetectorSpec(Path(model), head, device)
    # A loaded detector first: `Detector` also has a `load` (its classmethod), so it would
    # pass for a `DetectorLoader` too.
    if isinstance(model, BatchDetector):
        return None
    if isinstance(model, DetectorLoader):
        return model
    missing = [n for n in ("meta", "batch_size", "providers", "input_size_for", "preprocess",
                           "infer", "postprocess", "warmup") if not hasattr(model, n)]
    raise InputError(
        f"model: expected a path to an ONNX file, a Detector or a DetectorLoader, found "
        f"{type(model).__name__} without {', '.join(missing)}"
    )


def model_identity(model: Any, detector: BatchDetector) -> dict:
    """What the resume journal remembers about the model, to refuse mixing two models."""
    ident: dict[str, Any] = {"classes": len(detector.meta.names or {}),
                             "family": _family(detector)}
    path = None
    if isinstance(model, (str, Path)):
        path = Path(model)
    elif isinstance(model, OnnxDetectorSpec):
        path = model.model
    else:
        from detseg.pipeline.detector import Detector

        if isinstance(detector, Detector):
            path = Path(detector.session.path)
    if path is not None and path.is_file():
        ident.update(file=path.name, bytes=path.stat().st_size)
    return ident


def _family(detector: BatchDetector) -> str | None:
    family = detector.meta.family
    return family.lower() if isinstance(family, str) else None


# ---- the plan -------------------------------------------------------------------------------
@dataclass
class PredictPlan:
    """Everything a run needs except the engine: see the module docstring."""

    source: Source
    todo: list[SourceItem]  #: images of the source not yet in the journal, in source order
    out: Path
    journal: Journal
    settings: dict  #: postprocess keyword arguments (conf, iou, max_det)
    categories: dict[int, int] | None  #: model class id -> dataset category id
    names: dict[int, str]
    batch_size: int
    save_images_dir: Path | None = None

    @property
    def skipped(self) -> int:
        """Images of the source already finished (in the journal) when the run started."""
        return len(self.source.items) - len(self.todo)

    def encode(self, item: SourceItem, det: Detections) -> list[dict]:
        """COCO results records of one image (the one rounding and id rule: `to_coco`)."""
        return det.to_coco(item.key, category_ids=self.categories)


def check_out_path(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise InputError(f"--out {out}: expected a .json results file name")
    return out


def open_plan_source(source: str | Path | Source, images_dir: str | Path | None,
                     save_images_dir: str | Path | None) -> Source:
    """The images of SOURCE; annotated images saved inside SOURCE are not new inputs."""
    src = source if isinstance(source, Source) else open_source(source, images_dir)
    if save_images_dir is not None:
        drawn = Path(save_images_dir).resolve()
        src = replace(src, items=[it for it in src.items
                                  if not it.path.resolve().is_relative_to(drawn)])
    return src


def make_plan(
    model: Any,
    detector: BatchDetector,
    src: Source,
    out: Path,
    *,
    preset: str | None = None,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    batch_size: int | None = None,
    save_images_dir: str | Path | None = None,
    resume: bool = True,
    agnostic_nms: bool = False,
) -> PredictPlan:
    """Resolve settings and categories against ``detector`` and open the journal.

    ``detector`` is only asked for its metadata and batch size (the Ray engine passes one
    loaded on the driver's CPU for this). The journal header holds the settings, the model's
    identity and the category mapping: a resume under either engine needs all three equal.
    """
    names = dict(detector.meta.names or {})
    settings = resolve_settings(preset, _family(detector), conf, iou, max_det,
                                agnostic_nms=agnostic_nms)
    cats = category_map(names, src.dataset)
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"--batch: expected an integer >= 1, found {batch_size}")
    bs = int(batch_size or detector.batch_size or DEFAULT_BATCH_SIZE)
    journal = Journal.open(
        journal_path_for(out),
        {**settings, "model": model_identity(model, detector),
         "categories": sorted(cats.items()) if cats else None},
        resume=resume,
    )
    todo = [it for it in src.items if it.key not in journal]
    return PredictPlan(src, todo, out, journal, settings, cats, names, bs,
                       Path(save_images_dir) if save_images_dir is not None else None)


# ---- steps every engine shares --------------------------------------------------------------
@dataclass
class Failure:
    """An image that could not be processed, and why."""

    path: Path
    reason: str


def read_item(path: str | Path) -> tuple[np.ndarray | None, str | None]:
    """Read one image with detseg's own `read_image`: ``(image, None)`` or ``(None, reason)``.

    The same reason text under every engine; a file that cannot be read never raises.
    """
    from detseg.data.images import read_image

    try:
        return read_image(path), None
    except DetsegError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one unreadable file must not end the run
        return None, f"cannot read ({type(exc).__name__}: {exc})"


def preprocess_apart(detector: BatchDetector, images: Sequence[np.ndarray]
                     ) -> tuple[Any, Sequence[Any], list[int], dict[int, str]]:
    """``detector.preprocess`` on images of one input size; one image the model cannot take
    must not cost the others, so on a `DetsegError` each is tried alone.

    Returns ``(tensor, transforms, kept, failed)``: ``kept`` the indices in the tensor,
    ``failed`` index -> reason. ``tensor`` is None when nothing is kept.
    """
    try:
        tensor, transforms = detector.preprocess(list(images))
        return tensor, transforms, list(range(len(images))), {}
    except DetsegError as exc:
        if len(images) == 1:
            return None, [], [], {0: str(exc)}
    kept, failed = [], {}
    for i, im in enumerate(images):
        try:
            detector.preprocess([im])
            kept.append(i)
        except DetsegError as exc:
            failed[i] = str(exc)
    if not kept:
        return None, [], [], failed
    tensor, transforms, sub_kept, sub_failed = preprocess_apart(detector, [images[i] for i in kept])
    failed.update({kept[j]: r for j, r in sub_failed.items()})
    return tensor, transforms, [kept[j] for j in sub_kept], failed


class Recorder:
    """The driver's side of a run: journals finished images, reports failed ones, shows
    progress. Engines call `record` and `fail` (each from one thread at a time; `fail` may
    come from another thread than `record`). An image reported twice (a Ray task retried
    after a worker died) is kept once."""

    def __init__(self, plan: PredictPlan, progress: bool = True,
                 warn: Callable[[str], None] | None = None):
        self.plan, self.journal = plan, plan.journal
        self.failed_items: list[Failure] = []
        self.done = 0
        self._failed_keys: set = set()  # (journaled keys are the journal's own index)
        self._lock = threading.Lock()
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=len(plan.source.items), initial=plan.skipped, unit="img",
                            desc="predict", file=sys.stderr, dynamic_ncols=True)
        self._warn = warn

    def warn(self, msg: str) -> None:
        if self._warn is not None:
            self._warn(msg)
        elif self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def record(self, item: SourceItem, records: bytes) -> bool:
        """Journal one finished image (records encoded by `journal.records_json`); False when
        it was already recorded in this run."""
        if item.key in self.journal:  # only this run's images are run: a repeat of this run
            return False
        self.journal.append_json(item.key, records)
        self.done += 1
        self._tick()
        return True

    def fail(self, item: SourceItem, reason: str) -> None:
        """Report one image that cannot be run (it is not journaled: a rerun tries it again)."""
        prefix = f"{item.path}: "
        reason = reason[len(prefix):] if reason.startswith(prefix) else reason
        with self._lock:
            if item.key in self._failed_keys:
                return
            self._failed_keys.add(item.key)
            self.failed_items.append(Failure(item.path, reason))
        self.warn(f"warning: skipped {item.path}: {reason}")
        self._tick()

    def _tick(self) -> None:
        if self.bar is not None:
            with self._lock:
                self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
