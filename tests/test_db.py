from __future__ import annotations

import datetime as dt
import sqlite3
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from runwatch.catalogue.models import Run
from runwatch.db import SQLITE_FAST_WAIT_S, Base, Database, import_all_models, utcnow


def test_migrations_match_models(any_db: Database) -> None:
    """A model change without a migration fails here, on each of the three databases."""
    import_all_models()
    with any_db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_timestamps_round_trip_as_utc(any_db: Database) -> None:
    moment = dt.datetime(2025, 8, 26, 12, 0, 0, 123456, tzinfo=dt.UTC)
    with any_db.session() as s:
        s.add(Run(number=1, stream="Physics", started_at=moment))
    with any_db.session() as s:
        run = s.query(Run).one()
        assert run.started_at == moment
        assert run.started_at.tzinfo is not None


def test_naive_timestamp_is_refused(db: Database) -> None:
    with pytest.raises(Exception, match="naive datetime"), db.session() as s:
        s.add(Run(number=2, stream="Physics", started_at=utcnow().replace(tzinfo=None)))
        s.flush()


def _hold_write_lock(url: str, seconds: float, held: threading.Event) -> float:
    """Hold SQLite's write lock for ``seconds`` from another connection; return the
    monotonic time it was released."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        return time.monotonic()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("hold_s", "limit_s"), [(0.05, 0.010), (0.2, 0.010), (SQLITE_FAST_WAIT_S + 0.2, 0.150)]
)
def test_a_writer_gets_the_sqlite_lock_at_once_when_it_is_freed(
    db: Database, hold_s: float, limit_s: float
) -> None:
    """SQLite's own busy handler would retry only after sleeps of up to 100 ms; runwatch
    polls finely (then falls back on the busy timeout past SQLITE_FAST_WAIT_S), so a
    writer gets the lock within a few milliseconds of its release, however long it waited."""
    lateness = []
    for _ in range(3):
        held = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            released = pool.submit(_hold_write_lock, db.url, hold_s, held)
            assert held.wait(5)
            with db.session() as s:
                s.execute(sa.text("SELECT 1"))  # BEGIN IMMEDIATE: blocks until the lock is free
                got = time.monotonic()
                s.add(Run(number=len(lateness) + 1, stream="Physics"))
            lateness.append(got - released.result())
    assert statistics.median(lateness) < limit_s, lateness
