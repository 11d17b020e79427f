"""The resume journal of a batch run: one JSON line per finished image, flushed as it is written.

Layout of ``<out>.partial.jsonl``::

    {"detseg_journal": 1, "settings": {...}}          # header: what produced the records
    {"key": 139, "records": [{...}, {...}]}            # one line per finished image
    {"key": "sub/a.jpg", "records": []}

A line is written with a single ``write`` and flushed, so a crash (kill -9, Ctrl-C, power
cut) leaves at worst a torn *last* line; `Journal.open` drops it (truncating the file to the
last complete line) and that image is simply run again. A key that appears twice keeps its
last line, so nothing is ever duplicated. The header's settings must match the new run's:
records made with other thresholds or another model are never mixed into one results file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detseg.errors import InputError

VERSION = 1


def journal_path_for(out: str | Path) -> Path:
    """Where the journal of results file ``out`` lives: ``<out>.partial.jsonl`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial.jsonl")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n"


def _describe_diff(old: Mapping, new: Mapping) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: journal {old.get(k)!r:.80}, this run {new.get(k)!r:.80}"
             for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs)


class Journal:
    """Append-only record of finished images; see the module docstring for the format."""

    def __init__(self, path: Path, settings: dict, done: dict[int | str, list[dict]]):
        self.path = path
        self.settings = settings
        #: key -> COCO records of every image already finished (from earlier runs and this one)
        self.done = done
        self._file = None

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, settings: Mapping[str, Any], resume: bool = True) -> Journal:
        """Open (or start) the journal at ``path`` for a run with ``settings``.

        With ``resume`` an existing journal is read and its finished images kept; without it
        any existing journal is discarded.

        Raises:
            InputError: the journal holds a corrupt line other than a torn last one, was written
                with different settings, or another run is writing it right now.
        """
        path = Path(path)
        settings = json.loads(json.dumps(dict(settings)))  # JSON-normalised, comparable
        journal = cls(path, settings, {})
        path.parent.mkdir(parents=True, exist_ok=True)
        journal._file = path.open("ab")
        try:
            journal._lock_file()
            if resume and path.stat().st_size > 0:
                journal._load()
            else:
                journal._file.truncate(0)
                journal._file.write(_dumps({"detseg_journal": VERSION, "settings": settings}))
                journal._file.flush()
        except BaseException:
            journal._file.close()
            journal._file = None
            raise
        return journal

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # A file that ends without a newline was cut inside its last line: drop that part.
        complete, tail = lines[:-1], lines[-1]
        good_bytes = len(data) - len(tail)
        parsed: list[Any] = []
        for i, raw in enumerate(complete):
            try:
                parsed.append(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError):
                if i == len(complete) - 1 and not tail:
                    good_bytes -= len(raw) + 1  # torn last line that still got its newline
                    break
                raise InputError(
                    f"{self.path}: line {i + 1}: corrupt resume journal line (not JSON); delete "
                    "the file or run with --no-resume to start over"
                ) from None
        if not parsed:  # the header itself was torn: nothing was finished yet
            self._file.truncate(0)
            self._file.write(_dumps({"detseg_journal": VERSION, "settings": self.settings}))
            self._file.flush()
            return
        header = parsed[0]
        if not isinstance(header, dict) or header.get("detseg_journal") != VERSION:
            raise InputError(
                f"{self.path}: line 1: expected a detseg journal header "
                f'{{"detseg_journal": {VERSION}, ...}}, found {str(header):.80}; delete the file '
                "or run with --no-resume"
            )
        old = header.get("settings", {})
        if old != self.settings:
            raise InputError(
                f"{self.path}: this unfinished run used other settings ({_describe_diff(old, self.settings)}); "
                "rerun with the same settings to resume it, or pass --no-resume to start over"
            )
        for i, entry in enumerate(parsed[1:], start=2):
            if not (isinstance(entry, dict) and "key" in entry
                    and isinstance(entry.get("records"), list)):
                raise InputError(
                    f"{self.path}: line {i}: expected {{\"key\": ..., \"records\": [...]}}, "
                    f"found {str(entry):.80}; delete the file or run with --no-resume"
                )
            self.done[entry["key"]] = entry["records"]
        if good_bytes != len(data):
            self._file.truncate(good_bytes)

    # ---- locking (one writer at a time) ---------------------------------------------------
    def _lock_file(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; a second writer is not detected
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                f"{self.path}: another detseg run is writing this journal right now; wait for "
                "it or choose another --out"
            ) from None

    # ---- writing --------------------------------------------------------------------------
    def append(self, key: int | str, records: list[dict]) -> None:
        """Record one finished image (one line, one write, flushed)."""
        if self._file is None:
            raise RuntimeError("Journal.append after close(); open a new Journal")
        self._file.write(_dumps({"key": key, "records": records}))
        self._file.flush()
        self.done[key] = records

    def close(self) -> None:
        """Flush to disk and release the journal (it stays on disk for a later resume)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()  # also releases the lock
            self._file = None

    def remove(self) -> None:
        """Delete the journal (after the final results file has been written) and close it."""
        self.path.unlink(missing_ok=True)  # while still locked: no other run can pick it up
        self.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
