"""The resume journal of a batch run: one JSON line per finished image, written as it finishes.

Layout of ``<out>.partial.jsonl``::

    {"detseg_journal": 1, "settings": {...}}          # header: what produced the records
    {"key": 139, "records": [{...}, {...}]}            # one line per finished image
    {"key": "sub/a.jpg", "records": []}

A line goes to the file in one unbuffered ``write`` (looped only if the OS writes part of
it), so a crash (kill -9, Ctrl-C, power cut, disk full) leaves at worst a torn *last* line;
`Journal.open` drops it (truncating the file to the last complete line) and that image is
simply run again. A key that appears twice keeps its last line, so nothing is ever
duplicated. The header's settings must match the new run's: records made with other
thresholds or another model are never mixed into one results file.

Memory stays flat whatever the run's size: the journal keeps only where each finished
image's line starts in the file (``key -> (offset, length)``), never the records; the final
writer reads them back one image at a time (`Journal.iter_records`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from detseg.errors import InputError, OutputError

VERSION = 1
_os_write = os.write  # the one call that writes journal bytes (tests make it fail: disk full)


def journal_path_for(out: str | Path) -> Path:
    """Where the journal of results file ``out`` lives: ``<out>.partial.jsonl`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial.jsonl")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n"


def records_json(records: list[dict]) -> bytes:
    """The bytes a journal line holds for ``records`` (what `Journal.append_json` takes):
    lets a remote worker encode its results once, and the driver write them untouched."""
    return json.dumps(records, separators=(",", ":")).encode("utf-8")


def _describe_diff(old: Mapping, new: Mapping) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: journal {old.get(k)!r:.80}, this run {new.get(k)!r:.80}"
             for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs)


class Journal:
    """Append-only record of finished images; see the module docstring for the format."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.settings = settings
        #: key -> (byte offset, length) of the line of every finished image
        self._lines: dict[int | str, tuple[int, int]] = {}
        self._fd: int | None = None
        self._size = 0  # bytes of complete lines in the file

    # ---- what is finished -----------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._lines

    def __len__(self) -> int:
        return len(self._lines)

    @property
    def keys(self) -> set[int | str]:
        """Keys of the finished images (a copy)."""
        return set(self._lines)

    def records(self, key: int | str) -> list[dict]:
        """The COCO records of one finished image, read back from the file."""
        [(_, recs)] = self.iter_records([key])
        return recs

    def iter_records(self, keys: Iterable[int | str]) -> Iterator[tuple[int | str, list[dict]]]:
        """``(key, records)`` of each finished key in ``keys``, in that order, one line read at
        a time (unfinished keys are passed over)."""
        with self.path.open("rb") as f:
            for key in keys:
                where = self._lines.get(key)
                if where is None:
                    continue
                f.seek(where[0])
                yield key, json.loads(f.read(where[1]))["records"]

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, settings: Mapping[str, Any], resume: bool = True) -> Journal:
        """Open (or start) the journal at ``path`` for a run with ``settings``.

        With ``resume`` an existing journal is read and its finished images kept; without it
        any existing journal is discarded.

        Raises:
            InputError: the journal holds a corrupt line other than a torn last one, was written
                with different settings, or another run is writing it right now.
            OutputError: the journal cannot be written (disk full, permissions).
        """
        path = Path(path)
        settings = json.loads(json.dumps(dict(settings)))  # JSON-normalised, comparable
        journal = cls(path, settings)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            journal._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise journal._write_error(exc) from None
        try:
            journal._lock_file()
            if resume and os.fstat(journal._fd).st_size > 0:
                journal._load()
            else:
                journal._start()
        except BaseException:
            os.close(journal._fd)
            journal._fd = None
            raise
        return journal

    def _start(self) -> None:
        os.ftruncate(self._fd, 0)
        self._size = 0
        self._write(_dumps({"detseg_journal": VERSION, "settings": self.settings}))

    def _load(self) -> None:
        offset = 0
        header: Any = None
        with self.path.open("rb") as f:
            lineno = 0
            for raw in f:
                lineno += 1
                if not raw.endswith(b"\n"):  # cut inside its last line: drop that part
                    break
                try:
                    entry = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    if not f.read(1):  # torn last line that still got its newline
                        break
                    raise InputError(
                        f"{self.path}: line {lineno}: corrupt resume journal line (not JSON); "
                        "delete the file or run with --no-resume to start over"
                    ) from None
                if lineno == 1:
                    header = entry
                    self._check_header(header)
                elif not (isinstance(entry, dict) and "key" in entry
                          and isinstance(entry.get("records"), list)):
                    raise InputError(
                        f"{self.path}: line {lineno}: expected {{\"key\": ..., \"records\": [...]}}, "
                        f"found {str(entry):.80}; delete the file or run with --no-resume"
                    )
                else:
                    self._lines[entry["key"]] = (offset, len(raw) - 1)
                offset += len(raw)
        if header is None:  # the header itself was torn: nothing was finished yet
            self._start()
            return
        self._size = offset
        if os.fstat(self._fd).st_size != offset:
            os.ftruncate(self._fd, offset)

    def _check_header(self, header: Any) -> None:
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

    # ---- locking (one writer at a time) ---------------------------------------------------
    def _lock_file(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; a second writer is not detected
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                f"{self.path}: another detseg run is writing this journal right now; wait for "
                "it or choose another --out"
            ) from None

    # ---- writing --------------------------------------------------------------------------
    def append(self, key: int | str, records: list[dict]) -> None:
        """Record one finished image (one line, one write)."""
        self.append_json(key, records_json(records))

    def append_json(self, key: int | str, records: bytes) -> None:
        """Record one finished image whose records are already encoded by `records_json`."""
        if self._fd is None:
            raise RuntimeError("Journal.append after close(); open a new Journal")
        line = b'{"key":' + json.dumps(key).encode("utf-8") + b',"records":' + records + b"}\n"
        start = self._size
        self._write(line)
        self._lines[key] = (start, len(line) - 1)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[_os_write(self._fd, view):]
        except OSError as exc:
            raise self._write_error(exc) from None
        self._size += len(data)

    def _write_error(self, exc: OSError) -> OutputError:
        return OutputError(
            f"{self.path}: cannot write the resume journal ({exc.strerror or exc}); the "
            f"{len(self._lines)} images finished so far are kept in it: free space (or fix the "
            "folder's permissions) and rerun the same command to resume"
        )

    def close(self) -> None:
        """Sync to disk and release the journal (it stays on disk for a later resume).

        Never raises: a disk that refuses the sync has already refused (and reported) a write,
        and whatever complete lines reached the file are what a resume will find."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)  # also releases the lock
            self._fd = None

    def remove(self) -> None:
        """Delete the journal (after the final results file has been written) and close it."""
        self.path.unlink(missing_ok=True)  # while still locked: no other run can pick it up
        self.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
