"""Notifiers: who is told when an alarm is raised or cleared (log, e-mail, webhook).

A notifier is a plugin found through the ``runwatch.notifiers`` entry point group by the
``kind`` of its ``[[alarms.notifiers]]`` table; the built-in ``log``, ``smtp`` and
``webhook`` register the same way an outside package would::

    [project.entry-points."runwatch.notifiers"]
    pager = "mypackage.pager:PagerNotifier"

To write one, implement a class that is built from the table's other options
(``PagerNotifier(options)``, raising ``NotifierSettingsError`` naming the option that is
wrong; ``parse_options`` does that for a pydantic model) and has one method,
``send(message)``, which delivers one ``AlarmMessage`` or raises. Guarantees for
implementers: ``send`` is called from one thread, never inside a database transaction,
and a failure leaves the alarm pending, to be sent again later, so ``send`` must not
retry by itself; it must return or raise within its own short timeout (the scheduler
waits for it). Nothing is loaded at import time: ``load_notifiers`` finds the classes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import smtplib
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENTRY_POINT_GROUP = "runwatch.notifiers"
SETTING = "[alarms] notifiers"

M = TypeVar("M", bound=BaseModel)


class NotifierSettingsError(ValueError):
    """A notifier's table in the settings is wrong; the message names the setting."""


@dataclass(frozen=True)
class AlarmMessage:
    """What a notifier is told: one alarm at one step of its life."""

    event: str  # raised, re-raised, cleared or test
    alarm_id: int | None
    key: str
    kind: str
    severity: str
    state: str
    message: str
    run_number: int | None
    task_id: int | None
    raised_at: dt.datetime
    times_raised: int

    @property
    def subject(self) -> str:
        """One line: severity, what happened and the alarm's message."""
        first = self.message.splitlines()[0] if self.message else self.key
        return f"[runwatch] {self.severity.upper()} {self.event}: {first}"[:200]

    def text(self) -> str:
        """A plain-text body for e-mail and logs."""
        lines = [
            self.message,
            "",
            f"alarm:    {self.alarm_id if self.alarm_id is not None else '-'} ({self.key})",
            f"event:    {self.event}",
            f"state:    {self.state}",
            f"severity: {self.severity}",
            f"raised:   {self.raised_at:%Y-%m-%d %H:%M:%S} UTC (times raised: {self.times_raised})",
        ]
        if self.run_number is not None:
            lines.append(f"run:      {self.run_number}")
        if self.task_id is not None:
            lines.append(f"task:     {self.task_id}")
        if self.alarm_id is not None:
            lines.append(
                f"acknowledge: runwatch dqm alarms ack {self.alarm_id} --by ... --comment ..."
            )
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["raised_at"] = self.raised_at.isoformat()
        return data


class Notifier(Protocol):
    """Delivers alarm messages somewhere (see the module docstring for the guarantees)."""

    def send(self, message: AlarmMessage) -> None:
        """Deliver ``message`` within the notifier's timeout, or raise saying why not."""


class NotifierClass(Protocol):
    """What the entry point names: built from the table's options (``kind``/``name`` removed)."""

    def __call__(self, options: Mapping[str, Any]) -> Notifier: ...


@dataclass(frozen=True)
class NamedNotifier:
    """A configured notifier and the name its successes and failures are recorded under."""

    name: str
    kind: str
    notifier: Notifier


def parse_options(model: type[M], options: Mapping[str, Any]) -> M:
    """``options`` validated by ``model``; the first problem as a ``NotifierSettingsError``
    of the form ``field: problem``."""
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "options"
        raise NotifierSettingsError(f"{field}: {error['msg']}") from None


