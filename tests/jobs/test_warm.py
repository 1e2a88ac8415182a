"""The zygote's warm engine: one attempt's life rehearsed and rolled back, nothing left."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from runwatch.db import Base, Database, import_all_models
from runwatch.jobs import warm
from tests.workflow.engine import announce_run


def row_counts(db: Database) -> dict[str, int]:
    import_all_models()
    with db.read_session() as s:
        return {
            table.name: s.scalar(sa.select(sa.func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
        }


def test_rehearsing_an_attempt_leaves_no_trace(any_db: Database, tmp_path: Path) -> None:
    announce_run(any_db, tmp_path / "raw", 5, 2)  # real rows beside the rehearsal's
    before = row_counts(any_db)
    assert before["files"] == 2
    warm.rehearse_attempt(any_db)
    assert row_counts(any_db) == before


def test_a_warmed_engine_is_handed_to_one_forked_wrapper(db: Database) -> None:
    assert warm.warm_database(db.url)
    cache = warm._warmed[db.url].engine._compiled_cache  # what the wrapper inherits
    assert len(cache) >= 8, "the rehearsal compiled the wrapper's statements"
    first = warm.database_for(db.url)
    assert first.engine._compiled_cache is cache
    assert warm.database_for(db.url) is not first  # a second caller builds its own
    first.dispose()


def test_warming_a_database_without_schema_fails_softly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert not warm.warm_database(url)
    assert url not in warm._warmed
    warm.database_for(url).dispose()  # the wrapper then builds its own engine
