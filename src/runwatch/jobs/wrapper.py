"""The job wrapper: runs one attempt on a worker node and records how it ended.

Started by a batch system's executor as ``runwatch job run ATTEMPT``; the local executor's
long-lived workers (``runwatch.jobs.worker``) call ``claim`` and ``run_claimed`` instead.
The wrapper claims the attempt, stages the inputs in, runs the step's command, checks and
stores the outputs, and records the outcome and the outputs in one transaction. A
heartbeat thread keeps the attempt alive and notices when the scheduler gave it up
(cancelled, or declared lost): the wrapper then kills the command and records nothing,
because somebody else already decided the attempt's fate.

It reports through a ``Reporter`` (``runwatch.jobs.report``): into the database itself,
or through the web server's API with a token for its attempt, as its environment says
(``runwatch.jobs.environment``). Functions that take ``Database | Reporter`` use the
database directly when given one.

A batch job (``RUNWATCH_JOB_START`` set by its executor) that gets SIGTERM kills its
command but records nothing: its batch system is stopping it, maybe to run it again
(requeue, preemption), maybe for good (held, over its limits, cancelled). The attempt
stays RUNNING; the scheduler learns from the batch system which it was, and a requeued
job's next start takes the attempt over (``runwatch.workflow.service.claim_attempt``).

Exit codes: 0 the attempt succeeded, or there was nothing to do; 1 the attempt failed and
that was recorded; 2 bad usage; 3 the outcome could not be recorded; 143 stopped by
SIGTERM in a batch job, left to the scheduler.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import sqlalchemy as sa

from runwatch.db import Database
from runwatch.jobs.environment import DATABASE_URL_ENV, JOB_ENV_FILE
from runwatch.jobs.logs import log_tail
from runwatch.jobs.report import (
    DatabaseReporter,
    HttpReporter,
    Reporter,
    ReportRejected,
    ReportUndelivered,
    attempt_workdir,
    job_start_from_env,
)
from runwatch.jobs.slots import SLOTS_ENV, slots_from_env, slots_held
from runwatch.jobs.spec import JobSpec, job_spec
from runwatch.storage.stage import StageError, policy_of, stage_in, stage_out
from runwatch.workflow.nudge import NUDGE_ENV, nudge
from runwatch.workflow.service import (
    AttemptOutcome,
    Claim,
    OutputRecord,
    RetryPolicy,
)
from runwatch.workflow.states import AttemptState

log = logging.getLogger("runwatch.job")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNRECORDED = 3
EXIT_STOPPED = 128 + signal.SIGTERM  # as a shell reports a process SIGTERM ended

KILL_GRACE_S = 2.0  # SIGTERM first, so that a step can flush; SIGKILL after this
WATCH_SLICE_S = 0.25  # the monitor also acts on kills the signal handler asked for


class Terminated(BaseException):
    """The wrapper got SIGTERM/SIGINT before its command started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass(frozen=True)
class CommandResult:
    returncode: int  # negative: killed by that signal
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


@dataclass(frozen=True)
class AttemptFiles:
    """What the wrapper reads of its attempt once it has claimed it."""

    spec: JobSpec
    workdir: Path
    log_path: Path


# -- entry points -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``runwatch job run ATTEMPT [--db URL]`` as a plain function (CLI, tests)."""
    parser = argparse.ArgumentParser(
        prog="runwatch job run",
        description="Run one attempt (started by executors, not by hand).",
    )
    parser.add_argument("attempt", type=int, help="Attempt id.")
    parser.add_argument("--db", default=None, help="Database URL [$RUNWATCH_DATABASE_URL].")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return run_from_url(args.attempt, args.db)


def run_from_url(attempt_id: int, url: str | None = None) -> int:
    """Run with the reporter the environment names: the database ``url`` if given, else
    the web server with the attempt's token, else ``$RUNWATCH_DATABASE_URL``."""
    setup_logging()
    job_start = job_start_from_env(os.environ)
    http = None if url else HttpReporter.from_env(os.environ)
    if http is not None:
        try:
            return run_attempt(http, attempt_id, socket.gethostname())
        finally:
            http.close()
    url = url or os.environ.get(DATABASE_URL_ENV)
    if not url:
        log.error(
            "no database: give --db or set RUNWATCH_DATABASE_URL "
            "(or RUNWATCH_API_URL and RUNWATCH_ATTEMPT_TOKEN to report over HTTP)"
        )
        return EXIT_USAGE
    db = Database(url)
    try:
        reporter = DatabaseReporter(db, job_start=job_start)
        return run_attempt(reporter, attempt_id, socket.gethostname())
    finally:
        db.dispose()


