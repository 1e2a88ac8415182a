"""Cataloguing raw files and runs as file-ready messages announce them.

Two processes (the HTTP intake and the scheduler's dropbox watcher, say) may register the
same file or the first files of the same run at the same moment. The unique constraints on
``files.name`` and ``runs.number`` decide who wins: a file is inserted in a savepoint, and
the loser rolls back just that savepoint and reads the winner's row; a run is inserted with
the database's "insert unless it exists" and its row then locked (see ``_run_for``), so the
files of one run are registered in turn. Run counters are updated with one
``UPDATE ... SET n_files = n_files + 1``, never a read-modify-write in Python.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from runwatch.catalogue.models import FILES, RUNS, File, Run, RunStatus
from runwatch.db import UTCDateTime
from runwatch.ingest.schema import FileMessage

FINISHED = (RunStatus.ALL_COMPLETED, RunStatus.PARTLY_COMPLETED)


_FILE_ID = sa.select(FILES.c.id).where(FILES.c.name == sa.bindparam("name"))


def file_named(session: Session, name: str) -> File | None:
    # A cheap Core probe first: nearly every message names a new file.
    if session.connection().execute(_FILE_ID, {"name": name}).first() is None:
        return None
    return session.scalar(sa.select(File).where(File.name == name))


def run_numbered(session: Session, number: int) -> Run | None:
    return session.scalar(sa.select(Run).where(Run.number == number))


def register_file(session: Session, msg: FileMessage, now: dt.datetime) -> tuple[File, bool]:
    """The catalogued file named in ``msg``, and whether this call created it.

    A file already catalogued (by us earlier, or by another process a moment ago) is
    returned as it is, with False: comparing it with the message is the caller's business.
    """
    existing = file_named(session, msg.name)
    if existing is not None:
        return existing, False
    run = _run_for(session, msg, now)
    file = File(
        run_id=run.id,
        name=msg.name,
        url=msg.url,
        stream=msg.stream,
        sequence=msg.sequence,
        size=msg.size,
        adler32=msg.adler32,
        created_at=msg.created,
        registered_at=now,
        planned_at=None,
        meta=dict(msg.metadata),
    )
    try:
        with session.begin_nested():
            session.add(file)
    except IntegrityError:
        winner = file_named(session, msg.name)
        if winner is None:  # some other constraint failed: not a race, a real error
            raise
        return winner, False
    _count_file(session, run, msg, now)
    return file, True


def _run_for(session: Session, msg: FileMessage, now: dt.datetime) -> Run:
    """The message's run, created if new, and locked until the transaction ends.

    The lock is taken before the file is inserted: on MariaDB the file's foreign key takes a
    shared lock on the run's row, and two sessions that each hold one and then want to
    update the row's counters would deadlock. Locking first makes them take turns.
    """
    run = _lock_run(session, msg.run)
    if run is not None:
        return run
    _insert_run_if_missing(
        session,
        {
            "number": msg.run,
            "stream": msg.stream,
            "status": RunStatus.DATA_TAKING,
            "started_at": msg.created,
            "ended_at": msg.created,
            "n_files": 0,
            "n_bytes": 0,
            "updated_at": now,
        },
    )
    run = _lock_run(session, msg.run)
    assert run is not None, f"run {msg.run} inserted but not found"
    return run


def _lock_run(session: Session, number: int) -> Run | None:
    # FOR NO KEY UPDATE on PostgreSQL (MySQL has no such mode: FOR UPDATE): the counters
    # change, never the key, so the scheduler inserting tasks of the same run meanwhile
    # (whose foreign key takes KEY SHARE on the run) is not blocked -- with FOR UPDATE
    # the two deadlocked whenever files arrived while others were being planned.
    query = (
        sa.select(Run)
        .where(Run.number == number)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return session.scalar(query)


def _insert_run_if_missing(session: Session, values: dict[str, object]) -> None:
    """Insert a run unless one with its number exists (or is being inserted by another session).

    An upsert rather than a savepoint and IntegrityError: on MariaDB the loser of a duplicate
    insert keeps a shared lock on the winner's row, and two losers wanting the row's write
    lock deadlock; ON DUPLICATE KEY UPDATE takes the write lock at once, so they queue.
    """
    dialect = session.get_bind().dialect.name
    if dialect in ("mysql", "mariadb"):
        upsert = mysql.insert(Run).values(values)
        session.execute(upsert.on_duplicate_key_update(number=upsert.inserted.number))
    elif dialect == "postgresql":
        session.execute(
            postgresql.insert(Run).values(values).on_conflict_do_nothing(index_elements=["number"])
        )
    else:
        session.execute(
            sqlite.insert(Run).values(values).on_conflict_do_nothing(index_elements=["number"])
        )


def _counting(with_created: bool) -> sa.Update:
    """``UPDATE runs`` adding one file of :size bytes and, ``with_created``, widening the
    run's time span to :created. Built once: building it per file cost more than running it."""
    values: dict[str, object] = {
        "n_files": RUNS.c.n_files + 1,
        "n_bytes": RUNS.c.n_bytes + sa.bindparam("size", type_=sa.BigInteger()),
        "updated_at": sa.bindparam("now", type_=UTCDateTime()),
    }
    if with_created:
        created = sa.bindparam("created", type_=UTCDateTime())
        values["started_at"] = sa.case(
            (sa.or_(RUNS.c.started_at.is_(None), RUNS.c.started_at > created), created),
            else_=RUNS.c.started_at,
        )
        values["ended_at"] = sa.case(
            (sa.or_(RUNS.c.ended_at.is_(None), RUNS.c.ended_at < created), created),
            else_=RUNS.c.ended_at,
        )
    return sa.update(RUNS).where(RUNS.c.id == sa.bindparam("run_id")).values(values)


_COUNT_FILE = {True: _counting(True), False: _counting(False)}


def _count_file(session: Session, run: Run, msg: FileMessage, now: dt.datetime) -> None:
    """Add the file to its run's counters and time span, atomically in the database."""
    params: dict[str, object] = {"run_id": run.id, "size": msg.size or 0, "now": now}
    if msg.created is not None:
        params["created"] = msg.created
    session.connection().execute(_COUNT_FILE[msg.created is not None], params)
    session.expire(run, ["n_files", "n_bytes", "started_at", "ended_at", "updated_at"])


def mark_end_of_run(
    session: Session, run: Run, now: dt.datetime, last_sequence: int | None
) -> bool:
    """Record the run's end of run; ``last_sequence`` is the number of files it has.

    Returns whether anything changed. The first end of run sets ``end_of_run_at``; a later
    one only corrects ``expected_files``. A run the scheduler already finished is reopened
    when its expected files change, because the scheduler only re-derives the status of
    active runs: it then finds the run complete again, or waiting for the missing files.
    """
    changed = False
    if run.end_of_run_at is None:
        run.end_of_run_at = now
        changed = True
    if last_sequence is not None and run.expected_files != last_sequence:
        run.expected_files = last_sequence
        changed = True
    if changed:
        run.updated_at = now
        if run.status in FINISHED:
            run.status = RunStatus.REC_RUNNING
            run.completed_at = None
    session.flush()
    return changed
