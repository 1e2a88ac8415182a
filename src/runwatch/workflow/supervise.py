"""Deciding the fate of open attempts from what the executor and the heartbeats say.

Pure: no I/O, so every rule is tested without a batch system.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from runwatch.executors.base import JobInfo, JobStatus
from runwatch.workflow.states import AttemptState


@dataclass(frozen=True)
class OpenAttempt:
    """What the scheduler knows of an attempt that is SUBMITTED or RUNNING."""

    id: int
    state: AttemptState
    external_id: str | None
    submitted_at: dt.datetime
    started_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    timeout_s: float
    job_start: int = 0  # the start of its batch job that holds it
    batch_status: str | None = None  # as stored: why the batch system keeps the job waiting


@dataclass(frozen=True)
class Limits:
    heartbeat_timeout_s: float
    submit_grace_s: float


@dataclass(frozen=True)
class Verdict:
    """End the attempt in ``state`` for ``reason``; ``kill`` the job if it may still run."""

    state: AttemptState
    reason: str
    kill: bool


def timeout_grace(timeout_s: float) -> float:
    """The wrapper enforces the timeout itself; the scheduler steps in only after this much
    more, as a backstop for a wrapper that cannot."""
    return max(10.0, 0.1 * timeout_s)


BATCH_STATUS_MAX = 255  # attempts.batch_status's width


def batch_status(attempt: OpenAttempt, info: JobInfo | None) -> str | None:
    """What the attempt's batch status should say now: the batch system's reason while
    the job waits (pending, or requeued), nothing once it runs or when the executor gives
    no reason (the local one: no write for its jobs); as it was when the executor said
    nothing of the job or it is gone (the attempt is ending)."""
    if info is None or info.status is JobStatus.GONE:
        return attempt.batch_status
    if info.status is JobStatus.QUEUED and info.reason:
        return info.reason[:BATCH_STATUS_MAX]
    return None


def requeued(attempt: OpenAttempt, info: JobInfo | None) -> bool:
    """The batch system runs, or will run, a later start of the job than the one that
    holds the attempt: it requeued the job (preemption, node failure, ``scontrol
    requeue``). That start takes the attempt over when it begins."""
    return (
        attempt.state is AttemptState.RUNNING
        and info is not None
        and info.status is not JobStatus.GONE
        and info.start is not None
        and info.start > attempt.job_start
    )


def judge(
    attempt: OpenAttempt, info: JobInfo | None, limits: Limits, now: dt.datetime
) -> Verdict | None:
    """None while the attempt may carry on; else how it ends.

    A requeued job's attempt is neither timed out nor missed for its heartbeats while
    the job waits or its next start begins: its time counts again from that start,
    which takes the attempt over (and sets ``started_at``)."""
    if attempt.external_id is None:
        age = (now - attempt.submitted_at).total_seconds()
        if attempt.state is AttemptState.SUBMITTED and age > limits.submit_grace_s:
            return Verdict(AttemptState.LOST, "never handed to the executor", kill=False)
    elif info is not None and info.status is JobStatus.GONE and info.failed:
        return Verdict(AttemptState.FAILED, info.reason or "failed by the batch system", False)
    elif info is not None and info.status is JobStatus.GONE:
        code = "" if info.exit_code is None else f" (exit code {info.exit_code})"
        extra = f": {info.reason}" if info.reason else ""
        return Verdict(AttemptState.LOST, f"job ended without reporting{code}{extra}", False)
    if requeued(attempt, info):
        return None
    if attempt.state is AttemptState.RUNNING:
        assert attempt.started_at is not None
        ran = (now - attempt.started_at).total_seconds()
        if attempt.timeout_s > 0 and ran > attempt.timeout_s + timeout_grace(attempt.timeout_s):
            return Verdict(
                AttemptState.TIMED_OUT,
                f"ran {ran:.0f} s, over its {attempt.timeout_s:.0f} s limit",
                True,
            )
        beat = attempt.heartbeat_at or attempt.started_at
        silent = (now - beat).total_seconds()
        if silent > limits.heartbeat_timeout_s:
            return Verdict(AttemptState.LOST, f"no heartbeat for {silent:.0f} s", True)
    return None
