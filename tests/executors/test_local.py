"""The local executor with real wrappers, real processes and a real database."""

from __future__ import annotations

import os
import signal
import statistics
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
from runwatch.executors.local import LocalExecutor, LocalJob
from runwatch.workflow.states import AttemptState, TaskState
from tests.jobs.test_wrapper import attempt_row, make_attempt, wait_for_file
from tests.waiting import wait_for

ZYGOTE = "runwatch.executors.zygote"


@pytest.fixture
def executor(settings: Settings) -> Iterator[LocalExecutor]:
    executor = LocalExecutor(settings)
    try:
        yield executor
    finally:
        executor.close()


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


def cmdline(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline())


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (an orphan's exit is reaped by init, maybe late)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def zombies_of(*pids: int) -> list[int]:
    found = []
    for pid in pids:
        try:
            children = psutil.Process(pid).children()
        except psutil.NoSuchProcess:
            continue
        for child in children:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    found.append(child.pid)
            except psutil.NoSuchProcess:
                continue
    return found


def test_capacity_is_the_slots_or_the_cpu_count(settings: Settings) -> None:
    assert settings.scheduler.slots == 2
    executor = LocalExecutor(settings)
    try:
        assert executor.capacity() == 2 and executor.name == "local"
        assert isinstance(executor, Executor)
    finally:
        executor.close()
    unlimited = settings.model_copy(update={"scheduler": SchedulerSettings(slots=0)})
    executor = LocalExecutor(unlimited)
    try:
        assert executor.capacity() == os.cpu_count()
    finally:
        executor.close()


def test_submit_poll_running_then_gone_and_the_job_is_done(
    executor: LocalExecutor, db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(db, tmp_path, "sleep 0.5; echo $PWD > out", outputs={"out": "out"})
    [external_id] = executor.submit([request(db, attempt_id, tmp_path)])
    job = LocalJob.parse(external_id)
    assert job is not None and external_id.startswith(f"local:{job.pid}:")
    assert status(executor, external_id) is JobStatus.RUNNING
    assert ZYGOTE in cmdline(job.pid), "started by the zygote"
    assert psutil.Process(job.pid).ppid() == executor.zygote.pid if executor.zygote else False
    assert os.getpgid(job.pid) != os.getpgrp() and os.getsid(job.pid) != os.getsid(0)
    wait_for(lambda: status(executor, external_id) is JobStatus.GONE, 10, "the job to end")
    attempt, task, outputs = attempt_row(db, attempt_id)
    assert (attempt.state, task.state) == (AttemptState.SUCCEEDED, TaskState.DONE)
    assert [o.name for o in outputs] == ["out"]
    log = Path(tmp_path / "work" / "logs" / f"attempt-{attempt_id}.log").read_text()
    assert f"attempt {attempt_id}: claimed" in log and "succeeded" in log


def test_a_new_executor_polls_the_jobs_of_an_old_one(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(db, tmp_path, "sleep 1")
    first = LocalExecutor(settings)
    try:
        [external_id] = first.submit([request(db, attempt_id, tmp_path)])
    finally:
        first.close()
    second = LocalExecutor(settings)
    try:
        me = psutil.Process()
        stale = f"local:{me.pid}:{me.create_time() - 100:.3f}"  # our pid, another process
        infos = second.poll([external_id, stale, "local:x:y", "slurm:123"])
        assert infos[external_id].status is JobStatus.RUNNING
        assert infos[stale].status is JobStatus.GONE
        assert infos["local:x:y"].status is JobStatus.GONE
        assert infos["slurm:123"].reason == "not a local job id: slurm:123"
        wait_for(lambda: status(second, external_id) is JobStatus.GONE, 10, "the job to end")
    finally:
        second.close()
    assert attempt_row(db, attempt_id)[0].state is AttemptState.SUCCEEDED


def test_cancel_kills_the_wrapper_and_its_step(
    executor: LocalExecutor, db: Database, tmp_path: Path
) -> None:
    pid_file = tmp_path / "step.pid"
    attempt_id = make_attempt(db, tmp_path, f"echo $$ > {pid_file}; sleep 30")
    [external_id] = executor.submit([request(db, attempt_id, tmp_path)])
    step = psutil.Process(int(wait_for_file(pid_file)))
    started = time.monotonic()
    executor.cancel(external_id)
    assert time.monotonic() - started < 0.5, "cancel does not wait"
    wait_for(lambda: status(executor, external_id) is JobStatus.GONE, 10, "the wrapper to end")
    wait_for(lambda: not step.is_running(), 5, "the step to end")
    attempt, task, _ = attempt_row(db, attempt_id)
    assert attempt.state is AttemptState.FAILED and attempt.reason == "killed (SIGTERM)"
    assert task.state is TaskState.RETRYING
    executor.cancel(external_id)  # already gone: no error
    executor.cancel("local:1:0.000")  # init, but not the same process: left alone
    executor.cancel("not-an-id")


def test_cancel_escalates_to_sigkill_for_every_group(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    """A job that ignores SIGTERM, with a child in a group of its own."""
    pid_file = tmp_path / "child.pid"
    script = (
        f"trap '' TERM; setsid bash -c 'trap \"\" TERM; echo $$ > {pid_file}; sleep 30' & sleep 30"
    )
    job = JobRequest(
        attempt_id=0,
        task_key="stubborn",
        threads=1,
        memory_mb=0,
        timeout_s=0,
        workdir=str(tmp_path),
        log_path=str(tmp_path / "stubborn.log"),
        argv=("bash", "-c", script),
    )
    executor.cancel_grace_s = 0.3
    [external_id] = executor.submit([job])
    child = psutil.Process(int(wait_for_file(pid_file)))
    time.sleep(0.1)
    executor.cancel(external_id)
    time.sleep(0.15)
    assert status(executor, external_id) is JobStatus.RUNNING, "SIGTERM is ignored"
    wait_for(lambda: status(executor, external_id) is JobStatus.GONE, 5, "the SIGKILL")
    wait_for(lambda: not child.is_running(), 5, "the child's group to be killed")
    info = executor.poll([external_id])[external_id]
    assert info.status is JobStatus.GONE


def test_close_leaves_running_wrappers_alone(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(db, tmp_path, "sleep 0.8; touch out", outputs={"out": "out"})
    executor = LocalExecutor(settings)
    [external_id] = executor.submit([request(db, attempt_id, tmp_path)])
    assert executor.zygote is not None
    zygote = psutil.Process(executor.zygote.pid)
    executor.close()
    assert not zygote.is_running()
    job = LocalJob.parse(external_id)
    assert job is not None and job.running()
    wait_for(lambda: not job.running(), 10, "the wrapper to finish")
    assert attempt_row(db, attempt_id)[0].state is AttemptState.SUCCEEDED


def test_killed_zygote_falls_back_to_subprocesses_then_restarts(
    executor: LocalExecutor, db: Database, tmp_path: Path
) -> None:
    assert executor.zygote is not None
    first = make_attempt(db, tmp_path, "true")
    [first_id] = executor.submit([request(db, first, tmp_path)])
    old_zygote = executor.zygote.pid
    os.kill(old_zygote, signal.SIGKILL)
    wait_for(lambda: executor.zygote is not None and executor.zygote.proc.poll() is not None, 5, "")
    second, third = make_attempt(db, tmp_path, "sleep 0.3"), make_attempt(db, tmp_path, "sleep 0.3")
    ids = executor.submit([request(db, a, tmp_path) for a in (second, third)])
    for external_id in ids:
        job = LocalJob.parse(external_id)
        assert job is not None
        line = cmdline(job.pid)
        assert "runwatch.jobs.wrapper" in line, (line, psutil.Process(job.pid).status())
        assert ZYGOTE not in line
    assert executor.zygote is None
    fourth = make_attempt(db, tmp_path, "sleep 0.3")
    [fourth_id] = executor.submit([request(db, fourth, tmp_path)])
    assert executor.zygote is not None and executor.zygote.pid != old_zygote
    job = LocalJob.parse(fourth_id)
    assert job is not None and ZYGOTE in cmdline(job.pid)
    for external_id in [first_id, *ids, fourth_id]:
        wait_for(lambda e=external_id: status(executor, e) is JobStatus.GONE, 10, "jobs to end")
    for attempt_id in (first, second, third, fourth):
        assert attempt_row(db, attempt_id)[0].state is AttemptState.SUCCEEDED
    assert executor.poll(ids)[ids[0]].exit_code in (0, None)


def test_no_zombies_are_left(
    executor: LocalExecutor, settings: Settings, db: Database, tmp_path: Path
) -> None:
    attempts = [make_attempt(db, tmp_path, "true") for _ in range(4)]
    ids = executor.submit([request(db, a, tmp_path) for a in attempts[:2]])
    assert executor.zygote is not None
    zygote = executor.zygote.pid
    plain = LocalExecutor(settings, use_zygote=False)
    try:
        assert plain.zygote is None
        ids += plain.submit([request(db, a, tmp_path) for a in attempts[2:]])
        for external_id in ids:
            wait_for(lambda e=external_id: status(plain, e) is JobStatus.GONE, 10, "the end")
    finally:
        plain.close()
    wait_for(lambda: not zombies_of(os.getpid(), zygote), 2, "no zombie children")
    for external_id in ids:
        job = LocalJob.parse(external_id)
        assert job is not None
        wait_for(lambda j=job: not psutil.pid_exists(j.pid), 2, f"pid {job.pid} reaped")


SCHEDULER_THAT_DIES = textwrap.dedent(
    """
    import sys
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
        argv=("runwatch", "job", "run", str(attempt_id)),
        env={"RUNWATCH_DATABASE_URL": db_url},
    )])
    print(external_id, executor.zygote.pid, flush=True)
    import time
    time.sleep(60)
    """
)


def test_a_killed_scheduler_kills_neither_jobs_nor_leaves_its_zygote(
    db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(db, tmp_path, "sleep 2; touch out", outputs={"out": "out"})
    scheduler = subprocess.Popen(
        [sys.executable, "-c", SCHEDULER_THAT_DIES, str(tmp_path), db.url, str(attempt_id)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert scheduler.stdout is not None
        external_id, zygote_pid = scheduler.stdout.readline().split()
        zygote = psutil.Process(int(zygote_pid))
        assert ZYGOTE in " ".join(zygote.cmdline())
        scheduler.kill()
        scheduler.wait()
    finally:
        scheduler.kill()
        scheduler.wait()
        if scheduler.stdout is not None:
            scheduler.stdout.close()
    wait_for(lambda: not alive(zygote), 1, "the zygote to exit with its scheduler")
    job = LocalJob.parse(external_id)
    assert job is not None and job.running(), "the job outlives its scheduler"
    wait_for(lambda: not job.running(), 10, "the job to finish")
    assert attempt_row(db, attempt_id)[0].state is AttemptState.SUCCEEDED


def started(log: Path, attempt_id: int) -> bool:
    return log.exists() and f"attempt {attempt_id} was given up" in log.read_text()


@pytest.mark.slow
def test_the_zygote_starts_wrappers_much_faster_than_subprocesses(
    executor: LocalExecutor, settings: Settings, db: Database, tmp_path: Path
) -> None:
    """Time from submission until the wrapper runs (it finds no attempt and says so)."""

    def start_times(executor: LocalExecutor, first: int, count: int) -> list[float]:
        times = []
        for attempt_id in range(first, first + count):
            job = request(db, attempt_id, tmp_path)
            begin = time.perf_counter()
            executor.submit([job])
            wait_for(lambda a=attempt_id, j=job: started(Path(j.log_path), a), 10, "start")
            times.append(time.perf_counter() - begin)
        return times

    start_times(executor, 800_000, 1)  # the zygote is ready
    zygote = statistics.median(start_times(executor, 900_000, 10))
    subprocesses = LocalExecutor(settings, use_zygote=False)
    try:
        plain = statistics.median(start_times(subprocesses, 910_000, 10))
    finally:
        subprocesses.close()
    assert zygote * 5 < plain, (zygote, plain)


def test_a_job_the_zygote_cannot_start_raises_and_keeps_the_zygote(
    executor: LocalExecutor, db: Database, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    bad = make_attempt(db, tmp_path, "true")
    job = request(db, bad, tmp_path)
    job = JobRequest(**{**job.__dict__, "log_path": str(blocker / "attempt.log")})
    executor.submit([request(db, make_attempt(db, tmp_path, "true"), tmp_path)])
    assert executor.zygote is not None
    zygote = executor.zygote.pid
    with pytest.raises(FileExistsError):
        executor.submit([job])
    assert executor.zygote is not None and executor.zygote.pid == zygote
    good = make_attempt(db, tmp_path, "true")
    [external_id] = executor.submit([request(db, good, tmp_path)])
    wait_for(lambda: status(executor, external_id) is JobStatus.GONE, 10, "the job to end")
    assert attempt_row(db, good)[0].state is AttemptState.SUCCEEDED
