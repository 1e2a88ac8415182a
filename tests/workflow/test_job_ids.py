"""Job ids: stored as the batch system gave them, or derived from the attempt where the
executor names its jobs after their attempts (the local executor), which spares the
scheduler a write per task. Supervision and cancels work the same either way."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import sqlalchemy as sa

from runwatch.config import Settings
from runwatch.db import Database
from runwatch.executors.base import JobInfo, JobStatus, own_job_id
from runwatch.executors.local import LocalExecutor
from runwatch.workflow.models import Attempt
from runwatch.workflow.scheduler import Scheduler
from runwatch.workflow.service import cancel_task
from runwatch.workflow.states import AttemptState
from tests.waiting import wait_for
from tests.workflow.engine import CHAIN, BatchSystem, announce_run, write_pipeline


def sleepy(pids: Path) -> str:
    """The chain, its first step writing its shell's pid into ``pids`` and sleeping."""
    return CHAIN.replace(
        'command: "cp',
        f'command: "echo step $RUNWATCH_ATTEMPT sleeps; echo $$ > {pids}/pid.$RUNWATCH_ATTEMPT;'
        " sleep 30; cp",
    )


def stored_ids(db: Database) -> dict[int, str | None]:
    with db.session() as s:
        return {a: e for a, e in s.execute(sa.select(Attempt.id, Attempt.external_id))}


def test_a_batch_systems_job_ids_are_stored_and_polled(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    write_pipeline(settings)
    announce_run(db, tmp_path / "raw", 7, 2)
    executor = BatchSystem()
    scheduler = Scheduler(settings, db, executor)
    assert own_job_id(executor, 1) is None
    scheduler.run_once()
    assert sorted(v for v in stored_ids(db).values() if v) == sorted(executor.submitted)
    assert len(executor.submitted) == 2
    scheduler.supervise()
    assert sorted(executor.polled) == sorted(executor.submitted)


def test_a_job_that_ended_without_reporting_leaves_its_exit_code_and_log(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    """A batch job whose wrapper died before it could report (here: it could not even be
    imported): the scheduler records the job's exit code and its log's end, so that an
    operator sees why without looking for the file."""
    write_pipeline(settings)
    announce_run(db, tmp_path / "raw", 7, 1)
    executor = BatchSystem()
    scheduler = Scheduler(settings, db, executor)
    scheduler.run_once()
    with db.session() as s:
        [(attempt_id, external_id, log_path)] = s.execute(
            sa.select(Attempt.id, Attempt.external_id, Attempt.log_path)
        )
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(log_path).write_text("/usr/bin/python3: No module named runwatch\n")
    executor.ended[external_id] = JobInfo(JobStatus.GONE, exit_code=1)
    scheduler.supervise()
    with db.session() as s:
        lost = s.get_one(Attempt, attempt_id)
        assert lost.state is AttemptState.LOST
        assert lost.reason == "job ended without reporting (exit code 1)"
        assert lost.exit_code == 1
        assert lost.log_tail == "/usr/bin/python3: No module named runwatch\n"


def test_local_job_ids_are_derived_not_stored_and_a_dead_worker_is_found(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    write_pipeline(settings, sleepy(tmp_path))
    announce_run(db, tmp_path / "raw", 7, 2)
    executor = LocalExecutor(settings)
    scheduler = Scheduler(settings, db, executor)
    try:
        scheduler.run_once()
        ids = stored_ids(db)
        assert len(ids) == 2 and set(ids.values()) == {None}, "nothing stored for local jobs"
        first, second = sorted(ids)
        pid_file = {a: tmp_path / f"pid.{a}" for a in ids}
        wait_for(lambda: all(p.exists() and p.read_text() for p in pid_file.values()), 20)

        # A cancelled task's job is killed through its derived id.
        with db.session() as s:
            task_id = s.get_one(Attempt, second).task_id
            cancel_task(s, task_id, scheduler.clock())
        cancelled_step = psutil.Process(int(pid_file[second].read_text()))
        # A worker killed with its job: the attempt is found LOST through the derived id.
        step = psutil.Process(int(pid_file[first].read_text()))
        worker = step.parent()
        assert worker is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(5)
        scheduler.supervise()
        with db.session() as s:
            lost = s.get_one(Attempt, first)
            assert lost.state is AttemptState.LOST, lost.reason
            assert lost.reason == "job ended without reporting: its worker died"
            # The wrapper could not record its log's end; the scheduler did.
            assert f"step {first} sleeps" in (lost.log_tail or ""), lost.log_tail
        cancelled_step.wait(10)  # killed by the sweep of cancelled attempts
        step.kill()  # the dead worker's orphan
    finally:
        executor.close()
