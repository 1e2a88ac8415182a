"""Receiving file-ready messages: validate, catalogue, and keep every message with its verdict.

Every source (HTTP, dropbox, AMQP, the CLI) goes through ``receive`` (a list of messages
through ``receive_many`` or ``receive_in_parts``, which catalogue and store each part of it
in a few statements, not a few per message). It always stores a ``ReceivedMessage`` row,
whatever the message is, and never raises for bad input: a bad message is an answer
(REJECTED, with a reason), not an exception. It does raise when the database itself fails,
so that a source can leave the message where it was (unacked, semaphore in place) and try
again later. Receiving is idempotent: the same message again is a DUPLICATE that changes
nothing, so a crash between the commit and the source's acknowledgement costs nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.service import Registration, register_files
from runwatch.db import Database
from runwatch.ingest.models import MESSAGES, MessageStatus
from runwatch.ingest.schema import (
    MAX_NAME,
    MAX_RUN,
    FileMessage,
    MessageError,
    load_json,
    validate_message,
)

log = logging.getLogger(__name__)

# received_messages.body is a TEXT column, 65,535 bytes on MySQL/MariaDB. A message is a few
# hundred bytes; anything near this is not a file-ready message.
MAX_BODY_BYTES = 65_535
MAX_SOURCE = 32
DB_ATTEMPTS = 5  # tries of a part of a list that fails on a database error
MAX_ORIGIN = 1024


@dataclass
class Receipt:
    """What became of one message; ``message_id`` is its ``ReceivedMessage`` row."""

    status: MessageStatus
    reason: str | None
    message_id: int
    file_id: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "reason": self.reason,
            "message_id": self.message_id,
            "file_id": self.file_id,
        }


def receive(
    session: Session, body: str | bytes, source: str, origin: str | None, now: dt.datetime
) -> Receipt:
    """Receive one message; the caller commits (and only then acknowledges the source)."""
    return _receive_examined(session, [_examine(body)], source, origin, now)[0]


def receive_many(
    session: Session, body: str | bytes, source: str, origin: str | None, now: dt.datetime
) -> list[Receipt]:
    """Receive a body holding one message object or a JSON list of them.

    Each element of a list is stored as its own message, with its own exact text; a body
    that is not JSON at all, or an empty list, is stored once as rejected.
    """
    text = body_text(body)
    too_long = _too_long(text)
    if too_long:
        return [store_rejected(session, _cut(text), source, origin, now, too_long)]
    try:
        data = load_json(body)
    except MessageError as exc:
        return [store_rejected(session, text, source, origin, now, exc.reason)]
    if isinstance(data, list) and not data:
        return [store_rejected(session, text, source, origin, now, "an empty list of messages")]
    examined = _elements(text, data) if isinstance(data, list) else [_examine(text, data)]
    return _receive_examined(session, examined, source, origin, now)


def receive_in_parts(
    db: Database,
    body: str | bytes,
    source: str,
    origin: str | None,
    now: dt.datetime,
    every: int,
    committed: Callable[[], None],
) -> list[Receipt]:
    """``receive_many`` with a list committed ``every`` messages at a time, calling
    ``committed()`` after each part (the HTTP API nudges the scheduler there), so that the
    first files of a long list are planned while the rest are being stored.

    A part that fails on a database error -- a deadlock with the scheduler planning the
    files just committed, a lost connection -- is rolled back and received again: a
    message already stored is a DUPLICATE, so trying again changes nothing that counted.
    """
    text = body_text(body)
    try:
        data = None if _too_long(text) else load_json(body)
    except MessageError:
        data = None
    if not (isinstance(data, list) and data):  # one message, or one rejection
        return _store_part(db, lambda s: receive_many(s, body, source, origin, now), committed)
    examined = _elements(text, data)
    receipts: list[Receipt] = []
    for start in range(0, len(examined), every):
        part = examined[start : start + every]
        receive_part = functools.partial(
            _receive_examined, examined=part, source=source, origin=origin, now=now
        )
        receipts += _store_part(db, receive_part, committed)
    return receipts


def _store_part(
    db: Database,
    receive_part: Callable[[Session], list[Receipt]],
    committed: Callable[[], None],
) -> list[Receipt]:
    """``receive_part`` in one transaction, tried again on a database error."""
    for attempt in range(1, DB_ATTEMPTS + 1):
        try:
            with db.session() as session:
                receipts = receive_part(session)
            committed()
            return receipts
        except sa.exc.OperationalError as exc:
            if attempt == DB_ATTEMPTS:
                raise
            log.warning("storing messages failed (%s); trying again", exc.orig)
            time.sleep(0.02 * attempt)  # let the other transaction of a deadlock finish
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _Examined:
    """A message's text to store and either its validated content or why it is rejected
    (with the file name and run number it seems to be about, for an operator)."""

    text: str
    message: FileMessage | None = None
    reason: str | None = None
    file_name: str | None = None
    run_number: int | None = None


_UNDECODED = object()


def _examine(body: str | bytes, data: Any = _UNDECODED) -> _Examined:
    """Decode (unless ``data`` is the body decoded already) and validate one message."""
    text = body_text(body)
    if data is _UNDECODED:
        too_long = _too_long(text)
        if too_long:
            return _Examined(_cut(text), reason=too_long)
        try:
            data = load_json(body)
        except MessageError as exc:
            return _Examined(text, reason=exc.reason)
    try:
        return _Examined(text, validate_message(data))
    except MessageError as exc:
        return _Examined(text, None, exc.reason, *_best_guess(data))


def _elements(text: str, data: list[Any]) -> list[_Examined]:
    """The elements of a JSON list, each with its exact text; ``data`` is ``text`` decoded
    (decoding each element again would give the same values: the list decoded whole)."""
    return [_examine(part, item) for part, item in zip(split_list(text), data, strict=True)]


Verdict = tuple[MessageStatus, str | None, str | None, int | None, int | None]


def _receive_examined(
    session: Session, examined: list[_Examined], source: str, origin: str | None, now: dt.datetime
) -> list[Receipt]:
    """Catalogue the valid messages and store them all, in a few statements in all."""
    valid = [e.message for e in examined if e.message is not None]
    registrations = iter(register_files(session, valid, now) if valid else ())
    rows = []
    for item in examined:
        msg = item.message
        verdict: Verdict
        if msg is None:
            verdict = (MessageStatus.REJECTED, item.reason, item.file_name, item.run_number, None)
        else:
            verdict = _verdict(msg, next(registrations))
        rows.append(_row(item.text, source, origin, now, *verdict))
    return _store(session, rows)


def _verdict(msg: FileMessage, registration: Registration) -> Verdict:
    """Status, reason, file name, run number and file id of a valid message's row."""
    if registration.conflict:
        return MessageStatus.REJECTED, registration.conflict, msg.name, msg.run, None
    status, reason = MessageStatus.ACCEPTED, None
    if not registration.created:
        if registration.end_of_run:  # the file was known, but not that it ends its run
            reason = "file already registered; end of run recorded"
        else:
            status = MessageStatus.DUPLICATE
    return status, reason, msg.name, msg.run, registration.file.id


