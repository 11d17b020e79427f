"""The download cache: verified, resumable, atomic fetches of model files.

- Cache folder: ``$DETSEG_CACHE`` if set, else the platform's user cache folder
  (``pooch.os_cache("detseg")``: ``~/.cache/detseg`` on Linux, ``~/Library/Caches/detseg`` on
  macOS, ``%LOCALAPPDATA%\\detseg\\detseg\\Cache`` on Windows).
- Offline: with ``DETSEG_OFFLINE=1`` nothing is fetched; a file missing from the cache is a
  `DownloadError` that names the URL and the path where to place the file by hand.
- Transfer: pooch's ``HTTPDownloader`` streams the bytes (with its progress bar) into
  ``<file>.part``. pooch on its own cannot resume: ``pooch.retrieve`` streams into a fresh
  temporary file that it deletes on any failure, and ``HTTPDownloader`` sends no ``Range``
  header. So this module keeps the ``.part`` file across failures and asks pooch for the
  missing bytes only (``Range: bytes=N-``, passed through to ``requests``), retrying a few
  times and resuming again on the next run.
- Atomic: the ``.part`` file is checked (size, every known checksum) and only then renamed
  to its final name; a file that fails is removed and the error says what was expected and
  found. A file already in the cache is checked before use.

Two processes fetching the same file at once would append to the same ``.part`` file; the
checksum (where one is known) catches the result, and the file is removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detseg.errors import DownloadError
from detseg.weights.registry import ModelSource, ModelSpec

ENV_CACHE = "DETSEG_CACHE"
ENV_OFFLINE = "DETSEG_OFFLINE"
_TRUE = {"1", "true", "yes", "on"}
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The folder where downloaded models live (see the module docstring)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("detseg"))


def is_offline() -> bool:
    """True when ``DETSEG_OFFLINE`` is set to 1/true/yes/on."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in _TRUE


