"""``runwatch dqm alarms list|show|ack|notify-test`` on a deployment's database."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from runwatch.db import Database, utcnow
from runwatch.dqm.alarms import sweep
from runwatch.dqm.models import Alarm, AlarmState
from tests.dqm.test_alarms import SCENARIOS, alarm_settings
from tests.dqm.test_notifiers import Receiver

runner = CliRunner()


def invoke(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["dqm", "alarms", *args], env={"COLUMNS": "250"})
    return result.exit_code, result.output


def raise_all(db: Database) -> dict[str, int]:
    """One alarm of each kind, raised now; their ids by kind."""
    now = utcnow()
    with db.session() as session:
        for build in SCENARIOS.values():
            build(session).hold(session, now)
    with db.session() as session:
        sweep(session, alarm_settings(), now)
        return {a.kind: a.id for a in session.scalars(sa.select(Alarm))}


def test_list_ack_show(app: typer.Typer, deployment: Path, db: Database) -> None:
    ids = raise_all(db)
    code, out = invoke(app, "list")
    assert code == 0, out
    assert "Run 1001: DQM verdict BAD: energy/shape" in out
    assert "Run 1002 (Data Taking): no task or file progress" in out
    assert "(step calib, run 1003) failed for good: exit code 3" in out

    code, out = invoke(app, "list", "--run", "1003")
    assert "failed for good" in out and "verdict BAD" not in out

    alarm_id = ids["verdict"]
    code, out = invoke(
        app, "ack", str(alarm_id), "--by", "alice", "--comment", "HV trip", "--hours", "2"
    )
    assert code == 0, out
    assert f"alarm {alarm_id} acknowledged by alice until" in out
    with db.session() as session:
        alarm = session.get(Alarm, alarm_id)
        assert alarm is not None and alarm.state == AlarmState.ACKNOWLEDGED
        assert alarm.ack_comment == "HV trip"
        assert alarm.ack_expires_at is not None and alarm.acknowledged_at is not None
        assert round((alarm.ack_expires_at - alarm.acknowledged_at).total_seconds()) == 7200

    code, out = invoke(app, "show", str(alarm_id))
    assert code == 0, out
    assert f"alarm {alarm_id}" in out and "acknowledged by alice" in out
    assert "raised" in out and "acknowledged" in out and "HV trip" in out

    with db.session() as session:
        session.execute(
            sa.update(Alarm).where(Alarm.kind == "stale").values(state=AlarmState.CLEARED)
        )
    code, out = invoke(app, "list")
    assert "no task or file progress" not in out
    code, out = invoke(app, "list", "--all")
    assert "no task or file progress" in out


def test_ack_refusals(app: typer.Typer, deployment: Path, db: Database) -> None:
    code, out = invoke(app, "ack", "42", "--by", "alice", "--comment", "x")
    assert code == 1 and "no alarm 42" in out
    code, out = invoke(app, "ack", "42", "--by", "alice")
    assert code == 2  # --comment is required
    code, out = invoke(app, "show", "42")
    assert code == 1 and "no alarm 42" in out
    code, out = invoke(app, "list")
    assert code == 0 and "no alarms" in out


def test_notify_test(app: typer.Typer, deployment: Path, db: Database) -> None:
    receiver = Receiver()
    try:
        (deployment / "runwatch.toml").write_text(
            'database_url = "sqlite:///runwatch.db"\n'
            "[alarms]\n"
            f'notifiers = [{{kind = "log"}}, {{kind = "webhook", url = "{receiver.url}"}}]\n'
        )
        code, out = invoke(app, "notify-test")
    finally:
        receiver.close()
    assert code == 0, out
    assert "log: sent" in out and "webhook: sent" in out
    assert receiver.bodies[0]["event"] == "test"

    (deployment / "runwatch.toml").write_text(
        'database_url = "sqlite:///runwatch.db"\n[alarms]\nnotifiers = [{kind = "smtp"}]\n'
    )
    code, out = invoke(app, "notify-test")
    assert code == 2
    assert "[alarms] notifiers[0] (smtp): host: Field required" in out


def test_brackets_in_messages_are_printed_as_they_are(
    app: typer.Typer, deployment: Path, db: Database
) -> None:
    ids = raise_all(db)
    with db.session() as session:
        session.execute(sa.update(Alarm).values(message="energy [bad] at [red]5 MeV"))
    code, out = invoke(app, "list")
    assert code == 0 and "energy [bad] at [red]5 MeV" in out
    code, out = invoke(app, "show", str(ids["verdict"]))
    assert code == 0 and "energy [bad] at [red]5 MeV" in out
