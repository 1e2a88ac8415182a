"""The local executor: job wrappers as processes on the scheduler's own machine.

Each wrapper runs in its own session (so killing the scheduler never kills jobs, and a
cancel can kill a job's whole process group). Wrappers are forked by a zygote (see
``runwatch.executors.zygote``) that has the wrapper's modules loaded already; if the zygote
is gone or fails, a wrapper is started as a plain ``python -m runwatch.jobs.wrapper``
instead, and a new zygote is started at the next submission.

The external id is ``local:PID:CREATE_TIME``: any later process can tell from it alone
whether the job still runs, and a pid reused by an unrelated process is not mistaken for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from runwatch.config import Settings
from runwatch.executors.base import JobInfo, JobRequest, JobStatus
from runwatch.executors.zygote import DATABASE_URL_ENV
from runwatch.jobs.slots import SLOTS_ENV, slots_env

log = logging.getLogger(__name__)

PREFIX = "local"
WRAPPER_ARGV = ("runwatch", "job", "run")
CANCEL_GRACE_S = 5.0  # the wrapper's SIGTERM handler kills its step and records the attempt
ZYGOTE_START_TIMEOUT_S = 60.0
ZYGOTE_REPLY_TIMEOUT_S = 10.0
CREATE_TIME_TOLERANCE_S = 0.01  # create times have clock-tick resolution


class ZygoteError(Exception):
    """The zygote did not answer as it should; the executor falls back to subprocesses."""


class ZygoteRefused(ZygoteError):
    """The zygote answered that it could not start this one job (it is still usable)."""


@dataclass(frozen=True)
class LocalJob:
    pid: int
    create_time: float

    @property
    def external_id(self) -> str:
        return f"{PREFIX}:{self.pid}:{self.create_time:.3f}"

    @classmethod
    def parse(cls, external_id: str) -> LocalJob | None:
        prefix, _, rest = external_id.partition(":")
        pid, _, created = rest.partition(":")
        try:
            return cls(int(pid), float(created)) if prefix == PREFIX else None
        except ValueError:
            return None

    def process(self) -> psutil.Process | None:
        """The job's process if it still exists and is the same one (not a reused pid)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > CREATE_TIME_TOLERANCE_S:
                return None
            return proc
        except psutil.Error:
            return None

    def running(self) -> bool:
        proc = self.process()
        try:
            return proc is not None and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


