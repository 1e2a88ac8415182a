"""The benchmarks' database: emptied and brought to the newest schema before each run."""

from __future__ import annotations

import sqlalchemy as sa

from runwatch.db import Base, Database, import_all_models


def reset(url: str) -> Database:
    """An empty database at the newest schema (every table dropped first, ours and
    Alembic's, so a database left by an earlier run or another version starts clean)."""
    import_all_models()
    db = Database(url)
    with db.engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    db.upgrade()
    return db