def split_list(text: str) -> list[str]:
    """The exact text of each element of a JSON list (``text`` is known to be one)."""
    decoder = json.JSONDecoder()
    parts: list[str] = []
    index = text.index("[") + 1
    while True:
        index = _skip_space(text, index)
        if text[index] == "]":
            return parts
        _, end = decoder.raw_decode(text, index)
        parts.append(text[index:end])
        index = _skip_space(text, end)
        if text[index] == ",":
            index += 1


def _skip_space(text: str, index: int) -> int:
    while text[index] in " \t\r\n":
        index += 1
    return index


def store_rejected(
    session: Session,
    body: str,
    source: str,
    origin: str | None,
    now: dt.datetime,
    reason: str,
    file_name: str | None = None,
    run_number: int | None = None,
) -> Receipt:
    """Keep a message that cannot be accepted, with the reason, for an operator."""
    row = _row(
        body, source, origin, now, MessageStatus.REJECTED, reason, file_name, run_number, None
    )
    return _store(session, [row])[0]


def _row(
    body: str,
    source: str,
    origin: str | None,
    now: dt.datetime,
    status: MessageStatus,
    reason: str | None,
    file_name: str | None,
    run_number: int | None,
    file_id: int | None,
) -> dict[str, Any]:
    return {
        "received_at": now,
        "source": source[:MAX_SOURCE],
        "origin": None if origin is None else origin[:MAX_ORIGIN],
        "body": body,
        "status": status,
        "reason": reason,
        "file_name": file_name,
        "run_number": run_number,
        "file_id": file_id,
    }


_INSERT_MESSAGES = sa.insert(MESSAGES).returning(MESSAGES.c.id, sort_by_parameter_order=True)
_INSERT_MESSAGES_SQLITE = sa.insert(MESSAGES).returning(MESSAGES.c.id)


def _store(session: Session, rows: list[dict[str, Any]]) -> list[Receipt]:
    """Insert the message rows in one statement; their receipts, in order."""
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        # SQLAlchemy cannot tell SQLite's RETURNING order, so sorting by parameter order
        # would insert row by row. SQLite numbers the rows of one INSERT in their order
        # (the largest id + 1 each), and this transaction holds the write lock: the ids in
        # ascending order are the rows' in order.
        ids = sorted(conn.execute(_INSERT_MESSAGES_SQLITE, rows).scalars())
    else:
        ids = list(conn.execute(_INSERT_MESSAGES, rows).scalars())
    return [
        Receipt(row["status"], row["reason"], id_, row["file_id"])
        for row, id_ in zip(rows, ids, strict=True)
    ]


def body_text(body: str | bytes) -> str:
    """A body as text to store: bytes that are not UTF-8 are kept as escapes."""
    text = body.decode("utf-8", errors="backslashreplace") if isinstance(body, bytes) else body
    # PostgreSQL text cannot hold NUL; keep it visible rather than fail to store the message.
    return text.replace("\x00", "\\x00")


def _too_long(text: str) -> str | None:
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size <= MAX_BODY_BYTES:
        return None
    return f"message too long: {size} bytes (at most {MAX_BODY_BYTES}); stored cut short"


def _cut(text: str) -> str:
    return text.encode("utf-8", errors="surrogatepass")[: MAX_BODY_BYTES - 3].decode(
        "utf-8", errors="ignore"
    )


def _best_guess(data: Any) -> tuple[str | None, int | None]:
    """File name and run number of a rejected message, when it has usable ones."""
    if not isinstance(data, dict):
        return None, None
    name, run = data.get("name"), data.get("run")
    name = name if isinstance(name, str) and 0 < len(name) <= MAX_NAME else None
    ok_run = isinstance(run, int) and not isinstance(run, bool) and 0 < run <= MAX_RUN
    return name, run if ok_run else None
