"""What the pages and the JSON API show, read from the database: one set of queries for both.

Every function takes a session and returns plain pydantic models, which the API returns
as they are (so the OpenAPI schema documents them) and the templates render.

The recent-runs list must stay fast on 100,000 runs with millions of files and tasks, so
it never counts or scans the big tables: it pages over an indexed column of ``runs``
(``ended_at`` or ``number``), fetching one row more than a page to know whether there is
a next page (no total count), and then asks the files, tasks and DQM tables about the
page's runs only, with one grouped query each over their indexed ``run_id``.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import Session, selectinload

from runwatch.catalogue.models import File, Run, RunStatus
from runwatch.dqm.alarms import list_alarms
from runwatch.dqm.models import (
    AlarmState,
    DqmCheckResult,
    DqmHistogram,
    DqmMerge,
    DqmPmtStatus,
    DqmRunQuality,
    DqmTrendPoint,
)
from runwatch.dqm.service import changed_since_previous_good
from runwatch.dqm.store import latest_merge
from runwatch.dqm.trends import trend
from runwatch.workflow.models import Attempt, Task
from runwatch.workflow.states import FINAL, TaskState

COMPLETED = (RunStatus.ALL_COMPLETED, RunStatus.PARTLY_COMPLETED)
ACTIVE_RUN = (RunStatus.DATA_TAKING, RunStatus.REC_RUNNING)
PER_PAGE_MAX = 200

Linker = Callable[[str | None], str | None]
"""Turns a stored URL or path into a link the site serves (``files.file_link``), or None."""


def _no_link(url: str | None) -> str | None:
    return None


class RunMode(enum.StrEnum):
    """The recent-runs page's search modes."""

    RECENT = "recent"  # every run, newest first
    COMPLETED = "completed"  # All Completed and Partly Completed runs
    DAYS = "days"  # runs whose data taking ended within the last N days (or still on)


class RunSort(enum.StrEnum):
    END = "end"  # by the end of data taking (the last file's time), newest first
    NUMBER = "number"  # by run number, highest first


# -- the recent runs ---------------------------------------------------------------------


class Progress(BaseModel):
    """Tasks done out of all of them (failed, blocked or cancelled are counted apart)."""

    done: int = 0
    total: int = 0
    failed: int = 0

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0


class RunRow(BaseModel):
    number: int
    stream: str
    status: RunStatus
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    events: int | None
    files: int
    progress: Progress
    verdict: str | None
    verdict_final: bool = False


class RunPage(BaseModel):
    """One page of runs: ``has_next`` says whether a next page exists."""

    runs: list[RunRow]
    page: int
    per_page: int
    has_next: bool


def recent_runs(
    session: Session,
    mode: RunMode = RunMode.RECENT,
    status: RunStatus | None = None,
    stream: str | None = None,
    number: int | None = None,
    sort: RunSort = RunSort.END,
    page: int = 1,
    per_page: int = 50,
    days: float = 7.0,
    now: dt.datetime | None = None,
) -> RunPage:
    """A page of runs with their events, files, task progress and DQM verdict.

    Sorted by end time, runs still taking data come first: a run's ``ended_at`` is its
    newest file's time and moves on with every file, so the runs being taken are the most
    recent ones. Runs without any time sort as the database puts NULLs (rare: a run is
    made with its first file's time).
    """
    query = sa.select(Run.id, Run.number, Run.stream, Run.status, Run.started_at, Run.ended_at)
    if mode is RunMode.COMPLETED:
        query = query.where(Run.status.in_(COMPLETED))
    elif mode is RunMode.DAYS:
        since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
        query = query.where(Run.ended_at >= since)
    if status is not None:
        query = query.where(Run.status == status)
    if stream:
        query = query.where(Run.stream == stream)
    if number is not None:
        query = query.where(Run.number == number)
    order = (Run.number.desc(),) if sort is RunSort.NUMBER else (Run.ended_at.desc(), Run.id.desc())
    query = query.order_by(*order).limit(per_page + 1).offset((page - 1) * per_page)
    rows = session.execute(query).all()
    shown = rows[:per_page]
    ids = [r.id for r in shown]
    progress = task_progress(session, ids)
    files, events = file_totals(session, ids)
    verdicts = run_verdicts(session, ids)
    runs = [
        RunRow(
            number=r.number,
            stream=r.stream,
            status=r.status,
            started_at=r.started_at,
            ended_at=r.ended_at,
            events=events.get(r.id),
            files=files.get(r.id, 0),
            progress=progress.get(r.id, Progress()),
            verdict=verdicts[r.id][0] if r.id in verdicts else None,
            verdict_final=verdicts[r.id][1] if r.id in verdicts else False,
        )
        for r in shown
    ]
    return RunPage(runs=runs, page=page, per_page=per_page, has_next=len(rows) > per_page)


