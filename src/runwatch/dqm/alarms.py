"""Alarms: raised when something is wrong that a person must see, told to the notifiers.

Three conditions raise an alarm, one alarm row per condition (its ``key``):

- ``verdict:run:ID``: the run's DQM verdict is BAD (``dqm_run_quality``);
- ``stale:run:ID``: a run that is taking data or being reconstructed has had no task
  change and no new file for ``[alarms] no_progress_minutes``;
- ``task-failed:ID``: a task failed for good (its retries used up).

``sweep`` evaluates them and moves the alarms through their life: raised (OPEN),
acknowledged by a person for ``ack_hours`` (ACKNOWLEDGED), re-raised when the
acknowledgement expires and the condition still holds, CLEARED when the condition is
gone, re-raised when it comes back. Every step appends an ``AlarmEvent``. ``sweep`` does
no I/O of its own and runs in the caller's transaction every scheduler tick: a handful
of queries whatever the number of runs, and writes only when something changes.

``notify_pending`` then tells the notifiers (``runwatch.dqm.notifiers``) about each alarm
raised, re-raised or cleared since they were last told, outside any transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import FILES, RUNS, Run, RunStatus
from runwatch.config import AlarmSettings, Settings
from runwatch.db import Database, Transaction, connection_of
from runwatch.dqm.models import Alarm, AlarmEvent, AlarmState, DqmRunQuality
from runwatch.dqm.notifiers import AlarmMessage, NamedNotifier, load_notifiers
from runwatch.dqm.verdict import Verdict
from runwatch.workflow.models import TASKS
from runwatch.workflow.states import TaskState

log = logging.getLogger(__name__)

ALARMS = cast(sa.Table, Alarm.__table__)
EVENTS = cast(sa.Table, AlarmEvent.__table__)
QUALITY = cast(sa.Table, DqmRunQuality.__table__)

ACTIVE_RUN = (RunStatus.DATA_TAKING, RunStatus.REC_RUNNING)
LIVE = (AlarmState.OPEN, AlarmState.ACKNOWLEDGED)
LAST_SEEN_EVERY = dt.timedelta(minutes=1)  # last_seen_at is refreshed this often, not per tick
IN_CHUNK = 500  # keys per IN (...) list


class AlarmError(ValueError):
    """An operator's request on an alarm that cannot be done (unknown, already cleared)."""


@dataclass(frozen=True)
class Condition:
    """Something that holds now and deserves an alarm under ``key``."""

    key: str
    kind: str
    severity: str
    message: str
    run_id: int | None
    task_id: int | None = None


@dataclass
class SweepReport:
    """What one sweep changed (alarm keys) and how many conditions hold."""

    raised: list[str] = field(default_factory=list)
    re_raised: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    holding: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.raised or self.re_raised or self.cleared)


# -- the conditions ----------------------------------------------------------------------


def bad_verdicts(conn: sa.Connection) -> list[Condition]:
    rows = conn.execute(
        sa.select(QUALITY.c.run_id, QUALITY.c.reason, RUNS.c.number)
        .join(RUNS, RUNS.c.id == QUALITY.c.run_id)
        .where(QUALITY.c.verdict == Verdict.BAD)
    )
    return [
        Condition(
            key=f"verdict:run:{run_id}",
            kind="verdict",
            severity="bad",
            message=f"Run {number}: DQM verdict BAD: {reason or 'no reason given'}",
            run_id=run_id,
        )
        for run_id, reason, number in rows
    ]


def stale_runs(conn: sa.Connection, now: dt.datetime, minutes: float) -> list[Condition]:
    """Active runs whose last progress (the run row, its tasks or its files changing) is
    ``minutes`` or more ago; one query over the active runs only."""
    last_task = (
        sa.select(sa.func.max(TASKS.c.updated_at))
        .where(TASKS.c.run_id == RUNS.c.id)
        .scalar_subquery()
    )
    last_file = (
        sa.select(sa.func.max(FILES.c.registered_at))
        .where(FILES.c.run_id == RUNS.c.id)
        .scalar_subquery()
    )
    rows = conn.execute(
        sa.select(
            RUNS.c.id, RUNS.c.number, RUNS.c.status, RUNS.c.updated_at, last_task, last_file
        ).where(RUNS.c.status.in_(ACTIVE_RUN))
    )
    limit = dt.timedelta(minutes=minutes)
    stale: list[Condition] = []
    for run_id, number, status, *times in rows:
        last: dt.datetime = max(t for t in times if t is not None)
        if now - last < limit:
            continue
        stale.append(
            Condition(
                key=f"stale:run:{run_id}",
                kind="stale",
                severity="warning",
                message=f"Run {number} ({RunStatus(status).value}): no task or file progress "
                f"for {minutes:g} min, since {last:%Y-%m-%d %H:%M:%S} UTC",
                run_id=run_id,
            )
        )
    return stale


