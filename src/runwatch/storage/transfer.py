"""What every copy of a file shares, whatever the URL scheme: the errors, the time limit of
one try and the retries with backoff (``[storage]`` settings).

A copy that fails for a reason that may go away on its own (a server restarting, a broken
connection, a checksum that does not match the source's) raises ``TransientError`` and is
tried again after a delay that doubles each time; any other failure (a missing file, no
permission, a full disk) raises ``StageError`` at once, because trying again only delays
the message.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

from runwatch.config import StorageSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

Progress = Callable[[int], None]  # bytes copied so far, called after each block


class StageError(Exception):
    """A file could not be staged in or out; the text says which file and why."""


class TransientError(Exception):
    """A failed try worth repeating; the text is the whole message (URL and reason)."""


class Deadline:
    """The end of one try of a copy (``[storage] timeout_seconds`` after it started)."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; ``TransientError`` once there are none."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise TransientError(f"{self.what}: timed out after {self.seconds:g} s")
        return left

    def whole_seconds(self) -> int:
        """Seconds left, rounded up, for APIs that take whole seconds (XRootD: 0 = none)."""
        return max(1, math.ceil(self.remaining()))


def with_retries(what: str, policy: StorageSettings, attempt: Callable[[Deadline], T]) -> T:
    """Call ``attempt`` until it succeeds, at most ``1 + policy.retries`` times, each try
    with a fresh deadline; ``what`` (e.g. "cannot stage in URL") names the copy in
    timeouts and in the log."""
    for number in range(policy.retries + 1):
        try:
            return attempt(Deadline(policy.timeout_seconds, what))
        except TransientError as exc:
            if number >= policy.retries:
                raise StageError(f"{exc} (gave up after {number + 1} tries)") from exc
            delay = policy.backoff_seconds * 2**number
            log.warning("%s; retrying in %.1f s", exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable: the last try returns or raises")
