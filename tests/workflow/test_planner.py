"""Planning: tasks per file and per run, batches, idempotence, and the newest-first order."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from runwatch.catalogue.models import Run, RunStatus
from runwatch.db import Database, utcnow
from runwatch.ingest.service import receive
from runwatch.workflow import planner
from runwatch.workflow.models import Task, TaskDependency
from runwatch.workflow.revisions import PipelineFolder, RevisionCache, record_revisions
from runwatch.workflow.service import release_overlooked, transition_each
from runwatch.workflow.states import TaskState
from tests.workflow.engine import CHAIN, announce_run, message, raw_file

BATCHED = CHAIN.replace("    needs: [hist]\n", "    needs: [hist]\n    batch: 2\n")


def write_pipeline_folder(folder: Path, text: str) -> None:
    """A pipeline folder holding ``text`` as its one pipeline file."""
    folder.mkdir()
    (folder / "chain.yaml").write_text(text)


def plan(
    db: Database,
    folder: Path,
    planned: dict[int, planner.RunShape] | None = None,
    statements: list[str] | None = None,
) -> tuple[int, int]:
    """File tasks and run tasks made; ``statements``: those the run tasks took."""
    pipelines = PipelineFolder(folder)
    pipelines.refresh()
    with db.session() as s:
        book = record_revisions(s, pipelines.loaded)
        made = planner.plan_new_files(s, book, utcnow())
        runs = planner.active_runs(s)
        with counted_statements(db) as counted:
            made_runs = planner.plan_run_tasks(s, RevisionCache(), utcnow(), runs, planned)
        if statements is not None:
            statements += counted
        return made, made_runs


def test_file_steps_are_chained_and_the_merge_waits_for_the_end_of_run(
    db: Database, tmp_path: Path
) -> None:
    write_pipeline_folder(tmp_path / "p", CHAIN)
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
    write_pipeline_folder(tmp_path / "p", BATCHED)
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
    write_pipeline_folder(tmp_path / "p", CHAIN)
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
    write_pipeline_folder(tmp_path / "p", CHAIN)
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


@contextmanager
def counted_statements(db: Database) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count)


LIVE = CHAIN.replace("    needs: [hist]\n", "    needs: [hist]\n    every: 60s\n    dqm: merge\n")
T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


class LivePlanning:
    """A run of four files still being taken, planned at chosen instants."""

    def __init__(self, db: Database, folder: Path) -> None:
        self.db = db
        self.folder = folder / "p"
        self.folder.mkdir()
        (self.folder / "chain.yaml").write_text(LIVE)
        announce_run(db, folder / "raw", 3, 4)
        with db.session() as s:
            self.end_of_run = s.scalar(sa.select(Run.end_of_run_at))
            s.execute(sa.update(Run).values(end_of_run_at=None))
        self.revisions = RevisionCache()
        self.planned: dict[int, planner.RunShape] = {}  # as the scheduler keeps it
        assert self.plan(0) == 0

    def plan(self, at_s: float) -> int:
        """Plan at T0 + at_s; the run tasks made."""
        now = T0 + dt.timedelta(seconds=at_s)
        pipelines = PipelineFolder(self.folder)
        pipelines.refresh()
        with self.db.session() as s:
            planner.plan_new_files(s, record_revisions(s, pipelines.loaded), now)
            runs = planner.active_runs(s)
            with counted_statements(self.db) as statements:
                made = planner.plan_run_tasks(s, self.revisions, now, runs, self.planned)
            if not made:  # the planner runs every second: an idle look must stay cheap
                # (is the run complete, its revisions, the live tasks, anything new?)
                assert len(statements) <= 4, statements
            return made

    def set_state(self, key_part: str, state: TaskState) -> None:
        with self.db.session() as s:
            s.execute(sa.update(Task).where(Task.key.endswith(key_part)).values(state=state))

    def hist_done(self, *seqs: int) -> None:
        with self.db.session() as s:
            hists = s.scalars(sa.select(Task).where(Task.step == "hist").order_by(Task.id)).all()
            for seq in seqs:
                hists[seq - 1].state = TaskState.DONE

    def merges(self) -> dict[str, tuple[TaskState, list[str]]]:
        """Each merge task (batch:N or final): its state and what it needs (hist:N, batch:N)."""
        with self.db.session() as s:
            hist_seq = {
                t.id: f"hist:{n}"
                for n, t in enumerate(
                    s.scalars(sa.select(Task).where(Task.step == "hist").order_by(Task.id)), 1
                )
            }
            found = {}
            for task in s.scalars(sa.select(Task).where(Task.step == "merge")):
                needs = s.scalars(
                    sa.select(TaskDependency.needs_id).where(TaskDependency.task_id == task.id)
                )
                names = sorted(
                    hist_seq.get(n) or f"batch:{s.get(Task, n).batch}"  # type: ignore[union-attr]
                    for n in needs
                )
                found["final" if task.final else f"batch:{task.batch}"] = (task.state, names)
            return found

    def status(self) -> RunStatus:
        """The run's status, as the scheduler updates it after planning."""
        with self.db.session() as s:
            planner.update_run_statuses(s, T0, planner.active_runs(s), self.planned)
            status = s.scalar(sa.select(Run.status))
            assert status is not None
            return status

    def end_the_run(self) -> None:
        with self.db.session() as s:
            s.execute(sa.update(Run).values(end_of_run_at=self.end_of_run))


