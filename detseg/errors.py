"""Exception types. Every message names the file or field, what was expected and what was found.

The CLI prints a `DetsegError` as one line and exits with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class DetsegError(Exception):
    """Base class of every error detseg raises on purpose."""


class InputError(DetsegError, ValueError):
    """Bad user input: an image, a dataset, a results file, an argument."""


class ModelError(DetsegError):
    """A model file that cannot be loaded, or whose metadata or outputs are not understood."""


class DownloadError(DetsegError):
    """A model file that could not be fetched, or failed its checksum."""


class OutputError(DetsegError):
    """A file detseg must write could not be written (disk full, permissions)."""


class EngineError(DetsegError):
    """A distributed engine that is not installed, cannot be reached, or failed."""