def as_reporter(target: Database | Reporter) -> Reporter:
    """The reporter for ``target``: a database is written to directly."""
    return DatabaseReporter(target) if isinstance(target, Database) else target


def setup_logging() -> None:
    # The wrapper's stderr is the attempt's log file: its lines sit among the step's own.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s runwatch-job[%(process)d] %(levelname)s %(message)s",
        force=True,
    )
    # httpx logs each request at INFO: a line per heartbeat and report sent to the web
    # server, five per output written by https, all of them noise among the step's lines.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def run_attempt(db: Database | Reporter, attempt_id: int, host: str) -> int:
    """Wait for a slot where the executor asks for it, then claim, run and record one
    attempt; return the process exit code."""
    try:
        slots = slots_from_env(os.environ.get(SLOTS_ENV))
    except ValueError as exc:
        log.error("attempt %d: %s", attempt_id, exc)
        return EXIT_USAGE
    if slots is None:
        return _run_attempt(db, attempt_id, host)
    count, threads, directory = slots
    with slots_held(count, directory, threads):
        return _run_attempt(db, attempt_id, host)


def _run_attempt(target: Database | Reporter, attempt_id: int, host: str) -> int:
    """Claim, run and record one attempt (holding its slots, if any)."""
    reporter = as_reporter(target)
    try:
        claimed = claim(target, attempt_id, host)
    except (sa.exc.SQLAlchemyError, ReportRejected, ReportUndelivered):
        log.exception("attempt %d: cannot claim it", attempt_id)
        return EXIT_UNRECORDED
    if claimed is None:
        log.info("attempt %d was given up; not running", attempt_id)
        return EXIT_OK
    return run_claimed(reporter, attempt_id, claimed)


def claim(db: Database | Reporter, attempt_id: int, host: str) -> Claim | None:
    """Take the attempt (SUBMITTED → RUNNING) and learn its job, in one transaction; None
    if it is not ours to run (given up, cancelled, or taken by another worker)."""
    return as_reporter(db).claim(attempt_id, host)


def run_claimed(
    db: Database | Reporter,
    attempt_id: int,
    claimed: Claim,
    on_start: Callable[[int], None] | None = None,
    handle_signals: bool = True,
    discard: Callable[[Path], None] | None = None,
    nudge_if: Callable[[], bool] | None = None,
) -> int:
    """Run a claimed attempt and record it; ``on_start`` gets the command's pid. With
    ``handle_signals``, SIGTERM/SIGINT kill the command and the attempt is recorded as
    killed (the wrapper); a long-lived worker handles its signals itself. ``nudge_if``
    says whether a success is worth waking the scheduler for (default: always)."""
    log.info("attempt %d: claimed on %s (pid %d)", attempt_id, socket.gethostname(), os.getpid())
    reporter = as_reporter(db)
    job = AttemptRun(reporter, attempt_id, on_start, discard)
    with job.signals_handled() if handle_signals else contextlib.nullcontext():
        outcome, policy = job.run(claimed)
        job.finishing = True  # a signal now must not interrupt the recording
        if outcome is None and job.stopped:
            log.warning(
                "attempt %d: stopped by the batch system (SIGTERM); left running for the "
                "scheduler to judge, or for this job's next start",
                attempt_id,
            )
            return EXIT_STOPPED
        if job.batch_job:  # the attempt is over: its job will not start it again
            (attempt_workdir(attempt_id, claimed.workdir) / JOB_ENV_FILE).unlink(missing_ok=True)
        if outcome is None:
            log.warning("attempt %d was given up while running; nothing recorded", attempt_id)
            return EXIT_OK
        return record(reporter, attempt_id, outcome, policy, claimed, nudge_if)


