"""Stage-in and stage-out over root:// against a real XRootD server
(``scripts/services-up.sh xrootd``, ``RUNWATCH_TEST_XROOTD_URL``), including the server
being stopped in the middle of a copy and started again."""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runwatch.config import StorageSettings
from runwatch.db import Database
from runwatch.jobs.wrapper import EXIT_OK, run_attempt
from runwatch.storage.checksum import adler32_file, adler32_hex
from runwatch.storage.stage import StageError, stage_in, stage_out
from runwatch.storage.urls import is_root_url, join_url, split_root_url
from runwatch.storage.xrootd import xrootd_client
from runwatch.workflow.models import Attempt
from runwatch.workflow.states import AttemptState
from tests.conftest import server_url
from tests.jobs.test_wrapper import attempt_row, make_attempt

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SERVICE_PIDFILE = Path("/run/runwatch-xrootd/xrootd.pid")  # scripts/services/xrootd.sh
MB = 1_000_000


def fast(retries: int = 2) -> StorageSettings:
    return StorageSettings(retries=retries, backoff_seconds=0.01, timeout_seconds=60)


@pytest.fixture
def folder() -> Iterator[str]:
    """A fresh folder URL on the test server (``root://host:port//path/``), removed after."""
    base = server_url("xrootd")
    url = join_url(base, f"test-{uuid.uuid4().hex[:12]}") + "/"
    yield url
    _, path = split_root_url(url)
    shutil.rmtree(path, ignore_errors=True)  # the test server exports a local folder


def put(url: str, data: bytes) -> None:
    """Store ``data`` at ``url`` with the XRootD client itself, not with runwatch's code."""
    client = xrootd_client()
    flags = client.flags
    handle = client.File()
    status, _ = handle.open(url, flags.OpenFlags.NEW | flags.OpenFlags.MAKEPATH, timeout=30)
    assert status.ok, status.message
    assert handle.write(data, 0, timeout=60)[0].ok
    assert handle.close(timeout=30)[0].ok


def get(url: str) -> bytes:
    client = xrootd_client()
    handle = client.File()
    assert handle.open(url, timeout=30)[0].ok
    status, data = handle.read(timeout=60)
    handle.close(timeout=30)
    assert status.ok, status.message
    return bytes(data)


def listing(folder_url: str) -> list[str]:
    server, path = split_root_url(folder_url)
    status, entries = xrootd_client().FileSystem(server).dirlist(path, timeout=30)
    assert status.ok, status.message
    return sorted(entry.name for entry in entries)


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def retries_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]


# -- copies -------------------------------------------------------------------------------


def test_stage_in_over_root_checks_the_servers_checksum(folder: str, tmp_path: Path) -> None:
    data = payload(5 * MB, seed=1)
    url = folder + "RUN.300.Physics.001.rtraw"
    put(url, data)
    assert is_root_url(url) and url.startswith("root://")
    dest = tmp_path / "work" / "inputs" / "RUN.300.Physics.001.rtraw"
    expected = adler32_hex(zlib.adler32(data))
    assert stage_in(url, dest, expected.upper(), fast()) == dest
    assert dest.read_bytes() == data
    dest.unlink()
    stage_in(url, dest, policy=fast())  # no expected checksum: the server's is checked
    assert dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == [dest.name], "no temporary file left"


def test_stage_out_over_root_makes_the_folder_and_stores_atomically(
    folder: str, tmp_path: Path
) -> None:
    source = tmp_path / "out.rec"
    source.write_bytes(payload(3 * MB, seed=2))
    destination = folder + "Physics/300/rec/"  # none of it exists yet
    url, size, checksum = stage_out(source, destination, "out.rec", fast())
    assert url == destination + "out.rec"
    assert (size, checksum) == (3 * MB, adler32_file(source))
    assert get(url) == source.read_bytes()
    assert listing(destination) == ["out.rec"]

    # A retry of the task overwrites the file and removes what a killed try left.
    put(destination + ".out.rec.part-deadbeef0000", b"half a file from a killed job")
    source.write_bytes(b"second try")
    _, size, checksum = stage_out(source, destination, "out.rec", fast())
    assert (size, checksum) == (10, adler32_hex(zlib.adler32(b"second try")))
    assert get(url) == b"second try"
    assert listing(destination) == ["out.rec"]


