"""The pages' and API's queries on a seeded database (``seed`` is shared by the web tests).

The seeded deployment, rows inserted directly (what the engine and the DQM leave):

- run 100 (Physics, All Completed, a final GOOD merge: everyone's reference),
- run 101 (Physics, All Completed, a final BAD merge: energy fails its KS check against
  run 100, 2 PMTs dead since 100; an open alarm),
- run 102 (Calib, Partly Completed: a task failed for good),
- run 103 (Physics, Rec Running: half its tasks done),
- run 104 (Physics, Data Taking: one file without an event count, a running task).

Run n's data taking ends at T0 + n - 100 hours, so the end-time order is the number
order. ``TestClient`` is imported here for the other web tests.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import File, Run, RunStatus
from runwatch.config import Settings
from runwatch.db import Database
from runwatch.dqm.histogram import write_histograms
from runwatch.dqm.models import (
    Alarm,
    DqmCheckResult,
    DqmHistogram,
    DqmMerge,
    DqmPmtStatus,
    DqmRunQuality,
    DqmTrendPoint,
)
from runwatch.dqm.pmtstatus import CODES, PmtClass
from runwatch.dqm.verdict import Verdict
from runwatch.storage.urls import path_to_url
from runwatch.web import queries
from runwatch.web.queries import RunMode, RunSort
from runwatch.workflow.models import Attempt, PipelineRevision, Task, TaskOutput
from runwatch.workflow.states import AttemptState, TaskState
from tests.dqm.dbruns import detector_file

# Starlette's TestClient now prefers the httpx2 package; httpx (a runwatch dependency) still
# works, and this import (shared by the web tests) tolerates the deprecation.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient  # noqa: F401 (for the other web tests)

T0 = dt.datetime(2026, 11, 1, 0, 0, tzinfo=dt.UTC)
N_PMT = 50
DEAD_IN_101 = (7, 11)
ODD_META: dict[int, dict[str, object]] = {104: {}, 102: {"events": "many"}, 103: {"events": True}}
"""Metadata may say anything: the second file of run 104 has no event count, of run 102 a
word, of run 103 a boolean; none of them is counted, so those runs' events are unknown."""


@dataclass(frozen=True)
class Seeded:
    data: Path
    work: Path
    log: Path  # the log file of run 101's first task's attempt
    failed_task: int  # run 102's task that failed for good
    running_task: int  # run 104's running task
    alarm: int


def _run(session: Session, number: int, stream: str, status: RunStatus, files: int) -> Run:
    end = T0 + dt.timedelta(hours=number - 100)
    run = Run(
        number=number,
        stream=stream,
        status=status,
        started_at=end - dt.timedelta(minutes=30),
        ended_at=end,
        n_files=files,
        n_bytes=files * 1000,
        updated_at=end,
    )
    session.add(run)
    session.flush()
    for seq in range(1, files + 1):
        # Metadata may say anything: run 104's second file has no event count, run
        # 102's a word, run 103's a boolean (neither is counted).
        odd: dict[int, dict[str, object]] = {
            104: {},
            102: {"events": "many"},
            103: {"events": True},
        }
        meta = odd[number] if number in odd and seq == 2 else {"events": 1000}
        session.add(
            File(
                run_id=run.id,
                name=f"RUN.{number}.{seq:03d}.raw",
                url=f"file:///raw/RUN.{number}.{seq:03d}.raw",
                stream=stream,
                sequence=seq,
                size=1000,
                meta=meta,
            )
        )
    session.flush()
    return run


