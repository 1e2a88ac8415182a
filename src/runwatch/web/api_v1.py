"""The read-only JSON API under ``/api/v1``: the same queries as the pages (``queries``).

Every route needs read access (``require_read``); an unknown run or task is a 404 whose
``detail`` names it, a bad parameter a 422 (FastAPI's validation).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from sqlalchemy.orm import Session

from runwatch.catalogue.models import Run, RunStatus
from runwatch.dqm.alarms import LIVE
from runwatch.dqm.models import AlarmState
from runwatch.dqm.trends import quantities
from runwatch.web import queries
from runwatch.web.auth import require_read
from runwatch.web.cache import ShortCache
from runwatch.web.files import file_link
from runwatch.web.state import app_db, app_settings

router = APIRouter(prefix="/api/v1", tags=["read"], dependencies=[Depends(require_read)])


def read_session(request: Request) -> Iterator[Session]:
    """A read-only session for one request."""
    db = app_db(request)
    with db.read_session() as session:
        yield session


ReadSession = Annotated[Session, Depends(read_session)]


@dataclass(frozen=True)
class RunFilters:
    """The recent-runs search, as the page's form and the API take it."""

    mode: queries.RunMode = queries.RunMode.RECENT
    status: RunStatus | None = None
    stream: str | None = None
    number: int | None = None
    sort: queries.RunSort = queries.RunSort.END
    page: int = 1
    per_page: int = 50
    days: float = 7.0

    def query(self, session: Session) -> queries.RunPage:
        return queries.recent_runs(
            session,
            mode=self.mode,
            status=self.status,
            stream=self.stream,
            number=self.number,
            sort=self.sort,
            page=self.page,
            per_page=self.per_page,
            days=self.days,
        )


def run_filters(
    mode: queries.RunMode = queries.RunMode.RECENT,
    status: Annotated[RunStatus | None, Query(description="e.g. 'All Completed'")] = None,
    stream: Annotated[str | None, Query(max_length=64)] = None,
    number: Annotated[int | None, Query(ge=0, description="This run only")] = None,
    sort: queries.RunSort = queries.RunSort.END,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=queries.PER_PAGE_MAX)] = 50,
    days: Annotated[float, Query(gt=0, le=3650, description="For mode=days")] = 7.0,
) -> RunFilters:
    return RunFilters(mode, status, stream or None, number, sort, page, per_page, days)


def the_run(session: Session, number: int) -> Run:
    run = queries.find_run(session, number)
    if run is None:
        raise HTTPException(status_code=404, detail=f"no run {number}")
    return run


def linker(request: Request) -> queries.Linker:
    link: queries.Linker = file_link(app_settings(request))
    return link


RunNumber = Annotated[int, Path(ge=0)]


@router.get("/runs", response_model=queries.RunPage)
def get_runs(
    request: Request, filters: Annotated[RunFilters, Depends(run_filters)]
) -> queries.RunPage:
    """Recent runs: a page of runs with events, files, task progress and DQM verdict
    (at most ``[web] cache_seconds`` old)."""
    return recent_runs(request, filters)


def recent_runs(request: Request, filters: RunFilters) -> queries.RunPage:
    """A page of recent runs, from the process's short cache (``runwatch.web.cache``); the
    database is read only when the page is not there or too old."""

    def compute() -> queries.RunPage:
        with app_db(request).read_session() as session:
            return filters.query(session)

    cache: ShortCache = request.app.state.recent_runs
    return cache.get(filters, compute)


@router.get("/runs/{number}", response_model=queries.RunSummary)
def get_run(number: RunNumber, session: ReadSession, request: Request) -> queries.RunSummary:
    """A run's summary: status, times, files, events, task progress per step, latency."""
    summary = queries.run_summary(session, number, linker(request))
    if summary is None:
        raise HTTPException(status_code=404, detail=f"no run {number}")
    return summary


@router.get("/runs/{number}/histograms", response_model=queries.RunHistograms)
def get_run_histograms(
    number: RunNumber, session: ReadSession, request: Request
) -> queries.RunHistograms:
    """The run's latest merged histograms, each with its checks' verdicts and reference."""
    return queries.run_histograms(session, the_run(session, number), linker(request))


@router.get("/runs/{number}/tasks", response_model=list[queries.TaskView])
def get_run_tasks(
    number: RunNumber, session: ReadSession, request: Request
) -> list[queries.TaskView]:
    """The run's tasks with their attempts and outputs."""
    return queries.run_jobs(session, the_run(session, number), linker(request))


@router.get("/tasks/{task_id}", response_model=queries.TaskView)
def get_task(
    task_id: Annotated[int, Path(ge=0)], session: ReadSession, request: Request
) -> queries.TaskView:
    """One task with its attempts and outputs."""
    found = queries.task_detail(session, task_id, linker(request))
    if found is None:
        raise HTTPException(status_code=404, detail=f"no task {task_id}")
    return found


def alarm_states(state: str) -> tuple[AlarmState, ...]:
    """'live' (open and acknowledged), 'all', or one state."""
    if state == "live":
        return LIVE
    if state == "all":
        return ()
    try:
        return (AlarmState(state),)
    except ValueError:
        choices = ", ".join(["live", "all", *AlarmState])
        raise HTTPException(status_code=422, detail=f"state must be one of {choices}") from None


@router.get("/alarms", response_model=list[queries.AlarmView])
def get_alarms(
    session: ReadSession,
    state: str = "live",
    run: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[queries.AlarmView]:
    """Alarms, most recently raised first: live ones (open, acknowledged) by default."""
    return queries.alarms(session, alarm_states(state), run, limit)


@router.get("/trends", response_model=list[str])
def get_trend_quantities(session: ReadSession) -> list[str]:
    """The per-run quantities stored for some run."""
    return quantities(session)


@router.get("/trends/{quantity}", response_model=queries.Trend)
def get_trend(
    quantity: str,
    session: ReadSession,
    last: Annotated[int, Query(ge=1, le=5000)] = 50,
    stream: Annotated[str | None, Query(max_length=64)] = None,
) -> queries.Trend:
    """A quantity over the last runs that have it, oldest first."""
    if not queries.has_trend(session, quantity):
        raise HTTPException(status_code=404, detail=f"no trend quantity {quantity!r}")
    return queries.trend_of(session, quantity, last, stream or None)


@router.get("/keepup", response_model=queries.KeepUp)
def get_keepup(
    session: ReadSession, hours: Annotated[int, Query(ge=1, le=168)] = 6
) -> queries.KeepUp:
    """Backlog (unfinished tasks by state), tasks done per hour, and latency per run."""
    return queries.keepup(session, dt.datetime.now(dt.UTC), hours=hours)
