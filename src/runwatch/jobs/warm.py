"""A job wrapper's database engine, warmed in the zygote before it forks the wrapper.

SQLAlchemy compiles each distinct statement once per engine and keeps it in the engine's
cache. A wrapper that builds its own engine compiles every statement of its attempt's life
afresh, partly while it holds SQLite's write lock: claiming cost 9-12 ms and recording
12-16 ms, against 2.5 and 5.5 ms with a warm engine (measured on the benchmark's
database). The zygote therefore builds the engine once and runs one attempt's life on
throwaway rows (claim, heartbeat, reload, success with an output, release of a dependent)
in a transaction it always rolls back; every wrapper it forks inherits the warm cache.

Warming is an optimisation only: if it fails (database down, schema not migrated) the
wrapper builds its own engine as before. No connection crosses the fork: the zygote
closes its pool after warming, and a forked wrapper drops the inherited (empty) pool.
"""

from __future__ import annotations

import logging
import uuid

from runwatch.catalogue.models import File, Run
from runwatch.db import Database, utcnow
from runwatch.workflow.models import Attempt, PipelineRevision, Task, TaskDependency
from runwatch.workflow.service import (
    AttemptOutcome,
    OutputRecord,
    RetryPolicy,
    claim_attempt,
    finish_attempt,
    heartbeat,
)
from runwatch.workflow.states import AttemptState, TaskState

log = logging.getLogger(__name__)

WARM_RUN = -1  # no real run has a negative number; the rows never commit anyway

_warmed: dict[str, Database] = {}


def warm_database(url: str) -> bool:
    """Build and warm the engine for ``url`` for wrappers forked later; False if warming
    failed (they will then build their own)."""
    db = Database(url)
    try:
        rehearse_attempt(db)
    except Exception as exc:
        log.warning("cannot warm the database engine (%s); wrappers start cold", exc)
        db.dispose()
        return False
    db.dispose()  # close the pooled connections: none may be shared with a forked child
    _warmed[url] = db
    return True


def database_for(url: str) -> Database:
    """The warmed engine for ``url`` if this process was forked after warming, else a new one."""
    db = _warmed.pop(url, None)
    if db is None:
        return Database(url)
    db.engine.dispose(close=False)  # forget the parent's pool without touching it
    return db


def rehearse_attempt(db: Database) -> None:
    """Run the statements of one attempt's life on throwaway rows, then roll back."""
    now = utcnow()
    tag = uuid.uuid4().hex
    with db.sessions() as session:
        try:
            run = Run(number=WARM_RUN, stream="warm-up", updated_at=now)
            revision = PipelineRevision(
                name="warm-up", digest="0" * 64, path="-", content="", loaded_at=now
            )
            session.add_all([run, revision])
            session.flush()
            file = File(
                run_id=run.id,
                name=f"warm-up-{tag}",
                url="file:///dev/null",
                stream="warm-up",
                registered_at=now,
                meta={},
            )
            session.add(file)
            session.flush()
            first, second = (
                Task(
                    key=f"warm-up/{step}/{tag}",
                    revision_id=revision.id,
                    pipeline="warm-up",
                    step=step,
                    scope="file",
                    run_id=run.id,
                    file_id=file.id,
                    state=state,
                    priority_at=now,
                    created_at=now,
                    updated_at=now,
                )
                for step, state in (("a", TaskState.SUBMITTED), ("b", TaskState.WAITING))
            )
            session.add_all([first, second])
            session.flush()
            attempt = Attempt(task_id=first.id, number=1, executor="warm-up", submitted_at=now)
            session.add_all([attempt, TaskDependency(task_id=second.id, needs_id=first.id)])
            session.flush()
            attempt_id = attempt.id
            # A wrapper's sessions start empty: forget the rows so that every get() below
            # goes to the database, as the wrapper's do, and so compiles its statement.
            session.expunge_all()
            claim_attempt(session, attempt_id, "warm-up", now)
            heartbeat(session, attempt_id, now)
            session.expunge_all()
            session.get(Attempt, attempt_id)
            session.expunge_all()
            output = OutputRecord(name="out", url="file:///dev/null", size=0, adler32="00000001")
            outcome = AttemptOutcome(AttemptState.SUCCEEDED, outputs=(output,))
            finish_attempt(session, attempt_id, outcome, RetryPolicy(), now)
        finally:
            session.rollback()
