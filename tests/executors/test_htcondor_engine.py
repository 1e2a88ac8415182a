"""The engine on the HTCondor executor: a chain of steps through the personal pool, a job
the pool holds, and kill -9 of schedulers while jobs run in the pool (every task must end
exactly once). The jobs run the real wrapper, which records into PostgreSQL."""

from __future__ import annotations

import random
import time
from pathlib import Path

import htcondor2
import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import RunStatus
from runwatch.db import Database
from runwatch.executors.htcondor import HTCondorExecutor, parse_external_id
from runwatch.workflow.models import Attempt, Task
from runwatch.workflow.states import AttemptState, TaskState
from tests.executors.htcondor_pool import (
    condor_config,
    condor_db,
    condor_settings,
    job_ads,
    job_user,
    poll_until,
    pool_root,
)
from tests.workflow.engine import (
    announce_run,
    run_statuses,
    running_scheduler,
    write_pipeline,
)
from tests.workflow.test_crash import (
    SLOW_CHAIN,
    check_exactly_once,
    kill_leaders_while_jobs_run,
)

__all__ = ["condor_config", "condor_db", "job_user", "pool_root"]  # fixtures in use

pytestmark = pytest.mark.slow


def attempts(db: Database) -> list[Attempt]:
    with db.session() as s:
        return list(s.scalars(sa.select(Attempt).order_by(Attempt.id)))


def all_completed(db: Database, runs: int) -> bool:
    statuses = run_statuses(db)
    return len(statuses) == runs and all(s is RunStatus.ALL_COMPLETED for s in statuses.values())


def test_a_chain_of_steps_runs_in_the_pool(
    pool_root: Path, condor_db: Database, job_user: str
) -> None:
    settings = condor_settings(pool_root, condor_db, job_user)
    write_pipeline(settings)
    announce_run(condor_db, pool_root / "raw", 500, 3)
    started = time.monotonic()
    with running_scheduler(settings, condor_db, HTCondorExecutor(settings)):
        poll_until(lambda: all_completed(condor_db, 1), 240, "run 500 All Completed")
    elapsed = time.monotonic() - started
    done = attempts(condor_db)
    assert len(done) == 3 * 3 + 1, [(a.id, a.state, a.reason) for a in done]
    assert {a.state for a in done} == {AttemptState.SUCCEEDED}
    assert all(
        a.executor == "htcondor" and (a.external_id or "").startswith("htcondor:") for a in done
    )
    merged = pool_root / "data" / "Physics" / "500" / "merge" / "run500.merged"
    assert [int(n) for n in merged.read_text().split()] == [
        len(f"run 500 file {q} payload\n") * (q + 1) for q in (1, 2, 3)
    ]
    print(f"10 tasks in the pool in {elapsed:.1f} s")


IDLE = """\
name: idle
streams: [Physics]
steps:
  wait:
    command: "true"
    retries: 0
    outputs: {out: "{{ file.stem }}.out"}
    submit:
      htcondor: {requirements: "False"}
"""

OVERTIME = """\
name: overtime
streams: [Physics]
steps:
  sleep:
    command: "sleep 120"
    retries: 0
    outputs: {out: "{{ file.stem }}.out"}
    submit:
      htcondor: {allowed_job_duration: "3"}
"""


def test_held_jobs_end_their_attempts_and_leave_the_queue(
    pool_root: Path, condor_db: Database, job_user: str
) -> None:
    settings = condor_settings(pool_root, condor_db, job_user)
    write_pipeline(settings, IDLE, "idle.yaml")
    write_pipeline(settings, OVERTIME, "overtime.yaml")
    announce_run(condor_db, pool_root / "raw", 501, 1)

    def attempt_of(pipeline: str) -> Attempt | None:
        with condor_db.session() as s:
            return s.scalars(
                sa.select(Attempt).join(Task).where(Task.pipeline == pipeline)
            ).one_or_none()

    def ended(pipeline: str) -> bool:
        attempt = attempt_of(pipeline)
        return attempt is not None and attempt.ended_at is not None

    executor = HTCondorExecutor(settings)
    with running_scheduler(settings, condor_db, executor):
        # Held by the pool while it runs (over its time limit): the pool sends SIGTERM
        # first, and the wrapper records nothing (it cannot tell a hold from an eviction);
        # poll sees the job held, takes it out of the queue, and the attempt fails with the
        # hold reason.
        poll_until(lambda: ended("overtime"), 120, "the job over its time to end")
        overtime = attempt_of("overtime")
        assert overtime is not None and overtime.external_id is not None
        assert overtime.state is AttemptState.FAILED, overtime
        assert overtime.reason is not None and overtime.reason.startswith("held by HTCondor:")
        assert "duration" in overtime.reason.lower(), overtime.reason
        assert overtime.log_path is not None
        assert "stopped by the batch system (SIGTERM)" in Path(overtime.log_path).read_text()
        over_id = overtime.external_id
        poll_until(lambda: not job_ads([over_id], "JobStatus"), 60, "the held job to leave")
        # Held by an operator before it ran: the scheduler fails the attempt with the reason.
        waiting = attempt_of("idle")
        assert waiting is not None and waiting.external_id is not None
        assert waiting.ended_at is None
        job = parse_external_id(waiting.external_id)
        assert job is not None
        htcondor2.Schedd().act(htcondor2.JobAction.Hold, [job.job], ("bad calibration", 0))
        poll_until(lambda: ended("idle"), 60, "the held job's attempt to end")
    held = attempt_of("idle")
    assert held is not None and held.state is AttemptState.FAILED, held
    assert held.reason is not None and "held by HTCondor: bad calibration" in held.reason
    with condor_db.session() as s:
        task = s.scalars(sa.select(Task).where(Task.pipeline == "idle")).one()
    assert task.state is TaskState.FAILED and task.reason == held.reason
    idle_id = waiting.external_id
    poll_until(lambda: not job_ads([idle_id], "JobStatus"), 60, "the held job to leave")