class LocalExecutor:
    """Runs wrappers on this machine, up to ``scheduler.slots`` threads (0 = CPU count).

    ``use_zygote=False`` starts every wrapper as a plain subprocess (slower, simpler).
    """

    name = "local"

    def __init__(self, settings: Settings, *, use_zygote: bool = True) -> None:
        self.settings = settings
        self.use_zygote = use_zygote
        self.slots = settings.scheduler.slots or os.cpu_count() or 1
        self.zygote: Zygote | None = None
        self.children: dict[int, subprocess.Popen[bytes]] = {}  # fallback wrappers
        self.closed = False
        self.cancel_grace_s = CANCEL_GRACE_S
        self.zygote = self._start_zygote()  # loads while the scheduler gets going

    def capacity(self) -> int:
        return self.slots

    def queue_ahead(self) -> int:
        # One job waits behind each slot: its wrapper is already forked, holding a warm
        # engine, and takes the slot (a file lock, see runwatch.jobs.slots) the moment
        # the running job's wrapper lets go of it, without waiting for the scheduler.
        return self.slots

    # -- submit ---------------------------------------------------------------------------

    def submit(self, jobs: Sequence[JobRequest]) -> list[str]:
        if jobs and self.zygote is None:
            self.zygote = self._start_zygote()
        return [self._start(job).external_id for job in jobs]

    def _start(self, job: JobRequest) -> LocalJob:
        cwd = self._cwd()
        slots = slots_env(self.slots, job.threads, Path(cwd) / "slots")
        env = {**os.environ, **job.env, SLOTS_ENV: slots}
        wrapper_args = _wrapper_args(job.argv)
        pid: int | None = None
        if self.zygote is not None and wrapper_args is not None:
            try:
                pid = self.zygote.spawn(wrapper_args, env, cwd, job.log_path)
            except ZygoteRefused as exc:
                log.warning("zygote cannot start attempt %d (%s)", job.attempt_id, exc)
            except ZygoteError as exc:
                log.warning("zygote failed (%s); starting wrappers as subprocesses", exc)
                self.zygote.close()
                self.zygote = None
        if pid is None:
            pid = self._start_subprocess(job, env, cwd)
        return LocalJob(pid, _create_time(pid))

    def _start_subprocess(self, job: JobRequest, env: dict[str, str], cwd: str) -> int:
        wrapper_args = _wrapper_args(job.argv)
        if wrapper_args is not None:
            argv = [sys.executable, "-m", "runwatch.jobs.wrapper", *wrapper_args]
        elif job.argv and job.argv[0] == "runwatch":
            argv = [sys.executable, "-m", "runwatch", *job.argv[1:]]
        else:
            argv = list(job.argv)
        Path(job.log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(job.log_path, "ab") as log_file:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children[proc.pid] = proc
        # Reap it the moment it ends: a wrapper must not linger as a zombie of ours.
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        return proc.pid

    def _cwd(self) -> str:
        work_root = Path(self.settings.work_root)
        work_root.mkdir(parents=True, exist_ok=True)
        return str(work_root)

    def _start_zygote(self) -> Zygote | None:
        if self.closed or not self.use_zygote:
            return None
        try:
            return Zygote.start(self.settings.database_url)
        except OSError as exc:
            log.warning("cannot start the zygote (%s); wrappers start as subprocesses", exc)
            return None

    # -- poll and cancel ------------------------------------------------------------------

    def poll(self, external_ids: Sequence[str]) -> dict[str, JobInfo]:
        infos = {external_id: self._status(external_id) for external_id in external_ids}
        self._forget_ended_children()
        return infos

    def _status(self, external_id: str) -> JobInfo:
        job = LocalJob.parse(external_id)
        if job is None:
            return JobInfo(JobStatus.GONE, reason=f"not a local job id: {external_id}")
        child = self.children.get(job.pid)
        if child is not None and child.returncode is not None:
            return JobInfo(JobStatus.GONE, exit_code=child.returncode)
        return JobInfo(JobStatus.RUNNING if job.running() else JobStatus.GONE)

    def _forget_ended_children(self) -> None:
        # Each ended child is reported with its exit code by one poll, then forgotten.
        for pid, proc in list(self.children.items()):
            if proc.returncode is not None:
                del self.children[pid]

    def cancel(self, external_id: str) -> None:
        """SIGTERM the wrapper's process group (it then stops its step and records the
        attempt), SIGKILL every group of the job after a grace, from a timer thread."""
        job = LocalJob.parse(external_id)
        proc = job.process() if job is not None else None
        if proc is None:
            return
        groups = _job_groups(proc)
        for group in groups[:1]:
            _signal_group(group, signal.SIGTERM)
        timer = threading.Timer(self.cancel_grace_s, _kill_groups, args=(groups,))
        timer.daemon = True
        timer.start()

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the zygote. Running wrappers carry on; they need nothing from us."""
        self.closed = True
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class Zygote:
    """The executor's end of the fork server (see ``runwatch.executors.zygote``)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.ready = False
        self.buffer = b""

    @classmethod
    def start(cls, database_url: str | None = None) -> Zygote:
        """Start a zygote; with ``database_url`` it warms the wrappers' engine for it."""
        env = dict(os.environ)
        if database_url:
            env[DATABASE_URL_ENV] = database_url  # not in argv: ps would show a password
        proc = subprocess.Popen(
            [sys.executable, "-m", "runwatch.executors.zygote"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a terminal's signals are for the scheduler
            bufsize=0,
        )
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def spawn(self, argv: Sequence[str], env: dict[str, str], cwd: str, log_path: str) -> int:
        """Fork a wrapper; its pid. Raises ZygoteError if the zygote cannot."""
        if not self.ready:
            self._read(ZYGOTE_START_TIMEOUT_S, "ready")
            self.ready = True
        request = {"argv": list(argv), "env": env, "cwd": cwd, "log_path": log_path}
        assert self.proc.stdin is not None
        data = json.dumps(request).encode() + b"\n"
        try:
            while data:
                data = data[self.proc.stdin.write(data) or 0 :]
        except OSError as exc:
            raise ZygoteError(f"cannot write to it: {exc}") from exc
        answer = self._read(ZYGOTE_REPLY_TIMEOUT_S, "pid")
        return int(answer["pid"])

    def _read(self, timeout: float, key: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ZygoteError(f"no answer within {timeout:g} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ZygoteError("it exited")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            raise ZygoteError(f"garbled answer {line[:200]!r}") from exc
        if "error" in answer:
            raise ZygoteRefused(str(answer["error"]))
        if key not in answer:
            raise ZygoteError(f"unexpected answer {answer}")
        return answer

    def close(self, timeout: float = 5.0) -> None:
        """Close its stdin (it exits at once); kill it if it does not."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


# -- helpers ------------------------------------------------------------------------------


def _wrapper_args(argv: Sequence[str]) -> list[str] | None:
    """The wrapper's own arguments if ``argv`` is ``runwatch job run ...``, else None."""
    if tuple(argv[: len(WRAPPER_ARGV)]) == WRAPPER_ARGV:
        return [str(a) for a in argv[len(WRAPPER_ARGV) :]]
    return None


def _create_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0  # already gone: the id then never matches a live process


def _job_groups(proc: psutil.Process) -> list[tuple[int, list[LocalJob]]]:
    """The process groups of a job (the wrapper's first, then its steps'), each with the
    processes seen in it, so a group is only killed later if one of them is still there."""
    groups: dict[int, list[LocalJob]] = {}
    own_group = os.getpgrp()
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        members = [proc]
    for member in members:
        with contextlib.suppress(psutil.Error, OSError):
            group = os.getpgid(member.pid)
            if group != own_group:
                groups.setdefault(group, []).append(LocalJob(member.pid, member.create_time()))
    return list(groups.items())


def _signal_group(group: tuple[int, list[LocalJob]], signum: int) -> None:
    pgid, members = group
    if any(member.running() for member in members):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def _kill_groups(groups: list[tuple[int, list[LocalJob]]]) -> None:
    for group in groups:
        _signal_group(group, signal.SIGKILL)
