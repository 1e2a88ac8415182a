"""Fixtures for tests against the HTCondor personal pool of scripts/services/htcondor.sh.

The pool's jobs run as an unprivileged user (the client's token is that user's; its name
is RUNWATCH_JOB_USER in the client configuration), inside a chroot that sees /tmp at the
same path. So the tests' folders are made under /tmp, owned by that user (pytest's own
tmp_path is private to root), and the database is a server the jobs reach over TCP.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import htcondor2
import pytest

from runwatch.config import HTCondorSettings, SchedulerSettings, Settings
from runwatch.db import Database
from runwatch.executors.htcondor import parse_external_id
from tests.conftest import _open, server_url


def poll_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Like tests.waiting.wait_for, but at a pace a batch system's queries can take."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


@pytest.fixture
def condor_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The pool's client configuration, in force for htcondor2 during the test."""
    path = server_url("htcondor")
    monkeypatch.setenv("CONDOR_CONFIG", path)
    htcondor2.reload_config()
    yield path
    monkeypatch.undo()
    htcondor2.reload_config()


@pytest.fixture
def job_user(condor_config: str) -> str:
    user = htcondor2.param.get("RUNWATCH_JOB_USER")
    if not user:
        pytest.fail(f"{condor_config} names no RUNWATCH_JOB_USER")
    return str(user)


def hand_over(path: Path, user: str) -> None:
    """Give ``path`` and everything in it to ``user``."""
    entry = pwd.getpwnam(user)
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid)


@pytest.fixture
def pool_root(job_user: str) -> Iterator[Path]:
    """A folder under /tmp that the jobs' user owns, with data/work/pipelines/raw."""
    root = Path(tempfile.mkdtemp(prefix="runwatch-condor-", dir="/tmp"))
    for sub in ("data", "work", "pipelines", "raw"):
        (root / sub).mkdir()
    hand_over(root, job_user)
    yield root
    # The jobs' logs, which say why a job failed: pytest shows them only for a failed test.
    for log in sorted(root.rglob("*.log")):
        print(f"--- {log}:\n{log.read_text(errors='replace')[-4000:]}")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def condor_db() -> Iterator[Database]:
    """An empty, migrated PostgreSQL database: the jobs in the pool reach it over TCP."""
    yield from _open(server_url("postgres"))


def condor_settings(root: Path, db: Database, job_user: str, **scheduler: float) -> Settings:
    """Settings for a deployment in ``root`` running its jobs in the test pool."""
    return Settings.model_construct(
        database_url=db.url,
        data_root=str(root / "data"),
        work_root=str(root / "work"),
        pipelines=str(root / "pipelines"),
        scheduler=SchedulerSettings(
            executor="htcondor",
            backoff_seconds=0.05,
            backoff_max_seconds=0.2,
            tick_seconds=0.5,
            heartbeat_timeout_seconds=60,
            submit_grace_seconds=30,
            lease_seconds=3,
            **scheduler,  # type: ignore[arg-type]
        ),
        htcondor=HTCondorSettings(slots=4, queue_ahead=4, job_user=job_user),
    )


def job_ads(external_ids: Sequence[str], *attributes: str) -> list[htcondor2.classad.ClassAd]:
    """The queue's ads of these jobs (the test's own look, not the executor's)."""
    jobs = [parse_external_id(e) for e in external_ids]
    assert all(jobs)
    constraint = " || ".join(f"(ClusterId == {j.cluster} && ProcId == {j.proc})" for j in jobs if j)
    return list(htcondor2.Schedd().query(constraint, list(attributes)))
