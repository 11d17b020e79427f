"""detseg: export detectors and segmenters to ONNX, run them fast, measure them exactly."""

from detseg.detections import Detections
from detseg.errors import DetsegError, InputError, ModelError

__version__ = "0.1.0"

__all__ = ["Detections", "DetsegError", "InputError", "ModelError", "__version__"]
