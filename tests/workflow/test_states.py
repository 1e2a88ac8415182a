from __future__ import annotations

import pytest

from runwatch.workflow.states import (
    ATTEMPT_TRANSITIONS,
    FINAL,
    TRANSITIONS,
    AttemptState,
    TaskState,
    TransitionError,
    backoff_seconds,
    check_transition,
)


def test_every_state_has_a_row_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(TaskState)
    assert set(ATTEMPT_TRANSITIONS) == set(AttemptState)


def test_every_state_is_reachable_from_waiting_or_ready() -> None:
    seen, todo = set(), [TaskState.WAITING, TaskState.READY]
    while todo:
        state = todo.pop()
        if state not in seen:
            seen.add(state)
            todo.extend(TRANSITIONS[state])
    assert seen == set(TaskState)


def test_final_states_leave_only_by_an_operator_retry() -> None:
    for state in FINAL - {TaskState.BLOCKED}:
        assert TRANSITIONS[state] == {TaskState.READY}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (TaskState.DONE, TaskState.RUNNING),
        (TaskState.WAITING, TaskState.SUBMITTED),
        (TaskState.RETRYING, TaskState.DONE),
        (TaskState.FAILED, TaskState.DONE),
    ],
)
def test_forbidden_transitions_raise(old: TaskState, new: TaskState) -> None:
    with pytest.raises(TransitionError, match=f"from {old.value} to {new.value}"):
        check_transition(old, new)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_seconds(n, 10, 60) for n in range(0, 6)] == [0, 10, 20, 40, 60, 60]
