"""Why the batch system keeps a job waiting, as operators see it: ``runwatch tasks show``
and the web's view of a task's attempts."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from runwatch import cli
from runwatch.config import CONFIG_ENV
from runwatch.db import Database
from runwatch.web.queries import attempt_view
from runwatch.workflow.models import ATTEMPTS, Attempt
from tests.jobs.test_wrapper import make_attempt


@pytest.fixture
def waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Database, int]:
    """A deployment whose one attempt waits in the batch system for resources."""
    url = f"sqlite:///{tmp_path / 'runwatch.db'}"
    (tmp_path / "runwatch.toml").write_text(f'database_url = "{url}"\n', encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "runwatch.toml"))
    monkeypatch.setenv("COLUMNS", "250")  # rich tables unwrapped, whatever the terminal
    db = Database(url)
    db.upgrade()
    attempt_id = make_attempt(db, tmp_path, "true")
    with db.transaction() as tx:
        tx.execute(
            sa.update(ATTEMPTS)
            .where(ATTEMPTS.c.id == attempt_id)
            .values(batch_status="Resources, requeued 1x")
        )
    return db, attempt_id


def test_tasks_show_says_why_the_job_waits(waiting: tuple[Database, int]) -> None:
    db, attempt_id = waiting
    with db.session() as s:
        attempt = s.get(Attempt, attempt_id)
        assert attempt is not None
        task_id = attempt.task_id
    result = CliRunner().invoke(cli.build(), ["tasks", "show", str(task_id)])
    assert result.exit_code == 0, result.output
    assert "batch" in result.output and "Resources, requeued 1x" in result.output


def test_the_web_shows_why_the_job_waits(waiting: tuple[Database, int]) -> None:
    db, attempt_id = waiting
    with db.session() as s:
        attempt = s.get(Attempt, attempt_id)
        assert attempt is not None
        assert attempt_view(attempt).batch_status == "Resources, requeued 1x"
