from __future__ import annotations

from runwatch.catalogue.models import RunStatus
from runwatch.workflow.planner import derive_run_status
from runwatch.workflow.states import TaskState as S


def test_run_still_taking_data_whatever_its_tasks() -> None:
    assert derive_run_status(False, {S.DONE: 3}) is RunStatus.DATA_TAKING


def test_run_with_work_left_is_rec_running() -> None:
    assert derive_run_status(True, {S.DONE: 3, S.RETRYING: 1}) is RunStatus.REC_RUNNING
    assert derive_run_status(True, {S.WAITING: 1, S.FAILED: 1}) is RunStatus.REC_RUNNING


def test_run_with_a_failure_for_good_is_partly_completed() -> None:
    assert derive_run_status(True, {S.DONE: 3, S.BLOCKED: 2, S.FAILED: 1}) is (
        RunStatus.PARTLY_COMPLETED
    )


def test_run_with_everything_done_or_nothing_to_do_is_all_completed() -> None:
    assert derive_run_status(True, {S.DONE: 4}) is RunStatus.ALL_COMPLETED
    assert derive_run_status(True, {}) is RunStatus.ALL_COMPLETED


def test_run_with_a_run_task_still_to_make_is_rec_running() -> None:
    assert derive_run_status(True, {S.DONE: 4}, all_made=False) is RunStatus.REC_RUNNING
    assert derive_run_status(True, {S.FAILED: 1}, all_made=False) is RunStatus.REC_RUNNING
