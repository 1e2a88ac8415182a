"""Live updates: the poll behind GET /api/v1/events, and the event stream itself."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import Run, RunStatus
from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.dqm.models import AlarmEvent, DqmMerge
from runwatch.web import live
from runwatch.web.app import create_app
from runwatch.workflow.models import Task
from runwatch.workflow.states import TaskState
from tests.web.authkit import TestClient
from tests.web.test_queries import Seeded, seed


@pytest.fixture
def seeded(db: Database, settings: Settings) -> Seeded:
    return seed(db, settings)


def _poll(db: Database, cursor: live.Cursor) -> list[live.Event]:
    with db.read_session() as session:
        return live.poll(session, cursor)


def _finish(db: Database, number: int) -> None:
    """What the engine does when a run's last task is done."""
    with db.session() as session:
        run = session.scalar(sa.select(Run).where(Run.number == number))
        assert run is not None
        for task in session.scalars(sa.select(Task).where(Task.run_id == run.id)):
            task.state = TaskState.DONE
        run.status = RunStatus.ALL_COMPLETED
        run.updated_at = utcnow()


def _new_merge(db: Database, number: int) -> int:
    with db.session() as session:
        run = session.scalar(sa.select(Run).where(Run.number == number))
        old = session.scalars(sa.select(DqmMerge)).first()
        assert run is not None and old is not None
        merge = DqmMerge(
            run_id=run.id,
            task_id=session.scalar(sa.select(Task.id).where(Task.run_id == run.id)),
            attempt_id=old.attempt_id,
            url="file:///data/merged.root",
            final=False,
            files_included=1,
            files_total=2,
            events_included=10,
            merged_at=utcnow(),
        )
        session.add(merge)
        session.flush()
        return merge.id


def test_each_change_is_sent_once(any_db: Database, tmp_path: Path) -> None:
    """On all three databases (time stamps compared as each stores them)."""
    db = any_db
    settings = Settings.model_construct(
        data_root=str(tmp_path / "data"), work_root=str(tmp_path / "work")
    )
    seeded = seed(db, settings)
    with db.read_session() as session:
        cursor = live.start_cursor(session)
    first = _poll(db, cursor)  # the seeded runs are hours old: nothing to tell
    assert first == []
    _finish(db, 103)
    merge_id = _new_merge(db, 104)
    with db.session() as session:
        session.add(AlarmEvent(alarm_id=seeded.alarm, at=utcnow(), action="acknowledged"))
    events = _poll(db, cursor)
    kinds = {e.kind: e.data for e in events}
    assert kinds["run"]["number"] == 103 and kinds["run"]["status"] == "All Completed"
    assert kinds["run"]["progress"] == {"done": 4, "total": 4, "failed": 0}
    assert kinds["merge"] == {
        "run": 104,
        "merge_id": merge_id,
        "final": False,
        "files_included": 1,
        "files_total": 2,
    }
    assert kinds["alarm"]["action"] == "acknowledged" and kinds["alarm"]["run"] == 101
    assert [e.kind for e in events].count("run") == 1
    assert _poll(db, cursor) == []  # sent once


def test_task_progress_of_an_active_run_is_sent(db: Database, seeded: Seeded) -> None:
    with db.read_session() as session:
        cursor = live.start_cursor(session)
    assert _poll(db, cursor) == []
    with db.session() as session:
        session.get_one(Task, seeded.running_task).state = TaskState.DONE  # run 104
    events = _poll(db, cursor)
    assert [(e.kind, e.data["number"]) for e in events] == [("run", 104)]
    assert events[0].data["progress"]["done"] == 1
    assert _poll(db, cursor) == []


def test_a_cursor_survives_as_the_event_id(db: Database, seeded: Seeded) -> None:
    with db.read_session() as session:
        cursor = live.start_cursor(session)
    resumed = live.Cursor.from_token(cursor.token())
    assert resumed is not None
    assert (resumed.runs_since, resumed.merge_id, resumed.alarm_event_id) == (
        cursor.runs_since,
        cursor.merge_id,
        cursor.alarm_event_id,
    )
    assert live.Cursor.from_token("nonsense") is None
    _new_merge(db, 104)
    # Merges and alarm events resume exactly; runs of the last LOOKBACK may come again.
    assert [e.kind for e in _poll(db, resumed) if e.kind != "run"] == ["merge"]


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(live, "HEARTBEAT_SECONDS", 0.2)
    monkeypatch.setattr(live, "STREAM_SECONDS", 3.0)


@pytest.fixture
def client(db: Database, settings: Settings, seeded: Seeded) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db)) as client:
        yield client


def _events(lines: Iterator[str], kind: str) -> Iterator[dict]:
    current = None
    for line in lines:
        if line.startswith("event: "):
            current = line.removeprefix("event: ")
        elif line.startswith("data: ") and current == kind:
            yield json.loads(line.removeprefix("data: "))


def test_the_stream_tells_a_run_completing(db: Database, client: TestClient, fast: None) -> None:
    timer = threading.Timer(0.3, _finish, (db, 103))
    with client.stream("GET", "/api/v1/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        timer.start()
        try:
            run = next(_events(response.iter_lines(), "run"))
        finally:
            timer.join()
    assert run["number"] == 103 and run["status"] == "All Completed"


def test_the_stream_beats_and_resumes_from_the_last_event_id(
    db: Database, client: TestClient, fast: None
) -> None:
    with db.read_session() as session:
        token = live.start_cursor(session).token()
    merge_id = _new_merge(db, 104)  # while the browser was away
    with client.stream("GET", "/api/v1/events", headers={"Last-Event-ID": token}) as response:
        lines = response.iter_lines()
        merge = next(_events(lines, "merge"))
        assert merge["merge_id"] == merge_id
        assert ": heartbeat" in list(lines)  # read to the end of the (3 s) stream


def test_the_stream_is_for_readers_only(db: Database, settings: Settings, seeded: Seeded) -> None:
    settings.web = settings.web.model_copy(update={"public_read": False})
    with TestClient(create_app(settings, db)) as client:
        assert client.get("/api/v1/events").status_code == 401


def test_a_poll_costs_a_few_queries(db: Database, seeded: Seeded) -> None:
    statements: list[str] = []
    sa.event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with db.read_session() as session:
        cursor = live.start_cursor(session)
        statements.clear()
        live.poll(session, cursor)
    # Changed runs, the active runs and their tasks, merges, alarm events.
    assert len(statements) <= 5, statements
    assert cursor.runs_since is not None and cursor.runs_since > dt.datetime(
        2020, 1, 1, tzinfo=dt.UTC
    )


def test_streams_end_when_the_server_stops(
    client: TestClient, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "STREAM_SECONDS", 60.0)
    started = time.monotonic()
    timer = threading.Timer(0.3, live.stop_streams, (client.app,))
    with client.stream("GET", "/api/v1/events") as response:
        timer.start()
        try:
            lines = list(response.iter_lines())  # to the end of the stream
        finally:
            timer.join()
    assert lines[0] == "retry: 2000" and time.monotonic() - started < 5
