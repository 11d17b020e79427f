"""The download cache against a local HTTP server on 127.0.0.1 (Range supported)."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from pathlib import Path

import pytest

from detseg.errors import DownloadError
from detseg.weights import download as dl
from detseg.weights.registry import ModelSource, ModelSpec

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every byte value
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Server(http.server.ThreadingHTTPServer):
    """Serves PAYLOAD at /model.bin. ``cut_first`` GETs stop halfway and drop the connection."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cut_first = 0
        self.honour_range = True
        self.head_status = 200
        self.gets: list[str | None] = []  # the Range header of every GET


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        if self.path != "/model.bin" or self.server.head_status != 200:
            self.send_error(404 if self.path != "/model.bin" else self.server.head_status)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path != "/model.bin":
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        self.server.gets.append(rng)
        start = 0
        found = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if found and self.server.honour_range:
            start = int(found.group(1))
            if start >= len(PAYLOAD):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.server.cut_first > 0:
            self.server.cut_first -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a short body
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(dl.ENV_CACHE, str(folder))
    monkeypatch.delenv(dl.ENV_OFFLINE, raising=False)
    return folder


def _url(srv: _Server, path: str = "/model.bin") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def _get(srv: _Server, **kwargs) -> Path:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("retry_wait", 0.0)
    kwargs.setdefault("timeout", 10.0)
    return dl.download(_url(srv), "model.bin", **kwargs)


def test_cache_dir_follows_env(cache: Path) -> None:
    assert dl.cache_dir() == cache


def test_cache_dir_default_is_platform_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import pooch

    monkeypatch.delenv(dl.ENV_CACHE, raising=False)
    assert dl.cache_dir() == Path(pooch.os_cache("detseg"))


@pytest.mark.parametrize(
    "checksums",
    [(), (f"sha256:{SHA256}",), (f"md5:{MD5[:6]}",), (f"sha256:{SHA256}", f"md5:{MD5[:6]}")],
)
def test_success_verified_and_atomic(server: _Server, cache: Path, checksums) -> None:
    path = _get(server, checksums=checksums, size=len(PAYLOAD))
    assert path == cache / "model.bin"
    assert path.read_bytes() == PAYLOAD
    assert list(cache.iterdir()) == [path]  # no .part left behind
    # a second call uses the cache: no new request
    assert _get(server, checksums=checksums) == path
    assert server.gets == [None]


@pytest.mark.parametrize(
    "checksums, size, message",
    [
        (("sha256:" + "0" * 64,), None, "sha256 checksum mismatch: expected 0000"),
        (("md5:abcdef",), None, "md5 checksum mismatch: expected prefix abcdef"),
        ((), len(PAYLOAD) + 1, f"size mismatch: expected {len(PAYLOAD) + 1} bytes, found {len(PAYLOAD)}"),
    ],
)
def test_checksum_mismatch_removes_file(server: _Server, cache: Path, checksums, size, message) -> None:
    with pytest.raises(DownloadError, match=re.escape(message)) as err:
        _get(server, checksums=checksums, size=size)
    assert "the file was removed" in str(err.value)
    assert _url(server) in str(err.value)
    assert list(cache.iterdir()) == []


def test_interrupted_transfer_then_resume(server: _Server, cache: Path) -> None:
    server.cut_first = 1
    with pytest.raises(DownloadError, match="next run resumes") as err:
        _get(server, checksums=(f"sha256:{SHA256}",), retries=0)
    part = cache / "model.bin.part"
    assert str(part) in str(err.value)
    have = part.stat().st_size
    assert 0 < have < len(PAYLOAD)
    assert not (cache / "model.bin").exists()

    path = _get(server, checksums=(f"sha256:{SHA256}",), retries=0)
    assert path.read_bytes() == PAYLOAD
    assert server.gets == [None, f"bytes={have}-"]  # the second request asked only for the rest
    assert not part.exists()


def test_interrupted_transfer_resumes_within_one_call(server: _Server, cache: Path) -> None:
    server.cut_first = 2
    path = _get(server, checksums=(f"sha256:{SHA256}",), retries=2)
    assert path.read_bytes() == PAYLOAD
    assert len(server.gets) == 3 and server.gets[0] is None
    assert all(g is not None and g.startswith("bytes=") for g in server.gets[1:])


