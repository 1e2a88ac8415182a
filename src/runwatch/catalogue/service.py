"""Cataloguing raw files and runs as file-ready messages announce them.

Messages are catalogued a batch at a time (a part of a list, or one message) in a few Core
statements per batch rather than a few per file: one probe for the names, one lock of the
runs involved (inserted first if new), one insert of the new files, one counter update per
run; the ORM's own cost per file was most of the intake's CPU time.

Two processes (the HTTP intake and the scheduler's dropbox watcher, say) may register the
same file or the first files of the same run at the same moment. The unique constraints on
``files.name`` and ``runs.number`` decide who wins. A run is inserted with the database's
"insert unless it exists" and its row then locked, all runs of a batch in run-number order
(see ``_lock_runs``), so the files of one run are registered in turn. A file another
session inserted after the probe is found by the constraint -- the insert skips it
(``ON CONFLICT DO NOTHING``) or, on MariaDB, fails in a savepoint and is tried again
without it -- and the winner's row is read back. Run counters are updated with one
``UPDATE ... SET n_files = n_files + :n``, never a read-modify-write in Python.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from runwatch.catalogue.models import FILES, RUNS, RunStatus
from runwatch.db import UTCDateTime
from runwatch.ingest.schema import FileMessage

FINISHED = (RunStatus.ALL_COMPLETED, RunStatus.PARTLY_COMPLETED)
INSERT_ATTEMPTS = 5  # inserts of a batch's new files that lost a race to another session


@dataclass(frozen=True)
class CataloguedFile:
    """A catalogued file as a message about it is compared with."""

    id: int
    run_id: int
    name: str
    identity: dict[str, Any]  # as FileMessage.identity(): run number, url, stream, ...


@dataclass
class Registration:
    """What cataloguing did with one message: ``conflict`` says why it cannot be about the
    catalogued file of its name (then nothing changed); else ``created`` tells a new file
    from a known one, and ``end_of_run`` whether the message changed its run's end of run."""

    file: CataloguedFile
    created: bool = False
    end_of_run: bool = False
    conflict: str | None = None


@dataclass
class _LockedRun:
    """A run row locked by this transaction, and the end-of-run changes made to it."""

    id: int
    number: int
    status: RunStatus
    end_of_run_at: dt.datetime | None
    expected_files: int | None
    completed_at: dt.datetime | None
    changed: bool = False
    files: list[FileMessage] = field(default_factory=list)  # new files to count


_FILE_COLUMNS = (
    FILES.c.id,
    FILES.c.run_id,
    FILES.c.name,
    RUNS.c.number,
    FILES.c.url,
    FILES.c.stream,
    FILES.c.sequence,
    FILES.c.size,
    FILES.c.adler32,
)
_FILES_NAMED = (
    sa.select(*_FILE_COLUMNS)
    .join(RUNS, RUNS.c.id == FILES.c.run_id)
    .where(FILES.c.name.in_(sa.bindparam("names", expanding=True)))
)