def test_missing_file_fails_at_once(folder: str, tmp_path: Path) -> None:
    slow = StorageSettings(retries=3, backoff_seconds=30, timeout_seconds=60)
    url = folder + "nope.raw"
    started = time.monotonic()
    with pytest.raises(StageError) as err:
        stage_in(url, tmp_path / "nope.raw", policy=slow)
    assert time.monotonic() - started < 10, "no retries on a file that does not exist"
    assert str(err.value).startswith(f"cannot stage in {url}: no such file (")
    assert "3011" in str(err.value), "the server's own reason is kept"
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_is_retried_then_fails(
    folder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = payload(MB, seed=3)
    url = folder + "f.raw"
    put(url, data)
    dest = tmp_path / "f.raw"
    actual = adler32_hex(zlib.adler32(data))
    with caplog.at_level(logging.WARNING), pytest.raises(StageError) as err:
        stage_in(url, dest, "0badc0de", fast(retries=2))
    assert str(err.value) == (
        f"checksum mismatch for {url}: expected 0badc0de, got {actual} (gave up after 3 tries)"
    )
    assert len(retries_logged(caplog)) == 2
    assert list(tmp_path.iterdir()) == [], "a copy that does not match is not kept"


def test_a_server_that_is_down_fails_after_the_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nobody = "root://127.0.0.1:9//data/"  # nothing listens on port 9
    source = tmp_path / "out.rec"
    source.write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(StageError, match=r"Connection error.*\(gave up after 2 tries\)"):
            stage_in(nobody + "f.raw", tmp_path / "f.raw", policy=fast(retries=1))
        with pytest.raises(StageError, match=r"Connection error.*\(gave up after 2 tries\)"):
            stage_out(source, nobody, "out.rec", fast(retries=1))
    assert len(retries_logged(caplog)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.rec"]


def test_a_job_reads_its_input_from_root_and_stores_its_output_there(
    db: Database, folder: str, tmp_path: Path
) -> None:
    """The job wrapper end to end: a raw file on the server in, the output back to it."""
    raw = folder + "raw/RUN.300.Physics.001.rtraw"
    data = payload(2 * MB, seed=6)
    put(raw, data)
    workdir_input = tmp_path / "work" / "inputs" / "RUN.300.Physics.001.rtraw"
    checksum = adler32_hex(zlib.adler32(data))
    attempt_id = make_attempt(
        db,
        tmp_path,
        f"sha256sum {workdir_input} > out.rec",
        outputs={"rec": "out.rec"},
        inputs=[{"url": raw, "path": str(workdir_input), "adler32": checksum}],
    )
    destination = folder + "Physics/300/rec/"
    with db.session() as s:
        attempt = s.get(Attempt, attempt_id)
        assert attempt is not None
        attempt.spec = {**attempt.spec, "destination": destination}
    assert run_attempt(db, attempt_id, "worker-1") == EXIT_OK
    attempt, _, outputs = attempt_row(db, attempt_id)
    assert attempt.state is AttemptState.SUCCEEDED, attempt.reason
    [out] = outputs
    assert out.url == destination + "out.rec"
    stored = get(out.url)
    assert (out.size, out.adler32) == (len(stored), adler32_hex(zlib.adler32(stored)))
    assert hashlib.sha256(data).hexdigest() in stored.decode()


# -- the server stopped during a copy and started again -----------------------------------


class Service:
    """The test XRootD server, stopped and started with the project's service scripts."""

    def run(self, script: str) -> None:
        done = subprocess.run(
            ["bash", str(SCRIPTS / script), "xrootd"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def stop(self) -> None:
        self.run("services-down.sh")

    def start(self) -> None:
        self.run("services-up.sh")


@pytest.fixture
def service(folder: str) -> Iterator[Service]:
    """Control of the server; whatever happens in the test, it is running afterwards."""
    if not SERVICE_PIDFILE.exists():
        pytest.fail(f"no {SERVICE_PIDFILE}: start the server with scripts/services-up.sh xrootd")
    controlled = Service()
    try:
        yield controlled
    finally:
        controlled.start()


class Outage:
    """A thread that stops the server when the copy is ``at`` bytes in, and starts it
    again ``down_s`` seconds later. The copy waits (in its progress callback) until the
    server is down, so the outage falls in the middle of the copy every time."""

    def __init__(self, service: Service, at: int, down_s: float = 1.5) -> None:
        self.service, self.at, self.down_s = service, at, down_s
        self.halfway, self.stopped = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            if not self.halfway.wait(120):
                return
            self.service.stop()
            self.stopped.set()
            time.sleep(self.down_s)
            self.service.start()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.errors.append(exc)
            self.stopped.set()

    def progress(self, done: int) -> None:
        if done >= self.at and not self.halfway.is_set():
            self.halfway.set()
            assert self.stopped.wait(120), "the server was not stopped"

    def __enter__(self) -> Callable[[int], None]:
        self.thread.start()
        return self.progress

    def __exit__(self, failed: type[BaseException] | None, *exc: Any) -> None:
        self.halfway.set()  # a copy that failed early must not leave the thread waiting
        self.thread.join(180)
        assert not self.errors, self.errors
        if failed is None:  # else the copy's own error is the one to see
            assert self.stopped.is_set(), "the copy ended before the server was stopped"


def big_file(path: Path, size: int, seed: int) -> str:
    """Write ``size`` seeded random bytes to ``path``; return their adler32."""
    rng = random.Random(seed)
    value = 1
    with open(path, "wb") as out:
        for start in range(0, size, 4 * MB):
            block = rng.randbytes(min(4 * MB, size - start))
            value = zlib.adler32(block, value)
            out.write(block)
    return adler32_hex(value)


PATIENT = StorageSettings(retries=6, backoff_seconds=0.5, timeout_seconds=120)


def test_stage_in_survives_a_server_restart(
    service: Service, folder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    size = 200 * MB
    _, folder_path = split_root_url(folder)
    Path(folder_path).mkdir()  # the exported folder is local: write the big file there
    checksum = big_file(Path(folder_path) / "big.raw", size, seed=4)
    dest = tmp_path / "inputs" / "big.raw"
    with caplog.at_level(logging.WARNING), Outage(service, at=50 * MB) as progress:
        stage_in(folder + "big.raw", dest, checksum, PATIENT, progress)
    assert retries_logged(caplog), "the copy was broken off and tried again"
    assert dest.stat().st_size == size
    assert adler32_file(dest) == checksum
    assert [p.name for p in dest.parent.iterdir()] == ["big.raw"]


def test_stage_out_survives_a_server_restart(
    service: Service, folder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    size = 200 * MB
    source = tmp_path / "big.rec"
    checksum = big_file(source, size, seed=5)
    destination = folder + "rec/"
    with caplog.at_level(logging.WARNING), Outage(service, at=50 * MB) as progress:
        url, stored, stored_sum = stage_out(source, destination, "big.rec", PATIENT, progress)
    assert retries_logged(caplog), "the copy was broken off and tried again"
    assert (stored, stored_sum) == (size, checksum)
    _, path = split_root_url(url)
    assert adler32_file(path) == checksum, "the server has every byte"
    assert listing(destination) == ["big.rec"], "the broken-off try left nothing behind"


def test_a_job_stages_root_inputs_into_its_inputs_folder(tmp_path: Path) -> None:
    """A file-ready message may name a root:// URL; the scheduler's render puts such an
    input into the work directory's inputs/, under its scheme, server and path."""
    from runwatch.ingest.schema import validate_message
    from runwatch.workflow.render import local_path

    url = "root://eos.example:1094//eos/juno/raw/300/RUN.300.Physics.001.rtraw?eos.app=rw"
    message = {"name": "RUN.300.Physics.001.rtraw", "url": url, "run": 300, "stream": "Physics"}
    assert validate_message(message).url == url
    staged = tmp_path / "inputs" / "root" / "eos.example:1094" / "eos/juno/raw/300"
    assert local_path(url, tmp_path) == str(staged / "RUN.300.Physics.001.rtraw")
    assert split_root_url(url) == (
        "root://eos.example:1094",
        "/eos/juno/raw/300/RUN.300.Physics.001.rtraw?eos.app=rw",
    )
