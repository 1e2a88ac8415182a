"""Live updates for the pages: ``GET /api/v1/events``, a stream of server-sent events.

The pages open it with ``EventSource`` (``static/runwatch.js``) and refresh what changed
in place. Events, each a JSON object in ``data``:

- ``run``: a run's row as the recent-runs list shows it (``queries.RunRow``: status, end
  time, events, files, task progress, verdict), sent when the run row changed
  (``runs.updated_at``) or, for a run still taking data or being reconstructed, when its
  task progress changed;
- ``merge``: a new merged histogram file of a run (``run``, ``merge_id``, ``final``,
  files included of total);
- ``alarm``: something happened to an alarm (``action``: raised, acknowledged,
  cleared, ...; ``alarm_id``, ``kind``, ``severity``, ``run``, ``message``, ``state``).

How it stays cheap: each stream polls the database every ``POLL_SECONDS`` with a few
indexed queries (runs by ``updated_at``, the task counts of the active runs only by
``tasks.run_id``, merges and alarm events by id), opening a session for the poll and
closing it at once, so no connection is held between polls. The stream is an async
generator and only the poll runs in a worker thread: a sync generator would be run by
Starlette's ``StreamingResponse`` in the thread pool between yields, so every open page
would hold one of its 40 threads while sleeping and a few dozen shifters would stall the
whole site.

Each event has an ``id`` (the cursor after it); a browser reconnecting sends it back as
``Last-Event-ID`` and the stream resumes from there (merges and alarm events exactly; the
rows of runs changed within ``LOOKBACK`` may come again, which is harmless: a run event is
the run's state, not a difference). A stream ends by itself after ``STREAM_SECONDS`` (the
browser reconnects at once, ``retry``) so that no connection lives for ever; it also ends
as soon as the client goes away, and within a poll once ``stop_streams`` is called:
uvicorn, stopping, waits for open responses to end, so ``runwatch serve`` runs the app
with ``Server``, which calls it first. A comment line every ``HEARTBEAT_SECONDS`` keeps
proxies from closing an idle stream.

Runs changed within ``LOOKBACK`` before the newest change seen are looked at again (and
sent once per change): a transaction that stamped a run a moment before another but
committed after it is not missed.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import sqlalchemy as sa
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from runwatch.catalogue.models import Run
from runwatch.db import Database
from runwatch.dqm.models import Alarm, AlarmEvent, DqmMerge
from runwatch.web import queries
from runwatch.web.auth import require_read
from runwatch.web.state import app_db

POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 15.0
STREAM_SECONDS = 300.0
RETRY_MS = 2000
LOOKBACK = dt.timedelta(seconds=10)
MAX_RUNS_PER_POLL = 50  # more changed at once (a bulk update): the newest ones are sent

router = APIRouter(prefix="/api/v1", tags=["live"])

Progress = tuple[int, int, int]


@dataclass
class Cursor:
    """Where a stream is: what it has sent, so each poll sends only what is new."""

    runs_since: dt.datetime | None = None
    merge_id: int = 0
    alarm_event_id: int = 0
    sent: dict[int, dt.datetime] = field(default_factory=dict)  # run id -> updated_at
    progress: dict[int, Progress] = field(default_factory=dict)  # active runs' tasks

    def token(self) -> str:
        since = self.runs_since.isoformat() if self.runs_since else ""
        return f"{self.merge_id}/{self.alarm_event_id}/{since}"

    @classmethod
    def from_token(cls, token: str) -> Cursor | None:
        """The cursor an event's id names, or None if it is not one."""
        try:
            merge_id, alarm_event_id, since = token.split("/", 2)
            when = dt.datetime.fromisoformat(since) if since else None
            return cls(when, int(merge_id), int(alarm_event_id))
        except ValueError:
            return None


@dataclass(frozen=True)
class Event:
    kind: str
    data: dict[str, Any]


def start_cursor(session: Session) -> Cursor:
    """A cursor at the newest run change, merge and alarm event: nothing old is sent."""
    cursor = Cursor(
        merge_id=session.scalar(sa.select(sa.func.max(DqmMerge.id))) or 0,
        alarm_event_id=session.scalar(sa.select(sa.func.max(AlarmEvent.id))) or 0,
    )
    _changed_runs(session, cursor)  # the page shows these already
    return cursor


def poll(session: Session, cursor: Cursor) -> list[Event]:
    """What happened since ``cursor`` (which moves on): run, merge and alarm events."""
    runs = _run_events(session, cursor)
    return [*runs, *_merge_events(session, cursor), *_alarm_events(session, cursor)]


def _changed_runs(session: Session, cursor: Cursor) -> set[int]:
    """Runs whose row changed since the cursor (each change once)."""
    query = sa.select(Run.id, Run.updated_at).order_by(Run.updated_at.desc())
    if cursor.runs_since is not None:
        query = query.where(Run.updated_at >= cursor.runs_since - LOOKBACK)
    rows = session.execute(query.limit(MAX_RUNS_PER_POLL)).all()
    changed = {r.id for r in rows if cursor.sent.get(r.id) != r.updated_at}
    if rows:
        cursor.runs_since = max(rows[0].updated_at, cursor.runs_since or rows[0].updated_at)
        horizon = cursor.runs_since - LOOKBACK
        cursor.sent = {k: v for k, v in cursor.sent.items() if v >= horizon}
        cursor.sent.update({r.id: r.updated_at for r in rows})
    return changed


