"""The job wrapper outside the firewall: ``runwatch job run`` reporting through a real web
server (uvicorn on a free port) to a real database, the server going away under it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import RunStatus
from runwatch.config import Settings
from runwatch.db import Database
from runwatch.executors.base import JobInfo, JobRequest, JobStatus
from runwatch.jobs.environment import REPORT_RETRY_ENV, job_environment
from runwatch.jobs.report import SPOOL_NAME
from runwatch.jobs.wrapper import EXIT_OK, EXIT_UNRECORDED, run_attempt
from runwatch.workflow.models import Attempt, Task
from runwatch.workflow.states import AttemptState, TaskState
from tests.jobs.test_wrapper import attempt_row, make_attempt
from tests.waiting import wait_for
from tests.web.liveserver import LiveServer
from tests.web.test_attempts_api import serving
from tests.workflow.engine import announce_run, run_statuses, running_scheduler, write_pipeline

STEP = "sleep {sleep}; echo payload > out.dat; echo 'step done'"


@pytest.fixture
def live(settings: Settings, any_db: Database) -> Iterator[LiveServer]:
    with serving(settings, any_db) as server:
        yield server


@pytest.fixture
def live_sqlite(settings: Settings, db: Database) -> Iterator[LiveServer]:
    """The server on the SQLite ``db`` (the outage tests need no other database)."""
    with serving(settings, db) as server:
        yield server


def worker_env(job_env: dict[str, str], **extra: str) -> dict[str, str]:
    """A worker node's environment: its own basics and what the job carries, no database."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RUNWATCH_")}
    return {**base, **job_env, **extra}


def start_job(
    settings: Settings, attempt_id: int, log: Path, **extra: str
) -> subprocess.Popen[bytes]:
    """``runwatch job run ATTEMPT`` as a batch system starts it on a worker node."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = worker_env(job_environment(settings, attempt_id), **extra)
    assert "RUNWATCH_DATABASE_URL" not in env
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "runwatch", "job", "run", str(attempt_id)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def running_job(
    live: LiveServer, db: Database, tmp_path: Path, retry_s: float
) -> tuple[int, subprocess.Popen[bytes], Path]:
    """A one-second step's attempt, its job started and its attempt claimed."""
    attempt_id = make_attempt(
        db, tmp_path, STEP.format(sleep=1), outputs={"data": "out.dat"}, heartbeat_s=0.2
    )
    log = tmp_path / "job.log"
    job = start_job(live.settings, attempt_id, log, **{REPORT_RETRY_ENV: str(retry_s)})
    wait_for(lambda: attempt_row(db, attempt_id)[0].state is AttemptState.RUNNING, 60)
    return attempt_id, job, log


def report_waits(log: Path) -> bool:
    """The wrapper's first try to report failed and it now retries."""
    return log.exists() and "cannot reach" in log.read_text()


