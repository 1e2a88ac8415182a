"""The DQM's turn in the scheduler process: register finished merges, judge their runs,
sweep the alarms, tell the notifiers.

It runs in a thread of the active scheduler, every ``[dqm] every_seconds``, apart from
the engine's ticks: the engine's cost per task stays what it was, and a slow check file
or a notifier that times out never delays a submission. Everything it does starts from
the database, so a pass killed at any instant is redone by the next one: a merge is
registered in the same transaction as its run's verdict, and an alarm is marked notified
only after every notifier took it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.dqm.alarms import notify_pending, sweep
from runwatch.dqm.notifiers import NamedNotifier, load_notifiers
from runwatch.dqm.service import register_merges
from runwatch.workflow.revisions import RevisionCache

log = logging.getLogger(__name__)


@dataclass
class DqmPass:
    """What one pass did."""

    merges: list[int] = field(default_factory=list)  # DqmMerge ids registered
    raised: list[str] = field(default_factory=list)  # alarm keys raised or re-raised
    cleared: list[str] = field(default_factory=list)
    notified: int = 0


class DqmLoop:
    def __init__(
        self, settings: Settings, db: Database, clock: Callable[[], dt.datetime] = utcnow
    ) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.revisions = RevisionCache()  # its own: the scheduler's is another thread's
        # Built once: a misconfigured notifier stops the scheduler at start, not at 3 am.
        self.notifiers: list[NamedNotifier] = load_notifiers(settings.alarms.notifiers)
        self._thread: threading.Thread | None = None

    def run_once(self) -> DqmPass:
        """One pass: register and judge, then sweep alarms, then notify (outside any
        transaction: a notifier's I/O never holds the database)."""
        done = DqmPass()
        now = self.clock()
        with self.db.session() as session:
            done.merges = register_merges(session, self.settings, self.revisions, now)
        with self.db.session() as session:
            report = sweep(session, self.settings, now)
        done.raised = report.raised + report.re_raised
        done.cleared = report.cleared
        done.notified = notify_pending(self.db, self.settings, self.clock(), self.notifiers)
        return done

    def serve(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop``; a failed pass is logged and the next one tries
        again (the engine goes on regardless)."""
        while not stop.is_set():
            try:
                done = self.run_once()
                if done.merges or done.raised or done.cleared:
                    log.info(
                        "dqm: %d merges registered, alarms raised %s, cleared %s",
                        len(done.merges),
                        done.raised,
                        done.cleared,
                    )
            except Exception:
                log.exception("dqm pass failed; trying again in %.0f s", self.every_s)
            stop.wait(self.every_s)

    @property
    def every_s(self) -> float:
        return self.settings.dqm.every_seconds

    def start(self, stop: threading.Event) -> None:
        """Serve in a daemon thread (the scheduler calls this once it leads)."""
        self._thread = threading.Thread(target=self.serve, args=(stop,), name="dqm", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