def test_live_merges_come_at_most_every_interval_one_at_a_time_with_new_files(
    any_db: Database, tmp_path: Path
) -> None:
    live = LivePlanning(any_db, tmp_path)
    assert live.plan(5) == 0, "no file's hist is done yet"
    live.hist_done(1)
    assert live.plan(10) == 1, "the first live merge needs no waiting"
    assert live.merges() == {"batch:1": (TaskState.READY, ["hist:1"])}
    assert live.plan(11) == 0
    live.hist_done(2)
    assert live.plan(200) == 0, "one live merge at a time: batch 1 is not finished"
    live.set_state("batch:1", TaskState.DONE)
    assert live.plan(69) == 0, "less than 60 s since the last one was made"
    assert live.plan(70) == 1
    assert live.merges()["batch:2"] == (TaskState.READY, ["batch:1", "hist:1", "hist:2"])
    live.set_state("batch:2", TaskState.DONE)
    assert live.plan(500) == 0, "nothing new since batch 2"
    live.hist_done(3)
    assert live.plan(500) == 1
    assert live.merges()["batch:3"][1] == ["batch:2", "hist:1", "hist:2", "hist:3"]
    assert live.plan(1000) == 0


def test_the_final_merge_waits_for_a_live_one_and_starts_from_the_last_done(
    db: Database, tmp_path: Path
) -> None:
    live = LivePlanning(db, tmp_path)
    live.hist_done(1)
    assert live.plan(0) == 1
    live.set_state("batch:1", TaskState.DONE)
    live.hist_done(2, 3)
    assert live.plan(60) == 1
    live.set_state("batch:2", TaskState.RUNNING)
    live.end_the_run()
    assert live.plan(120) == 0, "the final waits while batch 2 runs; no more live ones"
    live.set_state("batch:2", TaskState.FAILED)  # failed for good: must not block the final
    assert live.plan(121) == 1
    assert live.merges()["final"] == (
        TaskState.WAITING,
        ["batch:1", "hist:1", "hist:2", "hist:3", "hist:4"],
    )
    assert live.plan(122) == 0, "one final"


def test_a_run_is_not_completed_while_its_final_task_is_still_to_make(
    db: Database, tmp_path: Path
) -> None:
    """The planner looks while the last live merge runs (the final must wait for it);
    the live merge ends before the run statuses are updated. Every task is then settled,
    but the final merge is still to make: the run must stay Rec Running, or it is
    completed without it and never planned again."""
    live = LivePlanning(db, tmp_path)
    live.hist_done(1, 2, 3, 4)
    assert live.plan(0) == 1
    live.set_state("batch:1", TaskState.RUNNING)
    live.end_the_run()
    assert live.plan(60) == 0, "the final waits for the live merge"
    with db.session() as s:  # the live merge, and everything else, ends
        s.execute(sa.update(Task).values(state=TaskState.DONE))
    assert live.status() is RunStatus.REC_RUNNING
    assert live.plan(61) == 1, "the final merge, at the next look"
    assert live.status() is RunStatus.REC_RUNNING
    with db.session() as s:
        s.execute(sa.update(Task).values(state=TaskState.DONE))
    assert live.status() is RunStatus.ALL_COMPLETED


def test_a_run_with_its_final_tasks_made_is_looked_at_again_only_when_it_changes(
    db: Database, tmp_path: Path
) -> None:
    write_pipeline_folder(tmp_path / "p", CHAIN)
    announce_run(db, tmp_path / "raw", 1, 3)
    planned: dict[int, planner.RunShape] = {}

    def plan_runs() -> tuple[int, int]:
        """Run tasks made, and statements it took."""
        statements: list[str] = []
        return plan(db, tmp_path / "p", planned, statements)[1], len(statements)

    assert plan_runs()[0] == 1 and len(planned) == 1, "the merge is made: all planned"
    assert plan_runs() == (0, 0), "nothing to ask the database while the run is unchanged"
    late = raw_file(tmp_path / "raw", 1, 4)
    with db.session() as s:
        assert receive(s, message(late, 1, 4), "test", None, utcnow()).status.value == "accepted"
    made, statements = plan_runs()
    assert made == 0 and statements > 0, "a file came in: looked at again"
    assert plan_runs() == (0, 0)
    with db.session() as s:  # the run is no longer active: forgotten
        s.execute(sa.update(Run).values(status=RunStatus.ALL_COMPLETED))
    assert plan_runs() == (0, 0) and planned == {}