def record(
    db: Database | Reporter,
    attempt_id: int,
    outcome: AttemptOutcome,
    policy: RetryPolicy,
    claimed: Claim | None = None,
    nudge_if: Callable[[], bool] | None = None,
) -> int:
    """Record the outcome, nudge the scheduler, pick the exit code.

    Connection trouble is retried. If a success cannot be recorded for another reason, the
    attempt is recorded as failed with that reason rather than left RUNNING. A report that
    could not be delivered in time stays in its spool file (EXIT_UNRECORDED).
    """
    reporter = as_reporter(db)
    try:
        recorded = reporter.record(attempt_id, outcome, policy, claimed)
    except ReportUndelivered:
        return EXIT_UNRECORDED
    except Exception as exc:
        log.exception("attempt %d: cannot record its outcome", attempt_id)
        if outcome.state is not AttemptState.SUCCEEDED:
            return EXIT_UNRECORDED
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        outcome = replace(outcome, state=AttemptState.FAILED, reason=f"cannot record: {last}")
        outcome = replace(outcome, outputs=())
        try:
            recorded = reporter.record(attempt_id, outcome, policy, claimed)
        except Exception:
            log.exception("attempt %d: cannot record its failure either", attempt_id)
            return EXIT_UNRECORDED
    if outcome.state is not AttemptState.SUCCEEDED or nudge_if is None or nudge_if():
        nudge(os.environ.get(NUDGE_ENV))
    if not recorded:
        log.warning("attempt %d: its fate was decided elsewhere; not recorded", attempt_id)
        return EXIT_OK
    log.info(
        "attempt %d: %s%s",
        attempt_id,
        outcome.state.value,
        f" ({outcome.reason})" if outcome.reason else "",
    )
    return EXIT_OK if outcome.state is AttemptState.SUCCEEDED else EXIT_FAILED


# -- one attempt --------------------------------------------------------------------------


