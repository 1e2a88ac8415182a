"""Thread slots on one machine, held by job wrappers as file locks.

The local executor keeps a job waiting behind each slot (``LocalExecutor.queue_ahead``):
its wrapper is forked early and waits here for a slot, so that when a job ends the next
one starts within a millisecond instead of after a round trip through the scheduler,
a fork and a database transaction. The slots are ``flock`` locks on the files
``<dir>/slot-<i>``: the kernel releases them when a wrapper exits or is killed, so no
crash can leak a slot, and no other process has to keep count.

A wrapper needing T threads takes T slots at once or none (no deadlock between two
wrappers that each hold part of what they need), polling every ``POLL_S``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

SLOTS_ENV = "RUNWATCH_SLOTS"  # "<slots>:<threads>:<directory>", set by the local executor
POLL_S = 0.001


def slots_env(count: int, threads: int, directory: Path) -> str:
    """The value of ``RUNWATCH_SLOTS`` for a job of ``threads`` threads."""
    return f"{count}:{threads}:{directory}"


def slots_from_env(value: str | None) -> tuple[int, int, Path] | None:
    """Parse ``RUNWATCH_SLOTS`` into (slots, threads, directory); None when unset (no slot
    limit on this machine, e.g. on a batch system's worker node)."""
    if not value:
        return None
    count, threads, directory = [*value.split(":", 2), "", ""][:3]
    if not (count.isdigit() and int(count) >= 1 and threads.isdigit() and directory):
        raise ValueError(f"{SLOTS_ENV} must be '<slots>:<threads>:<directory>', not {value!r}")
    return int(count), int(threads), Path(directory)


@contextlib.contextmanager
def slots_held(count: int, directory: Path, threads: int) -> Iterator[list[int]]:
    """Wait for ``threads`` of the ``count`` slots (all of them if it needs more); yield
    their numbers; release them on exit."""
    need = max(1, min(threads, count))
    directory.mkdir(parents=True, exist_ok=True)
    fds = [
        os.open(directory / f"slot-{i}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for i in range(count)
    ]
    held: list[int] = []
    try:
        # Start the scan at our own pid's offset so that waiting wrappers spread over the
        # slots instead of all trying slot 0 first.
        order = [(os.getpid() + i) % count for i in range(count)]
        while True:
            for i in order:
                if try_flock(fds[i]):
                    held.append(i)
                    if len(held) == need:
                        break
            if len(held) == need:
                break
            for i in held:  # all or nothing
                fcntl.flock(fds[i], fcntl.LOCK_UN)
            held.clear()
            time.sleep(POLL_S)
        yield sorted(held)
    finally:
        for fd in fds:  # closing the descriptor drops its lock
            os.close(fd)


def try_flock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` if free; False if another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
