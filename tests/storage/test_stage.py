"""Stage-in and stage-out with real files and a real local HTTP server."""

from __future__ import annotations

import http.server
import logging
import os
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from runwatch.config import StorageSettings
from runwatch.storage.checksum import adler32_file
from runwatch.storage.http import digest_adler32
from runwatch.storage.stage import StageError, policy_of, stage_in, stage_out
from runwatch.storage.urls import (
    URLError,
    is_file_url,
    is_http_url,
    is_root_url,
    join_url,
    path_to_url,
    split_root_url,
    url_to_path,
)


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def fast(retries: int = 2) -> StorageSettings:
    """Retries with a short backoff, so that a test of failures takes no time."""
    return StorageSettings(retries=retries, backoff_seconds=0.01, timeout_seconds=60)


# -- urls ---------------------------------------------------------------------------------


def test_url_helpers_round_trip_paths_with_odd_characters(tmp_path: Path) -> None:
    path = tmp_path / "run 300" / "a#b%c.root"
    url = path_to_url(path)
    assert url.startswith("file:///") and " " not in url and "#" not in url
    assert url_to_path(url) == path
    assert url_to_path(str(path)) == path
    assert url_to_path("file://localhost/data/x") == Path("/data/x")
    assert join_url(path_to_url(path.parent) + "/", path.name) == url
    assert join_url("https://eos.example/data", "f 1") == "https://eos.example/data/f%201"
    assert is_file_url(url) and is_file_url("/data/x") and not is_file_url("https://h/x")
    assert is_http_url("HTTPS://h/x") and is_http_url("http://h/x") and not is_http_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://host/x", "not a file URL"),
        ("file://other-host/x", "on another host"),
        ("data/x", "not absolute"),
    ],
)
def test_url_to_path_rejects_what_is_not_local(url: str, why: str) -> None:
    with pytest.raises(URLError, match=why):
        url_to_path(url)


def test_root_urls() -> None:
    eos = "root://eos.example//eos/juno/raw/"
    assert is_root_url(eos) and is_root_url("ROOTS://h//x") and not is_root_url("/eos/x")
    assert join_url(eos, "RUN 1.raw") == eos + "RUN 1.raw", "XRootD paths are literal"
    assert join_url("root://h:1094//d", "f") == "root://h:1094//d/f"
    assert split_root_url(eos + "f") == ("root://eos.example", "/eos/juno/raw/f")
    assert split_root_url("root://h/d/f") == ("root://h", "/d/f")
    for bad, why in [
        ("root:///d/f", "without a server"),
        ("root://h//", "without a path"),
        ("https://h/f", "not an XRootD URL"),
    ]:
        with pytest.raises(URLError, match=why):
            split_root_url(bad)
    with pytest.raises(URLError, match="\\? or # in it"):
        join_url(eos, "f?x=1")


def test_join_url_rejects_paths_as_names() -> None:
    with pytest.raises(URLError, match="not a file name"):
        join_url("file:///data/", "../etc/passwd")


def test_the_retry_policy_comes_from_the_job_spec() -> None:
    """The scheduler renders ``[storage]`` into the spec; an older spec has the defaults."""
    assert policy_of({"command": "true"}) == StorageSettings()
    spec = {"storage": {"retries": 1, "backoff_seconds": 0.5, "timeout_seconds": 30.0}}
    assert policy_of(spec) == StorageSettings(retries=1, backoff_seconds=0.5, timeout_seconds=30)


# -- stage-in from files ------------------------------------------------------------------


def test_stage_in_copies_and_verifies_the_checksum(tmp_path: Path) -> None:
    source = tmp_path / "raw" / "f.raw"
    source.parent.mkdir()
    source.write_bytes(payload(300_000))
    dest = tmp_path / "work" / "inputs" / "f.raw"
    got = stage_in(source.as_uri(), dest, adler32_file(source).upper().lstrip("0"))
    assert got == dest
    assert dest.read_bytes() == source.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["f.raw"], "no temporary file left"


def test_stage_in_uses_a_file_in_place(tmp_path: Path) -> None:
    source = tmp_path / "f.raw"
    source.write_bytes(b"abc")
    before = source.stat()
    assert stage_in(source.as_uri(), source, adler32_file(source)) == source
    assert stage_in(str(source), source) == source
    after = source.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_stage_in_checksum_mismatch_says_both_values_and_removes_the_copy(
    tmp_path: Path,
) -> None:
    source = tmp_path / "f.raw"
    source.write_bytes(b"abc")
    dest = tmp_path / "w" / "f.raw"
    actual = adler32_file(source)
    with pytest.raises(StageError) as err:
        stage_in(source.as_uri(), dest, "0badc0de", fast())
    assert str(err.value) == (
        f"checksum mismatch for {source.as_uri()}: expected 0badc0de, got {actual}"
        " (gave up after 3 tries)"
    )
    assert not dest.exists()
    with pytest.raises(StageError, match="checksum mismatch"):
        stage_in(source.as_uri(), source, "0badc0de")  # in place: checked too


