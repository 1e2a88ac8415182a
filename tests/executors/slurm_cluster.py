"""Helpers for the tests against the real single-node Slurm that
``scripts/services-up.sh slurm`` starts (``RUNWATCH_TEST_SLURM_PARTITION`` names its
partition; the node declares 8 CPUs)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from runwatch.config import Settings, SlurmSettings
from runwatch.db import Database
from runwatch.executors.base import JobInfo, JobRequest, JobStatus
from runwatch.executors.slurm import SlurmExecutor, parse_external_id
from runwatch.jobs.environment import job_environment, wrapper_command
from runwatch.workflow.models import Attempt
from tests.conftest import server_url
from tests.waiting import wait_for

SLOTS = 8  # the test node's CPUs


def slurm_settings(settings: Settings) -> Settings:
    """``settings`` with the Slurm executor on the test partition (skips without one)."""
    partition = server_url("slurm")
    return settings.model_copy(
        update={
            "scheduler": settings.scheduler.model_copy(update={"executor": "slurm"}),
            "slurm": SlurmSettings(partition=partition, slots=SLOTS, queue_ahead=SLOTS),
        }
    )


# Fixtures for the test modules, which import them under these names (pytest finds a
# fixture by its name= wherever the module got it from).


@pytest.fixture(name="on_slurm")
def on_slurm_fixture(settings: Settings) -> Settings:
    """The test's settings with the Slurm executor."""
    return slurm_settings(settings)


@pytest.fixture(name="executor")
def executor_fixture(on_slurm: Settings) -> Iterator[SlurmExecutor]:
    """A Slurm executor; the jobs of this test that are still in Slurm at the end are
    cancelled (they work under ``work_root``)."""
    executor = SlurmExecutor(on_slurm)
    try:
        yield executor
    finally:
        executor.close()
        cancel_jobs_under(Path(on_slurm.work_root))


def cancel_jobs_under(root: Path) -> None:
    """scancel every job whose work folder is under ``root`` (this test's jobs only)."""
    shown = subprocess.run(
        ["squeue", "--noheader", "--format=%i %Z"], capture_output=True, text=True, check=False
    ).stdout
    ids = [
        job_id
        for job_id, _, workdir in (line.partition(" ") for line in shown.splitlines())
        if Path(workdir).is_relative_to(root)
    ]
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def request_for(settings: Settings, db: Database, attempt_id: int, **extra: object) -> JobRequest:
    """The JobRequest the scheduler would make for an attempt of ``make_attempt``."""
    with db.session() as s:
        attempt = s.get(Attempt, attempt_id)
        assert attempt is not None
        spec, workdir, log_path = attempt.spec, attempt.workdir, attempt.log_path
    assert workdir is not None and log_path is not None
    fields: dict[str, object] = {
        "attempt_id": attempt_id,
        "task_key": f"test/attempt-{attempt_id}",
        "threads": int(spec["threads"]),
        "memory_mb": 100,
        "timeout_s": float(spec["timeout_s"]),
        "workdir": workdir,
        "log_path": log_path,
        "argv": (*wrapper_command(settings), "job", "run", str(attempt_id)),
        "env": job_environment(settings, attempt_id),
        **extra,
    }
    return JobRequest(**fields)  # type: ignore[arg-type]


def submit_attempt(
    executor: SlurmExecutor, settings: Settings, db: Database, attempt_id: int, **extra: object
) -> str:
    """Submit the attempt's job and note its external id on the attempt, as the
    scheduler does."""
    (ext,) = executor.submit([request_for(settings, db, attempt_id, **extra)])
    with db.session() as s:
        s.execute(sa.update(Attempt).where(Attempt.id == attempt_id).values(external_id=ext))
    return ext


def info_of(executor: SlurmExecutor, ext: str) -> JobInfo:
    return executor.poll([ext])[ext]


def wait_for_status(
    executor: SlurmExecutor, ext: str, status: JobStatus, timeout: float = 60
) -> JobInfo:
    seen: list[JobInfo] = []

    def reached() -> bool:
        seen.append(info_of(executor, ext))
        return seen[-1].status is status

    wait_for(reached, timeout, f"{ext} {status.value}")
    return seen[-1]


def job_id(ext: str) -> str:
    found = parse_external_id(ext)
    assert found is not None
    return found


def scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True)


def job_processes(ext: str) -> list[psutil.Process]:
    """The job's processes on the node (its slurmstepd, the wrapper, the step)."""
    number = job_id(ext)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            stepd = " ".join(proc.info["cmdline"] or ()).startswith(f"slurmstepd: [{number}.")
            if stepd or proc.environ().get("SLURM_JOB_ID") == number:
                found.append(proc)
    return found


def kill_job_processes(ext: str) -> int:
    """kill -9 the job's processes, as if its node had died; how many there were."""
    procs = job_processes(ext)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    return len(procs)


def node_name() -> str:
    return subprocess.run(
        ["sinfo", "--noheader", "--format=%n"], capture_output=True, text=True, check=True
    ).stdout.split()[0]


@contextlib.contextmanager
def node_down(reason: str) -> Iterator[str]:
    """The node DOWN (its jobs are requeued), then back in service."""
    node = node_name()
    scontrol("update", f"nodename={node}", "state=down", f"reason={reason}")
    try:
        yield node
    finally:
        # With ReturnToService=2 the node may be back already, when slurmd registers.
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
        wait_for(node_ready, 60, "the node back in service")


def node_ready() -> bool:
    states = subprocess.run(
        ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, check=False
    ).stdout.split()
    return bool(states) and all(s in ("idle", "mixed", "allocated") for s in states)


def start_now(ext: str) -> None:
    """Let a requeued job start at once (Slurm holds it back for a while by default)."""
    scontrol("update", f"jobid={job_id(ext)}", "starttime=now")