def _task(
    session: Session,
    run: Run,
    step: str,
    key: str,
    state: TaskState,
    revision: int,
    log: Path | None = None,
) -> Task:
    finished = run.ended_at + dt.timedelta(minutes=5) if state is TaskState.DONE else None
    task = Task(
        key=key,
        revision_id=revision,
        pipeline="p",
        step=step,
        scope="run" if step == "merge" else "file",
        run_id=run.id,
        state=state,
        priority_at=run.ended_at,
        finished_at=finished,
        reason="exit code 3" if state is TaskState.FAILED else None,
    )
    session.add(task)
    session.flush()
    if state is not TaskState.WAITING:
        attempt_state = {
            TaskState.DONE: AttemptState.SUCCEEDED,
            TaskState.FAILED: AttemptState.FAILED,
        }.get(state, AttemptState.RUNNING)
        session.add(
            Attempt(
                task_id=task.id,
                number=1,
                state=attempt_state,
                executor="local",
                host="worker-1",
                started_at=run.ended_at,
                ended_at=finished,
                exit_code=3 if state is TaskState.FAILED else (0 if finished else None),
                log_path=str(log) if log else None,
                log_tail="the tail of the log\n",
            )
        )
        session.flush()
    return task


def _merge(session: Session, run: Run, data: Path, verdict: Verdict, dead: tuple[int, ...]) -> None:
    """A final merge of the run, with its ROOT file under the data root, its histograms,
    its PMT status and its verdict."""
    rng = np.random.default_rng(run.number)
    path = data / run.stream / str(run.number) / "merge" / f"RUN.{run.number}.merged.root"
    path.parent.mkdir(parents=True, exist_ok=True)
    hists = detector_file(rng, 1000, dead=dead)
    write_histograms(path, hists, {"tabs": {"calib": ["pmt_hits", "n_events"]}})
    task = session.scalar(sa.select(Task).where(Task.run_id == run.id, Task.step == "merge"))
    assert task is not None
    attempt = task.attempts[0]
    session.add(
        TaskOutput(
            task_id=task.id,
            attempt_id=attempt.id,
            name="merged",
            url=path_to_url(path),
            size=path.stat().st_size,
            adler32="00000001",
        )
    )
    merged_at = run.ended_at + dt.timedelta(minutes=10)
    merge = DqmMerge(
        run_id=run.id,
        task_id=task.id,
        attempt_id=attempt.id,
        url=path_to_url(path),
        final=True,
        files_included=2,
        files_total=2,
        events_included=2000,
        events_total=2000,
        merged_at=merged_at,
    )
    session.add(merge)
    session.flush()
    for name, hist in hists.items():
        session.add(
            DqmHistogram(
                run_id=run.id,
                task_id=task.id,
                attempt_id=attempt.id,
                merge_id=merge.id,
                output="merged",
                url=path_to_url(path),
                path=name,
                classname=hist.classname,
                entries=hist.entries,
            )
        )
    bad = verdict is Verdict.BAD
    session.add(
        DqmCheckResult(
            run_id=run.id,
            merge_id=merge.id,
            key="energy/ks",
            histogram="energy",
            check="ks",
            kind="ks",
            verdict=verdict,
            reason="KS p=0.001 < 0.01 (bad)" if bad else "KS p=0.5",
            reference="100" if run.number != 100 else None,
        )
    )
    session.add(
        DqmRunQuality(
            run_id=run.id, merge_id=merge.id, verdict=verdict, reason="energy/ks", final=True
        )
    )
    classes = np.full(N_PMT, CODES[PmtClass.NORMAL], dtype=np.int8)
    classes[list(dead)] = CODES[PmtClass.DEAD]
    session.add(
        DqmPmtStatus(
            run_id=run.id,
            merge_id=merge.id,
            n_events=2000,
            cuts={"dead": 0.01, "hot": 0.99, "normal_low": 0.05, "normal_high": 0.15},
            counts={"normal": N_PMT - len(dead), "dead": len(dead)},
            fractions=np.full(N_PMT, 0.1, dtype=np.float32).tobytes(),
            classes=classes.tobytes(),
        )
    )
    session.add(DqmTrendPoint(run_id=run.id, quantity="events", value=2000.0 + run.number))
    session.add(DqmTrendPoint(run_id=run.id, quantity="latency_s", value=600.0))


