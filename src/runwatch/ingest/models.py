"""Every message received, accepted or not: nothing from outside is ever dropped."""

from __future__ import annotations

import datetime as dt
import enum
from typing import cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from runwatch.db import Base, UTCDateTime, utcnow
from runwatch.enums import enum_column_type


class MessageStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # the same message again: a no-op, kept for the record
    REJECTED = "rejected"  # malformed or conflicting: kept with the reason for an operator


class ReceivedMessage(Base):
    __tablename__ = "received_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    source: Mapped[str] = mapped_column(sa.String(32), doc="http, dropbox, amqp, cli ...")
    origin: Mapped[str | None] = mapped_column(
        sa.String(1024), doc="Where in the source: a path, a queue, a client address."
    )
    body: Mapped[str] = mapped_column(sa.Text, doc="The message exactly as received.")
    status: Mapped[MessageStatus] = mapped_column(
        enum_column_type(MessageStatus, "message_status"), index=True
    )
    reason: Mapped[str | None] = mapped_column(sa.Text)
    file_name: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    run_number: Mapped[int | None] = mapped_column(sa.BigInteger)
    file_id: Mapped[int | None] = mapped_column(sa.ForeignKey("files.id"))


# The table itself, for Core statements.
MESSAGES = cast(sa.Table, ReceivedMessage.__table__)
