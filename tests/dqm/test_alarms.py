"""The alarm service: each condition's life (raise, no duplicate, acknowledge, expiry,
clear, come back) with a controlled clock, on the three databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import File, Run, RunStatus
from runwatch.config import AlarmSettings, Settings
from runwatch.db import Database
from runwatch.dqm.alarms import (
    AlarmError,
    acknowledge,
    alarm_events,
    list_alarms,
    sweep,
)
from runwatch.dqm.models import Alarm, AlarmState, DqmRunQuality
from runwatch.dqm.verdict import Verdict
from runwatch.workflow.models import PipelineRevision, Task
from runwatch.workflow.states import TaskState

T0 = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)


def alarm_settings(**kw: object) -> Settings:
    values: dict[str, object] = {"no_progress_minutes": 30, "ack_hours": 8, "notifiers": []}
    values.update(kw)
    return Settings.model_construct(alarms=AlarmSettings.model_validate(values))


SETTINGS = alarm_settings()


def add_run(session: Session, number: int, status: RunStatus, at: dt.datetime = T0) -> Run:
    run = Run(number=number, stream="physics", status=status, updated_at=at, started_at=at)
    session.add(run)
    session.flush()
    return run


def add_task(session: Session, run: Run, at: dt.datetime = T0, step: str = "rec") -> Task:
    revision = session.scalar(sa.select(PipelineRevision).limit(1))
    if revision is None:
        revision = PipelineRevision(name="juno", digest="0" * 64, path="juno.yaml", content="")
        session.add(revision)
        session.flush()
    task = Task(
        key=f"juno/{step}/run:{run.id}/{run.number}-{at.timestamp()}",
        revision_id=revision.id,
        pipeline="juno",
        step=step,
        scope="run",
        run_id=run.id,
        priority_at=at,
        created_at=at,
        updated_at=at,
    )
    session.add(task)
    session.flush()
    return task


def alarms(db: Database) -> list[Alarm]:
    with db.session() as session:
        return list(session.scalars(sa.select(Alarm).order_by(Alarm.id)))


def run_sweep(db: Database, now: dt.datetime, settings: Settings = SETTINGS) -> list[str]:
    """Sweep and say what changed: 'raised KEY', 're-raised KEY', 'cleared KEY'."""
    with db.session() as session:
        report = sweep(session, settings, now)
    return (
        [f"raised {k}" for k in report.raised]
        + [f"re-raised {k}" for k in report.re_raised]
        + [f"cleared {k}" for k in report.cleared]
    )


# -- one scenario per condition: how to make it hold, and how to make it go ------------------


@dataclass
class Scenario:
    """A condition under test: ``hold``/``gone`` change the database so that the condition
    holds (or not) at the given time; ``key`` is its alarm's key, ``text`` in its message."""

    key: str
    text: str
    hold: Callable[[Session, dt.datetime], None]
    gone: Callable[[Session, dt.datetime], None]


def verdict_scenario(session: Session) -> Scenario:
    run = add_run(session, 1001, RunStatus.ALL_COMPLETED)
    run_id = run.id

    def hold(s: Session, now: dt.datetime) -> None:
        s.merge(
            DqmRunQuality(
                run_id=run_id, verdict=Verdict.BAD, reason="energy/shape: KS p=0.003 < 0.01 (bad)"
            )
        )

    def gone(s: Session, now: dt.datetime) -> None:
        s.merge(DqmRunQuality(run_id=run_id, verdict=Verdict.GOOD, reason=""))

    return Scenario(f"verdict:run:{run_id}", "Run 1001: DQM verdict BAD: energy/shape", hold, gone)


def stale_scenario(session: Session) -> Scenario:
    run = add_run(session, 1002, RunStatus.DATA_TAKING)
    task = add_task(session, run)
    run_id, task_id = run.id, task.id

    def hold(s: Session, now: dt.datetime) -> None:
        # The last change was 40 minutes ago, to the run, its task and its (one) file.
        then = now - 40 * MINUTE
        s.execute(sa.update(Run).where(Run.id == run_id).values(updated_at=then))
        s.execute(sa.update(Task).where(Task.id == task_id).values(updated_at=then))

    def gone(s: Session, now: dt.datetime) -> None:
        s.execute(sa.update(Task).where(Task.id == task_id).values(updated_at=now))

    return Scenario(
        f"stale:run:{run_id}", "Run 1002 (Data Taking): no task or file progress", hold, gone
    )


def task_scenario(session: Session) -> Scenario:
    run = add_run(session, 1003, RunStatus.PARTLY_COMPLETED)
    task = add_task(session, run, step="calib")
    task_id = task.id

    def hold(s: Session, now: dt.datetime) -> None:
        s.execute(
            sa.update(Task)
            .where(Task.id == task_id)
            .values(state=TaskState.FAILED, reason="exit code 3", updated_at=now)
        )

    def gone(s: Session, now: dt.datetime) -> None:
        s.execute(
            sa.update(Task).where(Task.id == task_id).values(state=TaskState.READY, updated_at=now)
        )

    return Scenario(
        f"task-failed:{task_id}",
        f"Task {task_id} (step calib, run 1003) failed for good: exit code 3",
        hold,
        gone,
    )


