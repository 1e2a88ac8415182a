"""The local executor and its workers, with real processes and a real database."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from runwatch.config import SchedulerSettings, Settings
from runwatch.db import Database
from runwatch.executors.base import Executor, JobRequest, JobStatus
from runwatch.executors.local import LocalExecutor, parse_external_id
from runwatch.jobs.worker import (
    attempt_lock,
    attempt_lock_path,
    runtime_folder,
    sweep_attempt_locks,
    worker_lock_path,
)
from runwatch.workflow.states import AttemptState, TaskState
from tests.jobs.test_wrapper import attempt_row, make_attempt, wait_for_file
from tests.waiting import wait_for

WORKER = "runwatch.jobs.worker"


@pytest.fixture
def executor(settings: Settings) -> Iterator[LocalExecutor]:
    executor = LocalExecutor(settings)
    try:
        yield executor
    finally:
        executor.close()
        wait_for(lambda: not worker_pids(executor), 15, "the workers to drain")


def request(db: Database, attempt_id: int, root: Path) -> JobRequest:
    return JobRequest(
        attempt_id=attempt_id,
        task_key=f"t{attempt_id}",
        threads=1,
        memory_mb=0,
        timeout_s=0,
        workdir=str(root / "work" / f"a{attempt_id}"),
        log_path=str(root / "work" / "logs" / f"attempt-{attempt_id}.log"),
        argv=("runwatch", "job", "run", str(attempt_id)),
        env={"RUNWATCH_DATABASE_URL": db.url},
    )


def status(executor: Executor, external_id: str) -> JobStatus:
    return executor.poll([external_id])[external_id].status


def started_at(db: Database, attempt_id: int) -> dt.datetime:
    attempt = attempt_row(db, attempt_id)[0]
    assert attempt.started_at is not None
    return attempt.started_at


def state(db: Database, attempt_id: int) -> AttemptState:
    return attempt_row(db, attempt_id)[0].state


def worker_pids(executor: LocalExecutor) -> list[int]:
    """Live workers of this executor's folder, from their lock files."""
    pids = []
    for index in range(executor.slots):
        try:
            proc = psutil.Process(int(worker_lock_path(executor.runtime, index).read_text()))
            if WORKER in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except (OSError, ValueError, psutil.Error):
            continue
    return pids


def test_capacity_is_the_slots_or_the_cpu_count(settings: Settings) -> None:
    assert settings.scheduler.slots == 2
    executor = LocalExecutor(settings)
    try:
        assert executor.capacity() == 2 and executor.queue_ahead() == 4
        assert executor.name == "local" and isinstance(executor, Executor)
    finally:
        executor.close()
    unlimited = settings.model_copy(
        update={"scheduler": SchedulerSettings(slots=0), "work_root": settings.work_root + "2"}
    )
    executor = LocalExecutor(unlimited)
    try:
        assert executor.capacity() == os.cpu_count()
    finally:
        executor.close()


def test_a_submitted_attempt_runs_in_a_worker_queued_running_then_gone(
    executor: LocalExecutor, db: Database, tmp_path: Path
) -> None:
    pid_file = tmp_path / "step.pid"
    attempt_id = make_attempt(
        db, tmp_path, f"echo $$ > {pid_file}; sleep 0.5; echo $PWD > out", outputs={"out": "out"}
    )
    assert status(executor, f"local:{attempt_id}") is JobStatus.QUEUED, "not started yet"
    [external_id] = executor.submit([request(db, attempt_id, tmp_path)])
    assert external_id == f"local:{attempt_id}" and parse_external_id(external_id) == attempt_id
    step = psutil.Process(int(wait_for_file(pid_file)))
    assert status(executor, external_id) is JobStatus.RUNNING
    worker = step.parent()
    assert worker is not None and WORKER in " ".join(worker.cmdline())
    assert worker.pid in worker_pids(executor)
    assert os.getsid(worker.pid) != os.getsid(0), "workers outlive a scheduler's session"
    assert os.getpgid(step.pid) == step.pid, "the step has a process group of its own"
    wait_for(lambda: state(db, attempt_id) is AttemptState.SUCCEEDED, 10, "the attempt to end")
    attempt, task, outputs = attempt_row(db, attempt_id)
    assert task.state is TaskState.DONE and [o.name for o in outputs] == ["out"]
    # The worker lets go of the attempt's lock just after recording it.
    wait_for(lambda: status(executor, external_id) is JobStatus.GONE, 5, "the lock to go")
    assert attempt.log_path is not None
    log = Path(attempt.log_path).read_text()
    assert f"attempt {attempt_id}: claimed" in log and "succeeded" in log


