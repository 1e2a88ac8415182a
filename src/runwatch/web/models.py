"""The web's tables: local accounts, API tokens, and the audit log of every action."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from runwatch.db import Base, UTCDateTime, utcnow
from runwatch.enums import enum_column_type


class Role(enum.StrEnum):
    """What a person may do; each role may do everything the ones before it may."""

    VIEWER = "viewer"  # read the pages (when they are not public)
    SHIFTER = "shifter"  # acknowledge alarms, retry and cancel tasks
    EXPERT = "expert"  # change a run's cuts, re-evaluate checks
    ADMIN = "admin"  # manage accounts and tokens

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class WebUser(Base):
    """A local account: a name, a password hash (never the password) and a role."""

    __tablename__ = "web_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[Role] = mapped_column(enum_column_type(Role, "web_role"))
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """A token for scripts: only its SHA-256 is stored; the token is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    token_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    role: Mapped[Role] = mapped_column(enum_column_type(Role, "token_role"))
    owner: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """One action someone asked for, done or refused: who, how, what, from where."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(sa.String(255), doc="User, token or certificate DN.")
    role: Mapped[str | None] = mapped_column(sa.String(16))
    via: Mapped[str] = mapped_column(sa.String(16), doc="session, token, x509 or anonymous")
    action: Mapped[str] = mapped_column(sa.String(64), doc="e.g. task.retry, alarm.ack")
    target: Mapped[str] = mapped_column(sa.String(255), doc="e.g. task:123, alarm:7")
    outcome: Mapped[str] = mapped_column(sa.String(16), doc="done, refused or failed")
    detail: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    remote: Mapped[str | None] = mapped_column(sa.String(64), doc="The client's address.")
