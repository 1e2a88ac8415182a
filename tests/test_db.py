from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from runwatch.catalogue.models import Run
from runwatch.db import Base, Database, import_all_models, utcnow


def test_migrations_match_models(any_db: Database) -> None:
    """A model change without a migration fails here, on each of the three databases."""
    import_all_models()
    with any_db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_timestamps_round_trip_as_utc(any_db: Database) -> None:
    moment = dt.datetime(2025, 8, 26, 12, 0, 0, 123456, tzinfo=dt.UTC)
    with any_db.session() as s:
        s.add(Run(number=1, stream="Physics", started_at=moment))
    with any_db.session() as s:
        run = s.query(Run).one()
        assert run.started_at == moment
        assert run.started_at.tzinfo is not None


def test_naive_timestamp_is_refused(db: Database) -> None:
    with pytest.raises(Exception, match="naive datetime"), db.session() as s:
        s.add(Run(number=2, stream="Physics", started_at=utcnow().replace(tzinfo=None)))
        s.flush()
