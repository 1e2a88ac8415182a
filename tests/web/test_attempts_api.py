"""The workers' API (claim, heartbeat, finish with an attempt token) on a real uvicorn
server and a real database."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from runwatch.config import Settings, WebSettings, WorkerSettings
from runwatch.db import Database, utcnow
from runwatch.jobs.environment import ATTEMPT_TOKEN_ENV, job_environment
from runwatch.jobs.tokens import attempt_token, load_secret, secret_path
from runwatch.workflow.service import AttemptOutcome, RetryPolicy, cancel_task, finish_attempt
from runwatch.workflow.states import AttemptState, TaskState
from tests.jobs.test_wrapper import attempt_row, make_attempt
from tests.web.liveserver import LiveServer


def http_settings(settings: Settings, db: Database, api_url: str) -> Settings:
    """The ``settings`` fixture reporting over HTTP, with pages closed to anonymous readers
    (so that a token accepted where it must not be would show)."""
    return settings.model_copy(
        update={
            "database_url": db.url,
            "web": WebSettings(public_read=False),
            "worker": WorkerSettings(report="http", api_url=api_url, report_retry_seconds=5),
        }
    )


@contextlib.contextmanager
def serving(settings: Settings, db: Database) -> Iterator[LiveServer]:
    """A live server for ``db`` whose settings report over HTTP to itself."""
    server = LiveServer(lambda url: http_settings(settings, db, url), db)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def live(settings: Settings, any_db: Database) -> Iterator[LiveServer]:
    with serving(settings, any_db) as server:
        yield server


def token_for(live: LiveServer, attempt_id: int) -> str:
    return attempt_token(load_secret(secret_path(live.settings)), attempt_id)


def call(
    live: LiveServer, attempt_id: int, verb: str, body: dict[str, Any], token: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(
        f"{live.url}/api/v1/attempts/{attempt_id}/{verb}", json=body, headers=headers, timeout=30
    )


def success(live: LiveServer, attempt_id: int, urls: dict[str, str]) -> dict[str, Any]:
    return {
        "state": "succeeded",
        "exit_code": 0,
        "wall_s": 1.25,
        "cpu_s": 0.5,
        "peak_rss_mb": 12.0,
        "log_tail": "all good\n",
        "outputs": [
            {"name": name, "url": url, "size": 3, "adler32": "024d0127", "meta": {"events": 7}}
            for name, url in urls.items()
        ],
    }


def test_a_job_claims_beats_and_finishes_with_its_token(
    live: LiveServer, any_db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(any_db, tmp_path, "true", outputs={"rec": "a.rec"})
    token = token_for(live, attempt_id)
    claim = call(live, attempt_id, "claim", {"host": "wn042.example.org"}, token)
    assert claim.status_code == 200, claim.text
    job = claim.json()["claim"]
    assert job["number"] == 1 and job["spec"]["command"] == "true"
    assert job["workdir"].endswith("attempt-1")
    attempt, task, _ = attempt_row(any_db, attempt_id)
    assert (attempt.state, task.state, attempt.host) == (
        AttemptState.RUNNING,
        TaskState.RUNNING,
        "wn042.example.org",
    )
    first_beat = attempt.heartbeat_at
    time.sleep(0.05)
    beat = call(live, attempt_id, "heartbeat", {}, token)
    assert beat.status_code == 200 and beat.json() == {"running": True}
    attempt, _, _ = attempt_row(any_db, attempt_id)
    assert attempt.heartbeat_at is not None and first_beat is not None
    assert attempt.heartbeat_at > first_beat

    report = success(live, attempt_id, {"rec": "file:///data/a.rec"})
    done = call(live, attempt_id, "finish", report, token)
    assert done.status_code == 200 and done.json() == {"recorded": True, "already": False}
    attempt, task, outputs = attempt_row(any_db, attempt_id)
    assert (attempt.state, task.state) == (AttemptState.SUCCEEDED, TaskState.DONE)
    assert (attempt.exit_code, attempt.wall_s, attempt.log_tail) == (0, 1.25, "all good\n")
    assert [(o.name, o.url, o.size, o.adler32, o.attempt_id) for o in outputs] == [
        ("rec", "file:///data/a.rec", 3, "024d0127", attempt_id)
    ]
    assert outputs[0].meta == {"events": 7}

    # The answer was lost and the worker sends its report again: no error, no change.
    again = call(live, attempt_id, "finish", report, token)
    assert again.status_code == 200 and again.json() == {"recorded": True, "already": True}
    # A different end for the same attempt is refused and changes nothing.
    other = {**report, "state": "failed", "exit_code": 1, "outputs": []}
    refused = call(live, attempt_id, "finish", other, token)
    assert refused.status_code == 409
    assert call(live, attempt_id, "heartbeat", {}, token).json() == {"running": False}
    assert call(live, attempt_id, "claim", {"host": "wn1"}, token).status_code == 409
    attempt, task, after = attempt_row(any_db, attempt_id)
    assert (attempt.state, task.state, attempt.exit_code) == (
        AttemptState.SUCCEEDED,
        TaskState.DONE,
        0,
    )
    assert [o.id for o in after] == [o.id for o in outputs]


def test_a_failure_over_http_retries_the_task_as_the_database_path_does(
    live: LiveServer, any_db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(any_db, tmp_path, "false", retries=1)
    token = token_for(live, attempt_id)
    assert call(live, attempt_id, "claim", {"host": "wn1"}, token).status_code == 200
    report = {"state": "failed", "reason": "exit code 1", "exit_code": 1, "log_tail": "oops"}
    assert call(live, attempt_id, "finish", report, token).json()["recorded"] is True
    attempt, task, outputs = attempt_row(any_db, attempt_id)
    assert (attempt.state, attempt.reason) == (AttemptState.FAILED, "exit code 1")
    assert (task.state, task.failures, task.reason) == (TaskState.RETRYING, 1, "exit code 1")
    assert outputs == []
    assert call(live, attempt_id, "finish", report, token).json()["already"] is True
    _, task, _ = attempt_row(any_db, attempt_id)
    assert task.failures == 1  # the repeated report counted once


def test_tokens_open_their_own_attempt_only(
    live: LiveServer, any_db: Database, tmp_path: Path
) -> None:
    mine = make_attempt(any_db, tmp_path, "true")
    other = make_attempt(any_db, tmp_path, "true")
    token = token_for(live, mine)
    body = {"host": "wn1"}
    forged = token[:-1] + ("1" if token.endswith("0") else "0")
    garbled = (forged, token.replace(f".{mine}.", f".{other}."), "x", "rwa1.x.y")
    for verb in ("claim", "heartbeat", "finish"):
        content = body if verb == "claim" else {"state": "failed"} if verb == "finish" else {}
        assert call(live, other, verb, content, token).status_code == 403, verb
        assert call(live, mine, verb, content, None).status_code == 401, verb
        for bad in garbled:
            assert call(live, mine, verb, content, bad).status_code == 403, (verb, bad)
    # Nothing was claimed by any of that.
    for attempt_id in (mine, other):
        attempt, task, _ = attempt_row(any_db, attempt_id)
        assert (attempt.state, task.state) == (AttemptState.SUBMITTED, TaskState.SUBMITTED)
    # An attempt token is no API token: the rest of the site treats its bearer as anonymous.
    headers = {"Authorization": f"Bearer {token}"}
    _, task, _ = attempt_row(any_db, mine)
    for method, path in [
        ("GET", "/api/v1/runs"),
        ("GET", f"/api/v1/tasks/{task.id}"),
        ("POST", f"/api/v1/tasks/{task.id}/cancel"),
        ("POST", f"/api/v1/tasks/{task.id}/retry"),
    ]:
        answer = httpx.request(method, live.url + path, headers=headers, timeout=30)
        assert answer.status_code == 401, (method, path, answer.text)
    _, task, _ = attempt_row(any_db, mine)
    assert task.state is TaskState.SUBMITTED


@pytest.mark.parametrize("given_up", ["lost", "cancelled"])
def test_a_late_report_after_the_scheduler_gave_up_is_refused_and_changes_nothing(
    live: LiveServer, any_db: Database, tmp_path: Path, given_up: str
) -> None:
    attempt_id = make_attempt(any_db, tmp_path, "true", outputs={"rec": "a.rec"})
    token = token_for(live, attempt_id)
    assert call(live, attempt_id, "claim", {"host": "wn1"}, token).status_code == 200
    now = utcnow()
    with any_db.session() as session:
        if given_up == "lost":  # as the scheduler does when the heartbeats stop
            lost = AttemptOutcome(AttemptState.LOST, reason="no heartbeat for 130 s")
            assert finish_attempt(session, attempt_id, lost, RetryPolicy(), now)
        else:
            _, task, _ = attempt_row(any_db, attempt_id)
            cancel_task(session, task.id, now)
    before = attempt_row(any_db, attempt_id)
    assert call(live, attempt_id, "heartbeat", {}, token).json() == {"running": False}
    report = success(live, attempt_id, {"rec": "file:///data/a.rec"})
    late = call(live, attempt_id, "finish", report, token)
    assert late.status_code == 409, late.text
    attempt, task, outputs = attempt_row(any_db, attempt_id)
    assert (attempt.state, attempt.exit_code, attempt.log_tail) == (
        before[0].state,
        before[0].exit_code,
        before[0].log_tail,
    )
    assert attempt.state is not AttemptState.SUCCEEDED
    assert (task.state, task.failures) == (before[1].state, before[1].failures)
    assert task.state in (TaskState.RETRYING, TaskState.CANCELLED)
    assert outputs == []


def test_a_worker_may_not_declare_its_attempt_lost_or_send_junk(
    live: LiveServer, any_db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(any_db, tmp_path, "true")
    token = token_for(live, attempt_id)
    assert call(live, attempt_id, "claim", {"host": "wn1"}, token).status_code == 200
    for report in (
        {"state": "lost"},
        {"state": "cancelled"},
        {"state": "succeeded", "command": "rm -rf /"},
        {"state": "succeeded", "outputs": [{"name": "x", "url": "u", "size": -1, "adler32": ""}]},
    ):
        assert call(live, attempt_id, "finish", report, token).status_code == 422, report
    attempt, _, _ = attempt_row(any_db, attempt_id)
    assert attempt.state is AttemptState.RUNNING


def test_the_scheduler_and_the_server_share_one_secret_made_private(
    settings: Settings, db: Database
) -> None:
    settings = http_settings(settings, db, "https://runwatch.example.org")
    path = secret_path(settings)
    assert path == Path(settings.work_root) / "secrets" / "attempt-token.key"
    assert not path.exists()
    env = job_environment(settings, 17)  # the scheduler needs it first here: it makes it
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert env[ATTEMPT_TOKEN_ENV] == attempt_token(load_secret(path), 17)
    assert "RUNWATCH_DATABASE_URL" not in env and db.url not in env.values()
    assert env["RUNWATCH_API_URL"] == "https://runwatch.example.org"
    assert env[ATTEMPT_TOKEN_ENV] != job_environment(settings, 18)[ATTEMPT_TOKEN_ENV]
    # A configured file is used as it is.
    own = path.parent / "other.key"
    own.write_text("s" * 40)
    os.chmod(own, 0o600)
    worker = settings.worker.model_copy(update={"token_secret_file": str(own)})
    moved = settings.model_copy(update={"worker": worker})
    assert job_environment(moved, 17)[ATTEMPT_TOKEN_ENV] == attempt_token(b"s" * 40, 17)


def test_report_http_without_an_api_url_is_refused(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="needs api_url"):
        WorkerSettings(report="http")
    unchecked = WorkerSettings.model_construct(report="http", api_url="")  # as tests build
    with pytest.raises(ValueError, match="api_url"):
        job_environment(settings.model_copy(update={"worker": unchecked}), 1)
