"""A local worker learns the attempts just submitted from the executor's nudge and runs
them without reading the queue; it reads the queue when a nudge names nothing, when a
read filled its limit, and at its start. Run in-process against a real database, the
statements counted with a SQLAlchemy hook."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from runwatch.db import Database
from runwatch.jobs.worker import Worker, read_news, submitted_news
from runwatch.workflow.nudge import PLAIN
from runwatch.workflow.states import AttemptState
from tests.jobs.test_wrapper import attempt_row, make_attempt


def test_the_news_names_each_attempt_and_when_it_was_submitted() -> None:
    news = submitted_news([(7, 1), (12, 4)], 1700000000.25)
    assert read_news(news) == [(7, 1, 1700000000.25), (12, 4, 1700000000.25)]
    for unreadable in (PLAIN, b"", b"submitted", b"submitted 1.0", b"submitted x 1:1"):
        assert read_news(unreadable) is None, unreadable
    assert read_news(b"submitted 1.0 3:x") is None
    assert read_news(b"other 1.0 3:1") is None


@pytest.fixture
def queue_reads(db: Database) -> Iterator[list[str]]:
    """The worker's reads of the queue, as they reach the database."""
    reads: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM attempts JOIN tasks" in statement and "LIMIT" in statement:
            reads.append(statement)

    engine = db.autocommit_engine
    sa.event.listen(engine, "before_cursor_execute", seen)
    yield reads
    sa.event.remove(engine, "before_cursor_execute", seen)


def worker(db: Database, home: Path) -> Worker:
    home.mkdir(parents=True, exist_ok=True)
    return Worker(db, home, index=0, slots=1)


def test_a_worker_runs_the_attempts_a_nudge_names_without_reading_the_queue(
    db: Database, tmp_path: Path, queue_reads: list[str]
) -> None:
    first = worker(db, tmp_path / "local")
    assert first.run_next() is False, "nothing submitted yet"
    assert len(queue_reads) == 1, "a worker reads the queue when it starts"
    attempts = [make_attempt(db, tmp_path, "true") for _ in range(2)]
    # A plain nudge says nothing: the worker looks for itself.
    assert first.run_next() is False and len(queue_reads) == 1, "not due: no read"
    first.hear(submitted_news([(a, 1) for a in reversed(attempts)], 0.0))
    assert first.run_next() and first.run_next(), "both run, oldest first"
    assert first.run_next() is False
    assert len(queue_reads) == 1, "the nudge named them: no read of the queue"
    older, newer = (attempt_row(db, a)[0].started_at for a in attempts)
    assert older is not None and newer is not None and older <= newer
    assert {attempt_row(db, a)[0].state for a in attempts} == {AttemptState.SUCCEEDED}


def test_a_nudge_naming_nothing_or_a_full_read_makes_the_worker_read(
    db: Database, tmp_path: Path, queue_reads: list[str]
) -> None:
    first = worker(db, tmp_path / "local")
    first.run_next()
    attempts = [make_attempt(db, tmp_path, "true") for _ in range(3)]
    first.hear(PLAIN)
    # Its limit is 2 attempts (2 x 1 slot): a full read, so it reads again after them.
    assert first.run_next() and first.run_next()
    assert len(queue_reads) == 2
    assert first.run_next(), "the third, found by the next read"
    assert len(queue_reads) == 3
    assert {attempt_row(db, a)[0].state for a in attempts} == {AttemptState.SUCCEEDED}
    assert first.run_next() is False and len(queue_reads) == 3, "a short read: no more reads"


def test_an_attempt_another_worker_took_since_it_was_submitted_costs_no_claim(
    db: Database, tmp_path: Path
) -> None:
    home = tmp_path / "local"
    first, second = worker(db, home), worker(db, home)
    attempt_id = make_attempt(db, tmp_path, "true")
    news = submitted_news([(attempt_id, 1)], 0.0)
    first.hear(news)
    second.hear(news)
    assert first.run_next()
    claims: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "UPDATE attempts" in statement:
            claims.append(statement)

    engines = {id(engine): engine for engine in (db.engine, db.autocommit_engine)}.values()
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        second.read_due = False
        assert second.run_next() is False, "its lock file was written after the submission"
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", seen)
    assert claims == []


def test_the_queue_runs_low_below_the_slots_or_half_the_last_round(
    db: Database, tmp_path: Path
) -> None:
    """When a worker wakes the scheduler after a success: as the scheduler refills
    (``Scheduler._free_threads``), when fewer attempts wait than the slots or than half
    the round the scheduler last submitted."""
    home = tmp_path / "local"
    home.mkdir()
    two_slots = Worker(db, home, index=0, slots=2)
    assert two_slots.queue_runs_low(), "nothing waits"
    two_slots.hear(submitted_news([(a, 1) for a in range(1, 3)], 0.0))
    assert not two_slots.queue_runs_low(), "a round of 2 waits"
    two_slots.hear(submitted_news([(a, 1) for a in range(3, 11)], 0.0))
    assert not two_slots.queue_runs_low(), "10 wait, the last round was 8"
    two_slots.pending = two_slots.pending[-4:]
    assert not two_slots.queue_runs_low(), "4 wait: half the last round"
    two_slots.pending = two_slots.pending[-3:]
    assert two_slots.queue_runs_low(), "3 wait: fewer than half the last round"
    two_slots.pending = two_slots.pending[-1:]
    two_slots.hear(submitted_news([(11, 1)], 0.0))
    assert not two_slots.queue_runs_low(), "2 wait after a round of 1: the slots count"