FAILED_FOR_GOOD = (TaskState.FAILED, TaskState.BLOCKED, TaskState.CANCELLED)


def task_progress(session: Session, run_ids: Collection[int]) -> dict[int, Progress]:
    """Done, failed and total tasks of each run: one grouped query over ``tasks.run_id``."""
    if not run_ids:
        return {}
    query = (
        sa.select(Task.run_id, Task.state, sa.func.count())
        .where(Task.run_id.in_(list(run_ids)))
        .group_by(Task.run_id, Task.state)
    )
    found: dict[int, Progress] = defaultdict(Progress)
    for run_id, state, n in session.execute(query):
        progress = found[run_id]
        progress.total += n
        if state is TaskState.DONE:
            progress.done += n
        elif state in FAILED_FOR_GOOD:
            progress.failed += n
    return dict(found)


def _events_of(meta: Any) -> int | None:
    value = meta.get("events") if isinstance(meta, Mapping) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def json_number(dialect: str, column: Any, key: str) -> sa.ColumnElement[Any]:
    """SQL for ``column[key]`` of a JSON column when it is a number, else NULL.

    Free-form metadata may hold anything under ``key`` (a string, a boolean): each
    database is asked for the value's JSON type first, so nothing is ever cast that
    cannot be. ``key`` is a constant of ours, never input.
    """
    if dialect == "postgresql":
        field = column.op("->")(sa.literal_column(f"'{key}'"))
        text = column.op("->>")(sa.literal_column(f"'{key}'"))
        return sa.case((sa.func.json_typeof(field) == "number", sa.cast(text, sa.Float)))
    value = sa.func.json_extract(column, f"$.{key}")
    if dialect == "sqlite":
        return sa.case((sa.func.json_type(column, f"$.{key}").in_(["integer", "real"]), value))
    numbers = ["INTEGER", "UNSIGNED INTEGER", "DOUBLE", "DECIMAL"]  # MySQL, MariaDB
    return sa.case((sa.func.json_type(value).in_(numbers), value + 0))


def file_totals(
    session: Session, run_ids: Collection[int]
) -> tuple[dict[int, int], dict[int, int]]:
    """Files of each run, and its events when every file's metadata gives them.

    Summed by the database: decoding every file's metadata in Python cost more than all
    the rest of the recent-runs list together.
    """
    if not run_ids:
        return {}, {}
    events = json_number(session.get_bind().dialect.name, File.meta, "events")
    query = (
        sa.select(File.run_id, sa.func.count(), sa.func.count(events), sa.func.sum(events))
        .where(File.run_id.in_(list(run_ids)))
        .group_by(File.run_id)
    )
    files, known = {}, {}
    for run_id, n, n_known, total in session.execute(query):
        files[run_id] = n
        if n_known == n:
            known[run_id] = round(total)
    return files, known


def run_verdicts(session: Session, run_ids: Collection[int]) -> dict[int, tuple[str, bool]]:
    """Each judged run's DQM verdict and whether it is from the final merge."""
    if not run_ids:
        return {}
    query = sa.select(DqmRunQuality.run_id, DqmRunQuality.verdict, DqmRunQuality.final).where(
        DqmRunQuality.run_id.in_(list(run_ids))
    )
    return {run_id: (verdict.value, final) for run_id, verdict, final in session.execute(query)}


def streams(session: Session) -> list[str]:
    """The streams runs were taken in (for the filter's choices)."""
    return list(session.scalars(sa.select(Run.stream).distinct().order_by(Run.stream)))


