"""Stage-out to https:// (WebDAV: MKCOL, PUT to a temporary name, HEAD with Want-Digest,
MOVE) against XRootD's own HTTPS interface (XrdHttp, ``scripts/services-up.sh xrootd``,
``RUNWATCH_TEST_XROOTD_HTTP_URL`` with its test CA in ``RUNWATCH_TEST_XROOTD_CA_FILE``),
and against a small local WebDAV server that refuses the first tries and gives no
digest."""

from __future__ import annotations

import http.server
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from runwatch.config import StorageSettings
from runwatch.storage.checksum import adler32_file
from runwatch.storage.stage import StageError, stage_in, stage_out
from tests.conftest import server_url
from tests.waiting import wait_for

CA_ENV = "RUNWATCH_TEST_XROOTD_CA_FILE"


def payload(path: Path, size: int, seed: int = 11) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def policy(retries: int = 2, backoff: float = 0.01, ca_file: str = "") -> StorageSettings:
    return StorageSettings(
        retries=retries, backoff_seconds=backoff, timeout_seconds=60, ca_file=ca_file
    )


@pytest.fixture
def ca_file() -> str:
    server_url("xrootd_http")
    path = os.environ.get(CA_ENV, "")
    if not path:
        pytest.fail(f"{CA_ENV} is not set (scripts/services-up.sh --print-env xrootd)")
    return path


@pytest.fixture
def folder(ca_file: str) -> Iterator[tuple[str, Path]]:
    """A fresh folder on the XrdHttp server: its URL, and its path on this machine (the
    test server exports a local folder)."""
    base = server_url("xrootd_http")
    name = f"h1-http-{uuid.uuid4().hex[:12]}"
    local = Path(unquote(urlsplit(base).path)) / name
    yield f"{base.rstrip('/')}/{name}/", local
    shutil.rmtree(local, ignore_errors=True)


def test_stage_out_over_https_checks_the_servers_digest(
    folder: tuple[str, Path], ca_file: str, tmp_path: Path
) -> None:
    url, local = folder
    source = payload(tmp_path / "f.rec", 5_000_000)
    stored, size, checksum = stage_out(
        source, f"{url}Physics/42/rec/", "f.rec", policy(ca_file=ca_file)
    )
    assert stored == f"{url}Physics/42/rec/f.rec"
    assert (size, checksum) == (5_000_000, adler32_file(source))
    on_server = local / "Physics" / "42" / "rec"
    assert sorted(p.name for p in on_server.iterdir()) == ["f.rec"], "no temporary left"
    assert adler32_file(on_server / "f.rec") == checksum
    # Back again, checked against the server's Digest.
    back = stage_in(stored, tmp_path / "back", checksum, policy(ca_file=ca_file))
    assert back.read_bytes() == source.read_bytes()
    # Stored again (a retried task): replaced, still one file.
    source.write_bytes(b"second")
    _, size, checksum = stage_out(source, f"{url}Physics/42/rec", "f.rec", policy(ca_file=ca_file))
    assert (on_server / "f.rec").read_bytes() == b"second"
    assert sorted(p.name for p in on_server.iterdir()) == ["f.rec"]


def test_a_server_the_ca_file_does_not_vouch_for_is_refused(
    folder: tuple[str, Path], tmp_path: Path
) -> None:
    url, local = folder
    source = payload(tmp_path / "f.rec", 1000)
    with pytest.raises(StageError, match="CERTIFICATE_VERIFY_FAILED"):
        stage_out(source, url, "f.rec", policy(retries=0))
    assert not (local / "f.rec").exists()


def test_a_403_fails_at_once_with_the_reason(ca_file: str, tmp_path: Path) -> None:
    base = urlsplit(server_url("xrootd_http"))
    outside = f"{base.scheme}://{base.netloc}/etc/h1-{uuid.uuid4().hex[:8]}/"
    source = payload(tmp_path / "f.rec", 1000)
    started = time.monotonic()
    with pytest.raises(StageError, match=r"HTTP 403 \(.*disallowed") as failed:
        stage_out(source, outside, "f.rec", policy(retries=3, backoff=5.0, ca_file=ca_file))
    assert time.monotonic() - started < 5.0, "no retry after a 403"
    assert "gave up" not in str(failed.value)


