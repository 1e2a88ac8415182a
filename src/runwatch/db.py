"""The one database: engine, sessions, the declarative base and migrations.

SQLite is the embedded default (WAL journal, a busy timeout, foreign keys on); PostgreSQL and
MySQL/MariaDB are chosen by URL. Every table goes through Alembic migrations
(``runwatch db upgrade``); tests check that the models and the migrations agree.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_FAST_WAIT_S = 0.5  # poll for the write lock this long before the busy timeout
SQLITE_FAST_POLL_S = 0.0003
READONLY_OPTION = "runwatch_readonly"
PING_AFTER_IDLE_S = 5.0  # a pooled server connection idle this long is checked before use


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timestamp stored as naive UTC and read back timezone-aware.

    SQLite and MySQL keep no time zone; storing UTC everywhere makes the three databases
    agree. MySQL gets microseconds (DATETIME(6)), which latency figures need.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use runwatch.db.utcnow()")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the settings each backend needs for concurrent daemons."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        engine = sa.create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        database = engine.url.database
        if database and database != ":memory:":
            queue = WriterQueue(Path(database).with_name(Path(database).name + ".writers"))
            event.listen(engine, "connect", queue.on_connect)
            event.listen(engine, "checkin", queue.on_checkin)
            event.listen(engine, "close", queue.on_close)
        return engine
    if url.startswith("mysql") or url.startswith("mariadb"):
        # REPEATABLE READ would let a daemon keep reading a stale snapshot inside a tick.
        kwargs.setdefault("isolation_level", "READ COMMITTED")
    engine = sa.create_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only if it sat idle for a while.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one more round trip to the
    server per transaction, a fifth of a task's database time. A connection used seconds
    ago is alive; one that was idle (the server may have restarted since) is pinged, and
    a dead one replaced. A connection that dies while busy fails its statement, which the
    daemons retry, and SQLAlchemy then drops the pool's other connections.
    """
    last_used = "runwatch_last_used"

    @event.listens_for(engine, "checkin")
    def _used(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[last_used] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(last_used)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return  # new, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # whatever the driver raises for a dead connection
            raise sa.exc.DisconnectionError(f"stale connection: {exc}") from exc


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_on_begin) instead of pysqlite's
    # deferred transactions, which break the guarded updates' read-then-write pattern.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN, so two writers wait on the busy timeout
    # rather than failing with "database is locked" when a reader upgrades to a writer.
    # Read-only sessions (Database.read_session) take a plain snapshot and block nobody.
    if conn.get_execution_options().get(READONLY_OPTION):
        conn.exec_driver_sql("BEGIN")
        return
    WriterQueue.enter(conn.connection.info)
    if not _begin_immediate_fast(conn.connection.dbapi_connection):
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # still locked: wait on the busy timeout


def _begin_immediate_fast(dbapi_conn: Any) -> bool:
    """Try BEGIN IMMEDIATE every SQLITE_FAST_POLL_S for up to SQLITE_FAST_WAIT_S.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between tries, so a
    write lock that a job wrapper holds for 3 ms costs the scheduler 8 ms, and a few
    such waits per tick were most of the engine's overhead per task. Writers here hold
    the lock for milliseconds, so polling finely for a short while is far cheaper; a
    longer wait falls back to the busy timeout. False: not begun, the lock is still held.
    """
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA busy_timeout=0")
        deadline = time.monotonic() + SQLITE_FAST_WAIT_S
        while True:
            try:
                cur.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    return False
            time.sleep(SQLITE_FAST_POLL_S)
    finally:
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()


Transaction = Session | sa.Connection  # what functions that never commit work in


def connection_of(tx: Transaction) -> sa.Connection:
    """The Core connection of a transaction (a session's costs ~0.1 ms: ask once)."""
    return tx if isinstance(tx, sa.Connection) else tx.connection()