# -- one run -----------------------------------------------------------------------------


class StepProgress(BaseModel):
    step: str
    states: dict[str, int]
    done: int
    total: int


class MergeInfo(BaseModel):
    """A merge's completeness: what of the run the merged histograms include."""

    url: str
    link: str | None
    final: bool
    files_included: int
    files_total: int
    events_included: int
    events_total: int | None
    merged_at: dt.datetime
    left_out: list[dict[str, Any]]


class FileRow(BaseModel):
    name: str
    sequence: int | None
    size: int | None
    events: int | None
    link: str | None


class RunSummary(BaseModel):
    """The Base tab: a run's status, times, sizes, task progress and keep-up latency."""

    number: int
    stream: str
    status: RunStatus
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    end_of_run_at: dt.datetime | None
    completed_at: dt.datetime | None
    expected_files: int | None
    files: int
    bytes: int
    events: int | None
    progress: Progress
    steps: list[StepProgress]
    verdict: str | None
    verdict_reason: str | None
    verdict_final: bool
    latency_s: float | None
    merge: MergeInfo | None
    raw_files: list[FileRow]


def find_run(session: Session, number: int) -> Run | None:
    return session.scalar(sa.select(Run).where(Run.number == number))


def run_summary(session: Session, number: int, link: Linker = _no_link) -> RunSummary | None:
    """The run's Base tab (None: no such run)."""
    run = find_run(session, number)
    if run is None:
        return None
    raw = session.scalars(sa.select(File).where(File.run_id == run.id).order_by(File.sequence))
    raw_files = [
        FileRow(
            name=f.name,
            sequence=f.sequence,
            size=f.size,
            events=_events_of(f.meta),
            link=link(f.url),
        )
        for f in raw
    ]
    known = [f.events for f in raw_files if f.events is not None]
    quality = session.get(DqmRunQuality, run.id)
    merge = latest_merge(session, run.id)
    steps = step_progress(session, run.id)
    return RunSummary(
        number=run.number,
        stream=run.stream,
        status=run.status,
        started_at=run.started_at,
        ended_at=run.ended_at,
        end_of_run_at=run.end_of_run_at,
        completed_at=run.completed_at,
        expected_files=run.expected_files,
        files=len(raw_files),
        bytes=run.n_bytes,
        events=sum(known) if raw_files and len(known) == len(raw_files) else None,
        progress=Progress(
            done=sum(s.done for s in steps),
            total=sum(s.total for s in steps),
            failed=sum(n for s in steps for st, n in s.states.items() if st in FAILED_FOR_GOOD),
        ),
        steps=steps,
        verdict=quality.verdict.value if quality else None,
        verdict_reason=quality.reason if quality else None,
        verdict_final=quality.final if quality else False,
        latency_s=keepup_latency(session, run),
        merge=merge_info(merge, link) if merge else None,
        raw_files=raw_files,
    )


def step_progress(session: Session, run_id: int) -> list[StepProgress]:
    """Tasks per state of each step of the run, steps in the order they were planned."""
    query = (
        sa.select(Task.step, Task.state, sa.func.count(), sa.func.min(Task.id))
        .where(Task.run_id == run_id)
        .group_by(Task.step, Task.state)
    )
    states: dict[str, dict[str, int]] = defaultdict(dict)
    first: dict[str, int] = {}
    for step, state, n, first_id in session.execute(query):
        states[step][state.value] = n
        first[step] = min(first.get(step, first_id), first_id)
    return [
        StepProgress(
            step=step,
            states=states[step],
            done=states[step].get(TaskState.DONE.value, 0),
            total=sum(states[step].values()),
        )
        for step in sorted(states, key=first.__getitem__)
    ]


def keepup_latency(session: Session, run: Run) -> float | None:
    """Seconds from the end of data taking to the final merge: the DQM's ``latency_s``
    trend point, else from the run's final merge; None while there is none."""
    point = session.get(DqmTrendPoint, (run.id, "latency_s"))
    if point is not None:
        return point.value
    merged_at = session.scalar(
        sa.select(sa.func.max(DqmMerge.merged_at)).where(
            DqmMerge.run_id == run.id, DqmMerge.final.is_(True)
        )
    )
    if merged_at is None or run.ended_at is None:
        return None
    return (merged_at - run.ended_at).total_seconds()


