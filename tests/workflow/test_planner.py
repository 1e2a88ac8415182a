"""Planning: tasks per file and per run, batches, idempotence, and the newest-first order."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from runwatch.catalogue.models import Run
from runwatch.db import Database, utcnow
from runwatch.workflow import planner
from runwatch.workflow.models import Task, TaskDependency
from runwatch.workflow.revisions import PipelineFolder, RevisionCache, record_revisions
from runwatch.workflow.service import release_overlooked, transition_each
from runwatch.workflow.states import TaskState
from tests.workflow.engine import CHAIN, announce_run

BATCHED = CHAIN.replace("    needs: [hist]\n", "    needs: [hist]\n    batch: 2\n")


def plan(db: Database, folder: Path) -> tuple[int, int]:
    pipelines = PipelineFolder(folder)
    pipelines.refresh()
    with db.session() as s:
        book = record_revisions(s, pipelines.loaded)
        made = planner.plan_new_files(s, book, utcnow())
        runs = planner.active_runs(s)
        made_runs = planner.plan_run_tasks(s, RevisionCache(), utcnow(), runs)
        return made, made_runs


def test_file_steps_are_chained_and_the_merge_waits_for_the_end_of_run(
    db: Database, tmp_path: Path
) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "chain.yaml").write_text(CHAIN)
    announce_run(db, tmp_path / "raw", 1, 3)
    assert plan(db, tmp_path / "p") == (9, 1)
    assert plan(db, tmp_path / "p") == (0, 0), "planning twice makes nothing twice"
    with db.session() as s:
        states = {k: st for k, st in s.execute(sa.select(Task.key, Task.state))}
        deps = s.execute(sa.select(sa.func.count()).select_from(TaskDependency)).scalar()
    calib = [k for k in states if "/calib/" in k]
    assert len(calib) == 3 and all(states[k] is TaskState.READY for k in calib)
    assert all(states[k] is TaskState.WAITING for k in states if "/calib/" not in k)
    assert deps == 3 * 2 + 3  # rec->calib, hist->rec per file; merge -> 3 hists


def test_no_merge_before_the_run_ends_unless_batched(db: Database, tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "chain.yaml").write_text(BATCHED)
    announce_run(db, tmp_path / "raw", 2, 5)
    with db.session() as s:  # pretend the end of run was never seen
        s.execute(sa.update(Run).values(end_of_run_at=None))
    assert plan(db, tmp_path / "p") == (15, 0)
    with db.session() as s:  # four files' hists finish
        hists = s.scalars(sa.select(Task).where(Task.step == "hist").order_by(Task.id)).all()
        for task in hists[:4]:
            task.state = TaskState.DONE
    assert plan(db, tmp_path / "p") == (0, 2), "two batches of two files"
    assert plan(db, tmp_path / "p") == (0, 0)
    with db.session() as s:
        batches = s.scalars(sa.select(Task).where(Task.step == "merge")).all()
        assert sorted(b.batch or 0 for b in batches) == [1, 2]
        assert all(b.state is TaskState.READY and not b.final for b in batches)


def test_a_batch_of_transitions_moves_only_the_tasks_still_in_the_old_state(
    any_db: Database, tmp_path: Path
) -> None:
    """transition_each: one batch, each row guarded; a task moved meanwhile stays put."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "chain.yaml").write_text(CHAIN)
    announce_run(any_db, tmp_path / "raw", 1, 4)
    plan(any_db, tmp_path / "p")
    with any_db.session() as s:
        ready = sorted(s.scalars(sa.select(Task.id).where(Task.state == TaskState.READY)))
        cancelled = ready[1]
        s.execute(sa.update(Task).where(Task.id == cancelled).values(state=TaskState.CANCELLED))
    now = utcnow()
    with any_db.transaction() as tx:
        moved = transition_each(
            tx,
            [(task_id, {"inputs": [f"file:///in/{task_id}"]}) for task_id in ready],
            TaskState.READY,
            TaskState.SUBMITTED,
            now,
        )
    assert moved == set(ready) - {cancelled}
    with any_db.session() as s:
        rows = {t.id: t for t in s.scalars(sa.select(Task).where(Task.id.in_(ready)))}
    assert rows[cancelled].state is TaskState.CANCELLED
    assert all(rows[i].state is TaskState.SUBMITTED for i in moved)
    assert all(rows[i].inputs == [f"file:///in/{i}"] for i in moved)


def test_a_task_whose_needs_all_ended_without_releasing_it_is_released_by_the_sweep(
    any_db: Database, tmp_path: Path
) -> None:
    """Two needed tasks that end at the same moment on a server can each miss the other's
    commit; the scheduler's sweep then makes the task that needs them READY."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "chain.yaml").write_text(CHAIN)
    announce_run(any_db, tmp_path / "raw", 1, 2)
    plan(any_db, tmp_path / "p")
    with any_db.session() as s:
        merge = s.scalar(sa.select(Task.id).where(Task.step == "merge"))
        assert merge is not None
        # Every file task ended, but nobody released the merge (the race's outcome).
        s.execute(sa.update(Task).where(Task.step != "merge").values(state=TaskState.DONE))
        s.execute(sa.update(Task).where(Task.id == merge).values(state=TaskState.WAITING))
    with any_db.transaction() as tx:
        assert release_overlooked(tx, utcnow()) == 1
        assert release_overlooked(tx, utcnow()) == 0, "released once"
    with any_db.session() as s:
        assert s.get(Task, merge).state is TaskState.READY  # type: ignore[union-attr]
        s.execute(sa.update(Task).where(Task.step == "hist").values(state=TaskState.RUNNING))
        s.execute(sa.update(Task).where(Task.id == merge).values(state=TaskState.WAITING))
    with any_db.transaction() as tx:
        assert release_overlooked(tx, utcnow()) == 0, "a need still running holds it back"
