from __future__ import annotations

import datetime as dt
import sqlite3
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from runwatch.catalogue.models import Run
from runwatch.db import (
    SQLITE_FAST_WAIT_S,
    Base,
    Database,
    WriterQueue,
    import_all_models,
    utcnow,
)


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


def test_runwatch_writers_queue_for_the_write_lock_without_spinning(db: Database) -> None:
    """A second writer waits on the writers' queue (a file lock) at no CPU cost, and gets
    its turn as soon as the first one's transaction ends."""
    first_in = threading.Event()
    released: list[float] = []

    def first() -> None:
        with db.session() as s:
            s.add(Run(number=1, stream="Physics"))
            s.flush()  # BEGIN IMMEDIATE: holds the queue and the lock
            first_in.set()
            time.sleep(0.5)
        released.append(time.monotonic())

    def second() -> tuple[float, float]:
        assert first_in.wait(5)
        cpu = time.thread_time()
        with db.session() as s:
            s.add(Run(number=2, stream="Physics"))
            s.flush()
            got = time.monotonic()
        return time.thread_time() - cpu, got

    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(first)
        cpu_s, got = pool.submit(second).result()
        holder.result()
    assert cpu_s < 0.015, f"the waiting writer used {cpu_s:.3f} s of CPU"
    # The first's release is noted just after its connection goes back to the pool, so the
    # second may be in a moment before: what matters is that it was not left waiting.
    assert abs(got - released[0]) < 0.05
    with db.session() as s:
        assert sorted(s.scalars(sa.select(Run.number))) == [1, 2]


def test_writers_work_without_the_queue_where_its_file_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "runwatch.db.writers").mkdir()  # a folder where the lock file should be
    database = Database(f"sqlite:///{tmp_path}/runwatch.db")
    try:
        database.upgrade()
        with database.session() as s:
            s.add(Run(number=3, stream="Physics"))
        with database.session() as s:
            assert s.scalar(sa.select(Run.number)) == 3
    finally:
        database.dispose()
    record = type("Record", (), {"info": {}})()
    WriterQueue(tmp_path / "runwatch.db.writers").on_connect(None, record)
    assert WriterQueue.FD not in record.info and not WriterQueue.enter(record.info)


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_a_connection_killed_while_idle_is_replaced_before_use(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pool_pre_ping, a pooled connection idle longer than PING_AFTER_IDLE_S is
    pinged at checkout; a dead one is replaced and the caller never sees the error."""
    from tests.conftest import server_url

    url = server_url(kind)
    db = Database(url)
    other = Database(url)
    backend_id = "pg_backend_pid()" if kind == "postgres" else "connection_id()"
    kill = "SELECT pg_terminate_backend(:pid)" if kind == "postgres" else "KILL :pid"
    try:
        for engine in (db.engine, db.autocommit_engine):
            with engine.connect() as connection:
                pid = connection.execute(sa.text(f"SELECT {backend_id}")).scalar()
            with other.transaction() as tx:
                tx.execute(sa.text(kill), {"pid": pid})
            monkeypatch.setattr("runwatch.db.PING_AFTER_IDLE_S", 0.0)
            with engine.connect() as connection:
                fresh = connection.execute(sa.text(f"SELECT {backend_id}")).scalar()
            assert fresh != pid
            monkeypatch.undo()
    finally:
        db.dispose()
        other.dispose()


def test_server_reads_run_in_autocommit_and_writes_in_transactions() -> None:
    """Reads skip the BEGIN and COMMIT round trips on a server; writes keep transactions."""
    from tests.conftest import server_url

    db = Database(server_url("postgres"))
    try:
        with db.read_connection() as connection:
            assert connection.connection.dbapi_connection.autocommit is True
        with db.transaction() as tx:
            assert tx.connection.dbapi_connection.autocommit is False
    finally:
        db.dispose()