def file_digests(path: Path, algorithms: Sequence[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for each algorithm (``sha256``, ``md5``...), in one read."""
    hashers = {algo: hashlib.new(algo) for algo in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {algo: h.hexdigest() for algo, h in hashers.items()}


def sha256_of(path: Path) -> str:
    """The SHA-256 hex digest of ``path``."""
    return file_digests(path, ("sha256",))["sha256"]


def verify_file(path: Path, checksums: Sequence[str] = (), size: int | None = None) -> dict[str, str]:
    """Check ``path`` against its size and ``"algo:hex"`` checksums (a short hex is a prefix).

    Returns the computed digests. Raises `DownloadError` naming the file, the check, the
    expected and the found value. Does not remove the file.
    """
    found_size = path.stat().st_size
    if size is not None and found_size != size:
        raise DownloadError(f"{path}: size mismatch: expected {size} bytes, found {found_size}")
    expected = [_parse_checksum(c) for c in checksums]
    digests = file_digests(path, [algo for algo, _ in expected]) if expected else {}
    for algo, want in expected:
        got = digests[algo]
        if not got.startswith(want):
            what = "prefix " if len(want) < len(got) else ""
            raise DownloadError(f"{path}: {algo} checksum mismatch: expected {what}{want}, found {got}")
    return digests


def download(
    url: str,
    filename: str,
    *,
    checksums: Sequence[str] = (),
    size: int | None = None,
    cache: Path | None = None,
    progress: bool = True,
    retries: int = 3,
    retry_wait: float = 1.0,
    timeout: float = 30.0,
) -> Path:
    """Return the verified local copy of ``url`` in the cache, fetching it if needed.

    Args:
        url: where the file is published.
        filename: its name in the cache folder.
        checksums: ``"algo:hex"`` strings the file must match (a short hex is a prefix).
        size: its size in bytes, if known.
        cache: the cache folder (default `cache_dir()`).
        progress: show a progress bar on stderr.
        retries: further attempts after a failed transfer; each resumes where the last stopped.
        retry_wait: seconds before the first retry (doubled each time).
        timeout: seconds without data before a transfer counts as failed.

    Raises:
        DownloadError: offline with no cached copy, server unreachable or refusing, transfer
            interrupted more than ``retries`` times (the partial file is kept for the next run),
            or a checksum/size mismatch (the bad file is removed). Messages name the URL and
            the path where the file can be placed by hand.
    """
    target = (cache if cache is not None else cache_dir()) / filename
    hint = f"download {url} by hand and place it at {target} (set {ENV_CACHE} to use another folder)"
    if target.is_file():
        try:
            verify_file(target, checksums, size)
            return target
        except DownloadError as exc:
            target.unlink(missing_ok=True)
            if is_offline():
                raise DownloadError(f"{exc}; the file was removed. {ENV_OFFLINE}=1: {hint}") from None
            log.warning("%s; removed it, downloading again", exc)
    if is_offline():
        raise DownloadError(f"{ENV_OFFLINE}=1 and {filename} is not in the cache: {hint}")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    _fetch_with_resume(url, part, hint, progress, retries, retry_wait, timeout)
    try:
        verify_file(part, checksums, size)
    except DownloadError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{exc} (downloaded from {url}); the file was removed") from None
    if not checksums:
        log.warning("%s has no published checksum; downloaded file sha256:%s", url, sha256_of(part))
    os.replace(part, target)
    return target


def fetch(spec: ModelSpec, **kwargs: Any) -> Path:
    """`download` a registry entry (its URL, file name, checksums and size)."""
    return download(spec.url, spec.filename, checksums=spec.checksums, size=spec.size, **kwargs)


def local_file(source: ModelSource, **kwargs: Any) -> Path:
    """The local file behind a resolved model: downloaded for a registry name, else the path.

    A local file that has the name of a registry file (``sam_vit_b_01ec64.pth``) is checked
    against that entry's checksums; a mismatch is a `DownloadError` (the file is left alone).
    """
    if source.kind == "registry":
        return fetch(source.spec, **kwargs)
    if source.path is None:
        raise DownloadError(f"{source.name}: not a file (an architecture name has no weights file)")
    if source.spec is not None and source.spec.checksums:
        verify_file(source.path, source.spec.checksums, source.spec.size)
    return source.path


def _fetch_with_resume(
    url: str, part: Path, hint: str, progress: bool, retries: int, retry_wait: float, timeout: float
) -> None:
    import requests

    for attempt in range(retries + 1):
        try:
            _transfer(url, part, progress, timeout)
            return
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise DownloadError(f"could not download {url}: HTTP {status}; {hint}") from None
            error = f"HTTP {status}"
        except (requests.RequestException, _RangeIgnored) as exc:
            error = _short(exc)
        have = part.stat().st_size if part.exists() else 0
        if attempt < retries:
            action = f"resuming at byte {have}" if have else "retrying"
            log.warning("download of %s failed (%s); %s", url, error, action)
            time.sleep(retry_wait * 2**attempt)
    kept = f"; {have} bytes are kept in {part} and the next run resumes from there" if have else ""
    raise DownloadError(f"could not download {url} ({error}){kept}. Or {hint}")


class _RangeIgnored(Exception):
    """The server answered a Range request with the whole file: start again from byte 0."""


def _transfer(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the missing bytes of ``url`` to ``part`` with pooch's HTTPDownloader."""
    import pooch
    import requests

    have = part.stat().st_size if part.exists() else 0
    if have:
        head = requests.head(url, allow_redirects=True, timeout=timeout)
        total = int(head.headers.get("Content-Length", -1)) if head.ok else -1
        ranges = head.ok and head.headers.get("Accept-Ranges", "").lower() == "bytes"
        if not ranges or total < 0 or have > total:  # cannot resume safely: start again
            part.unlink()
            have = 0
        elif have == total:
            return  # complete: a previous run stopped between transfer and verification
    headers = {"Range": f"bytes={have}-"} if have else {}
    downloader = pooch.HTTPDownloader(
        progressbar=progress, chunk_size=64 * 1024, headers=headers, timeout=timeout
    )
    with open(part, "ab") as f:
        downloader(url, f, None)
    if have and part.stat().st_size > total:
        part.unlink()
        raise _RangeIgnored(f"{url} ignored the Range request")


def _parse_checksum(text: str) -> tuple[str, str]:
    algo, sep, value = text.partition(":")
    algo = algo.strip().lower()
    if not sep or algo not in hashlib.algorithms_available or not value:
        raise DownloadError(f"checksum {text!r}: expected 'algo:hex' such as 'sha256:ab12...'")
    return algo, value.strip().lower()


def _short(exc: BaseException) -> str:
    """The innermost useful message of a requests/urllib3 error (no pool/retry wrappers)."""
    while isinstance(exc.args[0] if exc.args else None, BaseException):
        exc = exc.args[0]
    exc = getattr(exc, "reason", None) if isinstance(getattr(exc, "reason", None), BaseException) else exc
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."
