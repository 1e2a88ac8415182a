"""A short-lived cache of answers that many people ask for at once.

The recent-runs page is what every shifter's screen shows and reloads; a page of 50 runs
costs four queries over the runs, files, tasks and verdicts tables (most of a request's
time, see docs/web.md). Within a couple of seconds the answer is the same for everyone, so
each process computes it once per ``[web] cache_seconds`` and per distinct question, and
the live updates (server-sent events) carry what changes in between.

Only one request computes a missing or expired answer; the others asking the same
question meanwhile wait for it rather than all querying the database together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class ShortCache:
    """Answers by key, each reused for ``seconds`` (0: never reused)."""

    def __init__(self, seconds: float, max_entries: int = 512) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self._computing: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        if self.seconds <= 0:
            return compute()
        found = self._fresh(key)
        if found is not None:
            return found[0]  # type: ignore[no-any-return]
        with self._guard:
            lock = self._computing.setdefault(key, threading.Lock())
        with lock:
            found = self._fresh(key)  # computed by the request we waited for
            if found is not None:
                return found[0]  # type: ignore[no-any-return]
            value = compute()
            with self._guard:
                self._entries[key] = (time.monotonic() + self.seconds, value)
                self._computing.pop(key, None)
                if len(self._entries) > self.max_entries:
                    self._prune()
            return value

    def _fresh(self, key: Hashable) -> tuple[Any] | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return (entry[1],)

    def _prune(self) -> None:
        """Drop the expired entries, and the oldest half if that is not enough (a flood of
        distinct questions must not grow the process)."""
        now = time.monotonic()
        live = {k: e for k, e in self._entries.items() if e[0] > now}
        if len(live) > self.max_entries // 2:
            newest = sorted(live.items(), key=lambda item: item[1][0])[len(live) // 2 :]
            live = dict(newest)
        self._entries = live