def seed(db: Database, settings: Settings) -> Seeded:
    """The deployment described in the module docstring, under ``settings``' roots."""
    data, work = Path(settings.data_root), Path(settings.work_root)
    log = work / "logs" / "101" / "task-1-attempt-1.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("calibrating RUN.101.001\nall good\n")
    with db.session() as session:
        revision = PipelineRevision(name="p", digest="d" * 64, path="p.yaml", content="")
        session.add(revision)
        session.flush()
        runs = {
            100: _run(session, 100, "Physics", RunStatus.ALL_COMPLETED, 2),
            101: _run(session, 101, "Physics", RunStatus.ALL_COMPLETED, 2),
            102: _run(session, 102, "Calib", RunStatus.PARTLY_COMPLETED, 2),
            103: _run(session, 103, "Physics", RunStatus.REC_RUNNING, 2),
            104: _run(session, 104, "Physics", RunStatus.DATA_TAKING, 2),
        }
        states = {
            100: [TaskState.DONE] * 3,
            101: [TaskState.DONE] * 3,
            102: [TaskState.DONE, TaskState.FAILED, TaskState.BLOCKED],
            103: [TaskState.DONE, TaskState.READY, TaskState.WAITING, TaskState.WAITING],
            104: [TaskState.RUNNING, TaskState.WAITING],
        }
        ids: dict[tuple[int, int], int] = {}
        for number, run in runs.items():
            for i, state in enumerate(states[number]):
                step = "merge" if i == 2 else "calib"
                task_log = log if (number, i) == (101, 0) else None
                key = f"p/{step}/run:{number}/{i}"
                task = _task(session, run, step, key, state, revision.id, task_log)
                ids[number, i] = task.id
        session.flush()
        _merge(session, runs[100], data, Verdict.GOOD, ())
        _merge(session, runs[101], data, Verdict.BAD, DEAD_IN_101)
        alarm = Alarm(
            key="verdict:run:101",
            kind="verdict",
            severity="bad",
            run_id=runs[101].id,
            message="run 101 is BAD: energy/ks",
            raised_at=T0 + dt.timedelta(hours=2),
            last_seen_at=T0 + dt.timedelta(hours=2),
        )
        session.add(alarm)
        session.flush()
        alarm_id = alarm.id
    return Seeded(data, work, log, ids[102, 1], ids[104, 0], alarm_id)


@pytest.fixture
def seeded(db: Database, settings: Settings) -> Seeded:
    return seed(db, settings)


def numbers(page: queries.RunPage) -> list[int]:
    return [r.number for r in page.runs]


def test_recent_runs_modes_filters_sort_and_paging(db: Database, seeded: Seeded) -> None:
    now = T0 + dt.timedelta(hours=4, minutes=30)
    with db.read_session() as s:
        assert numbers(queries.recent_runs(s)) == [104, 103, 102, 101, 100]
        completed = queries.recent_runs(s, mode=RunMode.COMPLETED)
        assert numbers(completed) == [102, 101, 100]
        # Runs whose data taking ended within the last 2.6 hours: 102 (2.5 h ago) on.
        recent = queries.recent_runs(s, mode=RunMode.DAYS, days=2.6 / 24, now=now)
        assert numbers(recent) == [104, 103, 102]
        status = queries.recent_runs(s, status=RunStatus.DATA_TAKING)
        assert numbers(status) == [104]
        assert numbers(queries.recent_runs(s, stream="Calib")) == [102]
        assert numbers(queries.recent_runs(s, number=101)) == [101]
        assert numbers(queries.recent_runs(s, number=999)) == []
        both = queries.recent_runs(s, mode=RunMode.COMPLETED, status=RunStatus.DATA_TAKING)
        assert numbers(both) == []
        first = queries.recent_runs(s, sort=RunSort.NUMBER, per_page=2)
        second = queries.recent_runs(s, sort=RunSort.NUMBER, per_page=2, page=2)
        last = queries.recent_runs(s, sort=RunSort.NUMBER, per_page=2, page=3)
    assert (numbers(first), first.has_next) == ([104, 103], True)
    assert (numbers(second), second.has_next) == ([102, 101], True)
    assert (numbers(last), last.has_next) == ([100], False)


