"""The parity report every export writes beside its model: ``<stem>_parity.json``.

A report is a JSON object with ``"passed": true|false`` first, then the checks that decided
it. Kept tiny on purpose: each exporter decides what it checks; this module only compares
arrays the same way everywhere and writes the file atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def array_diff(name: str, found: np.ndarray, reference: np.ndarray, rtol: float, atol: float) -> dict:
    """Compare one ONNX output with its PyTorch reference.

    Passes when ``max |found - reference| <= atol + rtol * max |reference|`` (a tolerance
    relative to the output's own scale: box coordinates are in pixels, scores in [0, 1]).
    """
    found = np.asarray(found, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if found.shape != reference.shape:
        return {"output": name, "shape": list(found.shape), "reference_shape": list(reference.shape),
                "passed": False}
    max_diff = float(np.abs(found - reference).max()) if found.size else 0.0
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    tolerance = atol + rtol * scale
    return {
        "output": name,
        "shape": list(found.shape),
        "max_abs_diff": max_diff,
        "max_abs_reference": scale,
        "tolerance": tolerance,
        "passed": bool(np.isfinite(max_diff) and max_diff <= tolerance),
    }


def write_report(path: Path, passed: bool, **fields: Any) -> dict:
    """Write ``{"passed": passed, **fields}`` to ``path`` (indented; atomic) and return it."""
    report = {"passed": bool(passed), **fields}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 0.0 when their shapes differ, 1.0 when both are empty."""
    if a.shape != b.shape:
        return 0.0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
