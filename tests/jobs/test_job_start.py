"""A batch job started again (requeued, preempted, its node failed) takes over the attempt
its earlier start held: the same attempt carries on, and the earlier start, should it
still be alive somewhere, can neither beat nor record. On each database, directly and
through the web server's API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from runwatch.db import Database
from runwatch.jobs.environment import JOB_START_ENV
from runwatch.jobs.report import DatabaseReporter, job_start_from_env
from runwatch.jobs.wrapper import EXIT_OK, EXIT_STOPPED
from runwatch.workflow.models import ATTEMPTS
from runwatch.workflow.service import AttemptOutcome, RetryPolicy
from runwatch.workflow.states import AttemptState, TaskState
from tests.jobs.test_report_http import STEP, finished, live, start_job  # noqa: F401
from tests.jobs.test_wrapper import attempt_row, make_attempt
from tests.waiting import wait_for
from tests.web.liveserver import LiveServer

POLICY = RetryPolicy(backoff_seconds=0.05, backoff_max_seconds=0.1)


def test_the_job_start_comes_from_the_environment() -> None:
    assert job_start_from_env({}) is None  # the local executor's workers
    assert job_start_from_env({JOB_START_ENV: "0"}) == 0
    assert job_start_from_env({JOB_START_ENV: "3"}) == 3
    assert job_start_from_env({JOB_START_ENV: "x"}) is None


@pytest.mark.parametrize("state", [AttemptState.SUCCEEDED, AttemptState.FAILED])
def test_a_later_start_takes_the_attempt_over_and_the_earlier_one_cannot_write(
    any_db: Database, tmp_path: Path, state: AttemptState
) -> None:
    attempt_id = make_attempt(any_db, tmp_path, "true", retries=0)
    first = DatabaseReporter(any_db, job_start=0)
    claimed_first = first.claim(attempt_id, "node-a")
    assert claimed_first is not None and claimed_first.job_start == 0
    assert first.heartbeat(attempt_id)

    again = DatabaseReporter(any_db, job_start=1)
    claimed_again = again.claim(attempt_id, "node-b")
    assert claimed_again is not None and claimed_again.job_start == 1
    assert claimed_again.task_id == claimed_first.task_id and claimed_again.number == 1
    attempt, task, _ = attempt_row(any_db, attempt_id)
    assert (attempt.state, attempt.job_start, attempt.host) == (AttemptState.RUNNING, 1, "node-b")
    assert task.state is TaskState.RUNNING

    # The earlier start, still alive somewhere: its heartbeat says stop, its end is refused.
    assert not first.heartbeat(attempt_id)
    outcome = AttemptOutcome(state=state, reason=None if state is AttemptState.SUCCEEDED else "x")
    assert not first.record(attempt_id, outcome, POLICY, claimed_first)
    assert attempt_row(any_db, attempt_id)[0].state is AttemptState.RUNNING
    # Neither it nor the same start again, nor a local worker (no start) takes it back.
    assert first.claim(attempt_id, "node-a") is None
    assert again.claim(attempt_id, "node-c") is None
    assert DatabaseReporter(any_db).claim(attempt_id, "node-d") is None

    assert again.heartbeat(attempt_id)
    assert again.record(attempt_id, outcome, POLICY, claimed_again)
    attempt, task, _ = attempt_row(any_db, attempt_id)
    assert (attempt.state, attempt.job_start, attempt.host) == (state, 1, "node-b")
    want = TaskState.DONE if state is AttemptState.SUCCEEDED else TaskState.FAILED
    assert task.state is want and task.failures == (state is AttemptState.FAILED)
    # Ended: no later start can take it over.
    assert DatabaseReporter(any_db, job_start=2).claim(attempt_id, "node-e") is None


def test_a_later_start_may_be_the_first_to_claim(any_db: Database, tmp_path: Path) -> None:
    """A job requeued before its wrapper claimed anything: its next start claims as usual."""
    attempt_id = make_attempt(any_db, tmp_path, "true")
    claimed = DatabaseReporter(any_db, job_start=2).claim(attempt_id, "node-a")
    assert claimed is not None and claimed.job_start == 2
    attempt, task, _ = attempt_row(any_db, attempt_id)
    assert (attempt.state, attempt.job_start, task.state) == (
        AttemptState.RUNNING,
        2,
        TaskState.RUNNING,
    )


def test_a_local_worker_does_not_take_over_a_running_attempt(db: Database, tmp_path: Path) -> None:
    attempt_id = make_attempt(db, tmp_path, "true", state=AttemptState.RUNNING)
    assert DatabaseReporter(db).claim(attempt_id, "node-a") is None
    assert DatabaseReporter(db, job_start=0).claim(attempt_id, "node-a") is None


def test_a_stopped_batch_job_leaves_its_attempt_to_its_next_start_over_http(
    live: LiveServer,  # noqa: F811
    any_db: Database,
    tmp_path: Path,
) -> None:
    """SIGTERM to a batch job's wrapper (its batch system stops it) kills the step and
    records nothing; the job's next start takes the same attempt over and records it."""
    attempt_id = make_attempt(
        any_db,
        tmp_path,
        STEP.format(sleep=30),
        outputs={"data": "out.dat"},
        heartbeat_s=0.2,
        retries=0,
    )
    log = tmp_path / "job.log"
    job = start_job(live.settings, attempt_id, log, **{JOB_START_ENV: "0"})
    wait_for(lambda: "running sleep" in read(log), 60, "the step running")
    job.send_signal(signal.SIGTERM)
    assert finished(job) == EXIT_STOPPED, read(log)
    assert "stopped by the batch system" in read(log)
    attempt, task, _ = attempt_row(any_db, attempt_id)
    assert (attempt.state, attempt.job_start, task.state) == (
        AttemptState.RUNNING,
        0,
        TaskState.RUNNING,
    )

    # The next start runs the same job: make its step quick.
    spec = {**attempt.spec, "command": STEP.format(sleep=0)}
    with any_db.transaction() as tx:
        tx.execute(sa.update(ATTEMPTS).where(ATTEMPTS.c.id == attempt_id).values(spec=spec))
    again = start_job(live.settings, attempt_id, log, **{JOB_START_ENV: "1"})
    assert finished(again) == EXIT_OK, read(log)
    attempt, task, outputs = attempt_row(any_db, attempt_id)
    assert (attempt.state, attempt.job_start, task.state) == (
        AttemptState.SUCCEEDED,
        1,
        TaskState.DONE,
    )
    assert [o.name for o in outputs] == ["data"]
    assert task.failures == 0  # no retry used up


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_a_wrapper_without_a_job_start_records_its_kill(db: Database, tmp_path: Path) -> None:
    """The local executor's behaviour stays: SIGTERM is recorded as the attempt's end."""
    attempt_id = make_attempt(db, tmp_path, "sleep 30", retries=0)
    log = tmp_path / "job.log"
    env_db = {"RUNWATCH_DATABASE_URL": db.url}
    with open(log, "ab") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "runwatch", "job", "run", str(attempt_id)],
            env={**_base_env(), **env_db},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(lambda: "running sleep" in read(log), 60, "the step running")
    job.send_signal(signal.SIGTERM)
    assert finished(job) == 1, read(log)
    attempt, task, _ = attempt_row(db, attempt_id)
    assert (attempt.state, attempt.reason) == (AttemptState.FAILED, "killed (SIGTERM)")
    assert task.state is TaskState.FAILED


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNWATCH_")}