SCENARIOS = {"verdict": verdict_scenario, "stale": stale_scenario, "task": task_scenario}


def in_db(db: Database, change: Callable[[Session, dt.datetime], None], now: dt.datetime) -> None:
    with db.session() as session:
        change(session, now)


def check_lifecycle(db: Database, sc: Scenario) -> None:
    """The whole life of one condition's alarm."""
    assert run_sweep(db, T0) == []  # nothing holds yet
    in_db(db, sc.hold, T0)
    assert run_sweep(db, T0) == [f"raised {sc.key}"]
    [alarm] = alarms(db)
    assert (alarm.key, alarm.state, alarm.times_raised) == (sc.key, AlarmState.OPEN, 1)
    assert sc.text in alarm.message
    assert alarm.raised_at == T0 and alarm.notified_at is None

    # No duplicate while it is open: a later sweep changes nothing.
    assert run_sweep(db, T0 + MINUTE) == []
    assert [a.id for a in alarms(db)] == [alarm.id]

    # Acknowledged: who, when, comment; not re-raised before it expires.
    with db.session() as session:
        acked = acknowledge(session, alarm.id, "shifter", "on it", T0 + 2 * MINUTE, ack_hours=1)
    assert acked.state == AlarmState.ACKNOWLEDGED
    assert (acked.acknowledged_by, acked.acknowledged_at, acked.ack_comment) == (
        "shifter",
        T0 + 2 * MINUTE,
        "on it",
    )
    assert acked.ack_expires_at == T0 + 2 * MINUTE + HOUR
    assert run_sweep(db, T0 + 61 * MINUTE) == []

    # The acknowledgement expires with the condition still there: raised again.
    assert run_sweep(db, T0 + 62 * MINUTE) == [f"re-raised {sc.key}"]
    [alarm] = alarms(db)
    assert (alarm.state, alarm.times_raised, alarm.notified_at) == (AlarmState.OPEN, 2, None)
    assert alarm.acknowledged_by is None and alarm.raised_at == T0 + 62 * MINUTE

    # The condition goes: cleared.
    in_db(db, sc.gone, T0 + 63 * MINUTE)
    assert run_sweep(db, T0 + 63 * MINUTE) == [f"cleared {sc.key}"]
    [alarm] = alarms(db)
    assert (alarm.state, alarm.cleared_at) == (AlarmState.CLEARED, T0 + 63 * MINUTE)
    assert run_sweep(db, T0 + 64 * MINUTE) == []

    # It comes back: the same alarm is raised again.
    later = T0 + 3 * HOUR
    in_db(db, sc.hold, later)
    assert run_sweep(db, later) == [f"re-raised {sc.key}"]
    [alarm] = alarms(db)
    assert (alarm.state, alarm.times_raised, alarm.cleared_at) == (AlarmState.OPEN, 3, None)

    with db.session() as session:
        steps = [(e.action, e.by) for e in alarm_events(session, alarm.id)]
    assert steps == [
        ("raised", None),
        ("acknowledged", "shifter"),
        ("re-raised", None),
        ("cleared", None),
        ("re-raised", None),
    ]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_alarm_lifecycle(any_db: Database, name: str) -> None:
    with any_db.session() as session:
        sc = SCENARIOS[name](session)
    check_lifecycle(any_db, sc)


def test_a_stale_run_clears_when_it_is_no_longer_active(db: Database) -> None:
    with db.session() as session:
        run = add_run(session, 7, RunStatus.REC_RUNNING)
    assert run_sweep(db, T0 + 29 * MINUTE) == []
    assert run_sweep(db, T0 + 30 * MINUTE) == [f"raised stale:run:{run.id}"]
    with db.session() as session:
        session.execute(
            sa.update(Run).where(Run.id == run.id).values(status=RunStatus.ALL_COMPLETED)
        )
    assert run_sweep(db, T0 + 31 * MINUTE) == [f"cleared stale:run:{run.id}"]


def test_a_new_file_is_progress(db: Database) -> None:
    with db.session() as session:
        run = add_run(session, 8, RunStatus.DATA_TAKING)
    assert run_sweep(db, T0 + 45 * MINUTE) == [f"raised stale:run:{run.id}"]
    with db.session() as session:
        session.add(
            File(
                run_id=run.id,
                name="RUN.8.f1",
                url="file:///f1",
                stream="physics",
                registered_at=T0 + 46 * MINUTE,
            )
        )
    assert run_sweep(db, T0 + 47 * MINUTE) == [f"cleared stale:run:{run.id}"]
    assert run_sweep(db, T0 + 75 * MINUTE) == []
    assert run_sweep(db, T0 + 76 * MINUTE) == [f"re-raised stale:run:{run.id}"]
    [alarm] = alarms(db)
    assert "since 2026-11-29 12:46:00 UTC" in alarm.message