class WriterQueue:
    """Writers to one SQLite database queue on a file lock before they BEGIN IMMEDIATE.

    SQLite has no queue for its write lock: a writer that finds it taken can only retry,
    and with a scheduler and a worker per slot all writing a few times per task, retrying
    (even finely, see _begin_immediate_fast) cost ~0.5 ms of CPU per write. A blocking
    ``flock`` on ``<database>.writers`` costs nothing while waiting, and the kernel hands
    the lock on the moment it is released: when the connection goes back to the pool
    after its transaction. It is an optimisation only: a writer that holds the queue
    already in this thread (on another connection), or cannot open the file, goes
    straight to BEGIN IMMEDIATE, which still waits on SQLite's own lock (held, say, by
    a writer that is not runwatch's). Rule that keeps it deadlock-free: no thread waits
    for another while it writes.
    """

    FD = "runwatch_writers_fd"
    HELD = "runwatch_writers_held"
    _thread = threading.local()  # how many queue locks this thread holds

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_connect(self, _dbapi_conn: Any, record: Any) -> None:
        # Where the file cannot be made (a read-only folder), SQLite's lock does alone.
        with contextlib.suppress(OSError):
            record.info[self.FD] = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @classmethod
    def enter(cls, info: dict[Any, Any]) -> bool:
        """Wait for our turn; False if this connection does not queue (see above)."""
        fd = info.get(cls.FD)
        if fd is None or info.get(cls.HELD) or getattr(cls._thread, "held", 0):
            return False  # a second lock in one thread could wait for itself forever
        fcntl.flock(fd, fcntl.LOCK_EX)
        info[cls.HELD] = True
        cls._thread.held = getattr(cls._thread, "held", 0) + 1
        return True

    @classmethod
    def on_checkin(cls, _dbapi_conn: Any, record: Any) -> None:
        if record.info.pop(cls.HELD, False):
            fcntl.flock(record.info[cls.FD], fcntl.LOCK_UN)
            cls._thread.held = max(0, getattr(cls._thread, "held", 1) - 1)

    @classmethod
    def on_close(cls, dbapi_conn: Any, record: Any) -> None:
        cls.on_checkin(dbapi_conn, record)
        fd = record.info.pop(cls.FD, None)
        if fd is not None:
            os.close(fd)


class Database:
    """An engine plus its session factory; open it once per process."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # For reads and one-statement changes (``one_statement``). On a server at READ
        # COMMITTED a read sees what is committed whether or not it is in a transaction,
        # and a single statement is atomic by itself: in autocommit both are spared the
        # BEGIN and COMMIT round trips. (SQLite reads begin no transaction already.)
        self.autocommit_engine = self.engine
        if not url.startswith("sqlite"):
            self.autocommit_engine = make_engine(
                url, **{**engine_kwargs, "isolation_level": "AUTOCOMMIT"}
            )
        self.readers = sessionmaker(
            self.autocommit_engine.execution_options(**{READONLY_OPTION: True}),
            expire_on_commit=False,
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A Core connection in a transaction that commits on success: for the hot paths
        run for every task, where an ORM session's own cost would dominate."""
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def one_statement(self) -> Iterator[sa.Connection]:
        """A connection for a change made by one statement, which is atomic by itself: on
        a server it runs in autocommit, sparing the BEGIN and COMMIT round trips; on
        SQLite it is an ordinary transaction (which queues for the write lock)."""
        if self.autocommit_engine is self.engine:
            with self.transaction() as connection:
                yield connection
        else:
            with self.autocommit_engine.connect() as connection:
                yield connection

    @contextmanager
    def read_connection(self) -> Iterator[sa.Connection]:
        """A Core connection for reading only (on SQLite it takes no write lock)."""
        with self.autocommit_engine.connect() as connection:
            connection = connection.execution_options(**{READONLY_OPTION: True})
            with connection.begin():
                yield connection

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reading only: on SQLite it takes no write lock."""
        with self.readers() as session:
            try:
                yield session
            finally:
                session.rollback()

    def upgrade(self) -> None:
        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()
        self.autocommit_engine.dispose()


def alembic_config(engine: Engine | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def import_all_models() -> None:
    """Import every feature's models so that ``Base.metadata`` is complete."""
    from runwatch.catalogue import models as _catalogue  # noqa: F401
    from runwatch.dqm import models as _dqm  # noqa: F401
    from runwatch.ingest import models as _ingest  # noqa: F401
    from runwatch.web import models as _web  # noqa: F401
    from runwatch.workflow import models as _workflow  # noqa: F401
