from __future__ import annotations

import datetime as dt

from runwatch.executors.base import JobInfo, JobStatus
from runwatch.workflow.states import AttemptState
from runwatch.workflow.supervise import Limits, OpenAttempt, judge

T0 = dt.datetime(2025, 8, 26, 12, 0, tzinfo=dt.UTC)
LIMITS = Limits(heartbeat_timeout_s=120, submit_grace_s=60)


def attempt(
    state: AttemptState = AttemptState.RUNNING,
    external: str | None = "local:1:2",
    timeout_s: float = 0.0,
    beat_age: float = 0.0,
) -> OpenAttempt:
    started = T0 if state is AttemptState.RUNNING else None
    beat = T0 + dt.timedelta(seconds=1000 - beat_age) if started else None
    return OpenAttempt(
        id=7,
        state=state,
        external_id=external,
        submitted_at=T0,
        started_at=started,
        heartbeat_at=beat,
        timeout_s=timeout_s,
    )


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_a_healthy_running_job_carries_on() -> None:
    assert judge(attempt(), JobInfo(JobStatus.RUNNING), LIMITS, at(1000)) is None


def test_a_job_that_vanished_is_lost_with_its_exit_code() -> None:
    verdict = judge(attempt(), JobInfo(JobStatus.GONE, exit_code=-9), LIMITS, at(1000))
    assert verdict is not None
    assert verdict.state is AttemptState.LOST
    assert "exit code -9" in verdict.reason
    assert not verdict.kill


def test_a_job_the_batch_system_failed_fails_its_attempt_with_the_reason() -> None:
    held = JobInfo(JobStatus.GONE, reason="held by HTCondor: over memory", failed=True)
    verdict = judge(attempt(), held, LIMITS, at(1000))
    assert verdict is not None
    assert (verdict.state, verdict.reason) == (AttemptState.FAILED, "held by HTCondor: over memory")
    assert not verdict.kill


def test_never_handed_over_is_lost_only_after_the_grace() -> None:
    pending = attempt(AttemptState.SUBMITTED, external=None)
    assert judge(pending, None, LIMITS, at(59)) is None
    verdict = judge(pending, None, LIMITS, at(61))
    assert verdict is not None and verdict.reason == "never handed to the executor"


def test_timeout_backstop_kills_after_the_grace() -> None:
    slow = attempt(timeout_s=100)
    assert judge(slow, JobInfo(JobStatus.RUNNING), LIMITS, at(105)) is None
    verdict = judge(slow, JobInfo(JobStatus.RUNNING), LIMITS, at(111))
    assert verdict is not None
    assert verdict.state is AttemptState.TIMED_OUT and verdict.kill


def test_a_silent_job_is_lost_and_killed() -> None:
    verdict = judge(attempt(beat_age=121), JobInfo(JobStatus.RUNNING), LIMITS, at(1000))
    assert verdict is not None
    assert verdict.state is AttemptState.LOST and verdict.kill
    assert verdict.reason == "no heartbeat for 121 s"