def finished(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def spool_of(db: Database, attempt_id: int) -> Path:
    attempt, _, _ = attempt_row(db, attempt_id)
    assert attempt.workdir is not None
    return Path(attempt.workdir) / SPOOL_NAME


def test_an_attempt_over_http_is_recorded_as_over_the_database(
    live: LiveServer, any_db: Database, tmp_path: Path
) -> None:
    outputs = {"data": "out.dat"}
    by_db = make_attempt(any_db, tmp_path, STEP.format(sleep=0), outputs=outputs)
    assert run_attempt(any_db, by_db, "worker-1") == EXIT_OK
    by_http = make_attempt(any_db, tmp_path, STEP.format(sleep=1), outputs=outputs, heartbeat_s=0.2)
    log = tmp_path / "job.log"
    assert finished(start_job(live.settings, by_http, log)) == EXIT_OK, log.read_text()
    db_attempt, db_task, db_outputs = attempt_row(any_db, by_db)
    attempt, task, outputs_seen = attempt_row(any_db, by_http)
    assert (attempt.state, task.state) == (AttemptState.SUCCEEDED, TaskState.DONE)
    assert (attempt.state, task.state) == (db_attempt.state, db_task.state)
    assert attempt.exit_code == db_attempt.exit_code == 0
    assert attempt.wall_s is not None and attempt.wall_s >= 1.0
    assert attempt.cpu_s is not None and attempt.peak_rss_mb is not None
    assert attempt.log_tail is not None and "step done" in attempt.log_tail
    assert attempt.heartbeat_at is not None and attempt.started_at is not None
    assert (attempt.heartbeat_at - attempt.started_at).total_seconds() > 0.4
    assert attempt.host  # the node's own name
    seen = [(o.name, o.size, o.adler32, Path(o.url).name) for o in outputs_seen]
    assert seen == [(o.name, o.size, o.adler32, Path(o.url).name) for o in db_outputs]
    assert Path(outputs_seen[0].url.removeprefix("file://")).read_text() == "payload\n"
    assert not spool_of(any_db, by_http).exists()
    assert "report delivered" not in log.read_text()  # delivered at once: never spooled


def test_the_server_stopped_during_the_job_gets_the_report_when_back(
    live_sqlite: LiveServer, db: Database, tmp_path: Path
) -> None:
    live = live_sqlite
    attempt_id, job, log = running_job(live, db, tmp_path, 120)
    try:
        live.stop()
        spool = spool_of(db, attempt_id)
        wait_for(lambda: report_waits(log), 60, "the report to wait for the server")
        assert job.poll() is None  # heartbeats failed, the step ran on; now it retries
        kept = json.loads(spool.read_text())
        assert kept["outcome"]["state"] == "succeeded" and kept["attempt_id"] == attempt_id
        assert oct(spool.stat().st_mode & 0o777) == "0o600"
        attempt, task, outputs = attempt_row(db, attempt_id)
        assert (attempt.state, task.state, outputs) == (
            AttemptState.RUNNING,
            TaskState.RUNNING,
            [],
        )
        live.start()
        assert finished(job) == EXIT_OK, log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
    attempt, task, outputs = attempt_row(db, attempt_id)
    assert (attempt.state, task.state) == (AttemptState.SUCCEEDED, TaskState.DONE)
    assert [o.name for o in outputs] == ["data"]
    with db.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Attempt)) == 1
    assert not spool.exists()
    text = log.read_text()
    assert "heartbeat failed" in text and "report delivered" in text