def test_stage_in_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.raw"
    with pytest.raises(StageError, match=f"cannot stage in .*: no such file {missing}"):
        stage_in(missing.as_uri(), tmp_path / "w" / "nope.raw")
    with pytest.raises(StageError, match="no such file"):
        stage_in(missing.as_uri(), missing)
    with pytest.raises(StageError, match="unsupported URL scheme"):
        stage_in("s3://bucket/x", tmp_path / "x")
    with pytest.raises(StageError, match="XRootD URL without a server"):
        stage_in("root:///eos/x", tmp_path / "x")


# -- stage-in over HTTP -------------------------------------------------------------------


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, misbehaving as a path's first folder says:

    - ``/flaky/N/f``: the first N requests of the path get a 503, then ``/f`` is served;
    - ``/cut/f``: the first request gets half of ``/f`` and the connection is closed;
    - ``/digest/HEX/f``: ``/f`` with the header ``Digest: adler32=HEX``.
    """

    seen: dict[str, int]
    lock = threading.Lock()
    digest: str | None = None

    def do_GET(self) -> None:
        with self.lock:
            self.seen[self.path] = count = self.seen.get(self.path, 0) + 1
        parts = self.path.split("/")
        if parts[1] == "flaky":
            if count <= int(parts[2]):
                self.send_error(503, "try again")
                return
            self.path = "/" + "/".join(parts[3:])
        elif parts[1] == "cut" and count == 1:
            self.send_half("/" + "/".join(parts[2:]))
            return
        elif parts[1] == "cut":
            self.path = "/" + "/".join(parts[2:])
        elif parts[1] == "digest":
            self.digest = parts[2]
            self.path = "/" + "/".join(parts[3:])
        super().do_GET()

    def send_half(self, path: str) -> None:
        data = Path(self.translate_path(path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def end_headers(self) -> None:
        if self.digest is not None:
            self.send_header("Digest", f"adler32={self.digest}")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (FlakyHandler,), {"seen": {}})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_https_download_with_checksum(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    data = payload(5_000_000, seed=11)
    (root / "big.raw").write_bytes(data)
    dest = tmp_path / "in" / "big.raw"
    stage_in(f"{base}/big.raw", dest, adler32_file(root / "big.raw"))
    assert dest.read_bytes() == data


def test_download_retries_a_server_error(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    (root / "f.raw").write_bytes(b"payload")
    dest = tmp_path / "f.raw"
    stage_in(f"{base}/flaky/1/f.raw", dest, adler32_file(root / "f.raw"), fast())
    assert dest.read_bytes() == b"payload"
    with pytest.raises(StageError, match=r"server error 503 \(gave up after 1 tries\)"):
        stage_in(f"{base}/flaky/1/g.raw", tmp_path / "g.raw", policy=fast(retries=0))
    assert not (tmp_path / "g.raw").exists()


def test_download_missing_and_unreachable(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_root
    with pytest.raises(StageError, match=r"not found \(HTTP 404\)"):
        stage_in(f"{base}/nope.raw", tmp_path / "n.raw", policy=fast())
    with pytest.raises(StageError, match=r"ConnectError.*gave up after 2 tries"):
        stage_in("http://127.0.0.1:9/x", tmp_path / "x", policy=fast(retries=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


def test_download_checksum_mismatch(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    (root / "f.raw").write_bytes(b"payload")
    with pytest.raises(StageError, match=f"checksum mismatch for {base}/f.raw: expected 00000002"):
        stage_in(f"{base}/f.raw", tmp_path / "f.raw", "2", fast())
    assert not (tmp_path / "f.raw").exists()


def test_download_retries_a_flaky_server_with_backoff(
    http_root: tuple[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three 503s in a row: three retries get the file, with delays that double."""
    base, root = http_root
    data = payload(2_000_000, seed=12)
    (root / "f.raw").write_bytes(data)
    policy = StorageSettings(retries=3, backoff_seconds=0.05, timeout_seconds=60)
    with caplog.at_level(logging.WARNING):
        stage_in(f"{base}/flaky/3/f.raw", tmp_path / "f.raw", policy=policy)
    assert (tmp_path / "f.raw").read_bytes() == data
    delays = [r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records]
    assert delays == ["0.1 s", "0.1 s", "0.2 s"]  # 0.05, 0.1, 0.2 as %.1f
    with pytest.raises(StageError, match=r"server error 503 \(gave up after 3 tries\)"):
        stage_in(f"{base}/flaky/3/g.raw", tmp_path / "g.raw", policy=fast(retries=2))