def test_workers_run_one_job_per_slot_and_take_queued_jobs_oldest_first(
    executor: LocalExecutor, db: Database, tmp_path: Path
) -> None:
    spans = tmp_path / "spans"
    command = f"echo start $RUNWATCH_ATTEMPT $(date +%s.%N) >> {spans}; sleep 0.3; "
    command += f"echo end $RUNWATCH_ATTEMPT $(date +%s.%N) >> {spans}"
    attempts = [make_attempt(db, tmp_path, command) for _ in range(5)]
    executor.submit([request(db, a, tmp_path) for a in attempts])
    for attempt_id in attempts:
        wait_for(lambda a=attempt_id: state(db, a) is AttemptState.SUCCEEDED, 20, "all to end")
    events = [line.split() for line in spans.read_text().splitlines()]
    # The order of claims, from the database (two commands started a moment apart may
    # write their lines in either order on a busy machine).
    claimed = sorted(attempts, key=lambda a: started_at(db, a))
    assert sorted(claimed[:2]) == attempts[:2] and claimed[2:] == sorted(claimed[2:])
    running = peak = 0
    for kind, _, _ in sorted(events, key=lambda e: float(e[2])):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2, "two slots: two jobs at once, never more"


def test_a_new_executor_sees_the_jobs_and_workers_of_an_old_one(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    pid_file = tmp_path / "step.pid"
    attempt_id = make_attempt(db, tmp_path, f"echo $$ > {pid_file}; sleep 1")
    first = LocalExecutor(settings)
    [external_id] = first.submit([request(db, attempt_id, tmp_path)])
    wait_for_file(pid_file)
    workers = sorted(worker_pids(first))
    second = LocalExecutor(settings)  # as after a scheduler's restart
    try:
        assert sorted(worker_pids(second)) == workers, "no second set of workers"
        infos = second.poll([external_id, "local:x", "slurm:123", "local:1:2.5"])
        assert infos[external_id].status is JobStatus.RUNNING
        assert infos["slurm:123"].status is JobStatus.GONE
        assert infos["slurm:123"].reason == "not a local job id: slurm:123"
        assert infos["local:x"].status is infos["local:1:2.5"].status is JobStatus.GONE
        wait_for(lambda: state(db, attempt_id) is AttemptState.SUCCEEDED, 10, "the end")
    finally:
        second.close()
        wait_for(lambda: not worker_pids(second), 15, "the workers to drain")


def test_cancel_kills_the_step_and_the_worker_carries_on(
    executor: LocalExecutor, db: Database, tmp_path: Path
) -> None:
    pid_file = tmp_path / "step.pid"
    attempt_id = make_attempt(db, tmp_path, f"echo $$ > {pid_file}; sleep 30")
    [external_id] = executor.submit([request(db, attempt_id, tmp_path)])
    step = psutil.Process(int(wait_for_file(pid_file)))
    wait_for(lambda: attempt_lock_path(executor.runtime, attempt_id).read_text(), 5, "pid noted")
    started = time.monotonic()
    executor.cancel(external_id)
    assert time.monotonic() - started < 0.5, "cancel does not wait"
    wait_for(lambda: not step.is_running(), 5, "the step to end")
    wait_for(lambda: status(executor, external_id) is JobStatus.GONE, 10, "the job to end")
    attempt, task, _ = attempt_row(db, attempt_id)
    assert attempt.state is AttemptState.FAILED
    assert attempt.reason == "killed by signal SIGTERM"
    assert task.state is TaskState.RETRYING
    executor.cancel(external_id)  # already gone: no error
    executor.cancel("not-an-id")
    executor.cancel("local:999999")  # never started
    after = make_attempt(db, tmp_path, "true")
    executor.submit([request(db, after, tmp_path)])
    wait_for(lambda: state(db, after) is AttemptState.SUCCEEDED, 10, "the next job")


def test_cancel_escalates_to_sigkill(executor: LocalExecutor, db: Database, tmp_path: Path) -> None:
    """A step that ignores SIGTERM, with a child in its group."""
    pid_file = tmp_path / "child.pid"
    script = f"trap '' TERM; (trap '' TERM; echo $BASHPID > {pid_file}; sleep 30) & sleep 30"
    attempt_id = make_attempt(db, tmp_path, script)
    executor.cancel_grace_s = 0.3
    [external_id] = executor.submit([request(db, attempt_id, tmp_path)])
    child = psutil.Process(int(wait_for_file(pid_file)))
    wait_for(lambda: attempt_lock_path(executor.runtime, attempt_id).read_text(), 5, "pid noted")
    executor.cancel(external_id)
    time.sleep(0.15)
    assert status(executor, external_id) is JobStatus.RUNNING, "SIGTERM is ignored"
    wait_for(lambda: not child.is_running(), 5, "the SIGKILL of the whole group")
    wait_for(lambda: status(executor, external_id) is JobStatus.GONE, 5, "the job to end")
    assert attempt_row(db, attempt_id)[0].reason == "killed by signal SIGKILL"


def test_close_drains_the_workers(settings: Settings, db: Database, tmp_path: Path) -> None:
    pid_file = tmp_path / "step.pid"
    attempt_id = make_attempt(
        db, tmp_path, f"echo $$ > {pid_file}; sleep 0.8; touch out", outputs={"out": "out"}
    )
    executor = LocalExecutor(settings)
    try:
        executor.submit([request(db, attempt_id, tmp_path)])
        wait_for_file(pid_file)
        wait_for(lambda: len(worker_pids(executor)) == 2, 15, "both workers")
        workers = [psutil.Process(pid) for pid in worker_pids(executor)]
    finally:
        executor.close()
    assert state(db, attempt_id) is AttemptState.RUNNING, "the running job carries on"
    wait_for(lambda: not any(w.is_running() for w in workers), 15, "the workers to exit")
    assert state(db, attempt_id) is AttemptState.SUCCEEDED


def test_a_killed_worker_loses_its_job_and_is_replaced(
    executor: LocalExecutor, db: Database, tmp_path: Path
) -> None:
    pid_file = tmp_path / "step.pid"
    attempt_id = make_attempt(db, tmp_path, f"echo $$ > {pid_file}; sleep 30")
    [external_id] = executor.submit([request(db, attempt_id, tmp_path)])
    step = psutil.Process(int(wait_for_file(pid_file)))
    worker = step.parent()
    assert worker is not None
    wait_for(lambda: len(worker_pids(executor)) == 2, 15, "both workers")
    worker.kill()
    worker.wait(5)
    info = executor.poll([external_id])[external_id]
    assert info.status is JobStatus.GONE and info.reason == "its worker died"
    # Each tick's poll replaces dead workers.
    wait_for(
        lambda: executor.poll([external_id]) and len(worker_pids(executor)) == 2, 15, "a new worker"
    )
    assert worker.pid not in worker_pids(executor)
    step.kill()  # the orphaned step; the scheduler would find the attempt LOST
    after = make_attempt(db, tmp_path, "true")
    executor.submit([request(db, after, tmp_path)])
    wait_for(lambda: state(db, after) is AttemptState.SUCCEEDED, 10, "the next job")


def test_an_idle_worker_exits_and_comes_back_on_the_next_submission(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    executor = LocalExecutor(settings, idle_exit_s=0.5)
    try:
        wait_for(lambda: len(worker_pids(executor)) == 2, 15, "the workers to start")
        wait_for(lambda: not worker_pids(executor), 15, "idle workers to exit")
        assert not [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE], (
            "exited workers are reaped"
        )
        attempt_id = make_attempt(db, tmp_path, "true")
        executor.submit([request(db, attempt_id, tmp_path)])
        wait_for(lambda: state(db, attempt_id) is AttemptState.SUCCEEDED, 15, "the job to run")
    finally:
        executor.close()


def test_a_second_worker_with_the_same_index_exits_at_once(
    executor: LocalExecutor, db: Database
) -> None:
    wait_for(lambda: len(worker_pids(executor)) == 2, 15, "the workers to start")
    env = {**os.environ, "RUNWATCH_DATABASE_URL": db.url}
    argv = [sys.executable, "-m", WORKER, f"--home={executor.home}", "--index=0", "--slots=2"]
    argv.append(f"--runtime={executor.runtime}")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "worker 0 already runs" in done.stderr


def test_the_runtime_folder_is_in_memory_one_per_work_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = runtime_folder(tmp_path / "a"), runtime_folder(tmp_path / "b")
    assert first != second and first == runtime_folder(tmp_path / "x" / ".." / "a")
    if Path("/dev/shm").is_dir():
        assert first.parent == Path("/dev/shm") and str(os.getuid()) in first.name
    # Without /dev/shm: the work root's own folder.
    monkeypatch.setattr(os, "access", lambda *_args, **_kwargs: False)
    assert runtime_folder(tmp_path / "a") == tmp_path / "a" / "local"


def test_attempt_locks_are_taken_once_and_swept_when_old(tmp_path: Path) -> None:
    with attempt_lock(tmp_path, 7) as first:
        assert first is not None
        with attempt_lock(tmp_path, 7) as second:
            assert second is None, "held by another worker"
        assert sweep_attempt_locks(tmp_path, 0) == 0, "a held lock is not swept"
    with attempt_lock(tmp_path, 7) as again:
        assert again is not None, "a lock left by an ended worker is taken over"
    path = attempt_lock_path(tmp_path, 7)
    assert sweep_attempt_locks(tmp_path, 3600) == 0 and path.exists(), "recent: kept"
    old = time.time() - 7200
    os.utime(path, (old, old))
    assert sweep_attempt_locks(tmp_path, 3600) == 1 and not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [], "no temporary files left"


SCHEDULER_THAT_DIES = textwrap.dedent(
    """
    import sys, time
    from runwatch.config import SchedulerSettings, Settings
    from runwatch.executors.base import JobRequest
    from runwatch.executors.local import LocalExecutor

    root, db_url, attempt_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    settings = Settings.model_construct(
        database_url=db_url, data_root=root + "/data", work_root=root + "/work",
        pipelines=root + "/pipelines", scheduler=SchedulerSettings(slots=1),
    )
    executor = LocalExecutor(settings)
    [external_id] = executor.submit([JobRequest(
        attempt_id=attempt_id, task_key="t", threads=1, memory_mb=0, timeout_s=0,
        workdir=root + "/w", log_path=root + "/work/job.log",
        argv=("runwatch", "job", "run", str(attempt_id)), env={},
    )])
    print(external_id, flush=True)
    time.sleep(60)
    """
)


def test_a_killed_scheduler_kills_no_job(db: Database, tmp_path: Path) -> None:
    pid_file = tmp_path / "step.pid"
    attempt_id = make_attempt(
        db, tmp_path, f"echo $$ > {pid_file}; sleep 1; touch out", outputs={"out": "out"}
    )
    scheduler = subprocess.Popen(
        [sys.executable, "-c", SCHEDULER_THAT_DIES, str(tmp_path), db.url, str(attempt_id)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert scheduler.stdout is not None
        assert scheduler.stdout.readline().strip() == f"local:{attempt_id}"
        step = psutil.Process(int(wait_for_file(pid_file)))
        scheduler.send_signal(signal.SIGKILL)
        scheduler.wait()
        assert step.is_running(), "the job outlives its scheduler"
        wait_for(lambda: state(db, attempt_id) is AttemptState.SUCCEEDED, 15, "the job to end")
    finally:
        scheduler.kill()
        scheduler.wait()
        if scheduler.stdout is not None:
            scheduler.stdout.close()
        for path in runtime_folder(tmp_path / "work").glob("worker-*.lock"):
            pid = path.read_text()
            if pid.isdigit():
                os.kill(int(pid), signal.SIGTERM)
