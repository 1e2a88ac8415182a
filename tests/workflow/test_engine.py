"""End to end: messages in, tasks planned, run by the local executor, runs completed."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import RunStatus
from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.ingest.service import receive
from runwatch.storage.checksum import adler32_file
from runwatch.workflow.models import Attempt, Task, TaskOutput
from runwatch.workflow.service import retry_task
from runwatch.workflow.states import AttemptState, TaskState
from tests.waiting import wait_for
from tests.workflow.engine import (
    CHAIN,
    announce_run,
    message,
    raw_file,
    run_statuses,
    running_scheduler,
    write_pipeline,
)


def all_completed(db: Database, runs: list[int]) -> bool:
    statuses = run_statuses(db)
    return all(statuses.get(r) is RunStatus.ALL_COMPLETED for r in runs)


def test_two_runs_go_from_data_taking_to_all_completed(
    any_db: Database, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"database_url": any_db.url})
    write_pipeline(settings)
    raw = tmp_path / "raw"
    announce_run(any_db, raw, 100, 3)
    announce_run(any_db, raw, 101, 2)
    with running_scheduler(settings, any_db):
        wait_for(lambda: all_completed(any_db, [100, 101]), 60, "both runs All Completed")
    with any_db.session() as s:
        tasks = s.scalars(sa.select(Task)).all()
        assert len(tasks) == 5 * 3 + 2
        assert {t.state for t in tasks} == {TaskState.DONE}
        attempts = s.scalars(sa.select(Attempt)).all()
        assert [a.state for a in attempts] == [AttemptState.SUCCEEDED] * len(tasks)
        # each job copies its files with the [storage] settings in force
        assert {json.dumps(a.spec["storage"]) for a in attempts} == {
            json.dumps(settings.storage.model_dump())
        }
        merged = s.scalars(sa.select(TaskOutput).where(TaskOutput.name == "merged")).all()
        assert len(merged) == 2
        for out in s.scalars(sa.select(TaskOutput)):
            path = Path(out.url.removeprefix("file://"))
            assert adler32_file(path) == out.adler32
            assert path.stat().st_size == out.size
    merged_100 = Path(settings.data_root) / "Physics" / "100" / "merge" / "run100.merged"
    # Each hist output is the byte count of the upper-cased raw file, in file order.
    sizes = [int(x) for x in merged_100.read_text().split()]
    assert sizes == [len(f"run 100 file {s} payload\n") * (s + 1) for s in (1, 2, 3)]


def test_a_run_is_data_taking_until_its_last_file_arrives(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    write_pipeline(settings)
    raw = tmp_path / "raw"
    path = raw_file(raw, 7, 1)
    with db.session() as s:
        receive(s, message(path, 7, 1), "test", None, utcnow())
    with running_scheduler(settings, db):
        wait_for(lambda: _count(db, TaskState.DONE) == 3, 30, "the first file's steps")
        assert run_statuses(db)[7] is RunStatus.DATA_TAKING
        path2 = raw_file(raw, 7, 2)
        with db.session() as s:
            receive(s, message(path2, 7, 2, end_of_run=True), "test", None, utcnow())
        wait_for(lambda: all_completed(db, [7]), 30, "run 7 All Completed")
    assert _count(db, TaskState.DONE) == 2 * 3 + 1


def _count(db: Database, state: TaskState) -> int:
    with db.session() as s:
        return s.scalar(sa.select(sa.func.count()).where(Task.state == state)) or 0


FAILING = CHAIN.replace(
    'command: "tr a-z A-Z < {{ inputs[0] | quote }} > {{ outputs.rec }}"',
    'command: "echo broken detector >&2; exit 3"',
)


def test_a_step_that_fails_is_retried_then_fails_for_good(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    write_pipeline(settings, FAILING)
    announce_run(db, tmp_path / "raw", 5, 1)
    with running_scheduler(settings, db):
        wait_for(
            lambda: run_statuses(db)[5] is RunStatus.PARTLY_COMPLETED, 60, "run 5 Partly Completed"
        )
    with db.session() as s:
        by_step = {t.step: t for t in s.scalars(sa.select(Task))}
        rec = by_step["rec"]
        assert rec.state is TaskState.FAILED
        assert rec.failures == 3  # the default of 2 retries, plus the first try
        assert "exit code 3" in (rec.reason or "")
        assert by_step["hist"].state is TaskState.BLOCKED
        assert by_step["merge"].state is TaskState.BLOCKED
        assert by_step["calib"].state is TaskState.DONE
        attempts = s.scalars(sa.select(Attempt).where(Attempt.task_id == rec.id)).all()
        assert [a.exit_code for a in attempts] == [3, 3, 3]
        assert "broken detector" in (attempts[-1].log_tail or "")
        # An operator retries: the task and its blocked dependents are back in play.
        retry_task(s, rec.id, utcnow())
    with db.session() as s:
        states = {t.step: t.state for t in s.scalars(sa.select(Task))}
    assert states["rec"] is TaskState.READY
    assert states["hist"] is TaskState.WAITING and states["merge"] is TaskState.WAITING
    assert run_statuses(db)[5] is RunStatus.REC_RUNNING


HANGING = CHAIN.replace(
    'command: "wc -c < {{ inputs[0] | quote }} > {{ outputs.hist }}"',
    'command: "sleep 60"\n    timeout: 1\n    retries: 0',
)


def test_a_step_that_hangs_times_out(db: Database, settings: Settings, tmp_path: Path) -> None:
    write_pipeline(settings, HANGING)
    announce_run(db, tmp_path / "raw", 6, 1)
    with running_scheduler(settings, db):
        wait_for(
            lambda: run_statuses(db)[6] is RunStatus.PARTLY_COMPLETED, 60, "run 6 Partly Completed"
        )
    with db.session() as s:
        hist = s.scalars(sa.select(Task).where(Task.step == "hist")).one()
        assert hist.state is TaskState.FAILED
        attempt = s.scalars(sa.select(Attempt).where(Attempt.task_id == hist.id)).one()
        assert attempt.state is AttemptState.TIMED_OUT
        assert attempt.wall_s is not None and attempt.wall_s < 10


SILENT = CHAIN.replace(
    'command: "cp {{ inputs[0] | quote }} {{ outputs.calib }}"',
    'command: "true"',
).replace(
    "retries: 2",
    "retries: 0",
)


def test_a_step_that_writes_no_output_fails_with_that_reason(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    write_pipeline(settings, SILENT)
    announce_run(db, tmp_path / "raw", 8, 1)
    with running_scheduler(settings, db):
        wait_for(
            lambda: run_statuses(db)[8] is RunStatus.PARTLY_COMPLETED, 60, "run 8 Partly Completed"
        )
    with db.session() as s:
        calib = s.scalars(sa.select(Task).where(Task.step == "calib")).one()
        assert calib.state is TaskState.FAILED
        assert "calib" in (calib.reason or "") and "not written" in (calib.reason or "")


def test_editing_a_pipeline_never_changes_tasks_already_planned(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    from runwatch.executors.local import LocalExecutor
    from runwatch.workflow.scheduler import Scheduler

    write_pipeline(settings, SILENT)  # a broken calib that would fail
    announce_run(db, tmp_path / "raw", 9, 1)
    executor = LocalExecutor(settings)
    try:
        scheduler = Scheduler(settings, db, executor)
        with db.session() as s:  # plan only: no slots free
            from runwatch.workflow.planner import plan_new_files
            from runwatch.workflow.revisions import record_revisions

            scheduler.folder.refresh()
            book = record_revisions(s, scheduler.folder.loaded)
            assert plan_new_files(s, book, utcnow()) == 3
        write_pipeline(settings, CHAIN)  # the fix arrives after planning
        path = raw_file(tmp_path / "raw", 10, 1)
        with db.session() as s:
            receive(s, message(path, 10, 1, end_of_run=True), "test", None, utcnow())
        with db.session() as s:
            scheduler.folder.refresh()
            book = record_revisions(s, scheduler.folder.loaded)
            plan_new_files(s, book, utcnow())
            revs = {
                key: rev
                for key, rev in s.execute(
                    sa.select(Task.key, Task.revision_id).where(Task.step == "calib")
                )
            }
    finally:
        executor.close()
    assert len(set(revs.values())) == 2  # run 9 kept the old revision, run 10 got the new


def test_jobs_queued_ahead_never_run_more_at_once_than_the_slots(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    """The local executor forks a job ahead of each slot; the file-lock slots must still
    let only ``slots`` of them run at a time (claim to recorded end never overlap)."""
    settings = settings.model_copy(
        update={"scheduler": settings.scheduler.model_copy(update={"slots": 1})}
    )
    write_pipeline(settings, CHAIN.replace('command: "', 'command: "sleep 0.05; '))
    announce_run(db, tmp_path / "raw", 12, 4)
    with running_scheduler(settings, db):
        wait_for(lambda: all_completed(db, [12]), 60, "run 12 All Completed")
    with db.session() as s:
        spans = sorted(
            (a.started_at, a.ended_at, a.submitted_at)
            for a in s.scalars(sa.select(Attempt).where(Attempt.state == AttemptState.SUCCEEDED))
        )
    assert len(spans) == 4 * 3 + 1
    pairs = list(itertools.pairwise(spans))
    for (_, ended, _), (started, _, _) in pairs:
        assert ended is not None and started is not None and ended <= started, spans
    # And jobs were queued ahead: some job was submitted before the one before it ended.
    assert any(prev_end and submitted < prev_end for (_, prev_end, _), (_, _, submitted) in pairs)


def test_the_scheduler_survives_a_database_error_in_a_turn(
    db: Database, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadlock or a lost connection fails one turn, not the daemon: the next turn
    starts from the database again and the run still completes."""
    from runwatch.workflow import scheduler as scheduler_module

    write_pipeline(settings)
    real_run_once = scheduler_module.Scheduler.run_once
    failures: list[str] = []

    def run_once_failing_first(self: scheduler_module.Scheduler, *args: object) -> object:
        if not failures:
            failures.append("deadlock")
            raise sa.exc.OperationalError("INSERT INTO tasks ...", {}, Exception("deadlock"))
        return real_run_once(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler_module, "DB_RETRY_S", 0.05)
    monkeypatch.setattr(scheduler_module.Scheduler, "run_once", run_once_failing_first)
    announce_run(db, tmp_path / "raw", 300, 2)
    with running_scheduler(settings, db):
        wait_for(lambda: all_completed(db, [300]), 60, "the run All Completed")
    assert failures == ["deadlock"]
