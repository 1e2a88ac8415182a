"""Crash test: kill -9 schedulers and local workers at random moments while 50 files of two
runs are processed; every task must end exactly once, every output exist once and whole.

Two scheduler processes run all along (one active, one waiting on the lease); each round
kills the active one, and sometimes workers in the middle of a job, and starts a fresh
standby. The next scheduler's executor replaces the killed workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import RunStatus
from runwatch.db import Database, utcnow
from runwatch.ingest.service import receive
from runwatch.jobs.worker import runtime_folder
from runwatch.storage.checksum import adler32_file
from runwatch.workflow.models import Attempt, SchedulerLease, Task, TaskOutput
from runwatch.workflow.states import AttemptState, TaskState
from tests.waiting import wait_for
from tests.workflow.engine import CHAIN, message, raw_file, run_statuses

pytestmark = pytest.mark.slow

# Each step takes a little while, so that kills land in the middle of work.
SLOW_CHAIN = (
    CHAIN.replace('command: "', 'command: "sleep 0.3; ')
    .replace("retries: 2", "retries: 50")
    .replace("    outputs: {rec:", "    retries: 50\n    outputs: {rec:")
    .replace("    outputs: {hist:", "    retries: 50\n    outputs: {hist:")
    .replace("    outputs: {merged:", "    retries: 50\n    outputs: {merged:")
)

CONFIG = """\
database_url = "sqlite:///{root}/runwatch.db"
data_root = "{root}/data"
work_root = "{root}/work"
pipelines = "{root}/pipelines"

