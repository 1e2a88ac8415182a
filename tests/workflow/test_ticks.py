"""Quick and full ticks: a job that ended needs only a quick tick (submit what is READY);
planning, supervision and run statuses follow when files arrive, when slots are free with
nothing ready, and at least every tick_seconds."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.executors.local import LocalExecutor
from runwatch.workflow.models import Attempt
from runwatch.workflow.scheduler import Scheduler
from runwatch.workflow.service import (
    AttemptOutcome,
    OutputRecord,
    RetryPolicy,
    claim_attempt,
    finish_attempt,
)
from runwatch.workflow.states import AttemptState
from tests.workflow.engine import CHAIN, BatchSystem, announce_run, write_pipeline


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


def test_a_quick_turn_that_fills_the_queue_waits_for_a_change(
    db: Database, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a quick turn has refilled the executor's queue there is nothing to do until a
    job ends or a file arrives: the scheduler waits, from what the database says now (its
    own submissions are no change), instead of reading the database again at once."""
    write_pipeline(settings)
    announce_run(db, tmp_path / "raw", 7, 3)
    executor = BatchSystem(slots=2)
    clock = Clock()
    scheduler = Scheduler(settings, db, executor, clock=clock)
    waits: list[tuple[int | None, int]] = []
    monkeypatch.setattr(scheduler, "_wait_for_change", lambda _s, _w, before: waits.append(before))
    stop, wake = threading.Event(), threading.Event()

    scheduler._turn(stop, wake)  # full: plans, and submits 2 of the 3 calibrations
    assert len(executor.submitted) == 2 and waits == [], "a full tick that worked goes on"

    with db.session() as s:  # one job ends: its slot is free
        first = min(s.scalars(sa.select(Attempt.id)))
        assert claim_attempt(s, first, "node", clock.now) is not None
        done = AttemptOutcome(
            AttemptState.SUCCEEDED, outputs=[OutputRecord("calib", "file:///c", 1, "00000001")]
        )
        assert finish_attempt(s, first, done, RetryPolicy(), clock.now)

    scheduler._turn(stop, wake)  # quick: one more job fills the queue again
    assert len(executor.submitted) == 3
    assert waits == [scheduler._signal()], "waits from the database's state, not at once"


class ShortJobs(BatchSystem):
    """An executor that lets the scheduler queue deeper while its slots run dry."""

    def queue_ahead(self) -> int:
        return 2 * self.slots

    def queue_ahead_max(self) -> int:
        return 4 * self.slots


def refill(scheduler: Scheduler, queued: int, running: int, filled: bool = True) -> int:
    """Threads the scheduler would add, with ``queued`` and ``running`` in flight, after
    a round that filled the executor's queue (``filled``) or not."""
    scheduler._filled = filled
    scheduler._in_flight = (queued, running)
    return scheduler._free_threads()


def test_the_queue_deepens_while_it_runs_dry_and_shallows_back(
    db: Database, settings: Settings
) -> None:
    scheduler = Scheduler(settings, db, ShortJobs(slots=2))
    assert refill(scheduler, 1, 2) == 2 + 4 - 3, "a job still queued: as deep as queue_ahead"
    assert refill(scheduler, 0, 1) == 2 + 4 + 2 - 1, "ran dry: a round deeper"
    assert refill(scheduler, 0, 0, filled=False) == 2 + 6, "a round that did not fill the queue"
    assert refill(scheduler, 0, 0) == 2 + 8, "dry again: up to queue_ahead_max"
    assert refill(scheduler, 0, 1) == 2 + 8 - 1, "no deeper than that"
    # Slots busy and a round still queued at each refill (long jobs): a thread shallower
    # each time, while the scheduler refills at half the queue's depth.
    assert [refill(scheduler, 2, 2) for _ in range(4)] == [2 + 7 - 4, 2 + 6 - 4, 2 + 5 - 4, 0]
    assert refill(scheduler, 1, 2) == 2 + 5 - 3


def test_a_batch_systems_queue_stays_as_deep_as_configured(
    db: Database, settings: Settings
) -> None:
    scheduler = Scheduler(settings, db, BatchSystem(slots=2))
    assert [refill(scheduler, 0, 0) for _ in range(3)] == [2, 2, 2]
