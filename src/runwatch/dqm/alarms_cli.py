"""``runwatch dqm alarms``: list, show and acknowledge alarms; test the notifiers."""

from __future__ import annotations

import datetime as dt

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runwatch.context import Context
from runwatch.db import utcnow
from runwatch.dqm.models import Alarm, AlarmState

console = Console()
alarms_app = typer.Typer(
    help="Alarms: list them, show one's history, acknowledge them, test the notifiers.",
    no_args_is_help=True,
)

STATE_STYLE = {"open": "red", "acknowledged": "yellow", "cleared": "green"}


def _time(value: dt.datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "-"


def _state(alarm: Alarm) -> str:
    return f"[{STATE_STYLE[alarm.state.value]}]{alarm.state.value}[/]"


@alarms_app.command("list")
def list_command(
    all_states: bool = typer.Option(
        False, "--all", help="Cleared alarms too, not only open and acknowledged ones."
    ),
    run: int | None = typer.Option(None, "--run", help="Only alarms of this run number."),
    limit: int = typer.Option(100, "--limit", help="At most this many (latest raised first)."),
) -> None:
    """List open and acknowledged alarms, latest raised first."""
    from runwatch.dqm.alarms import LIVE, list_alarms

    ctx = Context.load()
    table = Table("id", "state", "severity", "kind", "run", "raised", "times", "ack by", "message")
    with ctx.db.read_session() as session:
        rows = list_alarms(session, states=() if all_states else LIVE, run_number=run, limit=limit)
        for alarm, number in rows:
            table.add_row(
                str(alarm.id),
                _state(alarm),
                alarm.severity,
                alarm.kind,
                "" if number is None else str(number),
                _time(alarm.raised_at),
                str(alarm.times_raised),
                escape(alarm.acknowledged_by or ""),
                escape(alarm.message),
            )
    if not rows:
        console.print("no alarms")
        return
    console.print(table)


@alarms_app.command("show")
def show(alarm_id: int = typer.Argument(..., help="Alarm id.")) -> None:
    """An alarm with its whole life: raised, notified, acknowledged, re-raised, cleared."""
    from runwatch.dqm.alarms import alarm_events

    ctx = Context.load()
    with ctx.db.read_session() as session:
        alarm = session.get(Alarm, alarm_id)
        if alarm is None:
            console.print(f"[red]no alarm {alarm_id}[/red]")
            raise typer.Exit(1)
        console.print(f"[bold]alarm {alarm.id}[/bold]  {alarm.key}  {_state(alarm)}")
        console.print(escape(alarm.message))
        console.print(
            f"severity {alarm.severity}, raised {_time(alarm.raised_at)} "
            f"({alarm.times_raised} times), last seen {_time(alarm.last_seen_at)}, "
            f"notified {_time(alarm.notified_at) if alarm.notified_at else 'pending'}"
        )
        if alarm.state == AlarmState.ACKNOWLEDGED:
            console.print(
                f"acknowledged by {escape(alarm.acknowledged_by or '')} at "
                f"{_time(alarm.acknowledged_at)} until {_time(alarm.ack_expires_at)}: "
                f"{escape(alarm.ack_comment or '')}"
            )
        if alarm.cleared_at is not None:
            console.print(f"cleared {_time(alarm.cleared_at)}")
        events = Table("at", "action", "by", "comment", title="events")
        for event in alarm_events(session, alarm_id):
            events.add_row(
                _time(event.at), event.action, escape(event.by or ""), escape(event.comment or "")
            )
    console.print(events)


@alarms_app.command("ack")
def ack(
    alarm_id: int = typer.Argument(..., help="Alarm id."),
    by: str = typer.Option(..., "--by", help="Who is on it (name or login)."),
    comment: str = typer.Option(..., "--comment", help="What is being done about it."),
    hours: float | None = typer.Option(
        None, "--hours", min=0.01, help="Re-raise after this long; default [alarms] ack_hours."
    ),
) -> None:
    """Acknowledge an open alarm: it is not re-raised until the acknowledgement expires."""
    from runwatch.dqm.alarms import AlarmError, acknowledge

    ctx = Context.load()
    ack_hours = hours if hours is not None else ctx.settings.alarms.ack_hours
    try:
        with ctx.db.session() as session:
            alarm = acknowledge(session, alarm_id, by, comment, utcnow(), ack_hours=ack_hours)
    except AlarmError as exc:
        console.print(f"[red]error: {escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"alarm {alarm.id} acknowledged by {escape(alarm.acknowledged_by or '')} "
        f"until {_time(alarm.ack_expires_at)} UTC"
    )


@alarms_app.command("notify-test")
def notify_test() -> None:
    """Send a test message through every notifier in [alarms] notifiers."""
    from runwatch.dqm.alarms import notify_test as send_test
    from runwatch.dqm.notifiers import NotifierSettingsError

    ctx = Context.load()
    try:
        outcomes = send_test(ctx.settings, utcnow())
    except NotifierSettingsError as exc:
        console.print(f"[red]error: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    if not outcomes:
        console.print("no notifiers configured ([alarms] notifiers is empty)")
    for name, error in outcomes:
        console.print(f"{name}: [red]failed: {escape(error)}[/red]" if error else f"{name}: sent")
    if any(error for _, error in outcomes):
        raise typer.Exit(1)
