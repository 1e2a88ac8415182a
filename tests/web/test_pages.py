"""Every page renders from the seeded deployment, with its content and its front-end hooks,
and works without JavaScript (GET forms, tab links, server-drawn SVG)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from runwatch.config import Settings
from runwatch.db import Database
from runwatch.web import pages
from runwatch.web.app import create_app
from runwatch.web.auth import Principal
from runwatch.web.models import Role
from tests.web.test_queries import Seeded, TestClient, seed


@pytest.fixture
def client(db: Database, settings: Settings) -> Iterator[tuple[TestClient, Seeded]]:
    seeded = seed(db, settings)
    with TestClient(create_app(settings, db)) as client:
        yield client, seeded


def rows(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr data-run-row="(\d+)"', html)]


def test_recent_runs_page_filters_with_a_plain_form(client: tuple[TestClient, Seeded]) -> None:
    web, _ = client
    page = web.get("/")
    assert page.status_code == 200 and rows(page.text) == [104, 103, 102, 101, 100]
    assert '<form method="get" action="/"' in page.text
    assert 'data-page="runs"' in page.text and "/static/runwatch.js" in page.text
    assert '<span class="verdict bad" title="final merge">bad</span>' in page.text
    completed = web.get("/", params={"mode": "completed", "stream": "Physics"})
    assert rows(completed.text) == [101, 100]
    # A browser sends every field, empty ones too; nonsense falls back to the defaults.
    form = {"mode": "recent", "status": "", "stream": "", "number": "", "days": "x", "page": ""}
    assert rows(web.get("/", params=form).text) == [104, 103, 102, 101, 100]
    assert rows(web.get("/", params={"number": "103"}).text) == [103]
    assert rows(web.get("/", params={"status": "Data Taking"}).text) == [104]
    paged = web.get("/", params={"sort": "number", "per_page": "2", "page": "2"}).text
    assert rows(paged) == [102, 101]
    assert "page=3" in paged and "page=1" in paged
    # Paging keeps the filters, encoded.
    done = web.get("/", params={"status": "All Completed", "per_page": "1"}).text
    assert rows(done) == [101] and "status=All+Completed&amp;per_page=1&amp;page=2" in done


def test_run_page_tabs(client: tuple[TestClient, Seeded]) -> None:
    web, _ = client
    base = web.get("/runs/101")
    assert base.status_code == 200
    for text in ("All Completed", "2,000", "10m00s", "RUN.101.001.raw", 'data-run="101"'):
        assert text in base.text
    assert 'href="/files/Physics/101/merge/RUN.101.merged.root"' in base.text
    for tab in ("calib", "rec", "pmt", "jobs"):
        assert f'href="/runs/101?tab={tab}"' in base.text


def test_calib_and_rec_tabs_emit_the_histogram_hooks(client: tuple[TestClient, Seeded]) -> None:
    web, _ = client
    merged = "/files/Physics/101/merge/RUN.101.merged.root"
    rec = web.get("/runs/101", params={"tab": "rec"}).text
    energy = re.search(r'<div class="hist"[^>]*data-object="energy"[^>]*>', rec)
    assert energy is not None
    assert f'data-file="{merged}"' in energy.group(0)
    assert 'data-reference-file="/files/Physics/100/merge/RUN.100.merged.root"' in energy.group(0)
    assert 'data-verdict="bad"' in energy.group(0)
    assert "KS p=0.001 &lt; 0.01 (bad)" in rec and "2 of 2 files" in rec
    # The merged file's metadata puts pmt_hits and n_events under Calib, the rest under Rec.
    calib = web.get("/runs/101", params={"tab": "calib"}).text
    assert sorted(re.findall(r'data-object="(\w+)"', calib)) == ["n_events", "pmt_hits"]
    assert 'data-object="pmt_hits"' not in rec


def test_pmt_tab_lists_counts_cuts_and_changes(client: tuple[TestClient, Seeded]) -> None:
    web, _ = client
    page = web.get("/runs/101", params={"tab": "pmt"}).text
    assert '<div id="pmt-map" data-src="/api/v1/runs/101/pmt"></div>' in page
    assert "<code>dead = 0.01</code>" in page
    assert "Compared with run" in page and "2 PMTs changed" in page
    assert '<td>7</td><td>normal</td><td class="dead">dead</td>' in page
    first = web.get("/runs/100", params={"tab": "pmt"}).text
    assert "No previous good run" in first


def as_role(monkeypatch: pytest.MonkeyPatch, role: Role | None) -> None:
    """Pages see ``role`` as the principal (None: anonymous); logging in is auth's test."""
    principal = None if role is None else Principal(role.value, role, "session")
    monkeypatch.setattr(pages, "current_principal", lambda request: principal)