def test_server_ignoring_range_restarts_from_zero(server: _Server, cache: Path) -> None:
    server.cut_first = 1
    server.honour_range = False
    path = _get(server, checksums=(f"sha256:{SHA256}",), retries=2)
    assert path.read_bytes() == PAYLOAD


def test_head_refused_restarts_from_zero(server: _Server, cache: Path) -> None:
    """No usable HEAD answer (some servers refuse HEAD): the partial file is not trusted."""
    server.cut_first = 1
    server.head_status = 405
    path = _get(server, checksums=(f"sha256:{SHA256}",), retries=1)
    assert path.read_bytes() == PAYLOAD
    assert server.gets == [None, None]  # the second GET asked for the whole file again


def test_server_gone(server: _Server, cache: Path) -> None:
    url = _url(server)
    server.shutdown()
    server.server_close()
    with pytest.raises(DownloadError) as err:
        dl.download(url, "model.bin", progress=False, retries=1, retry_wait=0.0, timeout=5.0)
    message = str(err.value)
    assert url in message and str(cache / "model.bin") in message
    assert "by hand" in message


def test_http_404_names_url(server: _Server, cache: Path) -> None:
    url = _url(server, "/missing.bin")
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        dl.download(url, "missing.bin", progress=False, retry_wait=0.0)
    assert url in str(err.value)
    assert server.gets == []  # a 404 is not retried (and the GET list counts only /model.bin)


def test_offline_without_cache(server: _Server, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dl.ENV_OFFLINE, "1")
    with pytest.raises(DownloadError) as err:
        _get(server)
    message = str(err.value)
    assert "DETSEG_OFFLINE=1" in message and _url(server) in message
    assert str(cache / "model.bin") in message
    assert server.gets == []  # nothing was fetched


def test_offline_uses_verified_cache(server: _Server, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _get(server, checksums=(f"sha256:{SHA256}",))
    monkeypatch.setenv(dl.ENV_OFFLINE, "1")
    assert _get(server, checksums=(f"sha256:{SHA256}",)) == path
    assert server.gets == [None]


def test_corrupt_cached_file_is_replaced(server: _Server, cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / "model.bin").write_bytes(b"not the model")
    path = _get(server, checksums=(f"sha256:{SHA256}",))
    assert path.read_bytes() == PAYLOAD


def test_corrupt_cached_file_offline(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir(parents=True)
    (cache / "model.bin").write_bytes(b"not the model")
    monkeypatch.setenv(dl.ENV_OFFLINE, "1")
    with pytest.raises(DownloadError, match="checksum mismatch.*removed"):
        dl.download("http://127.0.0.1:9/model.bin", "model.bin", checksums=(f"sha256:{SHA256}",))
    assert not (cache / "model.bin").exists()


def test_fetch_registry_entry(server: _Server, cache: Path) -> None:
    spec = ModelSpec(name="tiny", url=_url(server), filename="model.bin", license="test",
                     task="detect", family="ultralytics", checksums=(f"sha256:{SHA256}",),
                     size=len(PAYLOAD))
    path = dl.local_file(ModelSource(kind="registry", name="tiny", family="ultralytics", spec=spec),
                         progress=False)
    assert path.read_bytes() == PAYLOAD


def test_local_file_with_registry_name_is_checked(tmp_path: Path) -> None:
    spec = ModelSpec(name="x", url="http://127.0.0.1:9/x", filename="x.pth", license="t", task="sam",
                     family="sam", checksums=(f"sha256:{SHA256}",))
    local = tmp_path / "x.pth"
    local.write_bytes(b"something else")
    source = ModelSource(kind="file", name=str(local), family="sam", spec=spec, path=local)
    with pytest.raises(DownloadError, match="sha256 checksum mismatch"):
        dl.local_file(source)
    assert local.exists()  # a user's own file is never removed


@pytest.mark.parametrize("bad", ["sha256", "nope:12", "sha256:"])
def test_bad_checksum_spec(tmp_path: Path, bad: str) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(DownloadError, match="expected 'algo:hex'"):
        dl.verify_file(f, (bad,))