class AttemptRun:
    """The running attempt: its command, heartbeat, timeout and signals."""

    def __init__(
        self,
        reporter: Reporter,
        attempt_id: int,
        on_start: Callable[[int], None] | None = None,
        discard: Callable[[Path], None] | None = None,
    ) -> None:
        self.reporter = reporter
        self.attempt_id = attempt_id
        self.on_start = on_start
        # How a finished work directory goes: a worker hands it to its trash (trash.py).
        self.discard = discard or (lambda path: shutil.rmtree(path, ignore_errors=True))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starting = False
        self.signalled: int | None = None  # SIGTERM/SIGINT received by the wrapper
        self.given_up = False  # heartbeat refused: the attempt is not ours any more
        # A batch job's SIGTERM leaves the attempt to the batch system's next start or to
        # the scheduler: the wrapper records nothing (a local worker has no job start).
        self.batch_job = reporter.job_start is not None
        self.stopped = False  # so stopped: nothing to record
        self.timed_out = False
        self.finishing = False  # the outcome is being recorded: signals only set the flag
        self.kill_at: float | None = None  # monotonic time of the SIGKILL after a SIGTERM
        self.deadline: float | None = None  # monotonic time the running command times out
        self.heartbeat_s = 0.0
        self.next_beat: float | None = None  # monotonic time of the next heartbeat

    def run(self, claimed: Claim) -> tuple[AttemptOutcome | None, RetryPolicy]:
        """The outcome to record (None: given up, record nothing) and the retry policy."""
        policy = RetryPolicy()
        files: AttemptFiles | None = None
        try:
            files = self.files(claimed)
            policy = RetryPolicy(**files.spec["retry"])
            with self.watching(float(files.spec["heartbeat_s"])):
                return self.execute(files), policy
        except Terminated as exc:
            return self.killed(exc.signum, files), policy
        except StageError as exc:
            return self.failed(str(exc), files), policy
        except Exception as exc:
            log.exception("attempt %d: wrapper error", self.attempt_id)
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            return self.failed(f"wrapper error: {last}", files), policy

    def files(self, claimed: Claim) -> AttemptFiles:
        workdir_text, log_text = claimed.workdir, claimed.log_path
        spec = job_spec(dict(claimed.spec))
        workdir = attempt_workdir(self.attempt_id, workdir_text)
        log_path = Path(log_text) if log_text else workdir / "job.log"
        return AttemptFiles(spec, workdir, log_path)

    def execute(self, files: AttemptFiles) -> AttemptOutcome | None:
        spec = files.spec
        fresh_workdir(files.workdir)
        files.log_path.parent.mkdir(parents=True, exist_ok=True)
        policy = policy_of(spec)
        for item in spec["inputs"]:
            path = files.workdir / item["path"]  # an absolute path stays as it is
            stage_in(item["url"], path, item.get("adler32"), policy)
        if self.given_up:
            return None
        result = self.run_command(files)
        if self.given_up:
            return None
        if self.signalled is not None:
            return self.killed(self.signalled, files, result)
        if self.timed_out:
            reason = f"timed out after {spec['timeout_s']:g} s"
            return self.outcome(AttemptState.TIMED_OUT, reason, files, result)
        if result.returncode != 0:
            return self.outcome(AttemptState.FAILED, exit_reason(result), files, result)
        missing = missing_output(spec, files.workdir)
        if missing:
            return self.outcome(AttemptState.FAILED, missing, files, result)
        outputs = store_outputs(spec, files.workdir)
        if self.given_up:
            return None
        if self.signalled is not None:
            return self.killed(self.signalled, files, result)
        outcome = self.outcome(AttemptState.SUCCEEDED, None, files, result, outputs)
        self.discard(files.workdir)  # outputs are stored: free the disk
        return outcome

    # -- the command ------------------------------------------------------------------

    def run_command(self, files: AttemptFiles) -> CommandResult:
        spec = files.spec
        threads = str(max(1, int(spec["threads"])))
        env = {
            **os.environ,
            **spec["env"],
            "OMP_NUM_THREADS": threads,
            "RUNWATCH_THREADS": threads,
            "RUNWATCH_ATTEMPT": str(self.attempt_id),
        }
        log.info("attempt %d: running %s", self.attempt_id, spec["command"])
        sys.stderr.flush()
        self.starting = True
        with open(files.log_path, "ab") as log_file:
            started = time.monotonic()
            self.proc = subprocess.Popen(
                command_argv(spec["command"], env.get("PATH")),
                cwd=files.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )
        self.starting = False
        if self.on_start is not None:
            self.on_start(self.proc.pid)
        if self.signalled is not None or self.given_up:
            self.terminate_command()
        timeout_s = float(spec["timeout_s"])
        self.deadline = started + timeout_s if timeout_s > 0 else None
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        finally:
            wall = time.monotonic() - started
            self.deadline = None
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.signal_group(signal.SIGKILL)  # stragglers the step left behind
        return CommandResult(
            returncode=self.proc.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            peak_rss_mb=usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024),
        )

    @contextlib.contextmanager
    def watching(self, heartbeat_s: float) -> Iterator[None]:
        """Heartbeats (from stage-in to stage-out), the timeout, the SIGKILL after a
        SIGTERM: done by the process's watcher thread while this attempt runs."""
        with WATCHER.watching(self, heartbeat_s):
            yield

    def watch(self, now: float) -> None:
        """One look by the watcher (every ``WATCH_SLICE_S``)."""
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self.signal_group(signal.SIGKILL)
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            self.deadline = None
            self.timed_out = True
            log.warning("attempt %d: timed out", self.attempt_id)
            self.terminate_command()
        if self.next_beat is not None and now >= self.next_beat:
            self.next_beat = now + self.heartbeat_s
            if not self.beat():
                self.given_up = True
                self.terminate_command()

    def beat(self) -> bool:
        """One heartbeat; True unless the attempt is no longer ours (trouble reaching the
        database or server counts as alive: the scheduler's heartbeat timeout decides)."""
        if self.given_up:
            return False
        return self.reporter.heartbeat(self.attempt_id)

    def terminate_command(self) -> None:
        """SIGTERM the command's group now, SIGKILL it after the grace (by the monitor)."""
        self.signal_group(signal.SIGTERM)
        if self.kill_at is None:
            self.kill_at = time.monotonic() + KILL_GRACE_S

    def signal_group(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)

    # -- signals to the wrapper -------------------------------------------------------

    @contextlib.contextmanager
    def signals_handled(self) -> Iterator[None]:
        """SIGTERM/SIGINT stop the command and the attempt is recorded as killed. Signal
        handlers can only be set in the main thread; elsewhere (tests) they stay as are."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Takes no locks: it interrupts the main thread anywhere.
        self.signalled = signum
        if self.proc is not None:
            self.terminate_command()
        elif not (self.starting or self.finishing):
            raise Terminated(signum)

    # -- outcomes ---------------------------------------------------------------------

    def outcome(
        self,
        state: AttemptState,
        reason: str | None,
        files: AttemptFiles | None,
        result: CommandResult | None = None,
        outputs: Sequence[OutputRecord] = (),
    ) -> AttemptOutcome:
        return AttemptOutcome(
            state=state,
            reason=reason,
            exit_code=result.returncode if result and result.returncode >= 0 else None,
            wall_s=result.wall_s if result else None,
            cpu_s=result.cpu_s if result else None,
            peak_rss_mb=result.peak_rss_mb if result else None,
            log_tail=log_tail(files.log_path) if files else None,
            outputs=outputs,
        )

    def failed(self, reason: str, files: AttemptFiles | None) -> AttemptOutcome:
        return self.outcome(AttemptState.FAILED, reason, files)

    def killed(
        self, signum: int, files: AttemptFiles | None, result: CommandResult | None = None
    ) -> AttemptOutcome | None:
        if self.batch_job and signum == signal.SIGTERM:
            self.stopped = True
            return None
        reason = f"killed ({signal.Signals(signum).name})"
        return self.outcome(AttemptState.FAILED, reason, files, result)


class Watcher:
    """One thread per process that watches the running attempt, if any. A worker runs
    attempt after attempt: starting and joining a thread for each cost ~1.5 ms of its
    time per attempt, so the thread is started once and kept."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while looking at an attempt
        self.current: AttemptRun | None = None
        self.thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, run: AttemptRun, heartbeat_s: float) -> Iterator[None]:
        with self.lock:
            run.heartbeat_s = heartbeat_s
            run.next_beat = time.monotonic() + heartbeat_s
            self.current = run
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.loop, name="watcher", daemon=True)
                self.thread.start()
        try:
            yield
        finally:
            with self.lock:  # waits for a look in progress: none acts on an ended attempt
                self.current = None

    def loop(self) -> None:
        while True:
            time.sleep(WATCH_SLICE_S)
            with self.lock:
                if self.current is not None:
                    self.current.watch(time.monotonic())


