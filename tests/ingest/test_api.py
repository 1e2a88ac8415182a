"""POST and GET /api/v1/messages through the real app (FastAPI's TestClient, real SQLite)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import Run
from runwatch.config import Settings
from runwatch.db import Database
from runwatch.ingest.models import ReceivedMessage
from runwatch.web.app import create_app

# Starlette's TestClient now prefers the httpx2 package; httpx (a runwatch dependency) still
# works, and this one import is the only place the deprecation is tolerated.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

AUTH = {"Authorization": "Bearer test-token"}


def message(seq: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"RUN.5.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.{seq:03d}_J25.rtraw",
        "url": f"https://dcache.example/raw/5/{seq}.rtraw",
        "run": 5,
        "stream": "Physics",
        "sequence": seq,
    }
    body.update(changes)
    return body


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db)) as client:
        yield client


def count(db: Database) -> int:
    with db.session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(ReceivedMessage)) or 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-token"}, {"Authorization": ""}],
)
def test_without_the_right_token_nothing_is_stored(
    client: TestClient, db: Database, headers: dict[str, str]
) -> None:
    response = client.post("/api/v1/messages", json=message(1), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/v1/messages", headers=headers).status_code == 401
    assert count(db) == 0


def test_no_configured_token_refuses_everyone(settings: Settings, db: Database) -> None:
    settings.ingest.api_tokens = []
    with TestClient(create_app(settings, db)) as client:
        response = client.post("/api/v1/messages", json=message(1), headers=AUTH)
    assert response.status_code == 401


def test_one_message_object(client: TestClient, db: Database) -> None:
    response = client.post("/api/v1/messages", content=json.dumps(message(1)), headers=AUTH)
    assert response.status_code == 200
    (receipt,) = response.json()["receipts"]
    assert receipt["status"] == "accepted"
    assert receipt["reason"] is None
    assert isinstance(receipt["file_id"], int)
    assert count(db) == 1


def test_a_list_with_a_reject_is_422_and_all_is_stored(client: TestClient, db: Database) -> None:
    body = [message(1), message(2, adler32="nothex!"), message(1)]
    response = client.post("/api/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 422
    receipts = response.json()["receipts"]
    assert [r["status"] for r in receipts] == ["accepted", "rejected", "duplicate"]
    assert receipts[1]["reason"] == "field 'adler32': not 8 hexadecimal digits: 'nothex!'"
    assert receipts[1]["file_id"] is None
    assert count(db) == 3


def test_a_body_that_is_not_json_is_stored_once_as_rejected(
    client: TestClient, db: Database
) -> None:
    response = client.post("/api/v1/messages", content=b"<xml/>", headers=AUTH)
    assert response.status_code == 422
    (receipt,) = response.json()["receipts"]
    assert receipt["reason"] == "not JSON: Expecting value at line 1 column 1"
    detail = client.get(f"/api/v1/messages/{receipt['message_id']}", headers=AUTH).json()
    assert (detail["body"], detail["source"], detail["origin"]) == ("<xml/>", "http", "testclient")


def test_listing_recent_messages(client: TestClient) -> None:
    client.post("/api/v1/messages", json=[message(1), message(2, run=0)], headers=AUTH)
    everything = client.get("/api/v1/messages", headers=AUTH).json()["messages"]
    assert [m["status"] for m in everything] == ["rejected", "accepted"]  # newest first
    assert everything[1]["file_name"] == message(1)["name"]
    assert "body" not in everything[0]
    rejected = client.get("/api/v1/messages?status=rejected&limit=5", headers=AUTH).json()
    assert [m["reason"] for m in rejected["messages"]] == [
        "field 'run': must be a positive integer"
    ]
    assert len(client.get("/api/v1/messages?limit=1", headers=AUTH).json()["messages"]) == 1
    assert client.get("/api/v1/messages?status=lost", headers=AUTH).status_code == 422
    assert client.get("/api/v1/messages/999", headers=AUTH).status_code == 404


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_a_long_list_is_committed_in_parts_so_planning_starts_early(
    client: TestClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each COMMIT_EVERY messages are committed (and the scheduler nudged) as they are
    stored; the response still holds every receipt, and a resent body only adds
    duplicates."""
    from runwatch.ingest import api

    seen: list[int] = []
    real_nudge = api.nudge

    def counting_nudge(path: str | None) -> None:
        seen.append(count(db))  # what another connection sees committed at this moment
        real_nudge(path)

    body = [message(seq) for seq in range(1, 2 * api.COMMIT_EVERY + 6)]
    monkeypatch.setattr(api, "nudge", counting_nudge)
    response = client.post("/api/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 200
    assert len(response.json()["receipts"]) == len(body)
    assert seen == [api.COMMIT_EVERY, 2 * api.COMMIT_EVERY, len(body)]
    again = client.post("/api/v1/messages", json=body, headers=AUTH).json()["receipts"]
    assert {r["status"] for r in again} == {"duplicate"}
    assert count(db) == 2 * len(body)


def test_a_part_that_fails_on_a_database_error_is_stored_again(
    client: TestClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadlock with the planner rolls back one part of a list; it is received again,
    and nothing is lost or stored twice."""
    from runwatch.ingest import service

    real_store = service._store
    calls = {"n": 0}

    def deadlocking_store(*args: Any) -> list[service.Receipt]:
        calls["n"] += 1
        if calls["n"] == 2:  # in the second part, after its files were inserted
            raise sa.exc.OperationalError(
                "INSERT INTO received_messages ...", {}, Exception("deadlock")
            )
        return real_store(*args)

    monkeypatch.setattr(service, "_store", deadlocking_store)
    body = [message(seq) for seq in range(1, 26)]
    response = client.post("/api/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 200
    assert [r["status"] for r in response.json()["receipts"]] == ["accepted"] * 25
    assert calls["n"] == 4  # three parts, the second twice
    assert count(db) == 25
    with db.session() as session:
        assert session.scalar(sa.select(Run.n_files)) == 25
