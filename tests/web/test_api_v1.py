"""The read-only JSON API on the seeded deployment: responses, 404s and 422s."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from runwatch.config import Settings
from runwatch.db import Database
from runwatch.web.app import create_app
from tests.web.test_queries import Seeded, TestClient, seed


@pytest.fixture
def client(db: Database, settings: Settings) -> Iterator[tuple[TestClient, Seeded]]:
    seeded = seed(db, settings)
    with TestClient(create_app(settings, db)) as client:
        yield client, seeded


def test_runs_list_takes_the_pages_parameters(client: tuple[TestClient, Seeded]) -> None:
    api, _ = client
    body = api.get("/api/v1/runs", params={"mode": "completed", "per_page": 2}).json()
    assert [r["number"] for r in body["runs"]] == [102, 101] and body["has_next"]
    assert body["runs"][0]["progress"] == {"done": 1, "total": 3, "failed": 2}
    assert body["runs"][1]["verdict"] == "bad" and body["runs"][1]["events"] == 2000
    calib = api.get("/api/v1/runs", params={"stream": "Calib", "status": "Partly Completed"})
    assert [r["number"] for r in calib.json()["runs"]] == [102]
    by_number = api.get("/api/v1/runs", params={"sort": "number", "page": 2, "per_page": 4})
    assert [r["number"] for r in by_number.json()["runs"]] == [100]


@pytest.mark.parametrize(
    "params",
    [{"page": 0}, {"per_page": 1000}, {"mode": "sometimes"}, {"status": "Done"}, {"days": -1}],
)
def test_bad_parameters_are_422(client: tuple[TestClient, Seeded], params: dict) -> None:
    api, _ = client
    assert api.get("/api/v1/runs", params=params).status_code == 422


def test_run_histograms_and_tasks(client: tuple[TestClient, Seeded]) -> None:
    api, seeded = client
    run = api.get("/api/v1/runs/101").json()
    assert run["status"] == "All Completed" and run["latency_s"] == 600.0
    assert run["merge"]["link"] == "/files/Physics/101/merge/RUN.101.merged.root"
    hists = api.get("/api/v1/runs/101/histograms").json()
    energy = next(h for h in hists["histograms"] if h["path"] == "energy")
    assert energy["file"] == "/files/Physics/101/merge/RUN.101.merged.root"
    assert energy["reference_file"] == "/files/Physics/100/merge/RUN.100.merged.root"
    assert energy["checks"][0]["verdict"] == "bad"
    merge = api.get("/api/v1/runs/101/tasks").json()[-1]
    assert merge["outputs"] == [
        {
            "name": "merged",
            "url": merge["outputs"][0]["url"],
            "link": "/files/Physics/101/merge/RUN.101.merged.root",
            "size": merge["outputs"][0]["size"],
        }
    ]
    tasks = api.get("/api/v1/runs/102/tasks").json()
    assert [t["state"] for t in tasks] == ["done", "failed", "blocked"]
    task = api.get(f"/api/v1/tasks/{seeded.failed_task}").json()
    assert task["run"] == 102 and task["attempts"][0]["exit_code"] == 3


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("/api/v1/runs/999", "no run 999"),
        ("/api/v1/runs/999/histograms", "no run 999"),
        ("/api/v1/runs/999/tasks", "no run 999"),
        ("/api/v1/tasks/99999", "no task 99999"),
        ("/api/v1/trends/nothing", "no trend quantity 'nothing'"),
    ],
)
def test_unknown_things_are_404(client: tuple[TestClient, Seeded], url: str, detail: str) -> None:
    api, _ = client
    response = api.get(url)
    assert (response.status_code, response.json()["detail"]) == (404, detail)


def test_alarms_trends_and_keepup(client: tuple[TestClient, Seeded]) -> None:
    api, seeded = client
    alarms = api.get("/api/v1/alarms").json()
    assert [(a["id"], a["run"], a["state"]) for a in alarms] == [(seeded.alarm, 101, "open")]
    assert api.get("/api/v1/alarms", params={"state": "cleared"}).json() == []
    assert api.get("/api/v1/alarms", params={"state": "nonsense"}).status_code == 422
    assert api.get("/api/v1/trends").json() == ["events", "latency_s"]
    trend = api.get("/api/v1/trends/events").json()
    assert trend["points"] == [{"run": 100, "value": 2100.0}, {"run": 101, "value": 2101.0}]
    keepup = api.get("/api/v1/keepup").json()
    assert keepup["backlog"] == {"ready": 1, "waiting": 3, "running": 1}
    assert [r["number"] for r in keepup["latency"]][:2] == [104, 103]


def test_the_schema_documents_the_responses(client: tuple[TestClient, Seeded]) -> None:
    api, _ = client
    schema = api.get("/openapi.json").json()
    for name in ("RunPage", "RunSummary", "RunHistograms", "TaskView", "AlarmView", "KeepUp"):
        assert name in schema["components"]["schemas"]
    assert "/api/v1/runs/{number}/histograms" in schema["paths"]
    assert "/" not in schema["paths"]  # the pages are not API


def test_the_api_docs_page_works_offline(client: tuple[TestClient, Seeded]) -> None:
    """/docs loads Swagger UI from this server's static files, never from another host."""
    api, _ = client
    page = api.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and not [a for a in assets if "//" in a], assets
    for asset in assets:
        response = api.get(asset)
        assert response.status_code == 200 and len(response.content) > 500, asset


def test_reading_needs_a_login_when_not_public(db: Database, settings: Settings) -> None:
    seed(db, settings)
    private = settings.model_copy(
        update={"web": settings.web.model_copy(update={"public_read": False})}
    )
    with TestClient(create_app(private, db)) as api:
        assert api.get("/api/v1/runs").status_code == 401
        assert api.get("/api/v1/runs/101/histograms").status_code == 401
        assert api.get("/files/Physics/101/merge/RUN.101.merged.root").status_code in (401, 303)
