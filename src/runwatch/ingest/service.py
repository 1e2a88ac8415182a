"""Receiving file-ready messages: validate, catalogue, and keep every message with its verdict.

Every source (HTTP, dropbox, AMQP, the CLI) goes through ``receive``. It always stores a
``ReceivedMessage`` row, whatever the message is, and never raises for bad input: a bad
message is an answer (REJECTED, with a reason), not an exception. It does raise when the
database itself fails, so that a source can leave the message where it was (unacked,
semaphore in place) and try again later. Receiving is idempotent: the same message again
is a DUPLICATE that changes nothing, so a crash between the commit and the source's
acknowledgement costs nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import File
from runwatch.catalogue.service import mark_end_of_run, register_file
from runwatch.db import Database
from runwatch.ingest.models import MessageStatus, ReceivedMessage
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
    text = body_text(body)
    too_long = _too_long(text)
    if too_long:
        return store_rejected(session, _cut(text), source, origin, now, too_long)
    try:
        data = load_json(body)
    except MessageError as exc:
        return store_rejected(session, text, source, origin, now, exc.reason)
    try:
        msg = validate_message(data)
    except MessageError as exc:
        return store_rejected(session, text, source, origin, now, exc.reason, *_best_guess(data))
    return _catalogue(session, msg, text, source, origin, now)


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
    if not isinstance(data, list):
        return [receive(session, text, source, origin, now)]
    if not data:
        return [store_rejected(session, text, source, origin, now, "an empty list of messages")]
    return [receive(session, part, source, origin, now) for part in split_list(text)]


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
        return _store_part(db, [text], source, origin, now, receive_many, committed)
    texts = split_list(text)
    receipts: list[Receipt] = []
    for start in range(0, len(texts), every):
        part = texts[start : start + every]
        receipts += _store_part(db, part, source, origin, now, _receive_one, committed)
    return receipts


def _receive_one(
    session: Session, text: str, source: str, origin: str | None, now: dt.datetime
) -> list[Receipt]:
    return [receive(session, text, source, origin, now)]


def _store_part(
    db: Database,
    texts: list[str],
    source: str,
    origin: str | None,
    now: dt.datetime,
    receive_text: Callable[[Session, str, str, str | None, dt.datetime], list[Receipt]],
    committed: Callable[[], None],
) -> list[Receipt]:
    """Receive ``texts`` in one transaction, tried again on a database error."""
    for attempt in range(1, DB_ATTEMPTS + 1):
        try:
            with db.session() as session:
                receipts = [r for t in texts for r in receive_text(session, t, source, origin, now)]
            committed()
            return receipts
        except sa.exc.OperationalError as exc:
            if attempt == DB_ATTEMPTS:
                raise
            log.warning("storing messages failed (%s); trying again", exc.orig)
            time.sleep(0.02 * attempt)  # let the other transaction of a deadlock finish
    raise AssertionError("unreachable")


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
    return _store(
        session,
        body,
        source,
        origin,
        now,
        MessageStatus.REJECTED,
        reason,
        file_name,
        run_number,
        None,
    )


def _catalogue(
    session: Session,
    msg: FileMessage,
    text: str,
    source: str,
    origin: str | None,
    now: dt.datetime,
) -> Receipt:
    file, created = register_file(session, msg, now)
    status, reason = MessageStatus.ACCEPTED, None
    if not created:
        conflicts = _conflicts(file, msg)
        if conflicts:
            return store_rejected(session, text, source, origin, now, conflicts, msg.name, msg.run)
        status = MessageStatus.DUPLICATE
    if msg.end_of_run and mark_end_of_run(session, file.run, now, msg.sequence):
        if not created:  # the file was known, but not that it ends its run
            reason = "file already registered; end of run recorded"
        status = MessageStatus.ACCEPTED
    return _store(session, text, source, origin, now, status, reason, msg.name, msg.run, file.id)


def _conflicts(file: File, msg: FileMessage) -> str | None:
    """Why ``msg`` cannot be about the catalogued ``file`` of the same name, or None.

    A field the message leaves out (or the catalogue lacks) is no conflict: the same file
    announced once with and once without a checksum is still the same file.
    """
    known = {
        "run": file.run.number,
        "url": file.url,
        "stream": file.stream,
        "sequence": file.sequence,
        "size": file.size,
        "adler32": file.adler32,
    }
    problems = [
        f"{field} {value} differs from the registered {known[field]}"
        for field, value in msg.identity().items()
        if value is not None and known[field] is not None and value != known[field]
    ]
    if not problems:
        return None
    return f"file {msg.name} is already registered (file id {file.id}): " + "; ".join(problems)


def _store(
    session: Session,
    body: str,
    source: str,
    origin: str | None,
    now: dt.datetime,
    status: MessageStatus,
    reason: str | None,
    file_name: str | None,
    run_number: int | None,
    file_id: int | None,
) -> Receipt:
    row = ReceivedMessage(
        received_at=now,
        source=source[:MAX_SOURCE],
        origin=None if origin is None else origin[:MAX_ORIGIN],
        body=body,
        status=status,
        reason=reason,
        file_name=file_name,
        run_number=run_number,
        file_id=file_id,
    )
    session.add(row)
    session.flush()
    return Receipt(status, reason, row.id, file_id)


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