ROLES = [(None, False), (Role.VIEWER, False), (Role.SHIFTER, True), (Role.ADMIN, True)]


@pytest.mark.parametrize(("role", "allowed"), ROLES)
def test_jobs_tab_shows_actions_to_shifters_and_above(
    client: tuple[TestClient, Seeded],
    monkeypatch: pytest.MonkeyPatch,
    role: Role | None,
    allowed: bool,
) -> None:
    web, seeded = client
    as_role(monkeypatch, role)
    retry = f'action="/actions/tasks/{seeded.failed_task}/retry"'
    cancel = f'action="/actions/tasks/{seeded.running_task}/cancel"'
    jobs = web.get("/runs/102", params={"tab": "jobs"}).text
    assert "exit code 3" in jobs and "worker-1" in jobs
    merged = web.get("/runs/101", params={"tab": "jobs"}).text
    assert '<a href="/files/Physics/101/merge/RUN.101.merged.root"' in merged  # an output
    assert (retry in jobs) is allowed
    assert (cancel in web.get("/runs/104", params={"tab": "jobs"}).text) is allowed
    form = re.search(rf'<form[^>]*{retry}[^>]*><input type="hidden" name="csrf_token"', jobs)
    assert (form is not None) is allowed


@pytest.mark.parametrize(("role", "allowed"), ROLES)
def test_alarms_page_with_the_acknowledge_form(
    client: tuple[TestClient, Seeded],
    monkeypatch: pytest.MonkeyPatch,
    role: Role | None,
    allowed: bool,
) -> None:
    web, seeded = client
    as_role(monkeypatch, role)
    page = web.get("/alarms")
    assert page.status_code == 200 and "run 101 is BAD" in page.text
    assert (f'action="/actions/alarms/{seeded.alarm}/ack"' in page.text) is allowed
    assert ('name="comment"' in page.text) is allowed
    assert "No alarms." in web.get("/alarms", params={"state": "cleared"}).text


def test_trends_keepup_and_log_pages(client: tuple[TestClient, Seeded]) -> None:
    web, _ = client
    trends = web.get("/trends", params={"quantity": "events"}).text
    assert '<svg class="trend"' in trends and "<polyline" in trends
    assert trends.count("<circle") == 2 and "run 101: 2101" in trends
    assert "No trend points yet" not in trends
    keepup = web.get("/keepup").text
    assert "Backlog" in keepup and '<td class="num">3</td>' in keepup  # 3 waiting
    assert "10m00s" in keepup and "so far" in keepup
    task = web.get("/api/v1/runs/101/tasks").json()[0]["id"]
    log = web.get(f"/tasks/{task}/log").text
    assert "all good" in log and f"/tasks/{task}/log.txt?attempt=1" in log
    other = web.get("/api/v1/runs/101/tasks").json()[1]["id"]  # no log file: its tail
    assert "the tail of the log" in web.get(f"/tasks/{other}/log").text


def test_unknown_run_and_task_pages_are_404(client: tuple[TestClient, Seeded]) -> None:
    web, _ = client
    for url in ("/runs/999", "/tasks/99999/log"):
        page = web.get(url)
        assert page.status_code == 404 and "Not found" in page.text


def test_pages_on_an_empty_database(db: Database, settings: Settings) -> None:
    with TestClient(create_app(settings, db)) as web:
        for url in ("/", "/alarms", "/trends", "/keepup"):
            assert web.get(url).status_code == 200, url
        assert "No runs match." in web.get("/").text
