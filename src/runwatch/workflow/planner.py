"""The planner: turns catalogued files and runs into tasks.

File-scoped steps get one task per file as soon as the file is catalogued. Run-scoped steps
get a final task once the run has ended and all its files are in, and, while the run is
still being taken, either one task per N files whose needed steps are done (``batch``) or
*live* tasks (``every``): one at a time, at most every ``every_s`` seconds, whenever a
needed file task finished that the last live task did not include. A live task needs the
previous finished one, so the previous output (a live merge's merged file) is among its
inputs and is its starting point; the final task needs the last finished one too.
Task keys are unique, so planning twice (a restart mid-tick) never makes a task twice.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import FILES, RUNS, File, Run, RunStatus
from runwatch.db import Transaction, connection_of
from runwatch.workflow.models import DEPENDENCIES, TASKS, Task, TaskDependency
from runwatch.workflow.revisions import PipelineBook, RevisionCache
from runwatch.workflow.spec import Pipeline, Step
from runwatch.workflow.states import TaskState

ACTIVE_RUN = (RunStatus.DATA_TAKING, RunStatus.REC_RUNNING)
DEAD_END = (TaskState.FAILED, TaskState.BLOCKED, TaskState.CANCELLED)
SETTLED = (TaskState.DONE, *DEAD_END)


def file_task_key(pipeline: str, step: str, file_id: int) -> str:
    return f"{pipeline}/{step}/file:{file_id}"


def run_task_key(pipeline: str, step: str, run_id: int, batch: int | None) -> str:
    suffix = "" if batch is None else f"/batch:{batch}"
    return f"{pipeline}/{step}/run:{run_id}{suffix}"


_UNPLANNED = (
    sa.select(
        FILES.c.id,
        FILES.c.run_id,
        FILES.c.stream,
        sa.func.coalesce(FILES.c.created_at, FILES.c.registered_at),
        RUNS.c.status,
    )
    .join(RUNS, RUNS.c.id == FILES.c.run_id)
    .where(FILES.c.planned_at.is_(None))
    .order_by(FILES.c.id)
    .limit(sa.bindparam("limit"))
)
_MARK_PLANNED = (
    sa.update(FILES)
    .where(FILES.c.id == sa.bindparam("file_id"))
    .values(planned_at=sa.bindparam("now", type_=FILES.c.planned_at.type))
)
_REOPEN_RUN = (
    sa.update(RUNS)
    .where(RUNS.c.id == sa.bindparam("run_id"))
    .values(status=RunStatus.REC_RUNNING, completed_at=None)
)
_INSERT_TASK = sa.insert(TASKS)
_INSERT_DEPENDENCY = sa.insert(DEPENDENCIES)


def plan_new_files(tx: Transaction, book: PipelineBook, now: dt.datetime, limit: int = 500) -> int:
    """Make the file-scoped tasks of files not planned yet; returns tasks made. Core
    statements in batches: a burst of files (a hundred at once) is planned in one tick
    with one INSERT of all their tasks and one of all their dependencies."""
    connection = connection_of(tx)
    files = connection.execute(_UNPLANNED, {"limit": limit}).all()
    if not files:
        return 0
    rows: list[dict[str, object]] = []
    needs: list[list[int]] = []  # for each row, the rows (by index) it needs
    for file_id, run_id, stream, taken_at, _ in files:
        for revision_id, pipeline in book.for_stream(stream):
            _plan_file(rows, needs, file_id, run_id, taken_at, revision_id, pipeline, now)
    if rows:
        returning = _INSERT_TASK.returning(TASKS.c.id, sort_by_parameter_order=True)
        ids = connection.execute(returning, rows).scalars().all()
        dependencies = [
            {"task_id": ids[row], "needs_id": ids[needed]}
            for row, needed_rows in enumerate(needs)
            for needed in needed_rows
        ]
        if dependencies:
            connection.execute(_INSERT_DEPENDENCY, dependencies)
    connection.execute(_MARK_PLANNED, [{"file_id": f[0], "now": now} for f in files])
    for run_id in {f[1] for f in files if f[4] not in ACTIVE_RUN}:
        connection.execute(_REOPEN_RUN, {"run_id": run_id})  # a late file reopens a run
    return len(rows)


def _plan_file(
    rows: list[dict[str, object]],
    needs: list[list[int]],
    file_id: int,
    run_id: int,
    taken_at: dt.datetime,
    revision_id: int,
    pipeline: Pipeline,
    now: dt.datetime,
) -> None:
    """Add the rows of one file's tasks under one pipeline (and what each needs)."""
    made: dict[str, int] = {}  # step → its row's index
    for step in pipeline.steps.values():
        if step.scope != "file":
            continue
        needed = [made[name] for name in step.needs]
        made[step.name] = len(rows)
        needs.append(needed)
        rows.append(
            _task_values(
                pipeline,
                step,
                revision_id,
                now,
                key=file_task_key(pipeline.name, step.name, file_id),
                run_id=run_id,
                file_id=file_id,
                batch=None,
                final=True,
                priority_at=taken_at,
                state=TaskState.WAITING if needed else TaskState.READY,
            )
        )


