"""Task and attempt states, and the one table of allowed transitions.

Pure: no I/O. Every change of a task's state in the database goes through
``runwatch.workflow.service.transition``, which checks this table and guards the UPDATE by
the old state, so two daemons can never both act on the same task.
"""

from __future__ import annotations

import enum


class TaskState(enum.StrEnum):
    WAITING = "waiting"  # planned; a needed task is not done yet
    READY = "ready"  # may be submitted when a slot is free
    SUBMITTED = "submitted"  # an attempt was handed to the executor
    RUNNING = "running"  # the job wrapper claimed the attempt and runs the step
    RETRYING = "retrying"  # an attempt failed; waiting out the backoff
    DONE = "done"  # outputs exist and are recorded
    FAILED = "failed"  # failed for good (retries used up)
    BLOCKED = "blocked"  # a needed task failed for good
    CANCELLED = "cancelled"  # stopped by an operator


TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.WAITING: frozenset({TaskState.READY, TaskState.BLOCKED, TaskState.CANCELLED}),
    # READY -> FAILED: the job cannot even be described (its command template fails).
    TaskState.READY: frozenset({TaskState.SUBMITTED, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.SUBMITTED: frozenset(
        {TaskState.RUNNING, TaskState.RETRYING, TaskState.FAILED, TaskState.CANCELLED}
    ),
    TaskState.RUNNING: frozenset(
        {TaskState.DONE, TaskState.RETRYING, TaskState.FAILED, TaskState.CANCELLED}
    ),
    TaskState.RETRYING: frozenset({TaskState.READY, TaskState.CANCELLED}),
    TaskState.DONE: frozenset({TaskState.READY}),  # an operator's re-run
    TaskState.FAILED: frozenset({TaskState.READY}),  # an operator's retry
    TaskState.BLOCKED: frozenset({TaskState.WAITING, TaskState.CANCELLED}),
    TaskState.CANCELLED: frozenset({TaskState.READY}),
}

ACTIVE = frozenset({TaskState.SUBMITTED, TaskState.RUNNING})
"""States that hold an executor slot."""

FINAL = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED, TaskState.BLOCKED})
"""States nothing moves out of without an operator."""


class AttemptState(enum.StrEnum):
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the command exited non-zero or wrote no declared output
    TIMED_OUT = "timed_out"
    LOST = "lost"  # the job vanished: killed, node lost, never started
    CANCELLED = "cancelled"


ATTEMPT_TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    AttemptState.SUBMITTED: frozenset(
        {
            AttemptState.RUNNING,
            AttemptState.FAILED,
            AttemptState.LOST,
            AttemptState.CANCELLED,
            AttemptState.TIMED_OUT,
        }
    ),
    AttemptState.RUNNING: frozenset(
        {
            AttemptState.SUCCEEDED,
            AttemptState.FAILED,
            AttemptState.TIMED_OUT,
            AttemptState.LOST,
            AttemptState.CANCELLED,
        }
    ),
    AttemptState.SUCCEEDED: frozenset(),
    AttemptState.FAILED: frozenset(),
    AttemptState.TIMED_OUT: frozenset(),
    AttemptState.LOST: frozenset(),
    AttemptState.CANCELLED: frozenset(),
}

ATTEMPT_OPEN = frozenset({AttemptState.SUBMITTED, AttemptState.RUNNING})


class TransitionError(Exception):
    """A state change the transition table does not allow."""


def check_transition(old: TaskState, new: TaskState) -> None:
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"task cannot go from {old.value} to {new.value}")


def check_attempt_transition(old: AttemptState, new: AttemptState) -> None:
    if new not in ATTEMPT_TRANSITIONS[old]:
        raise TransitionError(f"attempt cannot go from {old.value} to {new.value}")


def backoff_seconds(failures: int, base: float, cap: float) -> float:
    """Exponential backoff before retry number ``failures`` (1 = first retry)."""
    if failures < 1:
        return 0.0
    return float(min(cap, base * 2 ** (failures - 1)))