def failed_tasks(conn: sa.Connection) -> list[Condition]:
    rows = conn.execute(
        sa.select(TASKS.c.id, TASKS.c.step, TASKS.c.run_id, TASKS.c.reason, RUNS.c.number)
        .join(RUNS, RUNS.c.id == TASKS.c.run_id)
        .where(TASKS.c.state == TaskState.FAILED)
    )
    return [
        Condition(
            key=f"task-failed:{task_id}",
            kind="task-failed",
            severity="bad",
            message=f"Task {task_id} (step {step}, run {number}) failed for good: "
            f"{reason or 'no reason recorded'}",
            run_id=run_id,
            task_id=task_id,
        )
        for task_id, step, run_id, reason, number in rows
    ]


def conditions(
    conn: sa.Connection, settings: AlarmSettings, now: dt.datetime
) -> dict[str, Condition]:
    """Every condition that holds now, by key."""
    found = [
        *bad_verdicts(conn),
        *stale_runs(conn, now, settings.no_progress_minutes),
        *failed_tasks(conn),
    ]
    return {c.key: c for c in found}


# -- the sweep ---------------------------------------------------------------------------


def sweep(tx: Transaction, settings: Settings, now: dt.datetime) -> SweepReport:
    """Raise, re-raise and clear alarms so that they match the conditions holding ``now``.

    Runs in the caller's transaction (a ``Session`` or a Core connection) and commits
    nothing. Each change is one UPDATE guarded by the state it was decided on, so an
    operator acknowledging an alarm meanwhile is never overwritten.
    """
    conn = connection_of(tx)
    holding = conditions(conn, settings.alarms, now)
    report = SweepReport(holding=len(holding))
    events: list[dict[str, Any]] = []
    if _follow_live(conn, holding, now, report, events):
        conn.execute(
            sa.update(ALARMS)
            .where(ALARMS.c.state.in_(LIVE), ALARMS.c.last_seen_at < now - LAST_SEEN_EVERY)
            .values(last_seen_at=now)
        )
    _raise_unalarmed(conn, holding, now, report, events)
    if events:
        conn.execute(sa.insert(EVENTS), events)
    return report


def _follow_live(
    conn: sa.Connection,
    holding: dict[str, Condition],
    now: dt.datetime,
    report: SweepReport,
    events: list[dict[str, Any]],
) -> bool:
    """Clear the open and acknowledged alarms whose condition is gone, re-raise those
    whose acknowledgement expired, and take their conditions out of ``holding``. True if
    some alarm still holding was last seen longer than ``LAST_SEEN_EVERY`` ago."""
    live = conn.execute(
        sa.select(
            ALARMS.c.id,
            ALARMS.c.key,
            ALARMS.c.state,
            ALARMS.c.message,
            ALARMS.c.ack_expires_at,
            ALARMS.c.last_seen_at,
            ALARMS.c.notified_at,
            ALARMS.c.times_raised,
        ).where(ALARMS.c.state.in_(LIVE))
    ).all()
    refresh_seen = False
    for row in live:
        condition = holding.pop(row.key, None)
        if condition is None:
            never_told = row.notified_at is None and row.times_raised == 1
            if _clear(conn, row.id, never_told, now):
                events.append(_event(row.id, now, "cleared", "the condition is gone"))
                report.cleared.append(row.key)
        elif row.state == AlarmState.ACKNOWLEDGED and _expired(row.ack_expires_at, now):
            if _re_raise(conn, row.id, AlarmState.ACKNOWLEDGED, condition, now):
                events.append(_event(row.id, now, "re-raised", "the acknowledgement expired"))
                report.re_raised.append(row.key)
        else:
            if condition.message != row.message:
                conn.execute(
                    sa.update(ALARMS).where(ALARMS.c.id == row.id).values(message=condition.message)
                )
            refresh_seen = refresh_seen or row.last_seen_at < now - LAST_SEEN_EVERY
    return refresh_seen


