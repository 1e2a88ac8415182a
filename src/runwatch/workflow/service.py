"""Task and attempt state changes in the database.

Every change is one UPDATE guarded by the old state (``WHERE state = :old``): if another
process got there first, the UPDATE touches no row and the caller learns it lost the race.
Functions take the caller's transaction (an ORM session or a Core connection) and never
commit: the transaction makes a change and its consequences (attempt and task, outputs)
visible together or not at all.

These functions run several times for every task, in the scheduler and in every job, so
they use SQLAlchemy Core statements built once, run on a connection: building a statement
and sending it through the ORM cost about ten times more than running it (0.5 ms against
0.05 ms on SQLite, measured), and that was most of the engine's overhead per task.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import Run, RunStatus
from runwatch.db import Transaction, connection_of, utcnow
from runwatch.workflow.models import (
    ATTEMPTS,
    DEPENDENCIES,
    OUTPUTS,
    TASKS,
    Attempt,
    Task,
)
from runwatch.workflow.states import (
    TRANSITIONS,
    AttemptState,
    TaskState,
    backoff_seconds,
    check_attempt_transition,
    check_transition,
)

ENDED = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED, TaskState.BLOCKED)


@dataclass(frozen=True)
class RetryPolicy:
    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 600.0


@lru_cache(maxsize=128)
def _guarded_update(table: sa.Table, columns: tuple[str, ...], by_start: bool = False) -> sa.Update:
    """``UPDATE table SET columns WHERE id = :row_id AND state = :old_state``, built once
    for each set of columns; ``by_start``: also ``AND job_start = :old_job_start`` (an
    attempt, changed by the start of its batch job that holds it)."""
    statement = sa.update(table).where(
        table.c.id == sa.bindparam("row_id"), table.c.state == sa.bindparam("old_state")
    )
    if by_start:
        statement = statement.where(table.c.job_start == sa.bindparam("old_job_start"))
    return statement.values(
        {name: sa.bindparam(f"set_{name}", type_=table.c[name].type) for name in columns}
    )


def _update_if(
    tx: Transaction,
    table: sa.Table,
    row_id: int,
    old: object,
    values: Mapping[str, object],
    start: int | None = None,
) -> bool:
    statement = _guarded_update(table, tuple(sorted(values)), start is not None)
    params = {"row_id": row_id, "old_state": old, **{f"set_{k}": v for k, v in values.items()}}
    if start is not None:
        params["old_job_start"] = start
    result = connection_of(tx).execute(statement, params)
    return result.rowcount == 1


def transition(
    tx: Transaction, task_id: int, old: TaskState, new: TaskState, **values: object
) -> bool:
    """Move a task from ``old`` to ``new``; False if it was no longer in ``old``."""
    check_transition(old, new)
    now = values.pop("now", None) or utcnow()
    if new in ENDED:
        values.setdefault("finished_at", now)
    return _update_if(tx, TASKS, task_id, old, {"state": new, "updated_at": now, **values})


def attempt_transition(
    tx: Transaction,
    attempt_id: int,
    old: AttemptState,
    new: AttemptState,
    *,
    start: int | None = None,
    **values: object,
) -> bool:
    """Move an attempt from ``old`` to ``new``; False if it was no longer in ``old`` (or,
    given its job's ``start``, no longer held by that start of the job)."""
    check_attempt_transition(old, new)
    return _update_if(tx, ATTEMPTS, attempt_id, old, {"state": new, **values}, start)


def transition_each(
    tx: Transaction,
    changes: Sequence[tuple[int, Mapping[str, object]]],
    old: TaskState,
    new: TaskState,
    now: dt.datetime,
) -> set[int]:
    """Move many tasks from ``old`` to ``new``, each with its own values; the ids moved.

    Each row is still guarded by its old state, but the UPDATEs go in one batch (one
    round trip on PostgreSQL) where the driver reports the rows a batch changed. If a
    guard held back some rows, the moved ones are those now in ``new`` with this
    ``updated_at`` (``now`` is this caller's own time stamp).
    """
    check_transition(old, new)
    connection = connection_of(tx)
    if len(changes) < 2 or not connection.dialect.supports_sane_multi_rowcount:
        return {
            task_id
            for task_id, values in changes
            if transition(tx, task_id, old, new, now=now, **values)
        }
    base = {"state": new, "updated_at": now}
    if new in ENDED:
        base["finished_at"] = now
    columns = tuple(sorted({*base, *changes[0][1]}))
    rows = [
        {
            "row_id": task_id,
            "old_state": old,
            **{f"set_{k}": v for k, v in {**base, **values}.items()},
        }
        for task_id, values in changes
    ]
    result = connection.execute(_guarded_update(TASKS, columns), rows)
    ids = [task_id for task_id, _ in changes]
    if result.rowcount == len(ids):
        return set(ids)
    moved = sa.select(TASKS.c.id).where(
        TASKS.c.id.in_(ids), TASKS.c.state == new, TASKS.c.updated_at == now
    )
    return set(connection.execute(moved).scalars())


@dataclass(frozen=True)
class Claim:
    """What a worker learns as it takes an attempt: enough to run it and to record it
    without reading the database again (each read is a round trip to a database server)."""

    task_id: int
    number: int  # the attempt's number; the first has no earlier outputs to replace
    failures: int  # cannot change while the attempt runs: only its own end changes them
    retries: int
    spec: dict[str, Any]
    workdir: str | None
    log_path: str | None
    # Which start of its batch job took the attempt (0: the first, or not a batch job);
    # only that start may record it (a requeued job starts again with a higher number).
    job_start: int = 0


_CLAIMABLE = (
    sa.select(
        ATTEMPTS.c.task_id,
        ATTEMPTS.c.number,
        TASKS.c.failures,
        TASKS.c.retries,
        ATTEMPTS.c.spec,
        ATTEMPTS.c.workdir,
        ATTEMPTS.c.log_path,
    )
    .join(TASKS, TASKS.c.id == ATTEMPTS.c.task_id)
    .where(ATTEMPTS.c.id == sa.bindparam("attempt_id"))
)


_CLAIM_STATE = _CLAIMABLE.add_columns(ATTEMPTS.c.state, ATTEMPTS.c.job_start)

# A requeued batch job starting again takes over the attempt its earlier start held:
# still RUNNING (the earlier start left it so when it was stopped), and taken by a lower
# start of the job. The task stays RUNNING.
_TAKE_OVER = (
    sa.update(ATTEMPTS)
    .where(
        ATTEMPTS.c.id == sa.bindparam("attempt_id"),
        ATTEMPTS.c.state == AttemptState.RUNNING,
        ATTEMPTS.c.job_start < sa.bindparam("start"),
    )
    .values(
        job_start=sa.bindparam("start"),
        host=sa.bindparam("host"),
        started_at=sa.bindparam("now", type_=ATTEMPTS.c.started_at.type),
        heartbeat_at=sa.bindparam("now", type_=ATTEMPTS.c.heartbeat_at.type),
        batch_status=None,
    )
)


def claim_attempt(
    tx: Transaction, attempt_id: int, host: str, now: dt.datetime, job_start: int = 0
) -> Claim | None:
    """The job wrapper takes its attempt: SUBMITTED → RUNNING for attempt and task; or,
    started again by its batch system (``job_start`` higher than the start that took it),
    takes over the RUNNING attempt, whose timeout then counts from this start.

    None if the scheduler already gave the attempt up (lost, cancelled), or another start
    holds it: the wrapper must then do nothing, so that a task is never run by two
    attempts that both count.
    """
    tx = connection_of(tx)
    row = tx.execute(_CLAIM_STATE, {"attempt_id": attempt_id}).first()
    if row is None:
        return None
    claim = Claim(row[0], row[1], row[2], row[3], row[4], row[5], row[6], job_start)
    if row.state == AttemptState.RUNNING:
        params = {"attempt_id": attempt_id, "start": job_start, "host": host, "now": now}
        return claim if tx.execute(_TAKE_OVER, params).rowcount == 1 else None
    if not attempt_transition(
        tx,
        attempt_id,
        AttemptState.SUBMITTED,
        AttemptState.RUNNING,
        host=host,
        started_at=now,
        heartbeat_at=now,
        job_start=job_start,
    ):
        return None
    if not transition(tx, claim.task_id, TaskState.SUBMITTED, TaskState.RUNNING, now=now):
        return None
    return claim


def _attempt_moved(old: AttemptState, new: AttemptState) -> sa.Update:
    """``UPDATE attempts SET state = new WHERE id = :attempt_id AND state = old``."""
    return (
        sa.update(ATTEMPTS)
        .where(ATTEMPTS.c.id == sa.bindparam("attempt_id"), ATTEMPTS.c.state == old)
        .values(state=new)
    )


def _claim_in_one_statement() -> sa.Select[Any]:
    """PostgreSQL: ``claim_attempt`` as one statement (data-modifying CTEs), so that a
    worker takes its attempt in one round trip to the server instead of five. Each UPDATE
    is still guarded by the old state; a row without a task id means the task had moved
    on (the attempt is then taken but not run, as in ``claim_attempt``). A SUBMITTED
    attempt only: a requeued job's takeover is ``claim_attempt``'s."""
    now = sa.bindparam("now", type_=ATTEMPTS.c.started_at.type)
    attempt = (
        _attempt_moved(AttemptState.SUBMITTED, AttemptState.RUNNING)
        .values(
            host=sa.bindparam("host"),
            started_at=now,
            heartbeat_at=now,
            job_start=sa.bindparam("start"),
        )
        .returning(
            ATTEMPTS.c.task_id,
            ATTEMPTS.c.number,
            ATTEMPTS.c.spec,
            ATTEMPTS.c.workdir,
            ATTEMPTS.c.log_path,
        )
        .cte("claimed_attempt")
    )
    task = (
        sa.update(TASKS)
        .where(TASKS.c.id == attempt.c.task_id, TASKS.c.state == TaskState.SUBMITTED)
        .values(state=TaskState.RUNNING, updated_at=now)
        .returning(TASKS.c.id, TASKS.c.failures, TASKS.c.retries)
        .cte("claimed_task")
    )
    return sa.select(
        task.c.id,
        attempt.c.number,
        task.c.failures,
        task.c.retries,
        attempt.c.spec,
        attempt.c.workdir,
        attempt.c.log_path,
    ).select_from(attempt.outerjoin(task, task.c.id == attempt.c.task_id))


_CLAIM_IN_ONE_STATEMENT = _claim_in_one_statement()


def claim_attempt_at_once(
    connection: sa.Connection, attempt_id: int, host: str, now: dt.datetime, job_start: int = 0
) -> Claim | None:
    """``claim_attempt`` of a SUBMITTED attempt in one statement, atomic without a
    transaction: PostgreSQL only (``connection.dialect.name == "postgresql"``); elsewhere,
    or to take over a RUNNING attempt, use ``claim_attempt`` in a transaction."""
    check_attempt_transition(AttemptState.SUBMITTED, AttemptState.RUNNING)
    check_transition(TaskState.SUBMITTED, TaskState.RUNNING)
    params = {"attempt_id": attempt_id, "host": host, "now": now, "start": job_start}
    row = connection.execute(_CLAIM_IN_ONE_STATEMENT, params).first()
    if row is None or row[0] is None:
        return None
    return Claim(row[0], row[1], row[2], row[3], row[4], row[5], row[6], job_start)


_HEARTBEAT = (
    sa.update(ATTEMPTS)
    .where(
        ATTEMPTS.c.id == sa.bindparam("attempt_id"),
        ATTEMPTS.c.state == AttemptState.RUNNING,
        ATTEMPTS.c.job_start == sa.bindparam("start"),
    )
    .values(heartbeat_at=sa.bindparam("now", type_=ATTEMPTS.c.heartbeat_at.type))
)


def heartbeat(tx: Transaction, attempt_id: int, now: dt.datetime, job_start: int = 0) -> bool:
    """Record that the attempt is alive; False if it no longer runs (given up or
    cancelled) or a later start of its batch job took it over."""
    params = {"attempt_id": attempt_id, "now": now, "start": job_start}
    result = connection_of(tx).execute(_HEARTBEAT, params)
    return result.rowcount == 1


@dataclass(frozen=True)
class OutputRecord:
    name: str
    url: str
    size: int
    adler32: str
    meta: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class AttemptOutcome:
    """How an attempt ended, as the wrapper or the scheduler saw it."""

    state: AttemptState
    reason: str | None = None
    exit_code: int | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    log_tail: str | None = None
    command: str | None = None
    outputs: Sequence[OutputRecord] = ()


@dataclass(frozen=True)
class _Retries:
    """What deciding a failed task's fate needs to know of it."""

    task_id: int
    failures: int
    retries: int


_RETRIES_OF_ATTEMPT = (
    sa.select(TASKS.c.id, TASKS.c.failures, TASKS.c.retries)
    .join(ATTEMPTS, ATTEMPTS.c.task_id == TASKS.c.id)
    .where(ATTEMPTS.c.id == sa.bindparam("attempt_id"))
)


def finish_attempt(
    tx: Transaction,
    attempt_id: int,
    outcome: AttemptOutcome,
    policy: RetryPolicy,
    now: dt.datetime,
    expect: AttemptState = AttemptState.RUNNING,
    claim: Claim | None = None,
) -> bool:
    """Close an attempt and move its task on: DONE with its outputs, or a retry after a
    backoff, or FAILED for good when the retries are used up.

    False (and nothing changed) if the attempt was not in ``expect`` any more: somebody
    else already decided its fate. The worker that claimed the attempt passes its
    ``claim``, which spares reading the task again, and records only while its start of
    the batch job still holds the attempt (a requeued start may have taken it over).
    """
    tx = connection_of(tx)
    if claim is None:
        row = tx.execute(_RETRIES_OF_ATTEMPT, {"attempt_id": attempt_id}).first()
        if row is None:
            return False
        task = _Retries(row[0], row[1], row[2])
    else:
        task = _Retries(claim.task_id, claim.failures, claim.retries)
    values: dict[str, object] = {
        "ended_at": now,
        "reason": outcome.reason,
        "exit_code": outcome.exit_code,
        "wall_s": outcome.wall_s,
        "cpu_s": outcome.cpu_s,
        "peak_rss_mb": outcome.peak_rss_mb,
        "log_tail": outcome.log_tail,
    }
    if outcome.command is not None:
        values["command"] = outcome.command
    start = None if claim is None else claim.job_start
    if not attempt_transition(tx, attempt_id, expect, outcome.state, start=start, **values):
        return False
    task_state = TaskState(expect.value)  # SUBMITTED or RUNNING: the task mirrors it
    if outcome.state is AttemptState.SUCCEEDED:
        first = claim is not None and claim.number == 1
        _record_outputs(tx, task.task_id, attempt_id, outcome.outputs, now, first)
        moved = transition(tx, task.task_id, task_state, TaskState.DONE, now=now, reason=None)
        if moved:
            _release_dependents(tx, task.task_id, now)
        return moved
    if outcome.state is AttemptState.CANCELLED:
        return transition(
            tx, task.task_id, task_state, TaskState.CANCELLED, now=now, reason=outcome.reason
        )
    return _fail(tx, task, task_state, outcome.reason, policy, now)


_ATTEMPT_END_COLUMNS = (
    "ended_at",
    "reason",
    "exit_code",
    "wall_s",
    "cpu_s",
    "peak_rss_mb",
    "log_tail",
    "command",
)


@lru_cache(maxsize=16)
def _success_in_one_statement(n_outputs: int) -> sa.Select[Any]:
    """PostgreSQL: a first attempt's success recorded in one statement (data-modifying
    CTEs), one round trip instead of five or more: the attempt RUNNING → SUCCEEDED and
    its task RUNNING → DONE, each guarded by its old state; its ``n_outputs`` outputs; and
    its dependents whose other needs are all DONE made READY. The statement sees the
    database as it was before it (one snapshot), so the task just done counts as done.
    """
    now = sa.bindparam("now", type_=TASKS.c.updated_at.type)
    attempt = (
        _attempt_moved(AttemptState.RUNNING, AttemptState.SUCCEEDED)
        .where(ATTEMPTS.c.job_start == sa.bindparam("start"))
        .values({c: sa.bindparam(f"a_{c}", type_=ATTEMPTS.c[c].type) for c in _ATTEMPT_END_COLUMNS})
        # No command in the outcome: keep the one rendered at submission.
        .values(command=sa.func.coalesce(sa.bindparam("a_command"), ATTEMPTS.c.command))
        .returning(ATTEMPTS.c.task_id)
        .cte("ended_attempt")
    )
    task = (
        sa.update(TASKS)
        .where(TASKS.c.id == attempt.c.task_id, TASKS.c.state == TaskState.RUNNING)
        .values(state=TaskState.DONE, updated_at=now, finished_at=now, reason=None)
        .returning(TASKS.c.id)
        .cte("done_task")
    )
    outputs = [
        sa.insert(OUTPUTS)
        .from_select(
            ["task_id", "attempt_id", "name", "url", "size", "adler32", "metadata", "created_at"],
            sa.select(
                task.c.id,
                sa.bindparam("attempt_id", type_=OUTPUTS.c.attempt_id.type),
                *(
                    sa.bindparam(f"o{i}_{c}", type_=OUTPUTS.c[c].type)
                    for c in ("name", "url", "size", "adler32", "metadata")
                ),
                now,
            ),
        )
        .cte(f"output_{i}")
        for i in range(n_outputs)
    ]
    dependency = DEPENDENCIES.alias("dependency")
    releasable = (
        sa.select(dependency.c.task_id)
        .join(task, dependency.c.needs_id == task.c.id)
        .where(
            ~sa.exists()
            .where(_OTHER_NEEDS.c.task_id == dependency.c.task_id)
            .where(_NEEDED.c.id == _OTHER_NEEDS.c.needs_id)
            .where(_NEEDED.c.state != TaskState.DONE)
            .where(_NEEDED.c.id != task.c.id)
        )
    )
    released = (
        sa.update(TASKS)
        .where(TASKS.c.state == TaskState.WAITING, TASKS.c.id.in_(releasable))
        .values(state=TaskState.READY, updated_at=now)
        .returning(TASKS.c.id)
        .cte("released")
    )
    return sa.select(task.c.id).add_cte(*outputs, released)


def can_finish_at_once(dialect: str, outcome: AttemptOutcome, claim: Claim | None) -> bool:
    """``finish_at_once`` applies: PostgreSQL, a success, a first attempt (no earlier
    outputs to replace)."""
    return (
        dialect == "postgresql"
        and claim is not None
        and claim.number == 1
        and outcome.state is AttemptState.SUCCEEDED
    )


def finish_at_once(
    connection: sa.Connection,
    attempt_id: int,
    outcome: AttemptOutcome,
    now: dt.datetime,
    job_start: int = 0,
) -> bool:
    """``finish_attempt`` in one statement where ``can_finish_at_once``; False if the
    attempt or its task was no longer RUNNING, or the attempt no longer held by this
    ``job_start`` (nothing is then recorded but the attempt's end)."""
    check_attempt_transition(AttemptState.RUNNING, AttemptState.SUCCEEDED)
    check_transition(TaskState.RUNNING, TaskState.DONE)
    check_transition(TaskState.WAITING, TaskState.READY)
    params: dict[str, Any] = {
        "attempt_id": attempt_id,
        "now": now,
        "a_ended_at": now,
        "start": job_start,
    }
    for column in _ATTEMPT_END_COLUMNS[1:]:
        params[f"a_{column}"] = getattr(outcome, column)
    for i, out in enumerate(outcome.outputs):
        params.update(
            {
                f"o{i}_name": out.name,
                f"o{i}_url": out.url,
                f"o{i}_size": out.size,
                f"o{i}_adler32": out.adler32,
                f"o{i}_metadata": dict(out.meta),
            }
        )
    statement = _success_in_one_statement(len(outcome.outputs))
    return connection.execute(statement, params).first() is not None


def _fail(
    tx: Transaction,
    task: _Retries,
    old: TaskState,
    reason: str | None,
    policy: RetryPolicy,
    now: dt.datetime,
) -> bool:
    failures = task.failures + 1
    if failures <= task.retries:
        delay = backoff_seconds(failures, policy.backoff_seconds, policy.backoff_max_seconds)
        return transition(
            tx,
            task.task_id,
            old,
            TaskState.RETRYING,
            now=now,
            failures=failures,
            reason=reason,
            not_before=now + dt.timedelta(seconds=delay),
        )
    moved = transition(
        tx, task.task_id, old, TaskState.FAILED, now=now, failures=failures, reason=reason
    )
    if moved:
        block_dependents(tx, task.task_id, now)
    return moved


_DELETE_OUTPUTS = sa.delete(OUTPUTS).where(OUTPUTS.c.task_id == sa.bindparam("task_id"))


def _record_outputs(
    tx: Transaction,
    task_id: int,
    attempt_id: int,
    outputs: Sequence[OutputRecord],
    now: dt.datetime,
    first_attempt: bool = False,
) -> None:
    connection = connection_of(tx)
    if not first_attempt:  # a re-run replaces the outputs of an earlier successful attempt
        connection.execute(_DELETE_OUTPUTS, {"task_id": task_id})
    if outputs:
        rows: list[dict[str, Any]] = [
            {
                "task_id": task_id,
                "attempt_id": attempt_id,
                "name": out.name,
                "url": out.url,
                "size": out.size,
                "adler32": out.adler32,
                "metadata": dict(out.meta),
                "created_at": now,
            }
            for out in outputs
        ]
        connection.execute(sa.insert(OUTPUTS), rows)


_DEPENDENTS = sa.select(DEPENDENCIES.c.task_id).where(
    DEPENDENCIES.c.needs_id == sa.bindparam("task_id")
)


def dependents(tx: Transaction, task_id: int) -> list[int]:
    return list(connection_of(tx).execute(_DEPENDENTS, {"task_id": task_id}).scalars())


_OTHER_NEEDS = DEPENDENCIES.alias("other_needs")
_NEEDED = TASKS.alias("needed")
# Dependents of :task_id all of whose needed tasks are DONE (one query, not one per
# dependent: a run's merge depends on every file of the run).
_RELEASABLE = sa.select(DEPENDENCIES.c.task_id).where(
    DEPENDENCIES.c.needs_id == sa.bindparam("task_id"),
    ~sa.exists()
    .where(_OTHER_NEEDS.c.task_id == DEPENDENCIES.c.task_id)
    .where(_NEEDED.c.id == _OTHER_NEEDS.c.needs_id)
    .where(_NEEDED.c.state != TaskState.DONE),
)


_RELEASE = (
    sa.update(TASKS)
    .where(
        TASKS.c.id.in_(sa.bindparam("ids", expanding=True)),
        TASKS.c.state == TaskState.WAITING,
    )
    .values(state=TaskState.READY, updated_at=sa.bindparam("now", type_=TASKS.c.updated_at.type))
)


def _release_dependents(tx: Transaction, task_id: int, now: dt.datetime) -> None:
    """Make WAITING dependents READY when every task they need is DONE: one UPDATE for
    all of them, each row guarded by its old state like any transition."""
    connection = connection_of(tx)
    releasable = list(connection.execute(_RELEASABLE, {"task_id": task_id}).scalars())
    if releasable:
        check_transition(TaskState.WAITING, TaskState.READY)
        connection.execute(_RELEASE, {"ids": releasable, "now": now})


_ANY_NEED = sa.exists().where(DEPENDENCIES.c.task_id == TASKS.c.id)
_UNDONE_NEED = (
    sa.exists()
    .where(_OTHER_NEEDS.c.task_id == TASKS.c.id)
    .where(_NEEDED.c.id == _OTHER_NEEDS.c.needs_id)
    .where(_NEEDED.c.state != TaskState.DONE)
)
_OVERLOOKED = (
    sa.select(TASKS.c.id)
    .where(TASKS.c.state == TaskState.WAITING, _ANY_NEED, ~_UNDONE_NEED)
    .limit(1000)
)


def release_overlooked(tx: Transaction, now: dt.datetime) -> int:
    """Make READY the WAITING tasks whose needs are all DONE; how many.

    A safety net for the scheduler's tick. The end of the last needed task releases its
    dependents at once, but on a database server two needed tasks that end at the same
    moment each check the other before it commits (READ COMMITTED), and neither releases
    the task that needs both. (SQLite runs one writer at a time: no such race.)
    """
    connection = connection_of(tx)
    overlooked = list(connection.execute(_OVERLOOKED).scalars())
    if overlooked:
        check_transition(TaskState.WAITING, TaskState.READY)
        connection.execute(_RELEASE, {"ids": overlooked, "now": now})
    return len(overlooked)


def block_dependents(tx: Transaction, task_id: int, now: dt.datetime) -> None:
    """A task failed for good: everything downstream of it can never run."""
    pending = dependents(tx, task_id)
    while pending:
        dep_id = pending.pop()
        if transition(
            tx,
            dep_id,
            TaskState.WAITING,
            TaskState.BLOCKED,
            now=now,
            reason=f"a needed task (id {task_id}) failed for good",
        ):
            pending.extend(dependents(tx, dep_id))


def unblock_dependents(tx: Transaction, task_id: int, now: dt.datetime) -> None:
    """An operator retries a failed task: its blocked dependents wait for it again."""
    pending = dependents(tx, task_id)
    while pending:
        dep_id = pending.pop()
        if transition(tx, dep_id, TaskState.BLOCKED, TaskState.WAITING, now=now, reason=None):
            pending.extend(dependents(tx, dep_id))


class OperatorError(Exception):
    """An operator's request that cannot be carried out, with the reason."""


RETRYABLE = (TaskState.FAILED, TaskState.CANCELLED, TaskState.DONE)


def retry_task(session: Session, task_id: int, now: dt.datetime) -> Task:
    """An operator re-runs a task: FAILED, CANCELLED or DONE → READY with fresh retries."""
    task = session.get(Task, task_id)
    if task is None:
        raise OperatorError(f"no task {task_id}")
    if task.state not in RETRYABLE:
        raise OperatorError(
            f"task {task_id} is {task.state.value}; only failed, cancelled or done tasks "
            "can be retried"
        )
    if not transition(
        session,
        task_id,
        task.state,
        TaskState.READY,
        now=now,
        failures=0,
        not_before=None,
        reason=None,
        finished_at=None,
    ):
        raise OperatorError(f"task {task_id} changed state meanwhile; try again")
    unblock_dependents(session, task_id, now)
    _reopen_run(session, task.run_id, now)
    session.refresh(task)
    return task


def cancel_task(session: Session, task_id: int, now: dt.datetime) -> Task:
    """An operator stops a task. A running job notices at its next heartbeat and stops;
    the scheduler also kills it through the executor."""
    task = session.get(Task, task_id)
    if task is None:
        raise OperatorError(f"no task {task_id}")
    if TaskState.CANCELLED not in TRANSITIONS[task.state]:
        raise OperatorError(f"task {task_id} is {task.state.value} and cannot be cancelled")
    open_attempt = session.scalar(
        sa.select(Attempt).where(
            Attempt.task_id == task_id,
            Attempt.state.in_([AttemptState.SUBMITTED, AttemptState.RUNNING]),
        )
    )
    if open_attempt is not None:
        attempt_transition(
            session,
            open_attempt.id,
            open_attempt.state,
            AttemptState.CANCELLED,
            ended_at=now,
            reason="cancelled by operator",
        )
    if not transition(
        session, task_id, task.state, TaskState.CANCELLED, now=now, reason="cancelled by operator"
    ):
        raise OperatorError(f"task {task_id} changed state meanwhile; try again")
    block_dependents(session, task_id, now)
    session.refresh(task)
    return task


def _reopen_run(session: Session, run_id: int, now: dt.datetime) -> None:
    session.execute(
        sa.update(Run)
        .where(
            Run.id == run_id, Run.status.in_([RunStatus.ALL_COMPLETED, RunStatus.PARTLY_COMPLETED])
        )
        .values(status=RunStatus.REC_RUNNING, completed_at=None, updated_at=now)
    )