def test_recent_runs_rows_have_events_files_progress_and_verdict(
    db: Database, seeded: Seeded
) -> None:
    with db.read_session() as s:
        rows = {r.number: r for r in queries.recent_runs(s).runs}
    assert (rows[101].events, rows[101].files) == (2000, 2)
    assert rows[104].events is None  # a file without an event count
    assert rows[102].events is None and rows[103].events is None  # not numbers
    assert (rows[101].verdict, rows[101].verdict_final) == ("bad", True)
    assert rows[100].verdict == "good" and rows[103].verdict is None
    assert rows[102].progress == queries.Progress(done=1, total=3, failed=2)
    assert rows[103].progress == queries.Progress(done=1, total=4, failed=0)
    assert rows[104].progress.percent == 0 and rows[101].progress.percent == 100


def test_run_summary_histograms_jobs_and_pmt(db: Database, seeded: Seeded) -> None:
    with db.read_session() as s:
        assert queries.run_summary(s, 999) is None
        summary = queries.run_summary(s, 101, lambda url: f"link:{url}" if url else None)
        assert summary is not None
        run = queries.find_run(s, 101)
        assert run is not None
        found = queries.run_histograms(s, run, lambda url: url)
        jobs = queries.run_jobs(s, run)
        pmt = queries.pmt_summary(s, run)
    assert (summary.status, summary.events, summary.files) == (RunStatus.ALL_COMPLETED, 2000, 2)
    assert [(st.step, st.done, st.total) for st in summary.steps] == [
        ("calib", 2, 2),
        ("merge", 1, 1),
    ]
    assert summary.latency_s == 600.0 and summary.verdict == "bad"
    assert summary.merge is not None and summary.merge.link.startswith("link:file://")
    energy = next(h for h in found.histograms if h.path == "energy")
    assert energy.verdict == "bad" and energy.checks[0].reason.startswith("KS p=0.001")
    assert energy.reference_run == 100
    assert energy.reference_file is not None and "/100/" in energy.reference_file
    assert next(h for h in found.histograms if h.path == "pmt_hits").verdict is None
    assert [t.step for t in jobs] == ["calib", "calib", "merge"]
    assert jobs[0].attempts[0].host == "worker-1" and jobs[0].attempts[0].log is not None
    assert pmt.previous_run == 100 and pmt.counts["dead"] == 2
    assert [(c.pmt, c.was, c.now) for c in pmt.changes] == [
        (p, "normal", "dead") for p in DEAD_IN_101
    ]


def test_keepup_backlog_throughput_and_latency(db: Database, seeded: Seeded) -> None:
    now = T0 + dt.timedelta(hours=4, minutes=30)
    with db.read_session() as s:
        found = queries.keepup(s, now, hours=6)
    assert found.backlog == {"ready": 1, "waiting": 3, "running": 1}
    # Done tasks finish 5 minutes after their run's end: 100 to 103, 4.4 to 1.4 h ago.
    assert sum(found.done_per_hour) == 1 + 3 + 3 + 1 and len(found.done_per_hour) == 6
    latency = {r.number: r for r in found.latency}
    assert latency[101].latency_s == 600.0
    assert latency[104].latency_s is None and latency[104].waiting_s == 30 * 60


def test_recent_runs_on_each_database(any_db: Database, tmp_path: Path) -> None:
    """The grouped counts, JSON metadata sums and paging agree on all three databases."""
    settings = Settings.model_construct(
        data_root=str(tmp_path / "data"), work_root=str(tmp_path / "work")
    )
    seed(any_db, settings)
    with any_db.read_session() as s:
        page = queries.recent_runs(s, mode=RunMode.COMPLETED, per_page=2)
        by_status = queries.recent_runs(s, status=RunStatus.REC_RUNNING)
    assert numbers(page) == [102, 101] and page.has_next
    assert page.runs[0].progress == queries.Progress(done=1, total=3, failed=2)
    assert page.runs[1].events == 2000 and page.runs[1].verdict == "bad"
    assert page.runs[0].events is None  # one of its files says "many"
    assert numbers(by_status) == [103]