def merge_info(merge: DqmMerge, link: Linker = _no_link) -> MergeInfo:
    return MergeInfo(
        url=merge.url,
        link=link(merge.url),
        final=merge.final,
        files_included=merge.files_included,
        files_total=merge.files_total,
        events_included=merge.events_included,
        events_total=merge.events_total,
        merged_at=merge.merged_at,
        left_out=list(merge.errors),
    )


# -- histograms --------------------------------------------------------------------------


class CheckView(BaseModel):
    check: str
    kind: str
    verdict: str
    reason: str
    shadow: bool
    reference: str | None


class HistogramView(BaseModel):
    """One merged histogram: where to draw it from, and what the checks said of it."""

    path: str
    classname: str
    entries: float
    file: str | None
    verdict: str | None
    checks: list[CheckView]
    reference_run: int | None
    reference_file: str | None


class RunHistograms(BaseModel):
    number: int
    merge: MergeInfo | None
    histograms: list[HistogramView]


def run_histograms(session: Session, run: Run, link: Linker = _no_link) -> RunHistograms:
    """The run's latest merge's histograms, each with its check results and reference.

    A check's reference ('1230', or '1221-1230' for a window of good runs) is drawn from
    the newest run it names: that run's latest merged file (a window's sum is not kept
    in a file; its newest run is a fair picture of it).
    """
    merge = latest_merge(session, run.id)
    if merge is None:
        return RunHistograms(number=run.number, merge=None, histograms=[])
    rows = session.scalars(
        sa.select(DqmHistogram).where(DqmHistogram.merge_id == merge.id).order_by(DqmHistogram.id)
    )
    checks: dict[str, list[DqmCheckResult]] = defaultdict(list)
    for result in session.scalars(
        sa.select(DqmCheckResult).where(DqmCheckResult.run_id == run.id).order_by(DqmCheckResult.id)
    ):
        checks[result.histogram].append(result)
    references = _ReferenceFiles(session, link)
    views = []
    for hist in rows:
        results = checks.get(hist.path, [])
        counted = [r.verdict for r in results if not r.shadow]
        worst = max(counted, key=lambda v: v.severity) if counted else None
        ref_run = _reference_run(results)
        views.append(
            HistogramView(
                path=hist.path,
                classname=hist.classname,
                entries=hist.entries,
                file=link(hist.url),
                verdict=worst.value if worst else None,
                checks=[
                    CheckView(
                        check=r.check,
                        kind=r.kind,
                        verdict=r.verdict.value,
                        reason=r.reason,
                        shadow=r.shadow,
                        reference=r.reference,
                    )
                    for r in results
                ],
                reference_run=ref_run,
                reference_file=references.file(ref_run),
            )
        )
    return RunHistograms(number=run.number, merge=merge_info(merge, link), histograms=views)


def _reference_run(results: Sequence[DqmCheckResult]) -> int | None:
    """The newest run named by the histogram's checks' references."""
    numbers = []
    for result in results:
        for part in (result.reference or "").split("-"):
            if part.strip().isdigit():
                numbers.append(int(part))
    return max(numbers) if numbers else None


class _ReferenceFiles:
    """Reference runs' merged files, looked up once each."""

    def __init__(self, session: Session, link: Linker) -> None:
        self.session, self.link = session, link
        self.found: dict[int, str | None] = {}

    def file(self, number: int | None) -> str | None:
        if number is None:
            return None
        if number not in self.found:
            run = find_run(self.session, number)
            merge = None if run is None else latest_merge(self.session, run.id)
            self.found[number] = None if merge is None else self.link(merge.url)
        return self.found[number]


# -- PMT status --------------------------------------------------------------------------


class PmtChange(BaseModel):
    pmt: int
    was: str
    now: str


class PmtSummary(BaseModel):
    """The PMT Info tab: counts per class with the cuts, and the changes since the
    previous good run of the stream (``changes`` holds at most the first ``shown``)."""

    n_events: int | None
    cuts: dict[str, float]
    counts: dict[str, int]
    previous_run: int | None
    n_changes: int
    changes: list[PmtChange]


