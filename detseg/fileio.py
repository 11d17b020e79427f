"""Files the way the user's shell would create them.

`tempfile.mkstemp` creates files with mode 0600 whatever the umask, and an atomic write
(temporary file, then rename) keeps that mode: results and reports then became unreadable to
the user's group, unlike every other file the same command wrote. `follow_umask` gives the
temporary file the mode a plain ``open(path, "w")`` would have given it.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _lock:  # os.umask can only be read by setting it; keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def follow_umask(fd_or_path: int | str | os.PathLike) -> None:
    """Give a new file mode 0666 minus the umask, as ``open(path, "w")`` would."""
    mode = 0o666 & ~current_umask()
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)
