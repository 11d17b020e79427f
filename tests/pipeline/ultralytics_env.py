"""Import ultralytics for reference-answer tests without letting it touch the network or pip.

Ultralytics reads these variables at import time: it must never pip-install anything
(``YOLO_AUTOINSTALL``), never phone home (``YOLO_OFFLINE``), and keep its settings file in a
temporary folder instead of the user's config directory.
"""

from __future__ import annotations

import os
import tempfile

import pytest


def import_ultralytics():
    """The ultralytics module, or skip the test when it is not installed (no export extra)."""
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    if "YOLO_CONFIG_DIR" not in os.environ:  # one folder per process, not one per call
        os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="detseg-yolo-cfg-")
    return pytest.importorskip(
        "ultralytics", reason="ultralytics (the export extra) is not installed"
    )