def _raise_unalarmed(
    conn: sa.Connection,
    holding: dict[str, Condition],
    now: dt.datetime,
    report: SweepReport,
    events: list[dict[str, Any]],
) -> None:
    """Raise an alarm for each condition without a live one: the one cleared before, or a
    new one."""
    cleared = _cleared_alarms(conn, list(holding))
    for key, condition in holding.items():
        if key in cleared:
            alarm_id = cleared[key]
            if _re_raise(conn, alarm_id, AlarmState.CLEARED, condition, now):
                events.append(_event(alarm_id, now, "re-raised", "the condition came back"))
                report.re_raised.append(key)
        else:
            alarm_id = _insert(conn, condition, now)
            events.append(_event(alarm_id, now, "raised", None))
            report.raised.append(key)


def _expired(expires_at: dt.datetime | None, now: dt.datetime) -> bool:
    return expires_at is None or expires_at <= now


def _event(
    alarm_id: int, at: dt.datetime, action: str, comment: str | None, by: str | None = None
) -> dict[str, Any]:
    return {"alarm_id": alarm_id, "at": at, "action": action, "by": by, "comment": comment}


def _clear(conn: sa.Connection, alarm_id: int, never_told: bool, now: dt.datetime) -> bool:
    # A clear is told to the notifiers (notified_at None), unless they were never told of
    # the alarm at all: then there is nothing to take back, and nobody hears of it.
    result = conn.execute(
        sa.update(ALARMS)
        .where(ALARMS.c.id == alarm_id, ALARMS.c.state.in_(LIVE))
        .values(
            state=AlarmState.CLEARED,
            cleared_at=now,
            last_seen_at=now,
            notified_at=now if never_told else None,
        )
    )
    return result.rowcount == 1


def _re_raise(
    conn: sa.Connection, alarm_id: int, old: AlarmState, condition: Condition, now: dt.datetime
) -> bool:
    guard = [ALARMS.c.id == alarm_id, ALARMS.c.state == old]
    if old == AlarmState.ACKNOWLEDGED:
        guard.append(ALARMS.c.ack_expires_at <= now)  # not re-acknowledged meanwhile
    result = conn.execute(
        sa.update(ALARMS)
        .where(*guard)
        .values(
            state=AlarmState.OPEN,
            severity=condition.severity,
            message=condition.message,
            raised_at=now,
            last_seen_at=now,
            times_raised=ALARMS.c.times_raised + 1,
            acknowledged_by=None,
            acknowledged_at=None,
            ack_comment=None,
            ack_expires_at=None,
            cleared_at=None,
            notified_at=None,
        )
    )
    return result.rowcount == 1


