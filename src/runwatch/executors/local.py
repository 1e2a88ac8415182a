"""The local executor: attempts run by long-lived workers on the scheduler's own machine.

The executor keeps one worker process per slot (``runwatch.jobs.worker``), each in its own
session, so that killing the scheduler never kills jobs. Submitting is a nudge: the
attempts are already SUBMITTED in the database and the workers pull them from there,
oldest first (the scheduler submits newest data first, a few jobs ahead of the slots).

Everything the executor needs to know lives in files that the workers hold locks on, in
its runtime folder (in memory where the machine has ``/dev/shm``; see
``runwatch.jobs.worker``), so a new scheduler after a kill -9 finds the running workers
and their jobs without any memory of the old one. The workers' logs and trash stay in
``<work_root>/local/``. The external id is ``local:ATTEMPT``, derived from the attempt
(``job_id``), never stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from runwatch.config import Settings
from runwatch.executors.base import JobInfo, JobRequest, JobStatus
from runwatch.jobs.environment import DATABASE_URL_ENV
from runwatch.jobs.worker import (
    attempt_lock_path,
    runtime_folder,
    submitted_news,
    try_lock,
    worker_lock_path,
    worker_socket_path,
)
from runwatch.workflow.nudge import NUDGE_ENV, nudge, socket_path

log = logging.getLogger(__name__)

PREFIX = "local"
CANCEL_GRACE_S = 5.0  # SIGTERM first, so that a step can flush; SIGKILL after this


def external_id(attempt_id: int) -> str:
    return f"{PREFIX}:{attempt_id}"


def parse_external_id(text: str) -> int | None:
    prefix, _, attempt = text.partition(":")
    return int(attempt) if prefix == PREFIX and attempt.isdigit() else None


class LocalExecutor:
    """Runs attempts on this machine with ``scheduler.slots`` workers (0 = CPU count)."""

    name = "local"

    def __init__(self, settings: Settings, *, idle_exit_s: float | None = None) -> None:
        self.settings = settings
        self.slots = settings.scheduler.slots or os.cpu_count() or 1
        self.home = Path(settings.work_root) / "local"  # the workers' logs and trash
        self.runtime = runtime_folder(Path(settings.work_root))  # their locks and sockets
        self.idle_exit_s = idle_exit_s
        self.cancel_grace_s = CANCEL_GRACE_S
        self.started: dict[int, subprocess.Popen[bytes]] = {}  # by worker index
        self.ensure_workers()  # they load while the scheduler gets going

    def capacity(self) -> int:
        return self.slots

    def job_id(self, attempt_id: int) -> str:
        """An attempt's job is known by its id from the moment it is SUBMITTED: the
        database is the workers' queue (see ``base.own_job_id``)."""
        return external_id(attempt_id)

    def queue_ahead(self) -> int:
        # Two rounds of jobs wait behind the slots, so that a worker whose job ended takes
        # the next at once, and the scheduler refills the queue in batches (see
        # Scheduler._choose) instead of once per job. Not more: the workers take the
        # oldest first, so newer data waits behind what is queued.
        return 2 * self.slots

    def queue_ahead_max(self) -> int:
        # Up to twice as many while the workers run dry between the scheduler's rounds:
        # jobs of a few milliseconds end faster than a round is made.
        return 4 * self.slots

    # -- submit ---------------------------------------------------------------------------

    def submit(self, jobs: Sequence[JobRequest]) -> list[str]:
        if jobs:
            self.ensure_workers()
            # The workers learn the attempts from the nudge itself: no read of the queue.
            news = submitted_news([(job.attempt_id, job.threads) for job in jobs], time.time())
            for index in range(self.slots):
                nudge(str(worker_socket_path(self.runtime, index)), news)
        return [external_id(job.attempt_id) for job in jobs]

    def ensure_workers(self) -> None:
        """Start every worker that is not running (first use, or one that died)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        for index in range(self.slots):
            if self._loading(index):
                continue  # it exits by itself if another worker holds the index
            fd = try_lock(worker_lock_path(self.runtime, index))
            if fd is None:
                continue  # alive
            os.close(fd)
            self.started[index] = self._start_worker(index)

    def _loading(self, index: int) -> bool:
        """Worker ``index`` was started by us and has not exited (maybe still loading).
        ``returncode`` is set by its reaper thread (``poll()`` would race with it)."""
        starting = self.started.get(index)
        return starting is not None and starting.returncode is None

    def _start_worker(self, index: int) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "-m",
            "runwatch.jobs.worker",
            f"--home={self.home}",
            f"--runtime={self.runtime}",
            f"--index={index}",
            f"--slots={self.slots}",
        ]
        if self.idle_exit_s is not None:
            argv.append(f"--idle-exit={self.idle_exit_s}")
        # The workers run inside the firewall: they always write to the database.
        env = {
            **os.environ,
            DATABASE_URL_ENV: self.settings.database_url,
            NUDGE_ENV: socket_path(self.settings.work_root),
        }
        with open(self.home / f"worker-{index}.log", "ab") as log_file:
            proc = subprocess.Popen(
                argv,
                cwd=self.home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Reap it the moment it ends: a worker must not linger as a zombie of ours.
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        log.info("started local worker %d (pid %d)", index, proc.pid)
        return proc

    # -- poll and cancel ------------------------------------------------------------------

    def poll(self, external_ids: Sequence[str]) -> dict[str, JobInfo]:
        if external_ids:
            self.ensure_workers()  # queued jobs need workers, even after a crash
        return {ext: self._status(ext) for ext in external_ids}

    def _status(self, ext: str) -> JobInfo:
        attempt_id = parse_external_id(ext)
        if attempt_id is None:
            return JobInfo(JobStatus.GONE, reason=f"not a local job id: {ext}")
        path = attempt_lock_path(self.runtime, attempt_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return JobInfo(JobStatus.QUEUED)  # not started yet (or just finished)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return JobInfo(JobStatus.RUNNING)
        finally:
            os.close(fd)
        return JobInfo(JobStatus.GONE, reason="its worker died")

    def cancel(self, ext: str) -> None:
        """SIGTERM the attempt's command (its process group), SIGKILL it after a grace;
        the worker then records nothing, the attempt's fate being decided already."""
        attempt_id = parse_external_id(ext)
        if attempt_id is None:
            return
        command = _running_command(attempt_lock_path(self.runtime, attempt_id))
        if command is None:
            return  # not running, or its command has not started (its heartbeat stops it)
        _signal_group(command, signal.SIGTERM)
        timer = threading.Timer(self.cancel_grace_s, _signal_group, (command, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Drain the workers: each finishes the attempt it runs, then exits (one still
        loading, which has no attempt yet, just exits)."""
        for index in range(self.slots):
            loading = self.started[index] if self._loading(index) else None
            if loading is not None:
                loading.terminate()
            # Worker N may be another's (ours, still loading, would find it and exit): it
            # is the one holding the lock.
            with contextlib.suppress(OSError, ValueError):
                path = worker_lock_path(self.runtime, index)
                fd = try_lock(path)
                if fd is not None:
                    os.close(fd)  # not running
                    continue
                pid = int(path.read_text())
                if loading is None or pid != loading.pid:
                    os.kill(pid, signal.SIGTERM)


@dataclass(frozen=True)
class Command:
    """An attempt's command, as its worker noted it in the attempt's lock file."""

    pid: int
    worker_pid: int

    def running(self) -> bool:
        """Still running as that worker's child (not a reused pid)."""
        try:
            proc = psutil.Process(self.pid)
            return bool(proc.ppid() == self.worker_pid and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False


def _running_command(lock: Path) -> Command | None:
    """The command of a running attempt: its lock file is held and names it."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # not held: the attempt ended
    except BlockingIOError:
        pids = os.pread(fd, 64, 0).split()
    finally:
        os.close(fd)
    if len(pids) != 2 or not all(p.isdigit() for p in pids):
        return None
    return Command(int(pids[0]), int(pids[1]))


def _signal_group(command: Command, signum: int) -> None:
    if command.running():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(command.pid, signum)
