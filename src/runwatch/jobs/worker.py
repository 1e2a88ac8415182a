"""Local workers: long-lived processes that take submitted attempts and run them.

The local executor keeps one worker per slot (``runwatch.executors.local``). A worker
holds a warm database engine and one connection, so running an attempt costs a claim,
the command and the record, not a Python process start (~0.5 s) or a fork (~10 ms of CPU
for a process of this size): the engine's overhead per task is what made the difference
between ~25 ms and a few ms per no-op task.

Work is pulled from the database: the oldest SUBMITTED attempt of the local executor. A
worker wakes when the scheduler submits (a datagram on its socket, see
``runwatch.workflow.nudge``), which names the attempts just submitted: the worker then
takes them without reading the queue (a statement per task saved). It reads the queue
when it starts, when a nudge names nothing, when a read filled its limit (there may be
more), and after ``POLL_S`` without a nudge, in case one was lost.

What the executor can tell from files alone, whatever process asks (a new scheduler after
a kill -9 included), all in its runtime folder (``runtime_folder``: in memory, under
``/dev/shm``, where the machine has it; else ``<work_root>/local/``). They only ever
describe processes alive on this machine, and making a file there costs microseconds, not
the ~0.5 ms of CPU a file made on a disk can cost (one or two per task):

- ``worker-N.lock`` is ``flock``-ed by worker N while it lives: a dead worker is seen at
  once and replaced, and two workers never share an index;
- ``attempt-ID.lock`` is ``flock``-ed by the worker that runs attempt ID, from before the
  claim until after the record; it holds the command's and the worker's pids once the
  command runs (for a cancel). Held: the job runs. There but not held: the job ended
  (recorded by its worker, or not if the worker died). Absent: not started yet. Workers
  remove files older than ``KEEP_LOCKS_S`` once a minute;
- ``slot-I`` are the thread slots (``runwatch.jobs.slots``): a task of T threads takes T.

SIGTERM or SIGINT drain a worker: it finishes the attempt it runs, then exits. Killing the
attempt is the executor's ``cancel``; killing the worker (SIGKILL) ends its attempt, which
the scheduler then finds LOST and retries. A worker exits by itself after ``idle_exit_s``
without work; the executor starts it again at the next submission.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import sqlalchemy as sa

from runwatch.db import Database
from runwatch.jobs.slots import slots_held, try_flock
from runwatch.jobs.trash import Trash
from runwatch.jobs.wrapper import claim, run_claimed
from runwatch.workflow.models import ATTEMPTS, TASKS
from runwatch.workflow.nudge import NudgeListener
from runwatch.workflow.states import AttemptState

log = logging.getLogger("runwatch.worker")
JOB_LOGGER = "runwatch.job"  # the wrapper's logger

EXECUTOR = "local"
POLL_S = 0.5
IDLE_EXIT_S = 600.0
DB_RETRY_S = 2.0
KEEP_LOCKS_S = 3600.0  # long after the scheduler has seen the end of the attempt
SWEEP_EVERY_S = 60.0

_NEXT = (
    sa.select(ATTEMPTS.c.id, TASKS.c.threads)
    .join(TASKS, TASKS.c.id == ATTEMPTS.c.task_id)
    .where(ATTEMPTS.c.state == AttemptState.SUBMITTED, ATTEMPTS.c.executor == EXECUTOR)
    .order_by(ATTEMPTS.c.id)
    .limit(sa.bindparam("limit"))
)


# -- what the executor's nudge says -------------------------------------------------------

SUBMITTED = b"submitted"

Queued = tuple[int, int, float]  # attempt id, threads, time.time() it was known submitted


def submitted_news(attempts: Sequence[tuple[int, int]], at: float) -> bytes:
    """The payload of the executor's nudge after a submission at ``at`` (``time.time()``):
    each attempt's id and threads."""
    words = [f"{at:.6f}", *(f"{attempt_id}:{threads}" for attempt_id, threads in attempts)]
    return SUBMITTED + b" " + " ".join(words).encode()


def read_news(payload: bytes) -> list[Queued] | None:
    """The attempts a nudge's payload names; None if it names none (a plain nudge, or
    one this worker cannot read: it then reads the queue itself)."""
    words = payload.split()
    if len(words) < 3 or words[0] != SUBMITTED:
        return None
    try:
        at = float(words[1])
        return [(int(a), int(t), at) for a, _, t in (w.partition(b":") for w in words[2:])]
    except ValueError:
        return None


# -- the files the executor reads ---------------------------------------------------------


def runtime_folder(work_root: Path) -> Path:
    """Where the local executor of ``work_root`` keeps its locks, slots and sockets: a
    folder of this user's in ``/dev/shm`` named after the work root, or ``<work_root>/local``
    on a machine without it."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        return work_root / "local"
    key = hashlib.sha256(str(work_root.resolve()).encode()).hexdigest()[:16]
    return shm / f"runwatch-{os.getuid()}-{key}"


def worker_lock_path(home: Path, index: int) -> Path:
    return home / f"worker-{index}.lock"


def worker_socket_path(home: Path, index: int) -> Path:
    return home / f"worker-{index}.sock"


def attempt_lock_path(home: Path, attempt_id: int) -> Path:
    return home / f"attempt-{attempt_id}.lock"


def try_lock(path: Path) -> int | None:
    """Open ``path`` (made if missing) and take its lock; the descriptor, or None if
    another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if try_flock(fd):
        return fd
    os.close(fd)
    return None