UPLOADER = textwrap.dedent(
    """
    import sys, time
    from runwatch.config import StorageSettings
    from runwatch.storage.stage import stage_out

    def slowly(done):
        time.sleep(0.2)  # a slow network: the test kills the upload half way

    policy = StorageSettings(retries=0, ca_file=sys.argv[3])
    stage_out(sys.argv[1], sys.argv[2], "big.rec", policy, progress=slowly)
    """
)


def test_a_killed_upload_leaves_no_final_file_and_the_next_one_cleans_up(
    folder: tuple[str, Path], ca_file: str, tmp_path: Path
) -> None:
    url, local = folder
    source = payload(tmp_path / "big.rec", 60_000_000)
    upload = subprocess.Popen([sys.executable, "-c", UPLOADER, str(source), url, ca_file])
    try:

        def parts() -> list[Path]:
            return list(local.glob(".big.rec.part-*")) if local.is_dir() else []

        wait_for(lambda: any(p.stat().st_size > 0 for p in parts()), 60, "the upload under way")
        upload.send_signal(signal.SIGKILL)
        upload.wait(timeout=30)
    finally:
        if upload.poll() is None:
            upload.kill()
            upload.wait()
    assert upload.returncode == -signal.SIGKILL
    assert not (local / "big.rec").exists(), "nothing under the final name"
    _, _, checksum = stage_out(source, url, "big.rec", policy(ca_file=ca_file))
    assert sorted(p.name for p in local.iterdir()) == ["big.rec"], "the stale part is gone"
    assert adler32_file(local / "big.rec") == checksum == adler32_file(source)


# -- a WebDAV server that refuses the first tries and gives no digest ---------------------


class RefusingDav(http.server.BaseHTTPRequestHandler):
    """PUT, HEAD, MOVE, MKCOL and DELETE on a folder, without Digest headers; the first
    ``refuse`` PUTs are answered 503."""

    root: Path
    refuse: int
    puts: list[str]

    def _path(self, url: str) -> Path:
        return self.root / unquote(urlsplit(url).path).lstrip("/")

    def _answer(self, status: int, length: int | None = 0) -> None:
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.puts.append(self.path)
        if len(self.puts) <= self.refuse:
            self._answer(503)
            return
        target = self._path(self.path)
        if not target.parent.is_dir():
            self._answer(409)
            return
        target.write_bytes(body)
        self._answer(201)

    def do_HEAD(self) -> None:
        target = self._path(self.path)
        self._answer(200, target.stat().st_size) if target.is_file() else self._answer(404)

    def do_MKCOL(self) -> None:
        target = self._path(self.path)
        if target.exists():
            self._answer(405)
        elif not target.parent.is_dir():
            self._answer(409)
        else:
            target.mkdir()
            self._answer(201)

    def do_MOVE(self) -> None:
        if self.headers.get("Overwrite") != "T":
            self._answer(412)
            return
        self._path(self.path).replace(self._path(self.headers["Destination"]))
        self._answer(201)

    def do_DELETE(self) -> None:
        self._path(self.path).unlink(missing_ok=True)
        self._answer(204)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def dav(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    root = tmp_path / "dav"
    root.mkdir()
    puts: list[str] = []
    handler = type("Handler", (RefusingDav,), {"root": root, "refuse": 2, "puts": puts})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root, puts
    server.shutdown()
    server.server_close()


def test_a_server_refusing_the_first_tries_gets_the_file_by_the_third(
    dav: tuple[str, Path, list[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base, root, puts = dav
    source = payload(tmp_path / "f.rec", 300_000)
    with caplog.at_level(logging.WARNING):
        stored, size, checksum = stage_out(source, f"{base}a/b/", "f.rec", policy(retries=2))
    assert stored == f"{base}a/b/f.rec"
    assert len(puts) == 3 and all("/a/b/.f.rec.part-" in p for p in puts)
    assert (root / "a" / "b" / "f.rec").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in (root / "a" / "b").iterdir()) == ["f.rec"]
    assert checksum == adler32_file(source) and size == 300_000
    messages = [r.getMessage() for r in caplog.records]
    assert sum("server error 503; retrying" in m for m in messages) == 2
    assert any("gives no adler32 digest; checking the size only" in m for m in messages)


def test_a_server_refusing_every_try_fails_after_the_retries(
    dav: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    base, root, puts = dav
    source = payload(tmp_path / "f.rec", 1000)
    with pytest.raises(StageError, match=r"server error 503 \(gave up after 2 tries\)"):
        stage_out(source, base, "f.rec", policy(retries=1))
    assert len(puts) == 2
    assert list(root.iterdir()) == [], "no file, final or temporary"