def files_named(conn: sa.Connection, names: Iterable[str]) -> dict[str, CataloguedFile]:
    """The catalogued files among ``names``, by name, in one statement."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    found = {}
    for id_, run_id, name, run, url, stream, sequence, size, adler32 in conn.execute(
        _FILES_NAMED, {"names": wanted}
    ):
        identity = {
            "run": run,
            "url": url,
            "stream": stream,
            "sequence": sequence,
            "size": size,
            "adler32": adler32,
        }
        found[name] = CataloguedFile(id_, run_id, name, identity)
    return found


def register_files(
    session: Session, messages: list[FileMessage], now: dt.datetime
) -> list[Registration]:
    """Catalogue the files ``messages`` announce, in order: one ``Registration`` each.

    The first message naming a new file registers it; a later one (in this batch or after)
    is compared with it, as with a file catalogued before: a message that differs is a
    conflict, one that agrees changes nothing but, carrying ``end_of_run``, its run's end.
    """
    conn = session.connection()
    known = files_named(conn, (m.name for m in messages))
    new: dict[str, FileMessage] = {}
    for msg in messages:
        if msg.name not in known:
            new.setdefault(msg.name, msg)
    ending = {known[m.name].identity["run"] for m in messages if m.end_of_run and m.name in known}
    runs = _lock_runs(conn, list(new.values()), ending, now)
    created = _insert_files(session, list(new.values()), runs, known, now)
    for name in created:
        runs[new[name].run].files.append(new[name])
    registrations = []
    for msg in messages:
        registration = _register(msg, known[msg.name], msg.name in created, now, runs)
        created.discard(msg.name)  # a second message naming the file is about a known one
        registrations.append(registration)
    _update_runs(conn, runs.values(), now)
    return registrations


def _register(
    msg: FileMessage,
    file: CataloguedFile,
    created: bool,
    now: dt.datetime,
    runs: dict[int, _LockedRun],
) -> Registration:
    if not created:
        conflict = conflicts(file, msg)
        if conflict:
            return Registration(file, conflict=conflict)
    run = runs.get(file.identity["run"])
    ended = msg.end_of_run and run is not None and _end_of_run(run, now, msg.sequence)
    return Registration(file, created=created, end_of_run=ended)


def conflicts(file: CataloguedFile, msg: FileMessage) -> str | None:
    """Why ``msg`` cannot be about the catalogued ``file`` of the same name, or None.

    A field the message leaves out (or the catalogue lacks) is no conflict: the same file
    announced once with and once without a checksum is still the same file.
    """
    known = file.identity
    problems = [
        f"{name} {value} differs from the registered {known[name]}"
        for name, value in msg.identity().items()
        if value is not None and known[name] is not None and value != known[name]
    ]
    if not problems:
        return None
    return f"file {msg.name} is already registered (file id {file.id}): " + "; ".join(problems)


_LOCK_RUNS = (
    sa.select(
        RUNS.c.id,
        RUNS.c.number,
        RUNS.c.status,
        RUNS.c.end_of_run_at,
        RUNS.c.expected_files,
        RUNS.c.completed_at,
    )
    .where(RUNS.c.number.in_(sa.bindparam("numbers", expanding=True)))
    .order_by(RUNS.c.number)
    # FOR NO KEY UPDATE on PostgreSQL (MySQL has no such mode: FOR UPDATE): the counters
    # change, never the key, so the scheduler inserting tasks of the same run meanwhile
    # (whose foreign key takes KEY SHARE on the run) is not blocked -- with FOR UPDATE
    # the two deadlocked whenever files arrived while others were being planned.
    .with_for_update(key_share=True)
)


def _lock_runs(
    conn: sa.Connection, new_files: list[FileMessage], ending: set[int], now: dt.datetime
) -> dict[int, _LockedRun]:
    """The runs of ``new_files`` (created if new) and the runs numbered in ``ending``,
    locked until the transaction ends, by number.

    The locks are taken before any file is inserted: on MariaDB a file's foreign key takes
    a shared lock on its run's row, and two sessions that each hold one and then want to
    update the row's counters would deadlock. Locking first makes them take turns; locking
    in run-number order keeps two batches of several runs from each waiting on the other.
    """
    # The first new file of each run gives a new run its stream and start.
    first: dict[int, FileMessage] = {}
    for msg in new_files:
        first.setdefault(msg.run, msg)
    numbers = sorted(first.keys() | ending)
    if not numbers:
        return {}
    runs = _locked(conn, numbers)
    missing = [first[n] for n in numbers if n not in runs]
    if missing:
        _insert_runs_if_missing(conn, missing, now)
        runs.update(_locked(conn, [m.run for m in missing]))
    return runs


def _locked(conn: sa.Connection, numbers: list[int]) -> dict[int, _LockedRun]:
    rows = conn.execute(_LOCK_RUNS, {"numbers": numbers})
    return {row.number: _LockedRun(*row) for row in rows}


def _insert_runs_if_missing(
    conn: sa.Connection, firsts: list[FileMessage], now: dt.datetime
) -> None:
    """Insert runs unless one with the number exists (or is being inserted by another session).

    An upsert rather than a savepoint and IntegrityError: on MariaDB the loser of a duplicate
    insert keeps a shared lock on the winner's row, and two losers wanting the row's write
    lock deadlock; ON DUPLICATE KEY UPDATE takes the write lock at once, so they queue.
    """
    rows = [
        {
            "number": msg.run,
            "stream": msg.stream,
            "status": RunStatus.DATA_TAKING,
            "started_at": msg.created,
            "ended_at": msg.created,
            "n_files": 0,
            "n_bytes": 0,
            "updated_at": now,
        }
        for msg in firsts
    ]
    dialect = conn.dialect.name
    if dialect in ("mysql", "mariadb"):
        upsert = mysql.insert(RUNS)
        conn.execute(upsert.on_duplicate_key_update(number=upsert.inserted.number), rows)
    elif dialect == "postgresql":
        conn.execute(
            postgresql.insert(RUNS).on_conflict_do_nothing(index_elements=["number"]), rows
        )
    else:
        conn.execute(sqlite.insert(RUNS).on_conflict_do_nothing(index_elements=["number"]), rows)


def _insert_files(
    session: Session,
    new: list[FileMessage],
    runs: dict[int, _LockedRun],
    known: dict[str, CataloguedFile],
    now: dt.datetime,
) -> set[str]:
    """Insert the ``new`` files and add them to ``known``; the names this call inserted.

    A name another session inserted since the probe is read back into ``known`` instead.
    """
    conn = session.connection()
    created: set[str] = set()
    for _ in range(INSERT_ATTEMPTS):
        if not new:
            return created
        inserted = _insert_new_files(session, new, runs, now)
        for msg in new:
            if msg.name in inserted:
                run_id = runs[msg.run].id
                file = CataloguedFile(inserted[msg.name], run_id, msg.name, msg.identity())
                known[msg.name] = file
                created.add(msg.name)
        left = [m for m in new if m.name not in inserted]
        if left:
            known.update(files_named(conn, (m.name for m in left)))
        new = [m for m in left if m.name not in known]
    raise RuntimeError(f"files {[m.name for m in new]} lost {INSERT_ATTEMPTS} races in a row")


def _insert_new_files(
    session: Session, new: list[FileMessage], runs: dict[int, _LockedRun], now: dt.datetime
) -> dict[str, int]:
    """Insert files, skipping names another session has taken: by name, the ids of those
    inserted (on MariaDB, none if one name was taken)."""
    rows = [
        {
            "run_id": runs[msg.run].id,
            "name": msg.name,
            "url": msg.url,
            "stream": msg.stream,
            "sequence": msg.sequence,
            "size": msg.size,
            "adler32": msg.adler32,
            "created_at": msg.created,
            "registered_at": now,
            "planned_at": None,
            "metadata": dict(msg.metadata),
        }
        for msg in new
    ]
    conn = session.connection()
    dialect = conn.dialect.name
    if dialect in ("mysql", "mariadb"):
        # MariaDB's ON DUPLICATE KEY UPDATE ... RETURNING returns the existing rows too,
        # so a plain insert, undone alone when another session took one of the names.
        try:
            with session.begin_nested():
                result = conn.execute(sa.insert(FILES).returning(FILES.c.id, FILES.c.name), rows)
                return {name: id_ for id_, name in result}
        except IntegrityError:
            if not files_named(conn, (msg.name for msg in new)):
                raise  # not a race but another constraint failed: a real error
            return {}
    insert = postgresql.insert(FILES) if dialect == "postgresql" else sqlite.insert(FILES)
    skipping = insert.on_conflict_do_nothing(index_elements=["name"])
    result = conn.execute(skipping.returning(FILES.c.id, FILES.c.name), rows)
    return {name: id_ for id_, name in result}


def _end_of_run(run: _LockedRun, now: dt.datetime, last_sequence: int | None) -> bool:
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
        run.changed = True
        if run.status in FINISHED:
            run.status = RunStatus.REC_RUNNING
            run.completed_at = None
    return changed


def _update_runs(conn: sa.Connection, runs: Iterable[_LockedRun], now: dt.datetime) -> None:
    """Count the runs' new files and write their end-of-run changes, in one statement per
    kind of change (each run's counters atomically in the database)."""
    counts: dict[bool, list[dict[str, object]]] = {True: [], False: []}
    ends = []
    for run in runs:
        if run.files:
            params: dict[str, object] = {
                "run_id": run.id,
                "n": len(run.files),
                "size": sum(m.size or 0 for m in run.files),
                "now": now,
            }
            created = [m.created for m in run.files if m.created is not None]
            if created:
                params["first"], params["last"] = min(created), max(created)
            counts[bool(created)].append(params)
        if run.changed:
            ends.append(
                {
                    "run_id": run.id,
                    "eor_at": run.end_of_run_at,
                    "expected": run.expected_files,
                    "new_status": run.status,
                    "completed": run.completed_at,
                    "now": now,
                }
            )
    for with_created, rows in counts.items():
        if rows:
            conn.execute(_COUNT_FILES[with_created], rows)
    if ends:
        conn.execute(_END_OF_RUN, ends)


def _counting(with_created: bool) -> sa.Update:
    """``UPDATE runs`` adding :n files of :size bytes and, ``with_created``, widening the
    run's time span to [:first, :last]. Built once: building it per run cost more than
    running it."""
    values: dict[str, object] = {
        "n_files": RUNS.c.n_files + sa.bindparam("n", type_=sa.Integer()),
        "n_bytes": RUNS.c.n_bytes + sa.bindparam("size", type_=sa.BigInteger()),
        "updated_at": sa.bindparam("now", type_=UTCDateTime()),
    }
    if with_created:
        first = sa.bindparam("first", type_=UTCDateTime())
        last = sa.bindparam("last", type_=UTCDateTime())
        values["started_at"] = sa.case(
            (sa.or_(RUNS.c.started_at.is_(None), RUNS.c.started_at > first), first),
            else_=RUNS.c.started_at,
        )
        values["ended_at"] = sa.case(
            (sa.or_(RUNS.c.ended_at.is_(None), RUNS.c.ended_at < last), last),
            else_=RUNS.c.ended_at,
        )
    return sa.update(RUNS).where(RUNS.c.id == sa.bindparam("run_id")).values(values)


_COUNT_FILES = {True: _counting(True), False: _counting(False)}
_END_OF_RUN = (
    sa.update(RUNS)
    .where(RUNS.c.id == sa.bindparam("run_id"))
    .values(
        end_of_run_at=sa.bindparam("eor_at", type_=UTCDateTime()),
        expected_files=sa.bindparam("expected", type_=sa.Integer()),
        status=sa.bindparam("new_status", type_=RUNS.c.status.type),
        completed_at=sa.bindparam("completed", type_=UTCDateTime()),
        updated_at=sa.bindparam("now", type_=UTCDateTime()),
    )
)