def _task_values(
    pipeline: Pipeline, step: Step, revision_id: int, now: dt.datetime, **values: object
) -> dict[str, object]:
    return {
        "revision_id": revision_id,
        "pipeline": pipeline.name,
        "step": step.name,
        "scope": step.scope,
        "threads": step.threads,
        "memory_mb": step.memory_mb,
        "timeout_s": step.timeout_s,
        "retries": step.retries,
        "failures": 0,
        "inputs": [],
        "created_at": now,
        "updated_at": now,
        **values,
    }


def _new_task(
    pipeline: Pipeline, step: Step, revision_id: int, now: dt.datetime, **values: object
) -> Task:
    return Task(**_task_values(pipeline, step, revision_id, now, **values))


def run_is_complete(session: Session, run: Run) -> bool:
    """All of the run's files are in: end of run seen, none missing, all planned."""
    if run.end_of_run_at is None:
        return False
    if run.expected_files is not None and run.n_files < run.expected_files:
        return False
    unplanned = session.scalar(
        sa.select(sa.func.count()).where(File.run_id == run.id, File.planned_at.is_(None))
    )
    return unplanned == 0


RunShape = tuple[int, dt.datetime | None, int | None]  # see ``_shape``


def _shape(run: Run) -> RunShape:
    """What a run's run-scoped tasks depend on, besides its tasks: a run whose final tasks
    are all made needs nothing more until a file comes in or its end changes."""
    return (run.n_files, run.end_of_run_at, run.expected_files)


def all_planned(planned: Mapping[int, RunShape], run: Run) -> bool:
    """Whether ``run``'s files are all in and its run-scoped tasks all made, as
    ``plan_run_tasks`` last found (``planned``) and the run still is."""
    return planned.get(run.id) == _shape(run)


def plan_run_tasks(
    session: Session,
    revisions: RevisionCache,
    now: dt.datetime,
    runs: Iterable[Run],
    planned: dict[int, RunShape] | None = None,
) -> int:
    """Make the run-scoped tasks that are due for these runs; returns tasks made.

    ``planned``, kept by the caller from one call to the next: the runs whose files are
    all in and whose final tasks were all made, as they were then (``all_planned``).
    They are skipped while unchanged (three queries a run at every full tick of the
    scheduler, for nothing, while a run's last tasks run), and only they may be
    completed (``update_run_statuses``). Runs not among ``runs`` are forgotten."""
    made = 0
    runs = list(runs)
    if planned is not None:
        for run_id in planned.keys() - {run.id for run in runs}:
            del planned[run_id]
    for run in runs:
        if planned is not None and all_planned(planned, run):
            continue
        complete = run_is_complete(session, run)
        all_made = complete
        for revision_id in _run_revisions(session, run.id):
            pipeline = revisions.get(session, revision_id)
            for step in pipeline.steps.values():
                if step.scope != "run":
                    continue
                if complete:
                    made_now = _plan_final(session, run, revision_id, pipeline, step, now)
                    all_made = all_made and made_now is not None
                    made += made_now or 0
                elif step.every_s:
                    made += _plan_live(session, run, revision_id, pipeline, step, now)
                elif step.batch:
                    made += _plan_batches(session, run, revision_id, pipeline, step, now)
        if planned is not None and all_made:
            planned[run.id] = _shape(run)
    session.flush()
    return made


def _run_revisions(session: Session, run_id: int) -> list[int]:
    """The newest revision of each pipeline that planned the run's files."""
    rows = session.execute(
        sa.select(Task.pipeline, sa.func.max(Task.revision_id))
        .where(Task.run_id == run_id, Task.scope == "file")
        .group_by(Task.pipeline)
    ).all()
    return sorted(rev for _, rev in rows)


def _needed_tasks(session: Session, run_id: int, pipeline: str, needs: Iterable[str]) -> list[Task]:
    return list(
        session.scalars(
            sa.select(Task).where(
                Task.run_id == run_id,
                Task.pipeline == pipeline,
                Task.step.in_(list(needs)),
                Task.final.is_(True),
            )
        )
    )