SLEEPY = """\
name: sleepy
streams: [Physics]
steps:
  sleep:
    command: "sleep 15; echo done > {{ file.stem }}.out"
    retries: 0
    outputs: {out: "{{ file.stem }}.out"}
"""


def test_a_job_the_pool_vacates_continues_the_same_attempt(
    pool_root: Path, condor_db: Database, job_user: str
) -> None:
    """Vacated while it runs (as by an eviction): the job goes back to idle and runs
    again; its second start takes the same attempt over, and the step, which allows no
    retry, succeeds."""
    settings = condor_settings(pool_root, condor_db, job_user)
    write_pipeline(settings, SLEEPY, "sleepy.yaml")
    announce_run(condor_db, pool_root / "raw", 502, 1)

    def running_step() -> bool:
        found = attempts(condor_db)
        return bool(found) and found[0].state is AttemptState.RUNNING and step_started(found[0])

    with running_scheduler(settings, condor_db, HTCondorExecutor(settings)):
        poll_until(running_step, 120, "the step running in the pool")
        (attempt,) = attempts(condor_db)
        assert attempt.external_id is not None and attempt.job_start == 0
        job = parse_external_id(attempt.external_id)
        assert job is not None
        htcondor2.Schedd().act(htcondor2.JobAction.Vacate, [job.job])
        poll_until(lambda: all_completed(condor_db, 1), 240, "run 502 All Completed")
    (attempt,) = attempts(condor_db)
    assert (attempt.state, attempt.job_start) == (AttemptState.SUCCEEDED, 1), attempt
    with condor_db.session() as s:
        task = s.scalars(sa.select(Task).where(Task.pipeline == "sleepy")).one()
    assert (task.state, task.failures) == (TaskState.DONE, 0)


def step_started(attempt: Attempt) -> bool:
    log = Path(attempt.log_path or "/nonexistent")
    return log.exists() and "running sleep" in log.read_text()


# -- kill -9 of the scheduler while jobs run in the pool -----------------------------------

RUNS = {410: 4, 411: 4}  # files per run: 4 * 3 + 1 tasks each

CRASH_CONFIG = """\
database_url = "{db}"
data_root = "{root}/data"
work_root = "{root}/work"
pipelines = "{root}/pipelines"

[scheduler]
executor = "htcondor"
tick_seconds = 0.2
backoff_seconds = 0.05
backoff_max_seconds = 0.2
heartbeat_timeout_seconds = 60
submit_grace_seconds = 5
lease_seconds = 1.5

[htcondor]
slots = 4
queue_ahead = 4
job_user = "{job_user}"
"""


def test_kill_minus_nine_of_schedulers_while_jobs_run_in_the_pool(
    pool_root: Path, condor_db: Database, job_user: str, condor_config: str
) -> None:
    rng = random.Random(20251129)
    root = pool_root
    (root / "runwatch.toml").write_text(
        CRASH_CONFIG.format(db=condor_db.url, root=root, job_user=job_user)
    )
    (root / "pipelines" / "chain.yaml").write_text(SLOW_CHAIN)
    kills = kill_leaders_while_jobs_run(condor_db, root, RUNS, rng, lambda: _running(condor_db))
    assert kills == 4
    check_exactly_once(condor_db, root, RUNS)


def _running(db: Database) -> bool:
    with db.session() as s:
        count = s.scalar(sa.select(sa.func.count()).where(Attempt.state == AttemptState.RUNNING))
    return bool(count)