def test_a_changed_reason_updates_the_message_without_raising_again(db: Database) -> None:
    with db.session() as session:
        sc = verdict_scenario(session)
        sc.hold(session, T0)
    run_sweep(db, T0)
    with db.session() as session:
        quality = session.scalars(sa.select(DqmRunQuality)).one()
        quality.reason = "pmt_hits/new_dead: 9 new dead PMTs > 5 (bad)"
    assert run_sweep(db, T0 + MINUTE) == []
    [alarm] = alarms(db)
    assert alarm.message.endswith("9 new dead PMTs > 5 (bad)")
    assert alarm.times_raised == 1


def test_clear_is_told_only_if_the_raise_was(db: Database) -> None:
    with db.session() as session:
        sc = verdict_scenario(session)
    in_db(db, sc.hold, T0)
    run_sweep(db, T0)
    in_db(db, sc.gone, T0)
    run_sweep(db, T0 + MINUTE)
    [alarm] = alarms(db)
    assert alarm.notified_at is not None  # never told of it: nothing to take back
    in_db(db, sc.hold, T0)
    run_sweep(db, T0 + 2 * MINUTE)
    with db.session() as session:
        session.execute(sa.update(Alarm).values(notified_at=T0 + 2 * MINUTE))
    in_db(db, sc.gone, T0)
    run_sweep(db, T0 + 3 * MINUTE)
    [alarm] = alarms(db)
    assert alarm.state == AlarmState.CLEARED and alarm.notified_at is None  # to be told


def test_acknowledge_refuses_unknown_and_cleared_alarms(db: Database) -> None:
    with db.session() as session:
        sc = verdict_scenario(session)
    in_db(db, sc.hold, T0)
    run_sweep(db, T0)
    [alarm] = alarms(db)
    with db.session() as session, pytest.raises(AlarmError, match="no alarm 999"):
        acknowledge(session, 999, "shifter", "x", T0)
    with db.session() as session, pytest.raises(AlarmError, match="say who"):
        acknowledge(session, alarm.id, " ", "x", T0)
    in_db(db, sc.gone, T0)
    run_sweep(db, T0 + MINUTE)
    with db.session() as session, pytest.raises(AlarmError, match="is cleared"):
        acknowledge(session, alarm.id, "shifter", "x", T0 + 2 * MINUTE)


def test_a_new_acknowledgement_extends_the_old_one(db: Database) -> None:
    with db.session() as session:
        sc = task_scenario(session)
    in_db(db, sc.hold, T0)
    run_sweep(db, T0)
    [alarm] = alarms(db)
    with db.session() as session:
        acknowledge(session, alarm.id, "a", "first", T0, ack_hours=1)
        acknowledge(session, alarm.id, "b", "second", T0 + 50 * MINUTE, ack_hours=1)
    assert run_sweep(db, T0 + 61 * MINUTE) == []
    [alarm] = alarms(db)
    assert (alarm.acknowledged_by, alarm.ack_comment) == ("b", "second")


def test_list_alarms_by_state_and_run(db: Database) -> None:
    with db.session() as session:
        for build in SCENARIOS.values():
            build(session).hold(session, T0)
    run_sweep(db, T0 + HOUR)
    with db.session() as session:
        session.execute(
            sa.update(Task).where(Task.state == TaskState.FAILED).values(state=TaskState.READY)
        )
    run_sweep(db, T0 + HOUR)
    with db.session() as session:
        live = list_alarms(session)
        everything = list_alarms(session, states=())
        of_run = list_alarms(session, states=(), run_number=1003)
        one = list_alarms(session, limit=1)
    assert sorted(a.kind for a, _ in live) == ["stale", "verdict"]
    assert len(everything) == 3
    assert [(a.kind, number) for a, number in of_run] == [("task-failed", 1003)]
    assert len(one) == 1


def test_a_sweep_with_nothing_new_is_four_reads(db: Database) -> None:
    """Cheap enough for every tick: a fixed number of statements, whatever the runs."""
    with db.session() as session:
        for number in range(20):
            run = add_run(session, 2000 + number, RunStatus.DATA_TAKING, T0 + HOUR)
            add_task(session, run, T0 + HOUR)
            session.add(DqmRunQuality(run_id=run.id, verdict=Verdict.BAD, reason="bad"))
    run_sweep(db, T0 + HOUR)
    run_sweep(db, T0 + HOUR + 10 * MINUTE)  # refreshes last_seen_at (once a minute)
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", count)
    try:
        assert run_sweep(db, T0 + HOUR + 10 * MINUTE + dt.timedelta(seconds=30)) == []
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count)
    assert len(statements) == 4, statements
    assert all(s.lstrip().upper().startswith("SELECT") for s in statements)
    [alarm, *_] = alarms(db)
    assert alarm.last_seen_at == T0 + HOUR + 10 * MINUTE
