"""Quick and full ticks: a job that ended needs only a quick tick (submit what is READY);
planning, supervision and run statuses follow when files arrive, when slots are free with
nothing ready, and at least every tick_seconds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa

from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.executors.local import LocalExecutor
from runwatch.workflow.models import Attempt
from runwatch.workflow.scheduler import Scheduler
from tests.workflow.engine import CHAIN, announce_run, write_pipeline


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now


def test_a_full_tick_is_due_only_for_new_files_free_slots_or_time(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    write_pipeline(settings, CHAIN.replace('command: "cp', 'command: "sleep 2; cp'))
    announce_run(db, tmp_path / "raw", 7, 8)
    clock = Clock()
    executor = LocalExecutor(settings)
    scheduler = Scheduler(settings, db, executor, clock=clock)
    try:
        assert scheduler.full_tick_due(), "the first tick is a full one"
        report = scheduler.run_once()
        # Both slots busy for 2 s, and two rounds of jobs queued (LocalExecutor.queue_ahead).
        assert report.planned and report.submitted == 3 * settings.scheduler.slots
        assert not scheduler.full_tick_due()
        assert scheduler.run_quick().submitted == 0  # no slot free: nothing to do

        announce_run(db, tmp_path / "raw", 8, 1)  # a new file must be planned at once
        assert scheduler.full_tick_due()
        scheduler.run_once()
        assert not scheduler.full_tick_due()

        clock.now += dt.timedelta(seconds=settings.scheduler.tick_seconds)
        assert scheduler.full_tick_due(), "time for supervision and run statuses"
    finally:
        with db.session() as s:  # stop the sleeping jobs rather than leave them behind
            for attempt_id in s.scalars(sa.select(Attempt.id)):
                executor.cancel(executor.job_id(attempt_id))
        executor.close()
