"""Serving files under the data root and logs under the work root, and nothing else."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from runwatch.config import Settings
from runwatch.db import Database
from runwatch.web.app import create_app
from runwatch.web.files import contained, file_link, serve_file
from tests.web.test_queries import Seeded, TestClient, seed

MERGED = "Physics/101/merge/RUN.101.merged.root"


@pytest.fixture
def client(db: Database, settings: Settings) -> Iterator[tuple[TestClient, Seeded]]:
    seeded = seed(db, settings)
    # Something secret beside the data root, and a link from inside it to there.
    secret = Path(settings.data_root).parent / "runwatch.toml"
    secret.write_text('session_secret = "do not serve me"\n')
    os.symlink(secret, Path(settings.data_root) / "escape.toml")
    os.symlink(Path(settings.data_root).parent, Path(settings.data_root) / "up")
    with TestClient(create_app(settings, db)) as client:
        yield client, seeded


def test_a_merged_file_is_served_with_ranges(client: tuple[TestClient, Seeded]) -> None:
    api, seeded = client
    whole = api.get(f"/files/{MERGED}")
    assert whole.status_code == 200
    assert whole.content == (seeded.data / MERGED).read_bytes()
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "application/octet-stream"
    head = api.head(f"/files/{MERGED}")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(whole.content))
    part = api.get(f"/files/{MERGED}", headers={"Range": "bytes=0-3"})
    assert (part.status_code, part.content) == (206, b"root")
    assert part.headers["content-range"].startswith("bytes 0-3/")


@pytest.mark.parametrize(
    "path",
    [
        "/files/%2e%2e/runwatch.toml",
        "/files/%2E%2E%2Fruntwatch.toml",
        "/files/Physics/%2e%2e/%2e%2e/runwatch.toml",
        "/files/escape.toml",  # a symbolic link out of the data root
        "/files/up/runwatch.toml",  # through a linked directory
        "/files//etc/passwd",  # absolute
        "/files/%2Fetc%2Fpasswd",
        "/files/Physics",  # a directory
        "/files/Physics/101/merge/nothing.root",
    ],
)
def test_nothing_outside_the_data_root_is_served(
    client: tuple[TestClient, Seeded], path: str
) -> None:
    api, _ = client
    response = api.get(path)
    assert response.status_code == 404
    assert b"do not serve me" not in response.content


def test_dot_dot_reaching_the_route_is_refused(settings: Settings, db: Database) -> None:
    """A client sending '..' unnormalised (httpx resolves it before sending, so the route
    is called directly): 404 even where the path would resolve inside the data root."""
    seed(db, settings)
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(settings=settings)))
    for path in ("../runwatch.toml", "Physics/../Physics/101/merge/RUN.101.merged.root"):
        with pytest.raises(HTTPException) as refused:
            serve_file(path, request)  # type: ignore[arg-type]
        assert refused.value.status_code == 404
    assert serve_file(MERGED, request).status_code == 200  # type: ignore[arg-type]


def test_containment_rules(tmp_path: Path) -> None:
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "f.root").write_bytes(b"x")
    (tmp_path / "out.txt").write_text("x")
    root = tmp_path / "root"
    assert contained(root, "a/f.root") == (root / "a" / "f.root").resolve()
    for bad in ("../out.txt", "a/../../out.txt", str(tmp_path / "out.txt"), "", "a", "a/\x00"):
        assert contained(root, bad) is None


def test_logs_are_served_from_the_work_root_only(
    client: tuple[TestClient, Seeded], db: Database
) -> None:
    api, seeded = client
    task = api.get("/api/v1/runs/101/tasks").json()[0]
    log = api.get(f"/tasks/{task['id']}/log.txt")
    assert log.status_code == 200 and "all good" in log.text
    assert log.headers["content-type"].startswith("text/plain")
    # A log path outside the work root (a tampered row) is not served.
    import sqlalchemy as sa

    from runwatch.workflow.models import Attempt

    with db.session() as session:
        session.execute(
            sa.update(Attempt)
            .where(Attempt.task_id == task["id"])
            .values(log_path=str(seeded.data / MERGED))
        )
    assert api.get(f"/tasks/{task['id']}/log.txt").status_code == 404
    assert api.get("/tasks/99999/log.txt").status_code == 404


def test_links_are_url_encoded(settings: Settings) -> None:
    link = file_link(settings)
    odd = Path(settings.data_root) / "Physics" / "run #1?.root"
    assert link(str(odd)) == "/files/Physics/run%20%231%3F.root"
    assert link("/elsewhere/x.root") is None
    assert link(f"file://{settings.data_root}/../x.root") is None