def _progressed_runs(session: Session, cursor: Cursor) -> set[int]:
    """Active runs whose task counts moved since the last poll."""
    active = session.scalars(
        sa.select(Run.id).where(Run.status.in_(queries.ACTIVE_RUN)).limit(MAX_RUNS_PER_POLL)
    ).all()
    now = {
        run_id: (p.done, p.total, p.failed)
        for run_id, p in queries.task_progress(session, active).items()
    }
    moved = {run_id for run_id, p in now.items() if cursor.progress.get(run_id, p) != p}
    cursor.progress = now
    return moved


def _run_events(session: Session, cursor: Cursor) -> list[Event]:
    ids = _changed_runs(session, cursor) | _progressed_runs(session, cursor)
    if not ids:
        return []
    numbers = session.scalars(sa.select(Run.number).where(Run.id.in_(ids))).all()
    events: list[Event] = []
    for number in sorted(numbers):
        page = queries.recent_runs(session, number=number, per_page=1)
        events.extend(Event("run", row.model_dump(mode="json")) for row in page.runs)
    return events


def _merge_events(session: Session, cursor: Cursor) -> list[Event]:
    query = (
        sa.select(DqmMerge, Run.number)
        .join(Run, Run.id == DqmMerge.run_id)
        .where(DqmMerge.id > cursor.merge_id)
        .order_by(DqmMerge.id)
        .limit(MAX_RUNS_PER_POLL)
    )
    events: list[Event] = []
    for merge, number in session.execute(query):
        cursor.merge_id = merge.id
        data = {
            "run": number,
            "merge_id": merge.id,
            "final": merge.final,
            "files_included": merge.files_included,
            "files_total": merge.files_total,
        }
        events.append(Event("merge", data))
    return events


def _alarm_events(session: Session, cursor: Cursor) -> list[Event]:
    query = (
        sa.select(AlarmEvent, Alarm, Run.number)
        .join(Alarm, Alarm.id == AlarmEvent.alarm_id)
        .outerjoin(Run, Run.id == Alarm.run_id)
        .where(AlarmEvent.id > cursor.alarm_event_id)
        .order_by(AlarmEvent.id)
        .limit(MAX_RUNS_PER_POLL)
    )
    events: list[Event] = []
    for event, alarm, number in session.execute(query):
        cursor.alarm_event_id = event.id
        data = {
            "alarm_id": alarm.id,
            "action": event.action,
            "kind": alarm.kind,
            "severity": alarm.severity,
            "run": number,
            "message": alarm.message,
            "state": alarm.state.value,
        }
        events.append(Event("alarm", data))
    return events


def sse(event: Event, cursor: Cursor) -> str:
    """One event in the text/event-stream format."""
    data = json.dumps(event.data, separators=(",", ":"))
    return f"event: {event.kind}\nid: {cursor.token()}\ndata: {data}\n\n"


def _started(db: Database, last_event_id: str | None) -> Cursor:
    resumed = Cursor.from_token(last_event_id) if last_event_id else None
    if resumed is not None:
        return resumed
    with db.read_session() as session:
        return start_cursor(session)


def _polled(db: Database, cursor: Cursor) -> list[Event]:
    with db.read_session() as session:
        return poll(session, cursor)


async def event_stream(request: Request, db: Database) -> AsyncIterator[str]:
    """The events for one client, until it goes away or ``STREAM_SECONDS`` pass."""
    last_id = request.headers.get("last-event-id")
    cursor = await anyio.to_thread.run_sync(_started, db, last_id)
    yield f"retry: {RETRY_MS}\n: runwatch live updates\n\n"
    started = quiet_since = time.monotonic()
    while time.monotonic() - started < STREAM_SECONDS:
        if getattr(request.app.state, "live_stopped", False) or await request.is_disconnected():
            return
        for event in await anyio.to_thread.run_sync(_polled, db, cursor):
            quiet_since = time.monotonic()
            yield sse(event, cursor)
        if time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
            quiet_since = time.monotonic()
            yield ": heartbeat\n\n"
        await anyio.sleep(POLL_SECONDS)


@router.get("/events", dependencies=[Depends(require_read)])
async def events(request: Request) -> StreamingResponse:
    """Server-sent events (``text/event-stream``): ``run``, ``merge`` and ``alarm``, as
    they happen, for the pages to update themselves without reloading."""
    db = app_db(request)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        event_stream(request, db), media_type="text/event-stream", headers=headers
    )


def stop_streams(app: FastAPI) -> None:
    """End ``app``'s open event streams (each within a poll): the server is stopping."""
    app.state.live_stopped = True


class Server(uvicorn.Server):
    """uvicorn's server, ending the app's event streams first when it stops (uvicorn waits
    for every open response, and an event stream does not end by itself)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if isinstance(self.config.app, FastAPI):
            stop_streams(self.config.app)
        await super().shutdown(sockets)
