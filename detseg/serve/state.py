"""Per-session state of the web demo, held in a ``gr.State`` (never in module globals).

One `Session` per browser tab or gradio_client connection: the image the user loaded, the last
detections, and the Segment Anything prompt history. Everything here is plain data; the
functions that change it live in `detseg.serve.handlers`.

Coordinates are pixels of the original image: x to the right, y down, boxes xyxy.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from detseg.detections import Detections

if TYPE_CHECKING:
    from detseg.pipeline.sam import SamEmbedding
    from detseg.pipeline.sam_auto import GeneratedMasks

# Undo history is capped so that one session cannot grow without bound; each step keeps a
# (256, 256) float32 low-res mask (256 KiB) when refining.
MAX_STEPS = 64


@dataclass(frozen=True)
class Prompt:
    """The prompts of one SAM call.

    Attributes:
        points: ((x, y), ...) click positions in pixels of the original image.
        labels: (label, ...) 1 for a positive click, 0 for a negative one.
        box: (x1, y1, x2, y2) in pixels, or None.
    """

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None

    def is_empty(self) -> bool:
        return not self.points and self.box is None

    def with_point(self, x: float, y: float, label: int) -> Prompt:
        return replace(self, points=self.points + ((float(x), float(y)),), labels=self.labels + (int(label),))

    def with_box(self, box: tuple[float, float, float, float]) -> Prompt:
        return replace(self, box=tuple(float(v) for v in box))


@dataclass
class SamStep:
    """One entry of the undo history: what was asked and which candidate was shown.

    Attributes:
        prompt: all prompts active after this step.
        multimask: whether SAM returned 3 candidates (True) or 1.
        mask_input: (1, 256, 256) float32 low-res logits fed back for refinement, or None.
        choice: index of the candidate mask shown.
    """

    prompt: Prompt
    multimask: bool
    mask_input: np.ndarray | None = None
    choice: int = 0


@dataclass
class SamResult:
    """The decoder output currently shown.

    Attributes:
        masks: (M, H, W) bool candidate masks at the original resolution.
        scores: (M,) float32 predicted IoU of each candidate.
        low_res_logits: (M, 256, 256) float32 logits, fed back when refining.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


@dataclass
class Session:
    """Everything one user has loaded or asked for.

    Attributes:
        session_id: random id naming this session's download files; set on first use
            (``gr.State`` deep-copies its initial value into every session).
        image: (H, W, 3) uint8 RGB, or None before the first upload.
        image_name: file name the user uploaded (used in downloads and COCO ``image_id``).
        image_key: sha1 of the pixels; identifies the image for caches and tests.
        embedding: the SAM image embedding of ``image`` (computed once at upload, then every
            click of this session runs only the prompt decoder on it), or None.
        detections: the last detector output on this image, or None.
        detector_name: the model that produced ``detections``.
        steps: SAM undo history, oldest first; the last step is the one shown.
        result: decoder output of the last step, or None when no prompt is active.
        pending_corner: first corner (x, y) of a box being drawn with two clicks.
        error: the message of the last action that failed (shown in the page's status
            lines until the next action), or "".
        error_area: where it failed: "image", "sam" or "detect".
        everything: the masks of "Segment everything" on this image, or None.
    """

    session_id: str = ""
    image: np.ndarray | None = None
    image_name: str = "image"
    image_key: str = ""
    embedding: SamEmbedding | None = field(default=None, repr=False)
    detections: Detections | None = None
    detector_name: str = ""
    steps: list[SamStep] = field(default_factory=list)
    result: SamResult | None = None
    pending_corner: tuple[float, float] | None = None
    error: str = ""
    error_area: str = ""
    everything: GeneratedMasks | None = field(default=None, repr=False)

    def ensure_id(self) -> str:
        if not self.session_id:
            self.session_id = uuid.uuid4().hex
        return self.session_id

    def set_image(self, image: np.ndarray, name: str) -> None:
        """Start over on a new (H, W, 3) uint8 RGB image: forget detections and prompts."""
        self.image = image
        self.image_name = name
        self.image_key = hashlib.sha1(np.ascontiguousarray(image).data).hexdigest()
        self.embedding = None
        self.detections = None
        self.detector_name = ""
        self.everything = None
        self.clear_prompts()

    def clear_image(self) -> None:
        """Forget the image, its embedding, detections and prompts (as before any upload)."""
        self.image = None
        self.image_name = "image"
        self.image_key = ""
        self.embedding = None
        self.detections = None
        self.detector_name = ""
        self.everything = None
        self.clear_prompts()

    def clear_prompts(self) -> None:
        self.steps = []
        self.result = None
        self.pending_corner = None

    @property
    def prompt(self) -> Prompt:
        """The prompts active now (empty before the first click)."""
        return self.steps[-1].prompt if self.steps else Prompt()

    def push(self, step: SamStep, result: SamResult) -> None:
        """Record a new step and its result, dropping the oldest beyond `MAX_STEPS`."""
        self.steps.append(step)
        del self.steps[:-MAX_STEPS]
        self.result = result
        self.pending_corner = None
