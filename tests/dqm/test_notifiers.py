"""Notifiers against a real local SMTP server (aiosmtpd) and a local HTTP receiver; pending
alarms survive a notifier that fails and are sent on a later call."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from runwatch.catalogue.models import RunStatus
from runwatch.config import Settings
from runwatch.db import Database
from runwatch.dqm.alarms import notify_pending, notify_test, sweep
from runwatch.dqm.models import Alarm, AlarmEvent
from runwatch.dqm.notifiers import (
    LogNotifier,
    NotifierSettingsError,
    SmtpNotifier,
    WebhookNotifier,
    load_notifiers,
)
from tests.dqm.test_alarms import MINUTE, T0, add_run, alarm_settings, verdict_scenario
from tests.web.liveserver import free_port


class Mailbox:
    """An aiosmtpd handler that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(parsed)  # type: ignore[arg-type]
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


def start_smtp(port: int) -> tuple[Controller, Mailbox]:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, mailbox


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    port = free_port()
    controller, mailbox = start_smtp(port)
    try:
        yield port, mailbox
    finally:
        controller.stop()


class Receiver:
    """A local HTTP server in a thread that keeps the JSON bodies POSTed to it."""

    def __init__(self, status: int = 204) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.headers.append(dict(self.headers))
                self.send_response(status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def smtp_table(port: int, **kw: Any) -> dict[str, Any]:
    return {
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "from": "runwatch@example.org",
        "to": ["shifter@example.org", "expert@example.org"],
        "timeout": 2,
        **kw,
    }


def raise_bad_verdict(db: Database, settings: Settings) -> Alarm:
    with db.session() as session:
        verdict_scenario(session).hold(session, T0)
    with db.session() as session:
        sweep(session, settings, T0)
        return session.scalars(sa.select(Alarm)).one()


def reload(db: Database, alarm_id: int) -> Alarm:
    with db.session() as session:
        alarm = session.get(Alarm, alarm_id)
        assert alarm is not None
        return alarm


def notify_events(db: Database) -> list[tuple[str, str | None]]:
    with db.session() as session:
        rows = session.execute(
            sa.select(AlarmEvent.action, AlarmEvent.by)
            .where(AlarmEvent.action.in_(("notified", "notify-failed")))
            .order_by(AlarmEvent.id)
        )
        return [(action, by) for action, by in rows]


def test_email_arrives_with_the_alarms_text(db: Database, smtp_server: tuple[int, Mailbox]) -> None:
    port, mailbox = smtp_server
    settings = alarm_settings(notifiers=[smtp_table(port)])
    alarm = raise_bad_verdict(db, settings)
    assert notify_pending(db, settings, T0 + MINUTE) == 1
    [mail] = mailbox.messages
    assert mail["Subject"] == f"[runwatch] BAD raised: {alarm.message}"
    assert mailbox.recipients == [["shifter@example.org", "expert@example.org"]]
    body = mail.get_body()
    assert body is not None
    assert alarm.message in body.get_content()
    assert f"runwatch dqm alarms ack {alarm.id}" in body.get_content()
    assert reload(db, alarm.id).notified_at == T0 + MINUTE
    assert notify_events(db) == [("notified", "smtp")]
    assert notify_pending(db, settings, T0 + 2 * MINUTE) == 0  # told once only
    assert len(mailbox.messages) == 1


def test_webhook_receives_the_alarm_as_json(db: Database, receiver: Receiver) -> None:
    settings = alarm_settings(notifiers=[{"kind": "webhook", "url": receiver.url, "token": "s3"}])
    alarm = raise_bad_verdict(db, settings)
    assert notify_pending(db, settings, T0 + MINUTE) == 1
    [body] = receiver.bodies
    assert (body["alarm_id"], body["event"], body["severity"]) == (alarm.id, "raised", "bad")
    assert body["message"] == alarm.message and body["run_number"] == 1001
    assert receiver.headers[0]["Authorization"] == "Bearer s3"


def test_a_clear_is_told_too(db: Database, receiver: Receiver) -> None:
    settings = alarm_settings(notifiers=[{"kind": "webhook", "url": receiver.url}])
    with db.session() as session:
        sc = verdict_scenario(session)
        sc.hold(session, T0)
    with db.session() as session:
        sweep(session, settings, T0)
    notify_pending(db, settings, T0)
    with db.session() as session:
        sc.gone(session, T0)
    with db.session() as session:
        sweep(session, settings, T0 + MINUTE)
    assert notify_pending(db, settings, T0 + MINUTE) == 1
    assert [b["event"] for b in receiver.bodies] == ["raised", "cleared"]
    assert receiver.bodies[1]["state"] == "cleared"


def test_a_failing_notifier_keeps_the_alarm_pending_until_it_works(
    db: Database, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there yet
    settings = alarm_settings(
        notifiers=[{"kind": "webhook", "url": receiver.url}, smtp_table(port)],
        notify_retry_seconds=60,
    )
    alarm = raise_bad_verdict(db, settings)
    with caplog.at_level(logging.WARNING, logger="runwatch.dqm.alarms"):
        assert notify_pending(db, settings, T0) == 0
    assert reload(db, alarm.id).notified_at is None
    assert "notifier smtp could not send alarm" in caplog.text
    assert "Connection refused" in caplog.text or "ConnectionRefusedError" in caplog.text
    assert notify_events(db) == [("notified", "webhook"), ("notify-failed", "smtp")]

    controller, mailbox = start_smtp(port)
    try:
        assert notify_pending(db, settings, T0 + dt.timedelta(seconds=30)) == 0  # resting
        assert mailbox.messages == []
        assert notify_pending(db, settings, T0 + MINUTE) == 1
    finally:
        controller.stop()
    assert len(mailbox.messages) == 1
    assert len(receiver.bodies) == 1  # the webhook was not told twice
    assert reload(db, alarm.id).notified_at == T0 + MINUTE
    with db.session() as session:
        failure = session.scalars(
            sa.select(AlarmEvent).where(AlarmEvent.action == "notify-failed")
        ).one()
    assert failure.by == "smtp" and failure.comment and "refused" in failure.comment.lower()


def test_an_http_error_is_a_failure(db: Database) -> None:
    bad = Receiver(status=500)
    try:
        settings = alarm_settings(notifiers=[{"kind": "webhook", "url": bad.url}])
        alarm = raise_bad_verdict(db, settings)
        assert notify_pending(db, settings, T0) == 0
    finally:
        bad.close()
    assert reload(db, alarm.id).notified_at is None
    with db.session() as session:
        comment = session.scalar(
            sa.select(AlarmEvent.comment).where(AlarmEvent.action == "notify-failed")
        )
    assert comment is not None and "500" in comment


def test_at_most_a_batch_of_alarms_per_call(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    settings = alarm_settings(notifiers=[{"kind": "log"}], notify_max_per_call=3)
    with db.session() as session:
        for number in range(5):
            add_run(session, 100 + number, RunStatus.DATA_TAKING, T0 - 60 * MINUTE)
    with db.session() as session:
        assert len(sweep(session, settings, T0).raised) == 5
    with caplog.at_level(logging.INFO, logger="runwatch.alarms"):
        assert notify_pending(db, settings, T0) == 3
        assert notify_pending(db, settings, T0) == 2
        assert notify_pending(db, settings, T0) == 0
    assert caplog.text.count("no task or file progress") == 5


def test_without_notifiers_alarms_are_marked_told(db: Database) -> None:
    settings = alarm_settings(notifiers=[])
    alarm = raise_bad_verdict(db, settings)
    assert notify_pending(db, settings, T0) == 1
    assert reload(db, alarm.id).notified_at == T0


def test_the_built_in_notifiers_are_entry_points(receiver: Receiver) -> None:
    built = load_notifiers(
        [
            {"kind": "log"},
            smtp_table(25, name="mail"),
            {"kind": "webhook", "url": receiver.url, "name": "chat"},
        ]
    )
    assert [(n.name, n.kind, type(n.notifier)) for n in built] == [
        ("log", "log", LogNotifier),
        ("mail", "smtp", SmtpNotifier),
        ("chat", "webhook", WebhookNotifier),
    ]


@pytest.mark.parametrize(
    ("tables", "error"),
    [
        ([{"url": "http://x"}], r"0\]: kind: required"),
        ([{"kind": "pager"}], r"0\]: kind: unknown notifier 'pager' \(installed: "),
        ([{"kind": "log"}, smtp_table(25, to=[])], r"1\] \(smtp\): to: "),
        ([{"kind": "smtp", "host": "h", "to": ["a@b"]}], r"0\] \(smtp\): from: Field required"),
        ([smtp_table(25, password="x")], r"0\] \(smtp\): password: given without user"),
        ([smtp_table(25, prot=26)], r"0\] \(smtp\): prot: Extra inputs are not permitted"),
        ([{"kind": "webhook", "url": "ftp://x"}], r"0\] \(webhook\): url: String should match"),
        ([{"kind": "webhook", "url": "http://x", "timeout": 0}], r"0\] \(webhook\): timeout: "),
        ([{"kind": "log"}, {"kind": "log"}], r"1\]: name: a second notifier named"),
    ],
)
def test_wrong_notifier_settings_name_the_setting(tables: list[dict[str, Any]], error: str) -> None:
    with pytest.raises(NotifierSettingsError, match=r"^\[alarms\] notifiers\[" + error):
        load_notifiers(tables)


def test_notify_test_reports_each_notifier(smtp_server: tuple[int, Mailbox]) -> None:
    port, mailbox = smtp_server
    closed = free_port()
    settings = alarm_settings(
        notifiers=[smtp_table(port), smtp_table(closed, name="broken"), {"kind": "log"}]
    )
    outcomes = dict(notify_test(settings, T0))
    assert outcomes["smtp"] is None and outcomes["log"] is None
    assert outcomes["broken"] is not None and "refused" in outcomes["broken"].lower()
    [mail] = mailbox.messages
    assert "test alarm" in mail["Subject"]