[scheduler]
slots = 2
tick_seconds = 0.2
backoff_seconds = 0.05
backoff_max_seconds = 0.2
heartbeat_timeout_seconds = 5
submit_grace_seconds = 2
lease_seconds = 1.5
"""

RUNS = {300: 25, 301: 25}


def start_scheduler(root: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RUNWATCH_CONFIG": str(root / "runwatch.toml")}
    with open(root / "schedulers.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "runwatch", "scheduler"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def active_pid(db: Database) -> int | None:
    with db.session() as s:
        lease = s.get(SchedulerLease, "scheduler")
        if lease is None or lease.expires_at < utcnow():
            return None
        return int(lease.holder.split(":")[1])


def living_active_pid(db: Database, timeout: float) -> int:
    """The pid of the scheduler holding the lease, waiting until a living one does."""
    found: list[int] = []

    def leading() -> bool:
        pid = active_pid(db)
        if pid is None or not _alive(pid):
            return False
        found.append(pid)
        return True

    wait_for(leading, timeout, "a living scheduler holding the lease")
    return found[-1]


def _alive(pid: int) -> bool:
    """Running (a killed scheduler stays a zombie until the test reaps it)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def busy_workers(root: Path) -> list[int]:
    """Workers in the middle of a job: those named in the attempt lock files that are
    held (see runwatch.jobs.worker: a held file holds 'COMMAND_PID WORKER_PID')."""
    pids = []
    for path in runtime_folder(root / "work").glob("attempt-*.lock"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # the job may just end
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                continue  # not held: that attempt ended
            except BlockingIOError:
                pids.append(int(os.pread(fd, 64, 0).split()[1]))
            finally:
                os.close(fd)
    return pids


def workers(root: Path) -> list[int]:
    """Every live worker of this test (pids from their lock files)."""
    pids = []
    for path in runtime_folder(root / "work").glob("worker-*.lock"):
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            proc = psutil.Process(int(path.read_text()))
            if "runwatch.jobs.worker" in " ".join(proc.cmdline()):
                pids.append(proc.pid)
    return pids


def busy_workers_soon(root: Path, within_s: float) -> list[int]:
    """Busy workers, waiting a moment for some: after a scheduler kill no new job may
    start until the standby has taken over, and the test must kill workers, not just try."""
    deadline = time.monotonic() + within_s
    while not (pids := busy_workers(root)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pids


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def announce(
    db: Database,
    raw: Path,
    rng: random.Random,
    done: threading.Event,
    runs: dict[int, int] = RUNS,
    pause: float = 0.15,
) -> None:
    """The files of ``runs`` (run -> files), interleaved, each after a random pause of up to
    ``pause`` seconds; the last file of a run ends it."""
    order = [(run, seq) for seq in range(1, max(runs.values()) + 1) for run in runs]
    for run, seq in order:
        if seq > runs[run]:
            continue
        path = raw_file(raw, run, seq)
        with db.session() as s:
            receive(s, message(path, run, seq, end_of_run=seq == runs[run]), "test", None, utcnow())
        time.sleep(rng.uniform(0.0, pause))
    done.set()


def test_kill_minus_nine_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(20250826)
    root = tmp_path
    for sub in ("data", "work", "pipelines"):
        (root / sub).mkdir()
    (root / "runwatch.toml").write_text(CONFIG.format(root=root))
    (root / "pipelines" / "chain.yaml").write_text(SLOW_CHAIN)
    db = Database(f"sqlite:///{root}/runwatch.db")
    db.upgrade()
    schedulers = [start_scheduler(root), start_scheduler(root)]
    announced = threading.Event()
    feeder = threading.Thread(target=announce, args=(db, root / "raw", rng, announced))
    feeder.start()
    kills = Counter[str]()
    try:
        for _ in range(8):
            time.sleep(rng.uniform(0.5, 2.0))
            if rng.random() < 0.6:
                for pid in busy_workers_soon(root, 5.0):
                    kill(pid)
                    kills["worker"] += 1
            # The active scheduler, once one leads again: under load a new one takes a
            # while to start and to take the dead one's lease over.
            pid = living_active_pid(db, 60.0)
            kill(pid)
            kills["scheduler"] += 1
            schedulers.append(start_scheduler(root))
        feeder.join()
        wait_for(
            lambda: (
                all(s is RunStatus.ALL_COMPLETED for s in run_statuses(db).values())
                and len(run_statuses(db)) == 2
            ),
            180,
            "both runs All Completed",
        )
    finally:
        feeder.join()
        for proc in schedulers:
            proc.kill()
            proc.wait()
        for pid in workers(root):
            kill(pid)
    assert kills["scheduler"] >= 5, kills
    assert kills["worker"] >= 1, kills
    with db.session() as s:  # a killed worker cannot report: the scheduler found it lost
        lost = s.scalar(sa.select(sa.func.count()).where(Attempt.state == AttemptState.LOST))
    assert lost, "no killed job was noticed"
    check_exactly_once(db, root)


def kill_leaders_while_jobs_run(
    db: Database,
    root: Path,
    runs: dict[int, int],
    rng: random.Random,
    jobs_running: Callable[[], bool],
    rounds: int = 4,
) -> int:
    """Run two schedulers (one leads, one waits) of the deployment in ``root`` while the
    files of ``runs`` arrive; ``rounds`` times, once ``jobs_running()``, kill -9 the leader
    after a random moment and start a fresh standby; wait until every run is All
    Completed. The kills made (the batch executors' crash tests: their jobs go on
    running in the batch system while no scheduler watches)."""
    schedulers = [start_scheduler(root), start_scheduler(root)]
    announced = threading.Event()
    feeder = threading.Thread(target=announce, args=(db, root / "raw", rng, announced, runs, 0.5))
    feeder.start()
    kills = 0
    try:
        for _ in range(rounds):
            wait_for(jobs_running, 120, "jobs running in the batch system")
            time.sleep(rng.uniform(0.5, 2.0))
            kill(living_active_pid(db, 60.0))
            kills += 1
            schedulers.append(start_scheduler(root))
        feeder.join()
        wait_for(
            lambda: (
                len(run_statuses(db)) == len(runs)
                and set(run_statuses(db).values()) == {RunStatus.ALL_COMPLETED}
            ),
            240,
            "every run All Completed",
        )
    finally:
        feeder.join()
        for proc in schedulers:
            proc.kill()
            proc.wait()
    return kills


def check_exactly_once(db: Database, root: Path, runs: dict[int, int] = RUNS) -> None:
    """Every task of ``runs`` (run -> files; CHAIN's three file steps and a merge) DONE by
    exactly one successful attempt; every output recorded once, whole, and nothing else
    on disk."""
    with db.session() as s:
        tasks = s.scalars(sa.select(Task)).all()
        assert len(tasks) == sum(runs.values()) * 3 + len(runs)
        assert Counter(t.state for t in tasks) == {TaskState.DONE: len(tasks)}
        succeeded = Counter(
            s.scalars(
                sa.select(Attempt.task_id).where(Attempt.state == AttemptState.SUCCEEDED)
            ).all()
        )
        assert set(succeeded.values()) == {1}, "a task succeeded more than once"
        assert len(succeeded) == len(tasks)
        outputs = s.scalars(sa.select(TaskOutput)).all()
    assert len(outputs) == len(tasks)
    recorded = {Path(o.url.removeprefix("file://")): o for o in outputs}
    on_disk = {p for p in (root / "data").rglob("*") if p.is_file()}
    assert on_disk == set(recorded), "stray or missing output files"
    for path, out in recorded.items():
        assert adler32_file(path) == out.adler32 and path.stat().st_size == out.size
    for run, files in runs.items():
        merged = root / "data" / "Physics" / str(run) / "merge" / f"run{run}.merged"
        sizes = [int(x) for x in merged.read_text().split()]
        assert sizes == [
            len(f"run {run} file {q} payload\n") * (q + 1) for q in range(1, files + 1)
        ]
