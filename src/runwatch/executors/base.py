"""The ``Executor`` interface: how the scheduler hands jobs to a batch system.

An executor starts one job wrapper (``runwatch job run ATTEMPT``) per attempt on some
machine. It does not record outcomes: the wrapper does that itself in the database (or via
the HTTP API). The scheduler only asks the executor whether a job still exists, to notice
jobs that died without a word, and asks it to kill jobs on timeout or cancel.

Concurrency guarantees for implementers: one scheduler process calls an executor, from one
thread, so methods need no locking. The scheduler may be killed at any instant and a new
process may start with a new executor object: ``poll`` must answer for jobs submitted by an
earlier process from ``external_id`` alone (store what you need in it). An executor that
names each job after its attempt whatever happens (``job_id(attempt_id)``, optional) has
its ids derived, not stored (``own_job_id``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from runwatch.config import Settings


@dataclass(frozen=True)
class JobRequest:
    """What the executor needs to start the wrapper for one attempt."""

    attempt_id: int
    task_key: str
    threads: int
    memory_mb: int
    timeout_s: float
    workdir: str
    log_path: str
    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    disk_mb: int = 0  # scratch disk to ask for; 0: the batch system's default
    # The step's extra batch settings by executor name (pipeline ``submit:``): an executor
    # reads its own entry, e.g. submit["htcondor"] (dict) or submit["slurm"] (list).
    submit: Mapping[str, Any] = field(default_factory=dict)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"  # accepted by the batch system, not started
    RUNNING = "running"
    GONE = "gone"  # finished, killed or unknown to the batch system


@dataclass(frozen=True)
class JobInfo:
    status: JobStatus
    exit_code: int | None = None
    reason: str | None = None  # e.g. a hold reason or a pending reason
    # GONE because the batch system itself ended the job for ``reason`` (held, over its
    # memory or time, ...): the attempt FAILED with that reason, rather than being LOST.
    failed: bool = False
    # Which start of the job the batch system is on or will make next, counted as the
    # wrapper's RUNWATCH_JOB_START is (0 the first); None where jobs never start again.
    # Higher than the start that holds the attempt: the job was requeued.
    start: int | None = None


@runtime_checkable
class Executor(Protocol):
    """A batch system. Implement these four methods and register an entry point in the
    ``runwatch.executors`` group; the class is built with the settings in force."""

    name: str

    def capacity(self) -> int:
        """Thread slots this executor may fill at once (the scheduler counts them)."""
        ...

    def queue_ahead(self) -> int:
        """Threads' worth of jobs the scheduler may submit beyond ``capacity``: they wait
        in the executor's own queue and start the moment a slot frees (0: none)."""
        ...

    def submit(self, jobs: Sequence[JobRequest]) -> list[str]:
        """Start the jobs; return one external id per job, in order. Raise on failure to
        submit any of them (the scheduler then retries those attempts)."""
        ...

    def poll(self, external_ids: Sequence[str]) -> dict[str, JobInfo]:
        """Status of each job, in one call for all (no polling storm)."""
        ...

    def cancel(self, external_id: str) -> None:
        """Kill the job, if it still exists. Must not raise for a job already gone."""
        ...


def own_job_id(executor: Executor, attempt_id: int) -> str | None:
    """The id of an attempt's job when ``executor`` names its jobs after their attempts,
    whatever happens to them (the local executor: ``local:ID``, an optional ``job_id``
    method): the scheduler then does not store it, which spares a write per task."""
    job_id = getattr(executor, "job_id", None)
    return job_id(attempt_id) if callable(job_id) else None


def queue_ahead_max(executor: Executor) -> int:
    """The most the scheduler may queue ahead of ``executor``'s slots: its optional
    ``queue_ahead_max()`` (the local executor), else ``queue_ahead()`` (a batch system's
    queue is as deep as its operator set it). Between the two, the scheduler queues deeper
    only while the slots run dry waiting for its next round (short jobs)."""
    most = getattr(executor, "queue_ahead_max", None)
    return max(most(), executor.queue_ahead()) if callable(most) else executor.queue_ahead()


def load_executor(settings: Settings) -> Executor:
    """Build the executor named in the settings, found through entry points."""
    name = settings.scheduler.executor
    found = {ep.name: ep for ep in entry_points(group="runwatch.executors")}
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise LookupError(f"unknown executor {name!r} (installed: {known})")
    cls = found[name].load()
    executor: Executor = cls(settings)
    return executor
