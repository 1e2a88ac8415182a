"""Task and attempt state changes in the database.

Every change is one UPDATE guarded by the old state (``WHERE state = :old``): if another
process got there first, the UPDATE touches no row and the caller learns it lost the race.
Functions take the session and never commit: the caller's transaction makes a change and
its consequences (attempt and task, outputs) visible together or not at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import Run, RunStatus
from runwatch.db import utcnow
from runwatch.workflow.models import Attempt, Task, TaskDependency, TaskOutput
from runwatch.workflow.states import (
    TRANSITIONS,
    AttemptState,
    TaskState,
    backoff_seconds,
    check_attempt_transition,
    check_transition,
)


@dataclass(frozen=True)
class RetryPolicy:
    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 600.0


def transition(
    session: Session, task_id: int, old: TaskState, new: TaskState, **values: object
) -> bool:
    """Move a task from ``old`` to ``new``; False if it was no longer in ``old``."""
    check_transition(old, new)
    now = values.pop("now", None) or utcnow()
    if new in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED, TaskState.BLOCKED):
        values.setdefault("finished_at", now)
    result = session.execute(
        sa.update(Task)
        .where(Task.id == task_id, Task.state == old)
        .values(state=new, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def attempt_transition(
    session: Session, attempt_id: int, old: AttemptState, new: AttemptState, **values: object
) -> bool:
    """Move an attempt from ``old`` to ``new``; False if it was no longer in ``old``."""
    check_attempt_transition(old, new)
    result = session.execute(
        sa.update(Attempt)
        .where(Attempt.id == attempt_id, Attempt.state == old)
        .values(state=new, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def claim_attempt(session: Session, attempt_id: int, host: str, now: dt.datetime) -> bool:
    """The job wrapper takes its attempt: SUBMITTED → RUNNING for attempt and task.

    False if the scheduler already gave the attempt up (lost, cancelled): the wrapper must
    then do nothing, so that a task is never run by two attempts that both count.
    """
    attempt = session.get(Attempt, attempt_id)
    if attempt is None:
        return False
    if not attempt_transition(
        session,
        attempt_id,
        AttemptState.SUBMITTED,
        AttemptState.RUNNING,
        host=host,
        started_at=now,
        heartbeat_at=now,
    ):
        return False
    return transition(session, attempt.task_id, TaskState.SUBMITTED, TaskState.RUNNING, now=now)


def heartbeat(session: Session, attempt_id: int, now: dt.datetime) -> bool:
    """Record that the attempt is alive; False if it no longer runs (given up or cancelled)."""
    result = session.execute(
        sa.update(Attempt)
        .where(Attempt.id == attempt_id, Attempt.state == AttemptState.RUNNING)
        .values(heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


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


def finish_attempt(
    session: Session,
    attempt_id: int,
    outcome: AttemptOutcome,
    policy: RetryPolicy,
    now: dt.datetime,
    expect: AttemptState = AttemptState.RUNNING,
) -> bool:
    """Close an attempt and move its task on: DONE with its outputs, or a retry after a
    backoff, or FAILED for good when the retries are used up.

    False (and nothing changed) if the attempt was not in ``expect`` any more: somebody
    else already decided its fate.
    """
    attempt = session.get(Attempt, attempt_id)
    if attempt is None:
        return False
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
    if not attempt_transition(session, attempt_id, expect, outcome.state, **values):
        return False
    task_state = TaskState(expect.value)  # SUBMITTED or RUNNING: the task mirrors it
    task = session.get(Task, attempt.task_id)
    assert task is not None
    if outcome.state is AttemptState.SUCCEEDED:
        _record_outputs(session, task.id, attempt_id, outcome.outputs, now)
        moved = transition(session, task.id, task_state, TaskState.DONE, now=now, reason=None)
        if moved:
            _release_dependents(session, task.id, now)
        return moved
    if outcome.state is AttemptState.CANCELLED:
        return transition(
            session, task.id, task_state, TaskState.CANCELLED, now=now, reason=outcome.reason
        )
    return _fail(session, task, task_state, outcome.reason, policy, now)


def _fail(
    session: Session,
    task: Task,
    old: TaskState,
    reason: str | None,
    policy: RetryPolicy,
    now: dt.datetime,
) -> bool:
    failures = task.failures + 1
    if failures <= task.retries:
        delay = backoff_seconds(failures, policy.backoff_seconds, policy.backoff_max_seconds)
        return transition(
            session,
            task.id,
            old,
            TaskState.RETRYING,
            now=now,
            failures=failures,
            reason=reason,
            not_before=now + dt.timedelta(seconds=delay),
        )
    moved = transition(
        session, task.id, old, TaskState.FAILED, now=now, failures=failures, reason=reason
    )
    if moved:
        block_dependents(session, task.id, now)
    return moved


def _record_outputs(
    session: Session,
    task_id: int,
    attempt_id: int,
    outputs: Sequence[OutputRecord],
    now: dt.datetime,
) -> None:
    # A re-run replaces the outputs of the task's earlier successful attempt.
    session.execute(sa.delete(TaskOutput).where(TaskOutput.task_id == task_id))
    for out in outputs:
        session.add(
            TaskOutput(
                task_id=task_id,
                attempt_id=attempt_id,
                name=out.name,
                url=out.url,
                size=out.size,
                adler32=out.adler32,
                meta=dict(out.meta),
                created_at=now,
            )
        )
    session.flush()


def dependents(session: Session, task_id: int) -> list[int]:
    return list(
        session.scalars(sa.select(TaskDependency.task_id).where(TaskDependency.needs_id == task_id))
    )


def _release_dependents(session: Session, task_id: int, now: dt.datetime) -> None:
    """Make WAITING dependents READY when every task they need is DONE."""
    for dep_id in dependents(session, task_id):
        if all_needs_done(session, dep_id):
            transition(session, dep_id, TaskState.WAITING, TaskState.READY, now=now)


def all_needs_done(session: Session, task_id: int) -> bool:
    not_done = session.scalar(
        sa.select(sa.func.count())
        .select_from(TaskDependency)
        .join(Task, Task.id == TaskDependency.needs_id)
        .where(TaskDependency.task_id == task_id, Task.state != TaskState.DONE)
    )
    return not_done == 0


def block_dependents(session: Session, task_id: int, now: dt.datetime) -> None:
    """A task failed for good: everything downstream of it can never run."""
    pending = dependents(session, task_id)
    while pending:
        dep_id = pending.pop()
        if transition(
            session,
            dep_id,
            TaskState.WAITING,
            TaskState.BLOCKED,
            now=now,
            reason=f"a needed task (id {task_id}) failed for good",
        ):
            pending.extend(dependents(session, dep_id))


def unblock_dependents(session: Session, task_id: int, now: dt.datetime) -> None:
    """An operator retries a failed task: its blocked dependents wait for it again."""
    pending = dependents(session, task_id)
    while pending:
        dep_id = pending.pop()
        if transition(session, dep_id, TaskState.BLOCKED, TaskState.WAITING, now=now, reason=None):
            pending.extend(dependents(session, dep_id))


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