def _plan_final(
    session: Session, run: Run, revision_id: int, pipeline: Pipeline, step: Step, now: dt.datetime
) -> int | None:
    """Make the run's final task of ``step``: 1 if made, 0 if it was made already, None
    if it must wait (for the live task running)."""
    key = run_task_key(pipeline.name, step.name, run.id, None)
    if session.scalar(sa.select(Task.id).where(Task.key == key)) is not None:
        return 0
    previous: list[Task] = []
    if step.every_s:
        live = _live_summary(session, run.id, pipeline.name, step.name)
        if live.unfinished:
            return None  # the final starts from the live task's output: wait for it
        if live.last_done_batch is not None:
            last = run_task_key(pipeline.name, step.name, run.id, live.last_done_batch)
            previous.append(_live_task(session, last))
    needs = [*_needed_tasks(session, run.id, pipeline.name, step.needs), *previous]
    _add_run_task(session, run, revision_id, pipeline, step, now, key, None, needs)
    return 1


@dataclass(frozen=True)
class LiveSummary:
    """A run's live tasks of one step, as the live rule needs them (one aggregate query)."""

    last_batch: int  # 0 when there is none
    last_created_at: dt.datetime | None
    unfinished: bool  # one is neither done nor failed, blocked or cancelled
    last_done_batch: int | None

    def due(self, now: dt.datetime, every_s: float) -> bool:
        """Pure: may a new live task be made now (before looking for new files)?"""
        if self.unfinished:
            return False
        if self.last_created_at is None:
            return True
        return (now - self.last_created_at).total_seconds() >= every_s


def _live_summary(session: Session, run_id: int, pipeline: str, step: str) -> LiveSummary:
    done_batch = sa.case((Task.state == TaskState.DONE, Task.batch))
    unfinished = sa.case((Task.state.in_(SETTLED), 0), else_=1)
    row = session.execute(
        sa.select(
            sa.func.coalesce(sa.func.max(Task.batch), 0),
            sa.func.max(Task.created_at),
            sa.func.coalesce(sa.func.max(unfinished), 0),
            sa.func.max(done_batch),
        ).where(
            Task.run_id == run_id,
            Task.pipeline == pipeline,
            Task.step == step,
            Task.final.is_(False),
        )
    ).one()
    last_batch, created_at, open_, done = row
    return LiveSummary(int(last_batch), created_at, bool(open_), done)


def _live_task(session: Session, key: str) -> Task:
    task = session.scalar(sa.select(Task).where(Task.key == key))
    assert task is not None, key
    return task


def _plan_live(
    session: Session, run: Run, revision_id: int, pipeline: Pipeline, step: Step, now: dt.datetime
) -> int:
    """While the run is taken: a live task when one is due and a needed file task finished
    that the last finished live task did not include. It needs every needed task done now
    and that live task, whose output is its starting point."""
    assert step.every_s
    live = _live_summary(session, run.id, pipeline.name, step.name)
    if not live.due(now, step.every_s):
        return 0
    previous_key = None
    if live.last_done_batch is not None:
        previous_key = run_task_key(pipeline.name, step.name, run.id, live.last_done_batch)
    if not session.scalar(_news_for(run.id, pipeline.name, step.needs, previous_key)):
        return 0  # one cheap query on idle ticks; the needed tasks are loaded only to plan
    needs = [
        t
        for t in _needed_tasks(session, run.id, pipeline.name, step.needs)
        if t.state is TaskState.DONE
    ]
    if previous_key is not None:
        needs.append(_live_task(session, previous_key))
    number = live.last_batch + 1
    key = run_task_key(pipeline.name, step.name, run.id, number)
    _add_run_task(session, run, revision_id, pipeline, step, now, key, number, needs)
    return 1


def _news_for(
    run_id: int, pipeline: str, needs: Iterable[str], previous_key: str | None
) -> sa.Select[tuple[bool]]:
    """Is a needed task done that the live task ``previous_key`` does not need?"""
    done = sa.select(Task.id).where(
        Task.run_id == run_id,
        Task.pipeline == pipeline,
        Task.step.in_(list(needs)),
        Task.final.is_(True),
        Task.state == TaskState.DONE,
    )
    if previous_key is not None:
        previous = sa.select(Task.id).where(Task.key == previous_key).scalar_subquery()
        done = done.where(
            ~sa.exists().where(
                TaskDependency.task_id == previous, TaskDependency.needs_id == Task.id
            )
        )
    return sa.select(done.exists())


