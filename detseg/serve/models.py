"""The models the demo serves: loaded once, shared by every session, never holding user data.

`ModelHub` maps the names shown in the model dropdown to detector specs (the embedded default,
a registry name, or a local ONNX file) and loads each detector on first use. The SAM predictor
is shared without a lock: each session keeps its own image embedding (``embed``) and passes it
to ``predict(embedding=...)``, and onnxruntime sessions may run from several threads at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detseg.errors import DetsegError, ModelError
from detseg.weights.onnx_models import BUILTIN, detector_onnx, exported_onnx

# Image embeddings kept by the shared SAM predictor: one per recently used image across all
# sessions, so several users can alternate without re-running the encoder.
SAM_CACHE_SIZE = 16


@dataclass(frozen=True)
class DetectorSpec:
    """What to load for one dropdown entry.

    Attributes:
        name: the label shown to the user.
        model: what `Detector.load` gets: a local ONNX path or a registry name. None means
            the embedded default (`detseg.weights.builtin.default_detector`).
        head: decoder head for ONNX files without detseg metadata (e.g. ``"yolox"``).
    """

    name: str
    model: str | None = None
    head: str | None = None


def detector_specs(models: Sequence[str], head: str | None = None) -> list[DetectorSpec]:
    """Dropdown entries for the ``--model`` values given on the command line.

    No value gives the embedded default only. A value that is an existing file is shown by
    its file name; anything else is a registry name (``"builtin"`` is the embedded default).
    """
    if not models:
        return [DetectorSpec(BUILTIN)]
    specs: list[DetectorSpec] = []
    for value in models:
        if value == BUILTIN:
            spec = DetectorSpec(BUILTIN)
        elif Path(value).is_file():
            spec = DetectorSpec(Path(value).name, str(Path(value).resolve()), head)
        else:
            spec = DetectorSpec(value, value, head)
        if spec.name not in {s.name for s in specs}:
            specs.append(spec)
    return specs


def _is_builtin_sam(paths: tuple[Path, Path]) -> bool:
    """Whether ``paths`` are the embedded SAM's files (also when given explicitly)."""
    try:
        from detseg.weights.builtin import default_sam

        return Path(paths[0]).resolve() == Path(default_sam()[0]).resolve()
    except (ImportError, DetsegError, OSError):
        return False


class ModelHub:
    """Detectors by dropdown name, and one SAM predictor, loaded lazily and then reused.

    SAM comes from ``sam_paths`` (encoder, decoder ONNX), else ``sam_name`` (a registry name
    or .pth checkpoint, exported once), else the embedded default.
    ``load_detector(spec)`` and ``load_sam()`` are injectable so that tests and benchmarks can
    use other models; by default they call `detseg.pipeline.detector.Detector.load` and
    `detseg.pipeline.sam.SamPredictor.load`.
    """

    def __init__(
        self,
        specs: Sequence[DetectorSpec],
        sam_paths: tuple[Path, Path] | None = None,
        sam_name: str | None = None,
        device: str = "auto",
        load_detector: Callable[[DetectorSpec], Any] | None = None,
        load_sam: Callable[[], Any] | None = None,
    ) -> None:
        if not specs:
            raise ModelError("ModelHub: expected at least one detector, found none")
        self.specs = {s.name: s for s in specs}
        self.device = device
        self._sam_paths = sam_paths
        self._sam_name = sam_name
        self._load_detector = load_detector or self._default_load_detector
        self._load_sam = load_sam or self._default_load_sam
        self._detectors: dict[str, Any] = {}
        self._detector_errors: dict[str, str] = {}
        self._sam: Any = None
        self._sam_error: str | None = None
        self._load_lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    @property
    def default_name(self) -> str:
        return next(iter(self.specs))

    def detector(self, name: str) -> Any:
        """The loaded detector for a dropdown ``name``; `ModelError` says why when it cannot load."""
        if name not in self.specs:
            raise ModelError(
                f"model {name!r}: not offered by this server; expected one of {self.names}"
            )
        with self._load_lock:
            if name in self._detectors:
                return self._detectors[name]
            if name in self._detector_errors:
                raise ModelError(self._detector_errors[name])
            try:
                det = self._load_detector(self.specs[name])
            except (DetsegError, ImportError) as exc:
                self._detector_errors[name] = f"model {name!r} could not be loaded: {exc}"
                raise ModelError(self._detector_errors[name]) from None
            self._detectors[name] = det
            return det

    def sam(self) -> Any:
        """The SAM predictor; `ModelError` says why when it cannot load."""
        with self._load_lock:
            if self._sam is not None:
                return self._sam
            if self._sam_error is not None:
                raise ModelError(self._sam_error)
            try:
                self._sam = self._load_sam()
            except (DetsegError, ImportError) as exc:
                self._sam_error = f"Segment Anything is not available: {exc}"
                raise ModelError(self._sam_error) from None
            return self._sam

    def sam_status(self) -> str | None:
        """None when SAM loads, else the reason it does not (for the UI)."""
        try:
            self.sam()
        except ModelError as exc:
            return str(exc)
        return None

    # ---- what each model knows (a line under each model picker) ---------------------
    def describe_detector(self, name: str) -> str:
        """One Markdown line: the classes ``name`` detects, and for the embedded model that it
        was trained on synthetic shapes only; or why it cannot load."""
        try:
            det = self.detector(name)
        except ModelError as exc:
            return f"**Not available:** {exc}"
        names = getattr(getattr(det, "meta", None), "names", None) or {}
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        names = [str(n) for n in names]
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        knows = f"Knows {len(names)} classes: {shown}." if names else "Its classes are not named in the file."
        if self.specs[name].model is None:
            return ("Embedded YOLOv8n-seg, **trained on synthetic shapes only**: it finds the "
                    f"shapes of the samples, not objects in photos. {knows}")
        if len(names) == 80 and names[:1] == ["person"]:
            knows = f"Trained on COCO's 80 everyday classes: {shown}."
        return knows

    def describe_sam(self) -> str:
        """One Markdown line on the Segment Anything model in use."""
        note = self.sam_status()
        if note is not None:
            return f"**Not available:** {note}"
        if self._sam_name is None and (self._sam_paths is None or _is_builtin_sam(self._sam_paths)):
            return ("Embedded small SAM (256 px), **trained on synthetic shapes only**: good on "
                    "the shapes samples, rough blobs on photos. Any object, no classes.")
        name = self._sam_name or Path(self._sam_paths[0]).name
        return f"Segment Anything `{name}`: segments any object you point at; it has no classes."

    # ---- default loaders ----------------------------------------------------------------
    def _default_load_detector(self, spec: DetectorSpec) -> Any:
        from detseg.pipeline.detector import Detector

        model = str(detector_onnx(spec.model))
        return Detector.load(model, head=spec.head, device=self.device)

    def _default_load_sam(self) -> Any:
        from detseg.pipeline.sam import SamPredictor

        if self._sam_name is not None:
            encoder, decoder = exported_onnx(self._sam_name, "sam")
        elif self._sam_paths is None:
            try:
                from detseg.weights.builtin import default_sam
            except ImportError as exc:
                raise ModelError(f"the embedded default SAM is missing ({exc})") from None
            encoder, decoder = default_sam()
        else:
            encoder, decoder = self._sam_paths
        return SamPredictor.load(encoder, decoder, device=self.device, cache_size=SAM_CACHE_SIZE)
