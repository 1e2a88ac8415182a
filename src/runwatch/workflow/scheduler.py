"""The scheduler daemon: plan, submit, supervise, and keep run statuses current.

``Scheduler.run_once`` is one full tick; ``Scheduler.serve`` drives ticks while holding
the lease, waking as soon as a message arrives or a job ends. A job that ended only needs
a quick tick (submit what is READY: the wrapper released the job's dependents when it
recorded it); the full tick's planning, supervision and run statuses follow when files
arrive, when slots are free with nothing ready, and at least every ``tick_seconds``.
All state lives in the database, so the process may be killed at any instant and a new
one carries on where it stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.executors.base import (
    Executor,
    JobInfo,
    JobRequest,
    JobStatus,
    own_job_id,
    queue_ahead_max,
)
from runwatch.ingest.models import MESSAGES
from runwatch.jobs.environment import job_environment, wrapper_command
from runwatch.jobs.logs import log_tail
from runwatch.workflow import lease, planner
from runwatch.workflow.models import ATTEMPTS, TASKS, Attempt, Task
from runwatch.workflow.nudge import NudgeListener, socket_path
from runwatch.workflow.render import (
    ReadyTask,
    RenderedJob,
    ready_tasks,
    render_job,
    task_inputs,
)
from runwatch.workflow.revisions import (
    PipelineBook,
    PipelineFolder,
    RevisionCache,
    record_revisions,
)
from runwatch.workflow.service import (
    AttemptOutcome,
    RetryPolicy,
    block_dependents,
    finish_attempt,
    release_overlooked,
    transition,
    transition_each,
)
from runwatch.workflow.states import ATTEMPT_OPEN, AttemptState, TaskState
from runwatch.workflow.supervise import Limits, OpenAttempt, batch_status, judge
from runwatch.workflow.templates import TemplateError

log = logging.getLogger(__name__)

CANCEL_SWEEP = dt.timedelta(minutes=10)

_NEW_ATTEMPT = sa.insert(ATTEMPTS)
_SET_BATCH_STATUS = (
    sa.update(ATTEMPTS)
    .where(ATTEMPTS.c.id == sa.bindparam("attempt_id"))
    .values(batch_status=sa.bindparam("status"))
)
_SET_EXTERNAL_ID = (
    sa.update(ATTEMPTS)
    .where(ATTEMPTS.c.id == sa.bindparam("attempt_id"))
    .values(external_id=sa.bindparam("given_id"))
)


def _threads_in(state: TaskState) -> sa.ScalarSelect[Any]:
    return (
        sa.select(sa.func.coalesce(sa.func.sum(TASKS.c.threads), 0))
        .where(TASKS.c.state == state)
        .scalar_subquery()
    )


_SIGNAL = sa.select(
    sa.select(sa.func.max(MESSAGES.c.id)).scalar_subquery(),
    sa.select(sa.func.count())
    .select_from(ATTEMPTS)
    .where(ATTEMPTS.c.state.in_(sorted(ATTEMPT_OPEN)))
    .scalar_subquery(),
    _threads_in(TaskState.SUBMITTED),
    _threads_in(TaskState.RUNNING),
)

Signal = tuple[int | None, int]  # the newest message's id, the number of open attempts


@dataclass
class TickReport:
    planned: int = 0
    submitted: int = 0
    ended: int = 0
    runs_changed: int = 0

    def busy(self) -> bool:
        return bool(self.planned or self.submitted or self.ended or self.runs_changed)


DB_RETRY_S = 1.0  # wait after a turn failed on a database error


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        executor: Executor,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.db = db
        self.executor = executor
        self.clock = clock
        self._lease_renewed_at: dt.datetime | None = None
        self._last_full: dt.datetime | None = None  # when the last full tick began
        self._planned_up_to: int | None = None  # the newest message at that moment
        self._room = 0  # threads' worth of jobs the last submission could still have added
        self._in_flight: tuple[int, int] | None = None  # threads queued, running; see _signal
        # Threads' worth of jobs queued beyond the executor's queue_ahead() (see _deepen),
        # and whether the last submission filled the queue (a refill then tells whether
        # it was deep enough).
        self._deeper = 0
        self._filled = False
        self._planned_runs: dict[int, planner.RunShape] = {}  # see plan_run_tasks
        self._seen_change: Signal | None = None  # the read that ended the last wait
        self.folder = PipelineFolder(settings.pipelines)
        self.book = PipelineBook()
        self.revisions = RevisionCache()
        self.policy = RetryPolicy(
            settings.scheduler.backoff_seconds, settings.scheduler.backoff_max_seconds
        )
        self.limits = Limits(
            settings.scheduler.heartbeat_timeout_seconds, settings.scheduler.submit_grace_seconds
        )

    # -- one tick -------------------------------------------------------------------------

    def run_once(self, signal: Signal | None = None) -> TickReport:
        """A full tick: plan, supervise, submit, update run statuses. ``signal``: what
        ``_signal()`` said just before, if the caller asked already."""
        report = TickReport()
        now = self.clock()
        self._last_full = now
        # Messages that arrive after this are for the next full tick.
        self._planned_up_to = (signal or self._signal())[0]
        with self.db.session() as session:
            if self.folder.refresh() or not self.book.current:
                self.book = record_revisions(session, self.folder.loaded)
            report.planned += planner.plan_new_files(session, self.book, now)
            _end_backoffs(session, now)
            release_overlooked(session, now)
            runs = planner.active_runs(session)
            report.planned += planner.plan_run_tasks(
                session, self.revisions, now, runs, self._planned_runs
            )
        report.ended += self.supervise()
        report.submitted += self.submit_ready()
        with self.db.session() as session:
            runs = planner.active_runs(session)
            report.runs_changed += planner.update_run_statuses(
                session, self.clock(), runs, self._planned_runs
            )
        return report

    def run_quick(self) -> TickReport:
        """A quick tick: only submit READY tasks."""
        return TickReport(submitted=self.submit_ready())

    def full_tick_due(self, signal: Signal | None = None) -> bool:
        """A full tick is due when there was room for jobs at the last submission (planning
        may find work), when ``tick_seconds`` have passed, or when messages arrived."""
        if self._last_full is None or self._room > 0:
            return True
        elapsed = self.clock() - self._last_full
        if (
            not dt.timedelta(0)
            <= elapsed
            < dt.timedelta(seconds=self.settings.scheduler.tick_seconds)
        ):
            return True
        return (signal or self._signal())[0] != self._planned_up_to

    # -- submitting -----------------------------------------------------------------------

    def submit_ready(self) -> int:
        """Hand READY tasks to the executor, newest data first, within its thread slots."""
        free = self._free_threads()  # read first: most turns find nothing to add
        if free <= 0:
            return 0
        with self.db.transaction() as tx:
            chosen = self._choose(tx, free)
            prepared = self._prepare(tx, chosen)
        if not prepared:
            return 0
        try:
            ids = self.executor.submit([job for _, job in prepared])
        except Exception as exc:  # the batch system refused: retry these attempts later
            log.exception("submission of %d jobs failed", len(prepared))
            self._fail_submission([a for a, _ in prepared], f"submission failed: {exc}")
            return 0
        given = [
            {"attempt_id": attempt_id, "given_id": external_id}
            for (attempt_id, _), external_id in zip(prepared, ids, strict=True)
            if external_id != own_job_id(self.executor, attempt_id)
        ]
        if given:  # each row is a change of its own, safe to commit alone
            with self.db.one_statement() as tx:
                tx.execute(_SET_EXTERNAL_ID, given)
        return len(prepared)

    def _job_id(self, attempt_id: int, stored: str | None, executor: str) -> str | None:
        """The attempt's job id: as stored, or derived where this executor names its jobs
        after their attempts (``own_job_id``)."""
        if stored is not None or executor != self.executor.name:
            return stored
        return own_job_id(self.executor, attempt_id)

    def _free_threads(self) -> int:
        """Threads' worth of jobs to submit now (0: none), from a read of the tasks in
        flight. Jobs only end meanwhile (this is the one scheduler), so the figure can
        only err on the safe side."""
        if self._in_flight is None:
            self._signal()  # reads the threads in flight too
        assert self._in_flight is not None
        (queued, running), self._in_flight = self._in_flight, None
        used = queued + running
        capacity = self.executor.capacity()
        if used >= capacity and queued >= max(capacity, self._queue_ahead() // 2):
            # Every slot is busy and half the queue or a round of jobs is still queued:
            # refill later, in one batch, rather than one job per job that ends (a tick
            # per job was most of the scheduler's cost per task).
            self._room = 0
            return 0
        if self._filled:
            self._filled = False
            self._deepen(queued, running)
        free = capacity + self._queue_ahead() - used
        self._room = max(free, 0)
        return max(free, 0)

    def _queue_ahead(self) -> int:
        """Threads' worth of jobs to keep queued beyond the slots now."""
        return self.executor.queue_ahead() + self._deeper

    def _deepen(self, queued: int, running: int) -> None:
        """Adjust the queue's depth at a refill after a round that filled it, from the
        threads still ``queued`` and ``running``: a round deeper if the queue ran dry
        meanwhile (jobs of milliseconds end before the next round is made, and the
        workers wait for it), up to the executor's ``queue_ahead_max``; a thread
        shallower if every slot was busy with a round's worth still queued, back
        towards ``queue_ahead`` when jobs are long (newer data waits behind what is
        queued)."""
        capacity = self.executor.capacity()
        most = queue_ahead_max(self.executor) - self.executor.queue_ahead()
        if queued == 0:
            self._deeper = min(self._deeper + capacity, most)
        elif queued >= capacity and running >= capacity:
            self._deeper = max(self._deeper - 1, 0)

    def _choose(self, tx: sa.Connection, free: int) -> list[ReadyTask]:
        """Up to ``free`` threads' worth of READY tasks."""
        newest_first = self.settings.scheduler.order == "newest"
        candidates = ready_tasks(tx, max(4 * free, 16), newest_first)
        chosen: list[ReadyTask] = []
        for task in candidates:  # threads-aware: skip a task that does not fit the slots left
            if task.threads <= free or (not chosen and task.threads > self.executor.capacity()):
                chosen.append(task)
                free -= min(task.threads, free)
            if free <= 0:
                break
        self._room = max(free, 0)
        self._filled = bool(chosen) and self._room == 0
        return chosen

    def _prepare(
        self, tx: sa.Connection, chosen: Sequence[ReadyTask]
    ) -> list[tuple[int, JobRequest]]:
        """Render the chosen tasks' jobs, mark them SUBMITTED and make their attempts,
        in batches (a few round trips for the lot, not a few per task)."""
        now = self.clock()
        inputs = task_inputs(tx, chosen)
        rendered: list[tuple[ReadyTask, RenderedJob]] = []
        for task in chosen:
            try:
                pipeline = self.revisions.get(tx, task.revision_id)
                rendered.append((task, render_job(task, inputs[task.id], pipeline, self.settings)))
            except (TemplateError, KeyError, LookupError) as exc:
                reason = f"cannot render the job: {exc}"
                if transition(
                    tx, task.id, TaskState.READY, TaskState.FAILED, now=now, reason=reason
                ):
                    block_dependents(tx, task.id, now)
        moved = transition_each(
            tx,
            [(task.id, {"inputs": inputs[task.id]}) for task, _ in rendered],
            TaskState.READY,
            TaskState.SUBMITTED,
            now,
        )
        rendered = [(task, job) for task, job in rendered if task.id in moved]
        if not rendered:
            return []
        attempt_ids = (
            tx.execute(
                _NEW_ATTEMPT.returning(ATTEMPTS.c.id, sort_by_parameter_order=True),
                [self._attempt_row(task, job, now) for task, job in rendered],
            )
            .scalars()
            .all()
        )
        return [
            (attempt_id, self._request(attempt_id, task, job))
            for attempt_id, (task, job) in zip(attempt_ids, rendered, strict=True)
        ]

    def _attempt_row(self, task: ReadyTask, job: RenderedJob, now: dt.datetime) -> dict[str, Any]:
        return {
            "task_id": task.id,
            "number": task.next_attempt,
            "state": AttemptState.SUBMITTED,
            "executor": self.executor.name,
            "submitted_at": now,
            "spec": dict(job.spec),
            "command": job.spec["command"],
            "workdir": job.workdir,
            "log_path": job.log_path,
        }

    def _request(self, attempt_id: int, task: ReadyTask, job: RenderedJob) -> JobRequest:
        return JobRequest(
            attempt_id=attempt_id,
            task_key=task.key,
            threads=task.threads,
            memory_mb=task.memory_mb,
            timeout_s=task.timeout_s,
            workdir=job.workdir,
            log_path=job.log_path,
            argv=(*wrapper_command(self.settings), "job", "run", str(attempt_id)),
            env=job_environment(self.settings, attempt_id),
            disk_mb=job.disk_mb,
            submit=job.submit,
        )

    def _fail_submission(self, attempt_ids: Sequence[int], reason: str) -> None:
        outcome = AttemptOutcome(state=AttemptState.FAILED, reason=reason)
        for attempt_id in attempt_ids:
            with self.db.session() as session:
                finish_attempt(
                    session,
                    attempt_id,
                    outcome,
                    self.policy,
                    self.clock(),
                    expect=AttemptState.SUBMITTED,
                )

    # -- supervising ----------------------------------------------------------------------

    def supervise(self) -> int:
        """End attempts whose job vanished, timed out or went silent; kill cancelled jobs."""
        with self.db.session() as session:
            # Columns, not whole Attempt objects: with a batch system a thousand attempts
            # stay open for minutes, and loading each one's job spec every pass was most
            # of the scheduler's CPU per task.
            open_attempts = [
                OpenAttempt(
                    row.id,
                    row.state,
                    self._job_id(row.id, row.external_id, row.executor),
                    row.submitted_at,
                    row.started_at,
                    row.heartbeat_at,
                    row.timeout_s,
                    row.job_start,
                    row.batch_status,
                )
                for row in session.execute(
                    sa.select(
                        Attempt.id,
                        Attempt.state,
                        Attempt.external_id,
                        Attempt.executor,
                        Attempt.submitted_at,
                        Attempt.started_at,
                        Attempt.heartbeat_at,
                        Task.timeout_s,
                        Attempt.job_start,
                        Attempt.batch_status,
                    )
                    .join(Task, Task.id == Attempt.task_id)
                    .where(Attempt.state.in_(list(ATTEMPT_OPEN)))
                )
            ]
            cancelled: list[str] = [
                external_id
                for attempt_id, stored, executor in session.execute(
                    sa.select(Attempt.id, Attempt.external_id, Attempt.executor).where(
                        Attempt.state == AttemptState.CANCELLED,
                        Attempt.ended_at > self.clock() - CANCEL_SWEEP,
                    )
                )
                if (external_id := self._job_id(attempt_id, stored, executor)) is not None
            ]
        ids = [a.external_id for a in open_attempts if a.external_id] + cancelled
        infos = self.executor.poll(ids) if ids else {}
        for external_id in cancelled:
            info = infos.get(external_id)
            if info is not None and info.status is not JobStatus.GONE:
                self.executor.cancel(external_id)
        self._note_batch_status(open_attempts, infos)
        ended = 0
        now = self.clock()
        for attempt in open_attempts:
            info = infos.get(attempt.external_id) if attempt.external_id else None
            verdict = judge(attempt, info, self.limits, now)
            if verdict is None:
                continue
            with self.db.session() as session:
                # The wrapper records its log's end when it reports; one that could not
                # (it never started, was killed, or went silent) leaves the scheduler to,
                # so that the reason comes with what the job said (``tasks show``).
                log_path = session.scalar(
                    sa.select(Attempt.log_path).where(Attempt.id == attempt.id)
                )
                outcome = AttemptOutcome(
                    state=verdict.state,
                    reason=verdict.reason,
                    exit_code=info.exit_code if info is not None else None,
                    log_tail=log_tail(log_path),
                )
                done = finish_attempt(
                    session, attempt.id, outcome, self.policy, now, expect=attempt.state
                )
            if done:
                ended += 1
                log.warning("attempt %d: %s", attempt.id, verdict.reason)
            if done and verdict.kill and attempt.external_id:
                self.executor.cancel(attempt.external_id)
        return ended

    def _note_batch_status(
        self, open_attempts: Sequence[OpenAttempt], infos: Mapping[str, JobInfo]
    ) -> None:
        """Store why the batch system keeps each job waiting, for operators (``runwatch
        tasks show``, the web): only where it changed, so a quiet tick writes nothing."""
        changed = []
        for attempt in open_attempts:
            info = infos.get(attempt.external_id) if attempt.external_id else None
            status = batch_status(attempt, info)
            if status != attempt.batch_status:
                changed.append({"attempt_id": attempt.id, "status": status})
        if changed:
            with self.db.transaction() as tx:
                tx.execute(_SET_BATCH_STATUS, changed)

    # -- the daemon -----------------------------------------------------------------------

    def serve(
        self,
        stop: threading.Event,
        wake: threading.Event | None = None,
        on_lead: Callable[[], None] | None = None,
    ) -> None:
        """Tick until ``stop`` is set, while holding the lease; wait for it otherwise.

        ``on_lead`` runs once when this scheduler first becomes the active one (the CLI
        starts the ingest sources there). ``wake`` cuts a wait short.
        """
        wake = wake or threading.Event()
        holder = lease.new_holder_id()
        leading = False
        nudges = NudgeListener(socket_path(self.settings.work_root), wake.set)
        try:
            while not stop.is_set():
                try:
                    if not self._hold_lease(holder):
                        if leading:
                            log.error("lost the scheduler lease; waiting to take it back")
                            nudges.stop()
                        leading = False
                        stop.wait(self.settings.scheduler.lease_seconds / 3)
                        continue
                    if not leading:
                        leading = True
                        log.info("scheduler %s is active", holder)
                        nudges.start()
                        if on_lead is not None:
                            start_sources, on_lead = on_lead, None
                            start_sources()
                    self._turn(stop, wake)
                except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                    # A deadlock, a lost connection, a lock timeout: every turn starts
                    # from the database, so the next one simply tries again.
                    log.warning("scheduler turn failed (%s); trying again", exc)
                    stop.wait(DB_RETRY_S)
        finally:
            nudges.stop()
            with self.db.session() as session:
                lease.release(session, holder)

    def _turn(self, stop: threading.Event, wake: threading.Event) -> None:
        """One turn of ``serve`` as the active scheduler: tick, then wait for a change."""
        # Once per turn: it is one query, and a wait that ended on a change has just
        # made it.
        signal, self._seen_change = self._seen_change or self._signal(), None
        full = self.full_tick_due(signal)
        report = self.run_once(signal) if full else self.run_quick()
        if not full and not report.submitted and self._room > 0:
            report = self.run_once(signal)  # room, nothing ready: plan for work
        elif not full and report.submitted and self._room == 0:
            # Submitted and the executor's queue is full again: until a job ends or a file
            # arrives there is nothing to do (another turn at once was a read of the
            # database for nothing, one per round of jobs). The jobs just submitted are
            # open attempts of ours, not a change.
            self._wait_for_change(stop, wake, (signal[0], signal[1] + report.submitted))
            return
        if not report.busy():
            self._wait_for_change(stop, wake, signal)

    def _hold_lease(self, holder: str) -> bool:
        """Renew the lease, but only once a third of it has passed: a write per tick
        would cost every tick a write lock, and two thirds of the lease stay in hand."""
        now = self.clock()
        seconds = self.settings.scheduler.lease_seconds
        renewed = self._lease_renewed_at
        if renewed is not None and dt.timedelta(0) <= now - renewed < dt.timedelta(
            seconds=seconds / 3
        ):
            return True
        with self.db.session() as session:
            held = lease.acquire(session, holder, now, seconds)
        self._lease_renewed_at = now if held else None
        return held

    def _wait_for_change(
        self, stop: threading.Event, wake: threading.Event, before: Signal
    ) -> None:
        """Sleep until the next tick is due, a source wakes us, or the database shows a new
        message or a job that ended since ``before`` (cheap: two indexed aggregates)."""
        settings = self.settings.scheduler
        deadline = self.clock() + dt.timedelta(seconds=settings.tick_seconds)
        while self.clock() < deadline and not stop.is_set():
            if wake.wait(settings.poll_seconds):
                wake.clear()
                return
            signal = self._signal()
            if signal != before:
                self._seen_change = signal  # the next turn starts from this read
                return

    def _signal(self) -> Signal:
        """The newest message's id and the number of open attempts: a change in either
        means there is something to do. Polled often, so one prebuilt Core query."""
        with self.db.read_connection() as connection:
            row = connection.execute(_SIGNAL).one()
        # The threads queued and running come with it, for this turn's submission.
        self._in_flight = (int(row[2]), int(row[3]))
        return row[0], row[1]


def _end_backoffs(session: Session, now: dt.datetime) -> None:
    """RETRYING tasks whose backoff is over become READY (one guarded bulk UPDATE)."""
    session.execute(
        sa.update(Task)
        .where(Task.state == TaskState.RETRYING, Task.not_before <= now)
        .values(state=TaskState.READY, updated_at=now)
        .execution_options(synchronize_session=False)
    )
