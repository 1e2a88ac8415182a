"""The engine on the real single-node Slurm: the chain end to end, a job requeued by Slurm,
a node that dies mid-job, and kill -9 of the scheduler while jobs run in Slurm."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import RunStatus
from runwatch.config import Settings
from runwatch.db import Database
from runwatch.executors.base import JobInfo, JobStatus
from runwatch.executors.slurm import SlurmExecutor
from runwatch.workflow.models import Attempt, Task
from runwatch.workflow.states import AttemptState
from tests.executors.slurm_cluster import (  # noqa: F401 (fixtures)
    cancel_jobs_under,
    executor_fixture,
    job_id,
    job_processes,
    kill_job_processes,
    node_down,
    on_slurm_fixture,
    scontrol,
    start_now,
    wait_for_status,
)
from tests.waiting import wait_for
from tests.workflow.engine import (
    CHAIN,
    announce_run,
    run_statuses,
    running_scheduler,
    write_pipeline,
)
from tests.workflow.test_crash import (
    CONFIG,
    SLOW_CHAIN,
    check_exactly_once,
    kill_leaders_while_jobs_run,
)

pytestmark = pytest.mark.slow  # jobs in Slurm take seconds to start and end

# The first step sleeps, so that the test can requeue its job or kill its node meanwhile.
SLEEPY_CALIB = CHAIN.replace('command: "cp', 'command: "sleep 12; cp', 1)
# ... and allows no retry: a requeue must not use one up.
NO_RETRY_SLEEPY_CALIB = SLEEPY_CALIB.replace("retries: 2", "retries: 0", 1)


def all_completed(db: Database, runs: list[int]) -> bool:
    statuses = run_statuses(db)
    return all(statuses.get(r) is RunStatus.ALL_COMPLETED for r in runs)


@pytest.mark.parametrize("any_db_url", ["sqlite", "postgres"], indirect=True)
def test_the_chain_runs_on_slurm_to_all_completed(
    any_db: Database, on_slurm: Settings, executor: SlurmExecutor, tmp_path: Path
) -> None:
    settings = on_slurm.model_copy(update={"database_url": any_db.url})
    write_pipeline(settings)
    announce_run(any_db, tmp_path / "raw", 100, 3)
    announce_run(any_db, tmp_path / "raw", 101, 2)
    with running_scheduler(settings, any_db, SlurmExecutor(settings)):
        wait_for(lambda: all_completed(any_db, [100, 101]), 240, "both runs All Completed")
    check_exactly_once(any_db, tmp_path, {100: 3, 101: 2})
    with any_db.session() as s:
        attempts = list(s.scalars(sa.select(Attempt)))
    assert {a.state for a in attempts} == {AttemptState.SUCCEEDED}
    assert {a.executor for a in attempts} == {"slurm"}
    assert all((a.external_id or "").startswith("slurm:") for a in attempts)


def running_calib(db: Database, executor: SlurmExecutor) -> tuple[int, str]:
    """The calib attempt once its step runs in Slurm: its id and external id."""
    found: list[tuple[int, str]] = []

    def sleeping() -> bool:
        with db.session() as s:
            row = s.execute(
                sa.select(Attempt.id, Attempt.external_id)
                .join(Task, Task.id == Attempt.task_id)
                .where(Task.step == "calib", Attempt.state == AttemptState.RUNNING)
            ).first()
        if row is None or row[1] is None:
            return False
        found.append((row[0], row[1]))
        return any(p.name() == "sleep" for p in job_processes(row[1]))

    wait_for(sleeping, 120, "the calib step running in Slurm")
    return found[-1]


def attempts_of_calib(db: Database) -> list[Attempt]:
    with db.session() as s:
        return list(
            s.scalars(
                sa.select(Attempt)
                .join(Task, Task.id == Attempt.task_id)
                .where(Task.step == "calib")
                .order_by(Attempt.id)
            )
        )


def requeued(executor: SlurmExecutor, ext: str) -> JobInfo:
    """The job's status once Slurm has requeued it (QUEUED, saying so)."""
    info = wait_for_status(executor, ext, JobStatus.QUEUED, 60)
    assert info.reason is not None and "requeued 1x" in info.reason, info
    return info