def pmt_summary(session: Session, run: Run, shown: int = 500) -> PmtSummary:
    status = session.get(DqmPmtStatus, run.id)
    found = changed_since_previous_good(session, run)
    changes: list[PmtChange] = []
    if found is not None:
        for pmt, old, new in found.changes:
            if len(changes) >= shown:
                break
            changes.append(PmtChange(pmt=pmt, was=old.value, now=new.value))
    return PmtSummary(
        n_events=status.n_events if status else None,
        cuts=dict(status.cuts) if status else {},
        counts=dict(status.counts) if status else {},
        previous_run=found.previous_run if found else None,
        n_changes=len(found.changes) if found else 0,
        changes=changes,
    )


# -- jobs --------------------------------------------------------------------------------


class AttemptView(BaseModel):
    number: int
    state: str
    executor: str
    host: str | None
    submitted_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    exit_code: int | None
    wall_s: float | None
    reason: str | None
    log: str | None
    batch_status: str | None = None  # why the batch system keeps the job waiting


class OutputView(BaseModel):
    name: str
    url: str
    link: str | None
    size: int


class TaskView(BaseModel):
    id: int
    key: str
    step: str
    scope: str
    state: str
    failures: int
    retries: int
    reason: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    run: int | None = None
    attempts: list[AttemptView]
    outputs: list[OutputView]


def task_view(task: Task, run_number: int | None = None, link: Linker = _no_link) -> TaskView:
    return TaskView(
        id=task.id,
        key=task.key,
        step=task.step,
        scope=task.scope,
        state=task.state.value,
        failures=task.failures,
        retries=task.retries,
        reason=task.reason,
        created_at=task.created_at,
        finished_at=task.finished_at,
        run=run_number,
        attempts=[attempt_view(a, link) for a in task.attempts],
        outputs=[
            OutputView(name=o.name, url=o.url, link=link(o.url), size=o.size) for o in task.outputs
        ],
    )


def attempt_view(attempt: Attempt, link: Linker = _no_link) -> AttemptView:
    return AttemptView(
        number=attempt.number,
        state=attempt.state.value,
        executor=attempt.executor,
        host=attempt.host,
        submitted_at=attempt.submitted_at,
        started_at=attempt.started_at,
        ended_at=attempt.ended_at,
        exit_code=attempt.exit_code,
        wall_s=attempt.wall_s,
        reason=attempt.reason,
        batch_status=attempt.batch_status,
        log=f"/tasks/{attempt.task_id}/log?attempt={attempt.number}" if attempt.log_path else None,
    )


def run_jobs(session: Session, run: Run, link: Linker = _no_link) -> list[TaskView]:
    """The run's tasks in planning order, each with its attempts and outputs."""
    query = (
        sa.select(Task)
        .where(Task.run_id == run.id)
        .options(selectinload(Task.attempts), selectinload(Task.outputs))
        .order_by(Task.id)
    )
    return [task_view(t, run.number, link) for t in session.scalars(query)]


def task_detail(session: Session, task_id: int, link: Linker = _no_link) -> TaskView | None:
    options = [selectinload(Task.attempts), selectinload(Task.outputs)]
    task = session.get(Task, task_id, options=options)
    if task is None:
        return None
    number = session.scalar(sa.select(Run.number).where(Run.id == task.run_id))
    return task_view(task, number, link)


# -- keep-up -----------------------------------------------------------------------------


class RunLatency(BaseModel):
    number: int
    stream: str
    status: RunStatus
    ended_at: dt.datetime | None
    latency_s: float | None
    waiting_s: float | None  # for a run not yet DQM-complete: time since data taking ended


class KeepUp(BaseModel):
    """Backlog (unfinished tasks by state), throughput (tasks done per hour), latency."""

    backlog: dict[str, int]
    done_per_hour: list[int]
    hours: int
    latency: list[RunLatency]


