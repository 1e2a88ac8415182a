from __future__ import annotations

import datetime as dt
from dataclasses import replace

from runwatch.executors.base import JobInfo, JobStatus
from runwatch.workflow.states import AttemptState
from runwatch.workflow.supervise import Limits, OpenAttempt, batch_status, judge, requeued

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


# -- a batch job its batch system requeued ------------------------------------------------


def restarted(beat_age: float, job_start: int = 0, timeout_s: float = 0.0) -> OpenAttempt:
    """A RUNNING attempt held by start ``job_start`` of its batch job."""
    return replace(attempt(beat_age=beat_age, timeout_s=timeout_s), job_start=job_start)


def test_a_requeued_job_waiting_is_not_judged_by_heartbeat_or_timeout() -> None:
    waiting = JobInfo(JobStatus.QUEUED, reason="BeginTime, requeued 1x", start=1)
    assert judge(restarted(beat_age=900, timeout_s=60), waiting, LIMITS, at(1000)) is None


def test_a_requeued_job_starting_again_is_left_to_take_its_attempt_over() -> None:
    starting = JobInfo(JobStatus.RUNNING, start=1)
    assert judge(restarted(beat_age=900), starting, LIMITS, at(1000)) is None


def test_once_taken_over_the_attempt_is_judged_as_usual_again() -> None:
    running = JobInfo(JobStatus.RUNNING, start=1)
    verdict = judge(restarted(beat_age=900, job_start=1), running, LIMITS, at(1000))
    assert verdict is not None and verdict.state is AttemptState.LOST and verdict.kill
    # Its timeout counts from the start that took it over (started_at, set by the claim).
    verdict = judge(restarted(beat_age=0, job_start=1, timeout_s=60), running, LIMITS, at(1000))
    assert verdict is not None and verdict.state is AttemptState.TIMED_OUT


def test_a_job_queued_without_a_start_count_is_judged_as_before() -> None:
    """The local executor says QUEUED for a job just finished, and counts no starts."""
    verdict = judge(attempt(beat_age=900), JobInfo(JobStatus.QUEUED), LIMITS, at(1000))
    assert verdict is not None and verdict.state is AttemptState.LOST


def test_a_requeued_job_then_failed_or_gone_gets_the_usual_verdicts() -> None:
    held = JobInfo(JobStatus.GONE, reason="Slurm job TIMEOUT", failed=True, start=1)
    verdict = judge(restarted(beat_age=0), held, LIMITS, at(1000))
    assert verdict is not None
    assert (verdict.state, verdict.reason) == (AttemptState.FAILED, "Slurm job TIMEOUT")
    gone = JobInfo(JobStatus.GONE, reason="Slurm job CANCELLED", start=1)
    verdict = judge(restarted(beat_age=0), gone, LIMITS, at(1000))
    assert verdict is not None and verdict.state is AttemptState.LOST


def test_a_submitted_attempt_is_not_taken_for_requeued() -> None:
    pending = attempt(AttemptState.SUBMITTED)
    assert not requeued(pending, JobInfo(JobStatus.QUEUED, start=1))
    assert requeued(restarted(0), JobInfo(JobStatus.QUEUED, start=1))
    assert not requeued(restarted(0, job_start=1), JobInfo(JobStatus.QUEUED, start=1))
    assert not requeued(restarted(0), JobInfo(JobStatus.QUEUED))


def test_the_batch_status_is_the_reason_a_job_waits_and_clears_when_it_runs() -> None:
    fresh = attempt(AttemptState.SUBMITTED)
    assert batch_status(fresh, JobInfo(JobStatus.QUEUED, reason="Priority")) == "Priority"
    assert batch_status(fresh, JobInfo(JobStatus.QUEUED)) is None  # the local executor's
    long = JobInfo(JobStatus.QUEUED, reason="x" * 1000)
    assert batch_status(fresh, long) == "x" * 255
    noted = replace(fresh, batch_status="Resources")
    assert batch_status(noted, JobInfo(JobStatus.RUNNING)) is None
    assert batch_status(noted, None) == "Resources"  # the executor said nothing: unchanged
    assert batch_status(noted, JobInfo(JobStatus.GONE, reason="x")) == "Resources"