@contextlib.contextmanager
def attempt_lock(home: Path, attempt_id: int) -> Iterator[int | None]:
    """Hold ``attempt-ID.lock`` and yield its descriptor, or yield None if another worker
    holds it. It is locked under a temporary name and linked
    into place (which fails if it exists), so it is never seen unlocked while its worker
    lives; a file left by a dead worker is taken over."""
    path = attempt_lock_path(home, attempt_id)
    temporary = home / f".attempt-{attempt_id}.{os.getpid()}"
    fd: int | None = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    assert fd is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.link(temporary, path)
    except FileExistsError:
        os.close(fd)
        fd = try_lock(path)
    finally:
        os.unlink(temporary)
    if fd is None:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)  # the file stays, unlocked: "gone" (see sweep_attempt_locks)


def lock_written_since(home: Path, attempt_id: int, since: float) -> bool:
    """Whether ``attempt-ID.lock`` was made or written at ``since`` (a ``time.time()``) or
    later: a worker took the attempt then."""
    try:
        return os.stat(attempt_lock_path(home, attempt_id)).st_mtime >= since
    except FileNotFoundError:
        return False


def sweep_attempt_locks(home: Path, older_than_s: float) -> int:
    """Remove the lock files of attempts that ended more than ``older_than_s`` ago (not
    held, not touched since); the number removed."""
    removed = 0
    limit = time.time() - older_than_s
    for path in home.glob("attempt-*.lock"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < limit and (fd := try_lock(path)) is not None:
                path.unlink()
                os.close(fd)
                removed += 1
    return removed


def note_command(fd: int, pid: int) -> None:
    """Write ``COMMAND_PID WORKER_PID`` into the attempt's lock file, for a cancel: the
    executor signals the command only while the lock is held and the command is still
    this worker's child, so a pid reused by another process is never signalled."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid} {os.getpid()}".encode(), 0)


# -- the worker ---------------------------------------------------------------------------


class Worker:
    def __init__(
        self,
        db: Database,
        home: Path,
        index: int,
        slots: int,
        idle_exit_s: float = IDLE_EXIT_S,
        runtime: Path | None = None,
    ) -> None:
        self.db = db
        self.home = home  # the worker's trash (on the work directories' file system)
        self.runtime = runtime or home  # locks, slots and its socket (``runtime_folder``)
        self.index = index
        self.slots = slots
        self.idle_exit_s = idle_exit_s
        self.host = socket.gethostname()
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.trash = Trash(home / f"trash-{index}")
        self.pending: list[Queued] = []  # known submitted, not tried yet; oldest first
        self.news: list[Queued] = []  # named by nudges, not yet in ``pending``
        self.news_lock = threading.Lock()  # the nudge listener's thread adds to ``news``
        self.read_due = True  # read the queue at the next chance (see the module's doc)
        self.last_round = 0  # attempts the last nudge named (the scheduler's last round)

    def serve(self) -> int:
        """Run attempts until drained or idle too long; 0, or 1 if worker N already runs."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        identity = try_lock(worker_lock_path(self.runtime, self.index))
        if identity is None:
            log.info("worker %d already runs; exiting", self.index)
            return 1
        os.ftruncate(identity, 0)
        os.pwrite(identity, str(os.getpid()).encode(), 0)
        nudges = NudgeListener(
            str(worker_socket_path(self.runtime, self.index)), self.wake.set, self.hear
        )
        nudges.start()
        self.trash.start()
        log.info("worker %d (pid %d) is ready", self.index, os.getpid())
        idle_since = swept = time.monotonic()
        try:
            while not self.stop.is_set():
                # Busy or not: in keep-up a worker may never be idle, and a lock file a
                # task left must not stay for good (they are in memory).
                if time.monotonic() - swept > SWEEP_EVERY_S:
                    swept = time.monotonic()
                    sweep_attempt_locks(self.runtime, KEEP_LOCKS_S)
                if self.run_next():
                    idle_since = time.monotonic()
                    continue
                if time.monotonic() - idle_since > self.idle_exit_s:
                    log.info("worker %d: idle for %.0f s; exiting", self.index, self.idle_exit_s)
                    break
                if not self.wake.wait(POLL_S):
                    self.read_due = True  # heard nothing for a while: a nudge may be lost
                self.wake.clear()
        finally:
            nudges.stop()
            self.trash.stop()
            os.close(identity)
        return 0

    def hear(self, payload: bytes) -> None:
        """A nudge's payload (the listener's thread): the attempts it names join the queue
        this worker knows; one naming none makes it read the queue."""
        news = read_news(payload)
        if news is None:
            self.read_due = True
            return
        with self.news_lock:
            self.news.extend(news)
            self.last_round = len(news)

    def _take_news(self) -> None:
        with self.news_lock:
            news, self.news = self.news, []
        if news:
            known = {queued[0] for queued in self.pending}
            self.pending.extend(q for q in news if q[0] not in known)
            self.pending.sort()

    def run_next(self) -> bool:
        """Run the oldest submitted attempt this worker can claim; False if there is none.

        The attempts it knows of (named by nudges, or read from the queue several at a
        time) are tried first; the queue is read only when that is due (see the module's
        doc). One taken meanwhile by the other worker costs no statement: its lock file
        tells (``try_attempt``)."""
        self._take_news()
        if self.pending and self._run_one_of_pending():
            return True
        if not self.read_due:
            return False
        self.read_due = False
        limit = 2 * self.slots
        try:
            with self.db.read_connection() as connection:
                read_at = time.time()
                rows = connection.execute(_NEXT, {"limit": limit}).all()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("worker %d: cannot read the queue (%s)", self.index, exc)
            self.read_due = True
            self.stop.wait(DB_RETRY_S)
            return False
        self.read_due = len(rows) == limit  # a full read: there may be more
        self.pending = [(attempt_id, threads, read_at) for attempt_id, threads in rows]
        return self._run_one_of_pending()

    def _run_one_of_pending(self) -> bool:
        while self.pending:
            if self.stop.is_set():
                return False
            attempt_id, threads, since = self.pending.pop(0)
            if self.try_attempt(attempt_id, threads, since):
                return True
        return False

    def try_attempt(self, attempt_id: int, threads: int, since: float | None = None) -> bool:
        """Take the slots, lock and claim the attempt, run it; False if it was not ours.
        ``since``: when it was known submitted (a lock file written later is another
        worker's: skipped by one ``stat``, before the slots, the lock and a claim that
        would be refused; one taken in between only costs that claim)."""
        if since is not None and lock_written_since(self.runtime, attempt_id, since):
            return False
        with (
            slots_held(self.slots, self.runtime, threads),
            attempt_lock(self.runtime, attempt_id) as fd,
        ):
            if fd is None:
                return False  # another worker is at it, or was since it was submitted
            try:
                claimed = claim(self.db, attempt_id, self.host)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("worker %d: cannot claim attempt %d (%s)", self.index, attempt_id, exc)
                return False
            if claimed is None:
                return False  # another worker took it, or it was given up
            lock = fd
            with attempt_log(claimed.log_path):
                run_claimed(
                    self.db,
                    attempt_id,
                    claimed,
                    on_start=lambda pid: note_command(lock, pid),
                    handle_signals=False,
                    discard=self.trash.discard,
                    nudge_if=self.queue_runs_low,
                )
        return True

    def queue_runs_low(self) -> bool:
        """Whether to wake the scheduler after a success: only when fewer attempts are
        left that this worker knows of and no worker has taken than the slots or half
        the scheduler's last round, as the scheduler refills (``_free_threads``). While
        the queue is deep the scheduler has nothing to add (it refills in batches), and
        its own polling (``[scheduler] poll_seconds``) sees the runs' progress; a wake
        per finished job made it read the database once per task for nothing."""
        self._take_news()
        runtime = self.runtime
        waiting = sum(1 for a, _, _ in self.pending if not attempt_lock_path(runtime, a).exists())
        return waiting < max(self.slots, self.last_round // 2)

    def drain(self, signum: int, _frame: FrameType | None) -> None:
        log.info("worker %d: %s; exiting after the running attempt", self.index, signum)
        self.stop.set()
        self.wake.set()


@contextlib.contextmanager
def attempt_log(log_path: str | None) -> Iterator[None]:
    """The wrapper's log lines go into the attempt's log, among its command's output (and
    not into the worker's own log as well)."""
    if not log_path:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    job_log = logging.getLogger(JOB_LOGGER)
    job_log.addHandler(handler)
    job_log.propagate = False
    try:
        yield
    finally:
        job_log.propagate = True
        job_log.removeHandler(handler)
        handler.close()


LOG_FORMAT = "%(asctime)s runwatch-job[%(process)d] %(levelname)s %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runwatch.jobs.worker",
        description="A local worker (started by the local executor, not by hand).",
    )
    parser.add_argument("--home", required=True, type=Path, help="The executor's folder.")
    parser.add_argument(
        "--runtime", type=Path, help="Its locks, slots and sockets (default: --home)."
    )
    parser.add_argument("--index", required=True, type=int, help="This worker's number.")
    parser.add_argument("--slots", required=True, type=int, help="Thread slots here.")
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT_S, help="Seconds.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT, force=True)
    url = os.environ.get("RUNWATCH_DATABASE_URL")
    if not url:
        log.error("no database: set RUNWATCH_DATABASE_URL")
        return 2
    db = Database(url)
    worker = Worker(db, args.home, args.index, args.slots, args.idle_exit, args.runtime)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, worker.drain)
    try:
        return worker.serve()
    finally:
        db.dispose()


if __name__ == "__main__":
    sys.exit(main())