def test_a_server_down_past_the_deadline_leaves_the_report_for_a_later_flush(
    live_sqlite: LiveServer, db: Database, tmp_path: Path
) -> None:
    live = live_sqlite
    attempt_id, job, log = running_job(live, db, tmp_path, 1.5)
    live.stop()
    assert finished(job) == EXIT_UNRECORDED, log.read_text()
    spool = spool_of(db, attempt_id)
    assert spool.exists()
    assert f"the report stays in {spool}" in log.read_text()
    assert attempt_row(db, attempt_id)[0].state is AttemptState.RUNNING
    # Nobody there yet: the flush keeps the file and says so.
    flush = [sys.executable, "-m", "runwatch", "job", "flush", str(spool.parent)]
    assert subprocess.run(flush, capture_output=True, timeout=60).returncode == 3
    assert spool.exists()
    kept = spool.read_text()
    live.start()
    done = subprocess.run(flush, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    attempt, task, outputs = attempt_row(db, attempt_id)
    assert (attempt.state, task.state) == (AttemptState.SUCCEEDED, TaskState.DONE)
    assert [o.name for o in outputs] == ["data"]
    assert not spool.exists()
    # The same report again (a copy of the file flushed twice): no error, no change.
    spool.write_text(kept)
    again = subprocess.run(flush, capture_output=True, timeout=60)
    assert again.returncode == 0, again.stderr.decode()
    assert not spool.exists()
    _, task, after = attempt_row(db, attempt_id)
    assert task.state is TaskState.DONE and [o.id for o in after] == [o.id for o in outputs]


def test_a_job_that_never_reaches_the_server_claims_nothing(
    live_sqlite: LiveServer, db: Database, tmp_path: Path
) -> None:
    live = live_sqlite
    attempt_id = make_attempt(db, tmp_path, "touch ran")
    live.stop()
    log = tmp_path / "job.log"
    job = start_job(live.settings, attempt_id, log, **{REPORT_RETRY_ENV: "1"})
    assert finished(job) == EXIT_UNRECORDED, log.read_text()
    attempt, task, _ = attempt_row(db, attempt_id)
    assert (attempt.state, task.state) == (AttemptState.SUBMITTED, TaskState.SUBMITTED)
    assert "cannot claim it" in log.read_text()


def test_a_database_outage_behind_the_server_is_waited_out(
    live_sqlite: LiveServer, db: Database, tmp_path: Path
) -> None:
    """The server answers 503 while its database is away; the worker retries."""
    live = live_sqlite
    attempt_id, job, log = running_job(live, db, tmp_path, 120)
    app = live.app
    gone = Database("postgresql+psycopg://nobody:none@127.0.0.1:9/none")
    try:
        app.state.db = gone
        wait_for(lambda: report_waits(log), 60, "the report to wait for the database")
        assert spool_of(db, attempt_id).exists()
        app.state.db = db
        assert finished(job) == EXIT_OK, log.read_text()
    finally:
        app.state.db = db
        gone.dispose()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
    assert "HTTP 503" in log.read_text()
    _, task, outputs = attempt_row(db, attempt_id)
    assert task.state is TaskState.DONE and [o.name for o in outputs] == ["data"]


# -- the scheduler with worker nodes outside the firewall ---------------------------------


class WorkerNodes:
    """A stand-in for a batch system whose worker nodes are outside the firewall: it runs
    each job's ``argv`` with the job's ``env`` (and none of this process's runwatch
    variables, so no database URL) as a process on this machine. A second machine cannot
    be had here; what matters to the wrapper, that the server is all it can reach, holds.
    External ids are pids; a job this object did not start is GONE."""

    name = "nodes"

    def __init__(self) -> None:
        self.jobs: dict[str, subprocess.Popen[bytes]] = {}
        self.envs: list[dict[str, str]] = []

    def capacity(self) -> int:
        return 4

    def queue_ahead(self) -> int:
        return 0

    def submit(self, jobs: Sequence[JobRequest]) -> list[str]:
        ids = []
        for job in jobs:
            Path(job.log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(job.log_path, "ab") as log:
                proc = subprocess.Popen(
                    job.argv,
                    env=worker_env(job.env),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.jobs[str(proc.pid)] = proc
            self.envs.append(dict(job.env))
            ids.append(str(proc.pid))
        return ids

    def poll(self, external_ids: Sequence[str]) -> dict[str, JobInfo]:
        answer = {}
        for external_id in external_ids:
            proc = self.jobs.get(external_id)
            code = None if proc is None else proc.poll()
            if proc is not None and code is None:
                answer[external_id] = JobInfo(JobStatus.RUNNING)
            else:
                answer[external_id] = JobInfo(JobStatus.GONE, exit_code=code)
        return answer

    def cancel(self, external_id: str) -> None:
        proc = self.jobs.get(external_id)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        for external_id in list(self.jobs):
            self.cancel(external_id)
            self.jobs[external_id].wait(timeout=30)


def test_the_scheduler_runs_the_chain_on_nodes_that_report_over_http(
    live: LiveServer, any_db: Database, tmp_path: Path
) -> None:
    settings = live.settings
    write_pipeline(settings)
    announce_run(any_db, tmp_path / "raw", 300, 2)
    nodes = WorkerNodes()
    with running_scheduler(settings, any_db, nodes):
        wait_for(
            lambda: run_statuses(any_db).get(300) is RunStatus.ALL_COMPLETED,
            180,
            "run 300 All Completed",
        )
        # The last job's wrapper may still be on its way out after its report.
        wait_for(lambda: all(p.poll() is not None for p in nodes.jobs.values()), 60, "jobs end")
    assert [proc.returncode for proc in nodes.jobs.values()] == [EXIT_OK] * 7
    with any_db.session() as s:
        tasks = s.scalars(sa.select(Task)).all()
        assert len(tasks) == 7 and {t.state for t in tasks} == {TaskState.DONE}
        attempts = s.scalars(sa.select(Attempt)).all()
        assert len(attempts) == 7 and {a.state for a in attempts} == {AttemptState.SUCCEEDED}
        assert {a.executor for a in attempts} == {"nodes"}
    # Each job was given its own token and the server's address, never the database.
    assert len({env["RUNWATCH_ATTEMPT_TOKEN"] for env in nodes.envs}) == 7
    for env in nodes.envs:
        assert env["RUNWATCH_API_URL"] == live.url
        assert "RUNWATCH_DATABASE_URL" not in env and any_db.url not in env.values()