def test_a_job_slurm_requeues_continues_the_same_attempt(
    db: Database, on_slurm: Settings, executor: SlurmExecutor, tmp_path: Path
) -> None:
    """Slurm requeues a running job (as for preemption): the wrapper is sent SIGTERM,
    kills the step and records nothing; the attempt stays RUNNING, unjudged, while the job
    waits; the job's second start takes the same attempt over and runs the step to its
    end. No retry is used up: the step allows none."""
    write_pipeline(on_slurm, NO_RETRY_SLEEPY_CALIB)
    announce_run(db, tmp_path / "raw", 200, 1)
    with running_scheduler(on_slurm, db, SlurmExecutor(on_slurm)):
        attempt_id, ext = running_calib(db, executor)
        scontrol("requeue", job_id(ext))
        requeued(executor, ext)
        wait_for(lambda: "requeued 1x" in (one_calib(db).batch_status or ""), 60, "its status")
        held = one_calib(db)
        assert (held.state, held.job_start) == (AttemptState.RUNNING, 0)
        start_now(ext)
        wait_for(lambda: all_completed(db, [200]), 180, "the run All Completed")
    check_exactly_once(db, tmp_path, {200: 1})
    (attempt,) = attempts_of_calib(db)
    assert (attempt.id, attempt.state, attempt.job_start) == (
        attempt_id,
        AttemptState.SUCCEEDED,
        1,
    )
    assert attempt.batch_status is None  # cleared once the job ran again
    assert task_failures(db) == 0
    assert attempt.log_path is not None
    log = Path(attempt.log_path).read_text()
    assert "DUE TO JOB REQUEUE" in log and "stopped by the batch system (SIGTERM)" in log
    assert f"attempt {attempt_id}: succeeded" in log


def test_a_node_that_dies_mid_job_requeues_it_and_the_same_attempt_continues(
    db: Database, on_slurm: Settings, executor: SlurmExecutor, tmp_path: Path
) -> None:
    """The job's processes die with their node (kill -9, no word to the database); Slurm
    marks the node DOWN and requeues the job. The attempt stays RUNNING while the job
    waits (the heartbeat limit is long here, as a node's death takes Slurm minutes to
    notice); once the node is back, the job's second start takes the attempt over."""
    settings = on_slurm.model_copy(
        update={
            "scheduler": on_slurm.scheduler.model_copy(update={"heartbeat_timeout_seconds": 600})
        }
    )
    write_pipeline(settings, NO_RETRY_SLEEPY_CALIB)
    announce_run(db, tmp_path / "raw", 201, 1)
    with running_scheduler(settings, db, SlurmExecutor(settings)):
        attempt_id, ext = running_calib(db, executor)
        assert kill_job_processes(ext) >= 3  # slurmstepd, the wrapper, the step
        with node_down("runwatch test: node died"):
            requeued(executor, ext)
        assert one_calib(db).state is AttemptState.RUNNING  # not decided yet
        start_now(ext)
        wait_for(lambda: all_completed(db, [201]), 180, "the run All Completed")
    check_exactly_once(db, tmp_path, {201: 1})
    (attempt,) = attempts_of_calib(db)
    assert (attempt.id, attempt.state, attempt.job_start) == (
        attempt_id,
        AttemptState.SUCCEEDED,
        1,
    )
    assert task_failures(db) == 0


def one_calib(db: Database) -> Attempt:
    (attempt,) = attempts_of_calib(db)
    return attempt


def task_failures(db: Database) -> int:
    with db.session() as s:
        return s.scalars(sa.select(Task.failures).where(Task.step == "calib")).one()


# -- kill -9 of the scheduler -------------------------------------------------------------

CRASH_RUNS = {310: 5, 311: 5}


def crash_config(root: Path, partition: str) -> str:
    return (
        CONFIG.format(root=root)
        + 'executor = "slurm"\n\n[slurm]\n'
        + f'partition = "{partition}"\nslots = 8\nqueue_ahead = 8\n'
    )


def jobs_running_under(root: Path) -> int:
    shown = subprocess.run(
        ["squeue", "--noheader", "--states=RUNNING", "--format=%Z"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return sum(Path(workdir).is_relative_to(root) for workdir in shown)


def test_kill_minus_nine_of_the_scheduler_while_jobs_run_in_slurm(
    on_slurm: Settings, tmp_path: Path
) -> None:
    rng = random.Random(20261129)
    root = tmp_path
    (root / "runwatch.toml").write_text(crash_config(root, on_slurm.slurm.partition))
    (root / "pipelines" / "chain.yaml").write_text(SLOW_CHAIN)
    db = Database(f"sqlite:///{root}/runwatch.db")
    db.upgrade()
    try:
        kills = kill_leaders_while_jobs_run(
            db, root, CRASH_RUNS, rng, lambda: jobs_running_under(root / "work") > 0
        )
    finally:
        cancel_jobs_under(root / "work")
    assert kills == 4
    check_exactly_once(db, root, CRASH_RUNS)