def keepup(session: Session, now: dt.datetime, hours: int = 6, runs: int = 30) -> KeepUp:
    """The keep-up view.

    The backlog counts tasks by the indexed ``state`` (unfinished ones are few); the
    throughput looks only at tasks of runs in play (active, or changed within ``hours``),
    from the first such task id on, so it never scans the whole tasks table.
    """
    unfinished = [s for s in TaskState if s not in FINAL]
    backlog = {
        state.value: n
        for state, n in session.execute(
            sa.select(Task.state, sa.func.count())
            .where(Task.state.in_(unfinished))
            .group_by(Task.state)
        )
    }
    since = now - dt.timedelta(hours=hours)
    in_play = sa.select(Run.id).where(sa.or_(Run.status.in_(ACTIVE_RUN), Run.updated_at >= since))
    floor = session.scalar(sa.select(sa.func.min(Task.id)).where(Task.run_id.in_(in_play)))
    per_hour = [0] * hours
    if floor is not None:
        finished = session.scalars(
            sa.select(Task.finished_at).where(
                Task.id >= floor, Task.state == TaskState.DONE, Task.finished_at >= since
            )
        )
        for at in finished:
            if at is not None:
                ago = int((now - at).total_seconds() // 3600)
                if 0 <= ago < hours:
                    per_hour[hours - 1 - ago] += 1
    return KeepUp(
        backlog=backlog,
        done_per_hour=per_hour,
        hours=hours,
        latency=run_latencies(session, now, runs),
    )


def run_latencies(session: Session, now: dt.datetime, last: int) -> list[RunLatency]:
    """The ``last`` runs by number with their keep-up latency (or time waited so far)."""
    query = (
        sa.select(Run, DqmTrendPoint.value)
        .outerjoin(
            DqmTrendPoint,
            sa.and_(DqmTrendPoint.run_id == Run.id, DqmTrendPoint.quantity == "latency_s"),
        )
        .order_by(Run.number.desc())
        .limit(last)
    )
    found = []
    for run, latency in session.execute(query):
        waiting = None
        if (
            latency is None
            and run.ended_at is not None
            and run.status is not RunStatus.ALL_COMPLETED
        ):
            waiting = (now - run.ended_at).total_seconds()
        found.append(
            RunLatency(
                number=run.number,
                stream=run.stream,
                status=run.status,
                ended_at=run.ended_at,
                latency_s=latency,
                waiting_s=waiting,
            )
        )
    return found


# -- alarms and trends -------------------------------------------------------------------


class AlarmView(BaseModel):
    id: int
    kind: str
    severity: str
    state: str
    run: int | None
    task_id: int | None
    message: str
    raised_at: dt.datetime
    last_seen_at: dt.datetime
    times_raised: int
    acknowledged_by: str | None
    acknowledged_at: dt.datetime | None
    ack_comment: str | None
    ack_expires_at: dt.datetime | None
    cleared_at: dt.datetime | None


def alarms(
    session: Session, states: Collection[AlarmState], run: int | None = None, limit: int = 100
) -> list[AlarmView]:
    """Alarms in ``states`` (all when empty), most recently raised first."""
    return [
        AlarmView(
            id=a.id,
            kind=a.kind,
            severity=a.severity,
            state=a.state.value,
            run=number,
            task_id=a.task_id,
            message=a.message,
            raised_at=a.raised_at,
            last_seen_at=a.last_seen_at,
            times_raised=a.times_raised,
            acknowledged_by=a.acknowledged_by,
            acknowledged_at=a.acknowledged_at,
            ack_comment=a.ack_comment,
            ack_expires_at=a.ack_expires_at,
            cleared_at=a.cleared_at,
        )
        for a, number in list_alarms(session, states, run, limit)
    ]


class TrendPoint(BaseModel):
    run: int
    value: float


class Trend(BaseModel):
    quantity: str
    stream: str | None
    points: list[TrendPoint]


def has_trend(session: Session, quantity: str) -> bool:
    """Whether some run has the quantity (one look at the quantity index)."""
    query = sa.select(DqmTrendPoint.run_id).where(DqmTrendPoint.quantity == quantity).limit(1)
    return session.scalar(query) is not None


def trend_of(session: Session, quantity: str, last: int = 50, stream: str | None = None) -> Trend:
    points = [TrendPoint(run=n, value=v) for n, v in trend(session, quantity, last, stream)]
    return Trend(quantity=quantity, stream=stream, points=points)
