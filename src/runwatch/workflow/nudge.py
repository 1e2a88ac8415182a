"""Nudges: a best-effort "something changed, tick now" to the active scheduler.

All state is in the database, and the scheduler would notice every change on its own by
polling. Polling alone, though, makes each hand-over (a job ended, a message arrived) wait
for the next poll. So whoever commits such a change on the scheduler's machine (the job
wrapper, the HTTP intake) also sends one datagram to a Unix socket that the active
scheduler listens on. A nudge may be lost: it only shortens a wait. The local executor's
nudges to its workers also carry the attempts just submitted (``runwatch.jobs.worker``),
sparing each worker a read of the queue; a worker still reads it when a nudge comes
without them, and when it has heard nothing for a while.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

NUDGE_ENV = "RUNWATCH_NUDGE"
SOCKET_NAME = "scheduler.nudge"
# sun_path holds 108 bytes on Linux; a longer path cannot be bound, so nudges are off.
MAX_PATH = 107


def socket_path(work_root: str | Path) -> str:
    return str(Path(work_root) / SOCKET_NAME)


PLAIN = b"!"  # a nudge that says only "look"
MAX_PAYLOAD = 4096  # longer news is not sent: a plain nudge makes the listener look itself


def nudge(path: str | None, payload: bytes = PLAIN) -> None:
    """Tell the listener at ``path`` to look now, with ``payload`` if it is not too long
    (else plainly); never fails, never blocks."""
    if not path:
        return
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        sock.setblocking(False)
        sock.sendto(payload if len(payload) <= MAX_PAYLOAD else PLAIN, path)


class NudgeListener:
    """Calls ``on_nudge`` for every datagram received at ``path`` (in a daemon thread),
    after ``on_payload`` with the datagram's bytes if given."""

    def __init__(
        self,
        path: str,
        on_nudge: Callable[[], None],
        on_payload: Callable[[bytes], None] | None = None,
    ) -> None:
        self.path = path
        self.on_nudge = on_nudge
        self.on_payload = on_payload
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None

    def start(self) -> bool:
        """Bind and listen; False (and a log line) if the socket cannot be made."""
        if len(os.fsencode(self.path)) > MAX_PATH:
            log.info("nudges off: socket path %s is too long", self.path)
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # A socket file left by a scheduler that was killed: only the lease holder
            # binds, so it is ours to replace.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            sock.bind(self.path)
            self._inode = os.stat(self.path).st_ino
        except OSError as exc:
            sock.close()
            log.warning("nudges off: cannot bind %s: %s", self.path, exc)
            return False
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._listen, name="nudges", daemon=True)
        self._thread.start()
        return True

    def _listen(self) -> None:
        sock = self._sock
        while sock is not None and sock is self._sock:
            try:
                payload = sock.recv(MAX_PAYLOAD)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.on_payload is not None:
                self.on_payload(payload)
            self.on_nudge()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        if sock is not None:
            sock.close()
            # Leave the socket of a newer scheduler that took over from us alone.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