WATCHER = Watcher()


# -- helpers ------------------------------------------------------------------------------


def fresh_workdir(path: Path) -> None:
    """An empty work directory: nothing left from an earlier try can pass for an output.
    Only the batch job's environment file stays (``JOB_ENV_FILE``): a restart of the job
    needs it. Usually there is none yet: making it is one system call."""
    try:
        path.mkdir()
        return
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True)
        return
    except FileExistsError:
        pass
    if len(path.resolve().parts) < 3:  # a misconfigured work root must not cost a disk
        raise ValueError(f"refusing to use {path} as a work directory")
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if entry.name == JOB_ENV_FILE and entry.is_file(follow_symlinks=False):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    path.mkdir(parents=True, exist_ok=True)


# Characters with a meaning to the shell (GNU make's list, plus '=' for an assignment).
SHELL_SYNTAX = frozenset("#;\"'*?[]&|<>(){}$`\\~!=%^\n")


def command_argv(command: str, search_path: str | None) -> list[str]:
    """How to run a step's command: plain words naming a program on ``search_path`` are
    exec'd directly (as GNU make does), sparing the start of a shell (~1.5 ms of CPU per
    task here); anything else, e.g. a pipe, a variable, a path relative to the work
    directory or a shell builtin, runs in bash."""
    words = command.split()
    if words and SHELL_SYNTAX.isdisjoint(command) and "/" not in words[0]:
        executable = which(words[0], search_path)
        if executable is not None and words[0] not in SHELL_BUILTINS:
            return [executable, *words[1:]]
    return ["bash", "-c", command]


WHICH_KEEP_S = 60.0  # how long a program found on the search path is remembered
_found: dict[tuple[str, str | None], tuple[str, float]] = {}


def which(program: str, search_path: str | None) -> str | None:
    """``shutil.which``, remembered for ``WHICH_KEEP_S`` while the program stays
    executable: a local worker runs the same few programs thousands of times, and each
    search looks in every folder of the path."""
    now = time.monotonic()
    found = _found.get((program, search_path))
    if found is not None and now - found[1] < WHICH_KEEP_S and os.access(found[0], os.X_OK):
        return found[0]
    if len(_found) > 256:  # programs named by many pipelines' revisions
        _found.clear()
    executable = shutil.which(program, path=search_path)
    if executable is None:
        _found.pop((program, search_path), None)
    else:
        _found[(program, search_path)] = (executable, now)
    return executable


# Builtins that also exist as programs but act on the shell itself (a program would not).
SHELL_BUILTINS = frozenset({"cd", "exec", "exit", "export", "kill", "read", "set", "ulimit"})


def exit_reason(result: CommandResult) -> str:
    if result.returncode < 0:
        return f"killed by signal {signal.Signals(-result.returncode).name}"
    return f"exit code {result.returncode}"


def missing_output(spec: JobSpec, workdir: Path) -> str | None:
    for name, relative in spec["outputs"].items():
        if not (workdir / relative).is_file():
            return f"declared output {name!r} ({relative}) was not written"
    return None


def store_outputs(spec: JobSpec, workdir: Path) -> list[OutputRecord]:
    """Copy each output to the destination under its own file name: a stable name, so that
    a retry overwrites what an earlier try stored instead of adding a second copy."""
    records = []
    policy = policy_of(spec)
    for name, relative in spec["outputs"].items():
        source = workdir / relative
        url, size, checksum = stage_out(source, spec["destination"], source.name, policy)
        records.append(OutputRecord(name=name, url=url, size=size, adler32=checksum))
    return records


if __name__ == "__main__":
    sys.exit(main())
