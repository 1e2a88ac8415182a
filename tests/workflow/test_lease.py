from __future__ import annotations

import datetime as dt

from runwatch.db import Database
from runwatch.workflow import lease

T0 = dt.datetime(2025, 8, 26, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_one_scheduler_holds_the_lease_until_it_expires(any_db: Database) -> None:
    with any_db.session() as s:
        assert lease.acquire(s, "a", at(0), 10)
    with any_db.session() as s:
        assert not lease.acquire(s, "b", at(5), 10)
        assert lease.acquire(s, "a", at(9), 10)  # renewal pushes expiry to t=19
    with any_db.session() as s:
        assert not lease.acquire(s, "b", at(18), 10)
        assert lease.current_holder(s, at(18)) == "a"
    with any_db.session() as s:  # a died: b takes over after expiry
        assert lease.acquire(s, "b", at(20), 10)
    with any_db.session() as s:
        assert not lease.acquire(s, "a", at(21), 10)
        assert lease.current_holder(s, at(21)) == "b"
        lease.release(s, "b")
    with any_db.session() as s:
        assert lease.current_holder(s, at(22)) is None
        assert lease.acquire(s, "a", at(22), 10)