def _cleared_alarms(conn: sa.Connection, keys: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for start in range(0, len(keys), IN_CHUNK):
        chunk = keys[start : start + IN_CHUNK]
        rows = conn.execute(
            sa.select(ALARMS.c.key, ALARMS.c.id).where(
                ALARMS.c.key.in_(chunk), ALARMS.c.state == AlarmState.CLEARED
            )
        )
        found.update({key: alarm_id for key, alarm_id in rows})
    return found


def _insert(conn: sa.Connection, condition: Condition, now: dt.datetime) -> int:
    result = conn.execute(
        sa.insert(ALARMS).values(
            key=condition.key,
            kind=condition.kind,
            severity=condition.severity,
            run_id=condition.run_id,
            task_id=condition.task_id,
            message=condition.message,
            state=AlarmState.OPEN,
            raised_at=now,
            last_seen_at=now,
            times_raised=1,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


# -- operators ---------------------------------------------------------------------------


def acknowledge(
    session: Session,
    alarm_id: int,
    by: str,
    comment: str,
    now: dt.datetime,
    *,
    ack_hours: float = AlarmSettings.model_fields["ack_hours"].default,
) -> Alarm:
    """Record that ``by`` is on the alarm: it is not re-raised for ``ack_hours`` while its
    condition holds. An acknowledged alarm may be acknowledged again (a new expiry)."""
    if not by.strip():
        raise AlarmError("say who acknowledges the alarm")
    result = session.execute(
        sa.update(Alarm)
        .where(Alarm.id == alarm_id, Alarm.state.in_(LIVE))
        .values(
            state=AlarmState.ACKNOWLEDGED,
            acknowledged_by=by,
            acknowledged_at=now,
            ack_comment=comment,
            ack_expires_at=now + dt.timedelta(hours=ack_hours),
        )
        .execution_options(synchronize_session=False)
    )
    if cast(sa.CursorResult[Any], result).rowcount != 1:
        state = session.scalar(sa.select(Alarm.state).where(Alarm.id == alarm_id))
        if state is None:
            raise AlarmError(f"no alarm {alarm_id}")
        raise AlarmError(f"alarm {alarm_id} is {state.value}: its condition is gone already")
    session.add(
        AlarmEvent(alarm_id=alarm_id, at=now, action="acknowledged", by=by, comment=comment)
    )
    session.flush()
    alarm = session.get(Alarm, alarm_id, populate_existing=True)
    assert alarm is not None
    return alarm


def list_alarms(
    session: Session,
    states: Collection[AlarmState] = LIVE,
    run_number: int | None = None,
    limit: int = 100,
) -> list[tuple[Alarm, int | None]]:
    """Alarms in ``states`` (all if empty), most recently raised first, with run numbers."""
    query = sa.select(Alarm, Run.number).outerjoin(Run, Run.id == Alarm.run_id)
    if states:
        query = query.where(Alarm.state.in_(list(states)))
    if run_number is not None:
        query = query.where(Run.number == run_number)
    query = query.order_by(Alarm.raised_at.desc(), Alarm.id.desc()).limit(limit)
    return [(alarm, number) for alarm, number in session.execute(query)]


def alarm_events(session: Session, alarm_id: int) -> list[AlarmEvent]:
    """An alarm's life, oldest step first."""
    query = sa.select(AlarmEvent).where(AlarmEvent.alarm_id == alarm_id)
    return list(session.scalars(query.order_by(AlarmEvent.at, AlarmEvent.id)))


# -- notifying ---------------------------------------------------------------------------


@dataclass
class _Pending:
    """An alarm still to be told, and which notifiers have told it already."""

    message: AlarmMessage
    times_raised: int
    cleared: bool
    told: set[str]


def notify_pending(
    db: Database,
    settings: Settings,
    now: dt.datetime,
    notifiers: Sequence[NamedNotifier] | None = None,
) -> int:
    """Tell every notifier about each alarm raised, re-raised or cleared since it was last
    told (``notified_at`` None); return how many alarms were told to all of them.

    Reads in one short read-only transaction, sends with no transaction open, records the
    outcome in a second one. A notifier that fails is logged with its reason and recorded
    (event ``notify-failed``); the alarm stays pending, and that notifier is left alone for
    ``notify_retry_seconds`` (and for the rest of this call). A notifier that succeeded
    for an alarm is not asked again for the same raise or clear, so a second notifier's
    failure causes no duplicates. ``notifiers``: built once by the caller with
    ``load_notifiers`` (else they are built from the settings, which raises
    ``NotifierSettingsError`` if those are wrong). With none configured, alarms are
    marked told.
    """
    alarms = settings.alarms
    pending, last_failure = _read_pending(db, alarms.notify_max_per_call)
    if not pending:
        return 0
    if notifiers is None:
        notifiers = load_notifiers(alarms.notifiers)
    retry = dt.timedelta(seconds=alarms.notify_retry_seconds)
    resting = {
        n.name for n in notifiers if n.name in last_failure and now - last_failure[n.name] < retry
    }
    events: list[dict[str, Any]] = []
    told_all: list[_Pending] = []
    for item in pending:
        alarm_id = item.message.alarm_id
        assert alarm_id is not None
        for named in notifiers:
            if named.name in item.told or named.name in resting:
                continue
            try:
                named.notifier.send(item.message)
            except Exception as exc:  # a notifier's failure, whatever it is, is reported
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("notifier %s could not send alarm %s: %s", named.name, alarm_id, reason)
                events.append(_event(alarm_id, now, "notify-failed", reason[:2000], named.name))
                resting.add(named.name)
                continue
            item.told.add(named.name)
            events.append(_event(alarm_id, now, "notified", item.message.event, named.name))
        if all(n.name in item.told for n in notifiers):
            told_all.append(item)
    _record_notified(db, told_all, events, now)
    return len(told_all)


def _read_pending(db: Database, limit: int) -> tuple[list[_Pending], dict[str, dt.datetime]]:
    """The oldest pending alarms, who told each of them already, and each notifier's latest
    failure among them."""
    with db.read_session() as session:
        rows = session.execute(
            sa.select(Alarm, Run.number)
            .outerjoin(Run, Run.id == Alarm.run_id)
            .where(Alarm.notified_at.is_(None))
            .order_by(Alarm.raised_at, Alarm.id)
            .limit(limit)
        ).all()
        if not rows:
            return [], {}
        by_id = {alarm.id: _pending(alarm, number) for alarm, number in rows}
        since = {alarm.id: _pending_since(alarm) for alarm, _ in rows}
        events = session.execute(
            sa.select(EVENTS.c.alarm_id, EVENTS.c.action, EVENTS.c.by, EVENTS.c.at).where(
                EVENTS.c.alarm_id.in_(list(by_id)),
                EVENTS.c.action.in_(("notified", "notify-failed")),
            )
        ).all()
    last_failure: dict[str, dt.datetime] = {}
    for alarm_id, action, by, at in events:
        if at < since[alarm_id] or by is None:
            continue  # about an earlier raise or clear
        if action == "notified":
            by_id[alarm_id].told.add(by)
        elif by not in last_failure or at > last_failure[by]:
            last_failure[by] = at
    return list(by_id.values()), last_failure


def _pending_since(alarm: Alarm) -> dt.datetime:
    if alarm.state == AlarmState.CLEARED and alarm.cleared_at is not None:
        return alarm.cleared_at
    return alarm.raised_at


def _pending(alarm: Alarm, run_number: int | None) -> _Pending:
    cleared = alarm.state == AlarmState.CLEARED
    event = "cleared" if cleared else "re-raised" if alarm.times_raised > 1 else "raised"
    return _Pending(
        message=message_of(alarm, run_number, event),
        times_raised=alarm.times_raised,
        cleared=cleared,
        told=set(),
    )


def message_of(alarm: Alarm, run_number: int | None, event: str) -> AlarmMessage:
    """What the notifiers are told about ``alarm``."""
    return AlarmMessage(
        event=event,
        alarm_id=alarm.id,
        key=alarm.key,
        kind=alarm.kind,
        severity=alarm.severity,
        state=alarm.state.value,
        message=alarm.message,
        run_number=run_number,
        task_id=alarm.task_id,
        raised_at=alarm.raised_at,
        times_raised=alarm.times_raised,
    )


def _record_notified(
    db: Database, told: Iterable[_Pending], events: list[dict[str, Any]], now: dt.datetime
) -> None:
    told = list(told)
    if not told and not events:
        return
    with db.transaction() as conn:
        for item in told:
            # Guarded: an alarm re-raised or cleared while we were sending is pending again.
            state = ALARMS.c.state == AlarmState.CLEARED
            conn.execute(
                sa.update(ALARMS)
                .where(
                    ALARMS.c.id == item.message.alarm_id,
                    ALARMS.c.notified_at.is_(None),
                    ALARMS.c.times_raised == item.times_raised,
                    state if item.cleared else sa.not_(state),
                )
                .values(notified_at=now)
            )
        if events:
            conn.execute(sa.insert(EVENTS), events)


def notify_test(settings: Settings, now: dt.datetime) -> list[tuple[str, str | None]]:
    """Send a test message through every configured notifier: (name, error or None) each."""
    message = AlarmMessage(
        event="test",
        alarm_id=None,
        key="test",
        kind="test",
        severity="warning",
        state="open",
        message="runwatch test alarm: if you read this, this notifier works.",
        run_number=None,
        task_id=None,
        raised_at=now,
        times_raised=1,
    )
    outcomes: list[tuple[str, str | None]] = []
    for named in load_notifiers(settings.alarms.notifiers):
        try:
            named.notifier.send(message)
        except Exception as exc:  # reported to the operator, whatever it is
            outcomes.append((named.name, f"{type(exc).__name__}: {exc}"))
        else:
            outcomes.append((named.name, None))
    return outcomes