def test_download_cut_short_is_tried_again(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    data = payload(1_000_000, seed=13)
    (root / "f.raw").write_bytes(data)
    stage_in(f"{base}/cut/f.raw", tmp_path / "f.raw", policy=fast(retries=1))
    assert (tmp_path / "f.raw").read_bytes() == data


def test_download_is_checked_against_the_servers_digest(
    http_root: tuple[str, Path], tmp_path: Path
) -> None:
    """Without a checksum from the caller, the server's ``Digest: adler32=`` is the check."""
    base, root = http_root
    (root / "f.raw").write_bytes(b"payload")
    right = adler32_file(root / "f.raw")
    stage_in(f"{base}/digest/{right}/f.raw", tmp_path / "f.raw", policy=fast())
    assert (tmp_path / "f.raw").read_bytes() == b"payload"
    with pytest.raises(StageError) as err:
        stage_in(f"{base}/digest/0badc0de/f.raw", tmp_path / "g.raw", policy=fast(retries=1))
    assert str(err.value) == (
        f"checksum mismatch for {base}/digest/0badc0de/f.raw: the source has 0badc0de,"
        f" the copy {right} (gave up after 2 tries)"
    )
    assert not (tmp_path / "g.raw").exists()


def test_digest_header_parsing() -> None:
    assert digest_adler32("adler32=0A1B2C3D") == "0a1b2c3d"
    assert digest_adler32("MD5=HUXZLQLMuI/KZ5KDcJPcOA==, ADLER32=1b2c3d") == "001b2c3d"
    assert digest_adler32("md5=HUXZLQLMuI/KZ5KDcJPcOA==") is None
    assert digest_adler32("adler32=not-hex") is None
    assert digest_adler32("") is None


# -- stage-out ----------------------------------------------------------------------------


def test_stage_out_stores_atomically_with_checksum(tmp_path: Path) -> None:
    source = tmp_path / "work" / "out.rec"
    source.parent.mkdir()
    source.write_bytes(payload(1_000_000))
    dest_dir = tmp_path / "data" / "Physics" / "300" / "rec"
    stale = dest_dir / ".out.rec.part-deadbeef0000"
    dest_dir.mkdir(parents=True)
    stale.write_bytes(b"half a file from a killed job")
    url, size, checksum = stage_out(source, dest_dir.as_uri() + "/", "out.rec")
    assert url == (dest_dir / "out.rec").as_uri()
    assert (size, checksum) == (1_000_000, adler32_file(source))
    assert (dest_dir / "out.rec").read_bytes() == source.read_bytes()
    assert [p.name for p in dest_dir.iterdir()] == ["out.rec"]
    source.write_bytes(b"second try")
    _, size, _ = stage_out(source, dest_dir.as_uri() + "/", "out.rec")
    assert size == 10 and (dest_dir / "out.rec").read_bytes() == b"second try"


def test_stage_out_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="no such file"):
        stage_out(tmp_path / "nope", (tmp_path / "d").as_uri() + "/", "nope")


FILL_UP = textwrap.dedent(
    """
    import resource, signal, sys
    from runwatch.storage.stage import StageError, stage_out
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    try:
        stage_out(sys.argv[1], sys.argv[2], "out.rec")
    except StageError as exc:
        print(exc)
        sys.exit(3)
    """
)


def test_stage_out_failing_midway_leaves_no_file(tmp_path: Path) -> None:
    """A file size limit makes writes fail part way, as a full disk does."""
    source = tmp_path / "out.rec"
    source.write_bytes(payload(300_000))
    dest_dir = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-c", FILL_UP, str(source), dest_dir.as_uri() + "/"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("no space left (File too large) on ")
    assert done.stdout.strip().endswith("while writing out.rec")
    assert list(dest_dir.iterdir()) == [], "neither the final nor the temporary file is left"


def test_stage_out_disk_full(tmp_path: Path) -> None:
    """A real full file system: a tiny tmpfs, when this machine lets us mount one."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        source = tmp_path / "out.rec"
        source.write_bytes(payload(300_000))
        with pytest.raises(StageError) as err:
            stage_out(source, mount.as_uri() + "/", "out.rec")
        assert str(err.value) == (
            f"no space left (No space left on device) on {mount} while writing out.rec"
        )
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)
