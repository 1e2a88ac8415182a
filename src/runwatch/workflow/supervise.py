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


def judge(
    attempt: OpenAttempt, info: JobInfo | None, limits: Limits, now: dt.datetime
) -> Verdict | None:
    """None while the attempt may carry on; else how it ends."""
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