def load_notifiers(tables: Sequence[Mapping[str, Any]]) -> list[NamedNotifier]:
    """Build the notifiers of ``[alarms] notifiers``, in order; a wrong table is a
    ``NotifierSettingsError`` naming it, e.g. ``[alarms] notifiers[1] (smtp): to: ...``."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    built: list[NamedNotifier] = []
    for index, table in enumerate(tables):
        where = f"{SETTING}[{index}]"
        options = dict(table)
        kind = options.pop("kind", None)
        if not isinstance(kind, str) or not kind:
            raise NotifierSettingsError(f"{where}: kind: required ({' | '.join(sorted(found))})")
        if kind not in found:
            known = ", ".join(sorted(found)) or "none"
            raise NotifierSettingsError(
                f"{where}: kind: unknown notifier {kind!r} (installed: {known})"
            )
        name = str(options.pop("name", kind))
        if any(other.name == name for other in built):
            raise NotifierSettingsError(
                f"{where}: name: a second notifier named {name!r}; give each a distinct name"
            )
        cls: NotifierClass = found[kind].load()
        try:
            notifier = cls(options)
        except NotifierSettingsError as exc:
            raise NotifierSettingsError(f"{where} ({kind}): {exc}") from None
        built.append(NamedNotifier(name, kind, notifier))
    return built


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- log ------------------------------------------------------------------------------------


class LogOptions(_Options):
    logger: str = "runwatch.alarms"
    level: str = Field("warning", pattern="^(debug|info|warning|error|critical)$")


class LogNotifier:
    """Writes each message to a logger (the daemon's log): raises and re-raises at
    ``level``, clears at INFO."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        parsed = parse_options(LogOptions, options)
        self.logger = logging.getLogger(parsed.logger)
        self.level = logging.getLevelNamesMapping()[parsed.level.upper()]

    def send(self, message: AlarmMessage) -> None:
        level = logging.INFO if message.event == "cleared" else self.level
        self.logger.log(
            level,
            "alarm %s %s [%s]: %s",
            message.alarm_id,
            message.event,
            message.severity,
            message.message,
        )


# -- smtp -----------------------------------------------------------------------------------


class SmtpOptions(_Options):
    host: str = Field(min_length=1)
    port: int = Field(25, gt=0, lt=65536)
    sender: str = Field(alias="from", min_length=3)
    to: list[str] = Field(min_length=1)
    starttls: bool = False
    user: str | None = None
    password: str | None = None
    timeout: float = Field(10.0, gt=0)


class SmtpNotifier:
    """Sends each message as a plain-text e-mail through an SMTP server (smtplib)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = parse_options(SmtpOptions, options)
        if self.options.password is not None and self.options.user is None:
            raise NotifierSettingsError("password: given without user")

    def send(self, message: AlarmMessage) -> None:
        o = self.options
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = o.sender
        mail["To"] = ", ".join(o.to)
        mail.set_content(message.text())
        with smtplib.SMTP(o.host, o.port, timeout=o.timeout) as smtp:
            if o.starttls:
                smtp.starttls()
            if o.user is not None:
                smtp.login(o.user, o.password or "")
            smtp.send_message(mail)


# -- webhook --------------------------------------------------------------------------------


class WebhookOptions(_Options):
    url: str = Field(pattern=r"^https?://\S+$")
    token: str | None = None
    timeout: float = Field(5.0, gt=0)


class WebhookNotifier:
    """POSTs each message as JSON (``AlarmMessage.as_json`` plus ``subject`` and ``text``)
    to a URL, with ``Authorization: Bearer TOKEN`` if a token is set; any answer other
    than 2xx is a failure."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = parse_options(WebhookOptions, options)

    def send(self, message: AlarmMessage) -> None:
        body = {**message.as_json(), "subject": message.subject, "text": message.text()}
        request = urllib.request.Request(
            self.options.url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        if self.options.token:
            request.add_header("Authorization", f"Bearer {self.options.token}")
        # urlopen raises HTTPError for 4xx/5xx; 3xx are followed.
        with urllib.request.urlopen(request, timeout=self.options.timeout) as response:
            response.read()