def _add_run_task(
    session: Session,
    run: Run,
    revision_id: int,
    pipeline: Pipeline,
    step: Step,
    now: dt.datetime,
    key: str,
    batch: int | None,
    needs: list[Task],
) -> Task:
    states = {t.state for t in needs}
    if states & set(DEAD_END):
        state, reason = TaskState.BLOCKED, "a needed task failed for good"
    elif states <= {TaskState.DONE}:
        state, reason = TaskState.READY, None
    else:
        state, reason = TaskState.WAITING, None
    task = _new_task(
        pipeline,
        step,
        revision_id,
        now,
        key=key,
        run_id=run.id,
        file_id=None,
        batch=batch,
        final=batch is None,
        state=state,
        reason=reason,
        priority_at=run.ended_at or run.started_at or now,
        finished_at=now if state is TaskState.BLOCKED else None,
    )
    session.add(task)
    session.flush()
    session.add_all(TaskDependency(task_id=task.id, needs_id=n.id) for n in needs)
    return task


def _plan_batches(
    session: Session, run: Run, revision_id: int, pipeline: Pipeline, step: Step, now: dt.datetime
) -> int:
    """While the run is taken: one task per ``step.batch`` new files whose needs are done."""
    assert step.batch
    needed = _needed_tasks(session, run.id, pipeline.name, step.needs)
    by_file: dict[int, list[Task]] = defaultdict(list)
    for task in needed:
        if task.file_id is not None:
            by_file[task.file_id].append(task)
    ready_files = sorted(
        fid
        for fid, tasks in by_file.items()
        if len(tasks) == len(step.needs) and all(t.state is TaskState.DONE for t in tasks)
    )
    batches = list(
        session.scalars(
            sa.select(Task).where(
                Task.run_id == run.id,
                Task.pipeline == pipeline.name,
                Task.step == step.name,
                Task.final.is_(False),
            )
        )
    )
    covered = (
        set(
            session.scalars(
                sa.select(Task.file_id)
                .join(TaskDependency, TaskDependency.needs_id == Task.id)
                .where(TaskDependency.task_id.in_([b.id for b in batches]))
            )
        )
        if batches
        else set()
    )
    fresh = [fid for fid in ready_files if fid not in covered]
    made = 0
    while len(fresh) >= step.batch:
        group, fresh = fresh[: step.batch], fresh[step.batch :]
        number = len(batches) + made + 1
        key = run_task_key(pipeline.name, step.name, run.id, number)
        needs = [t for fid in group for t in by_file[fid]]
        _add_run_task(session, run, revision_id, pipeline, step, now, key, number, needs)
        made += 1
    return made


def update_run_statuses(
    session: Session, now: dt.datetime, runs: Iterable[Run], planned: Mapping[int, RunShape]
) -> int:
    """Derive each run's status from its files and tasks; returns runs whose status changed.

    ``planned`` is ``plan_run_tasks``'s: a run whose files are all in is settled only once
    its run-scoped tasks are all made. A final task still due (it waited for the live
    task that ran when the planner looked, and that has ended since) keeps the run Rec
    Running until the planner makes it; otherwise the run was completed without it, and
    never looked at again."""
    changed = 0
    for run in runs:
        counts = {
            state: count
            for state, count in session.execute(
                sa.select(Task.state, sa.func.count())
                .where(Task.run_id == run.id)
                .group_by(Task.state)
            )
        }
        made = all_planned(planned, run)
        status = derive_run_status(made or run_is_complete(session, run), counts, made)
        if status is not run.status:
            run.status = status
            run.updated_at = now
            final = status in (RunStatus.ALL_COMPLETED, RunStatus.PARTLY_COMPLETED)
            run.completed_at = now if final else None
            changed += 1
    session.flush()
    return changed


def derive_run_status(
    complete: bool, counts: dict[TaskState, int], all_made: bool = True
) -> RunStatus:
    """Pure: a run's status from whether its files are all in, its task counts by state,
    and whether its run-scoped tasks are all made."""
    if not complete:
        return RunStatus.DATA_TAKING
    if not all_made or any(n for state, n in counts.items() if state not in SETTLED):
        return RunStatus.REC_RUNNING
    if any(counts.get(state, 0) for state in DEAD_END):
        return RunStatus.PARTLY_COMPLETED
    return RunStatus.ALL_COMPLETED


def active_runs(session: Session) -> list[Run]:
    return list(session.scalars(sa.select(Run).where(Run.status.in_(ACTIVE_RUN))))
