"""One active scheduler at a time: a lease row in the database.

The holder renews the lease every tick; another scheduler waits and takes the lease over
once it has expired (the holder died or hung). Taking and renewing are single guarded
statements, so two schedulers can never both believe they hold it.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from runwatch.workflow.models import SchedulerLease

LEASE_NAME = "scheduler"


def new_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(
    session: Session, holder: str, now: dt.datetime, seconds: float, name: str = LEASE_NAME
) -> bool:
    """Take or renew the lease; False if another live holder has it."""
    expires = now + dt.timedelta(seconds=seconds)
    result = session.execute(
        sa.update(SchedulerLease)
        .where(
            SchedulerLease.name == name,
            sa.or_(SchedulerLease.holder == holder, SchedulerLease.expires_at < now),
        )
        .values(holder=holder, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return True
    if session.get(SchedulerLease, name) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(
                SchedulerLease(name=name, holder=holder, acquired_at=now, expires_at=expires)
            )
    except IntegrityError:  # another scheduler inserted it first
        return False
    return True


def release(session: Session, holder: str, name: str = LEASE_NAME) -> None:
    session.execute(
        sa.delete(SchedulerLease).where(
            SchedulerLease.name == name, SchedulerLease.holder == holder
        )
    )


def current_holder(session: Session, now: dt.datetime, name: str = LEASE_NAME) -> str | None:
    lease = session.get(SchedulerLease, name)
    if lease is None or lease.expires_at < now:
        return None
    return lease.holder
