"""The mutating routes, for every role and every way of proving it: a session (login
form), an API token, a client-certificate DN from a trusted proxy, and the same DN header
forged from an address that is no proxy. Refused attempts change nothing and are audited."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runwatch.db import Database
from runwatch.dqm.models import AlarmState
from runwatch.web.models import Role
from runwatch.workflow.states import TaskState
from tests.web.authkit import (
    DN_HEADER,
    OUTSIDER,
    PROXY,
    Site,
    TestClient,
    add_alarm,
    add_task,
    alarm_row,
    audit_entries,
    build_site,
    dn,
    login,
    module_site,
    task_state,
)

BACK = "/runs/1?tab=jobs"


@dataclass(frozen=True)
class Caller:
    """Who posts: a role (None: nobody) and how it is proved."""

    role: Role | None
    via: str  # session, token, x509, forged (a DN header from an untrusted address), none

    @property
    def id(self) -> str:
        return f"{self.via}-{self.role.value if self.role else 'anonymous'}"

    @property
    def authenticated(self) -> bool:
        return self.via in ("session", "token", "x509")


CALLERS = [Caller(None, "none")] + [
    Caller(role, via) for via in ("session", "token", "x509", "forged") for role in Role
]


@dataclass(frozen=True)
class Endpoint:
    """A mutating route: how to set its target up, call it, and see whether it acted."""

    name: str
    form: bool
    make: Callable[[Database], int]
    path: str
    acted: Callable[[Database, int, str], bool]  # (db, target id, actor name)
    unchanged: Callable[[Database, int], bool]
    audit: tuple[str, str]  # action, target kind


def _acked(db: Database, alarm_id: int, actor: str) -> bool:
    return alarm_row(db, alarm_id)[:2] == (AlarmState.ACKNOWLEDGED, actor)


def _task(state: TaskState) -> Callable[[Database], int]:
    return lambda db: add_task(db, state)


def _in(state: TaskState) -> Callable[..., bool]:
    return lambda db, task_id, *_: task_state(db, task_id) is state


ENDPOINTS = [
    Endpoint(
        f"{kind}-{verb}",
        kind == "form",
        _task(before),
        prefix + "/tasks/{id}/" + verb,
        _in(after),
        _in(before),
        (f"task.{verb}", "task"),
    )
    for kind, prefix in (("form", "/actions"), ("api", "/api/v1"))
    for verb, before, after in (
        ("retry", TaskState.FAILED, TaskState.READY),
        ("cancel", TaskState.READY, TaskState.CANCELLED),
    )
] + [
    Endpoint(
        f"{kind}-ack",
        kind == "form",
        add_alarm,
        prefix + "/alarms/{id}/ack",
        _acked,
        lambda db, alarm_id: alarm_row(db, alarm_id) == (AlarmState.OPEN, None, None),
        ("alarm.ack", "alarm"),
    )
    for kind, prefix in (("form", "/actions"), ("api", "/api/v1"))
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from module_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def callers(site: Site) -> Iterator[dict[Caller, tuple[TestClient, str]]]:
    """A client for each caller, with the CSRF token a page would have given it."""
    made: dict[Caller, tuple[TestClient, str]] = {}
    try:
        for caller in CALLERS:
            client = _client(site, caller)
            made[caller] = (client, client.get("/api/v1/whoami").json()["csrf_token"])
        yield made
    finally:
        for client, _ in made.values():
            client.close()


def _client(site: Site, caller: Caller) -> TestClient:
    assert caller.role is not None or caller.via == "none"
    if caller.via == "session":
        client = site.client()
        assert caller.role is not None
        assert login(client, caller.role.value).status_code == 303
        return client
    if caller.via == "token":
        assert caller.role is not None
        return site.client(headers={"Authorization": f"Bearer {site.tokens[caller.role]}"})
    if caller.via in ("x509", "forged"):
        assert caller.role is not None
        peer = PROXY if caller.via == "x509" else OUTSIDER
        return site.client(peer, headers={DN_HEADER: dn(caller.role)})
    return site.client()


def post(endpoint: Endpoint, client: TestClient, target: int, csrf: str | None) -> Any:
    path = endpoint.path.format(id=target)
    if endpoint.form:
        data = {"next": BACK, "comment": "on it"}
        if csrf is not None:
            data["csrf_token"] = csrf
        return client.post(path, data=data, headers={"Accept": "text/html"})
    headers = {"X-CSRF-Token": csrf} if csrf is not None else {}
    body = {"comment": "on it"} if endpoint.audit[0] == "alarm.ack" else None
    return client.post(path, json=body, headers=headers)


def actor_name(caller: Caller) -> str:
    assert caller.role is not None
    return {"session": caller.role.value, "token": f"{caller.role.value}-script"}.get(
        caller.via, dn(caller.role)
    )


@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: c.id)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_every_action_for_every_caller(
    site: Site,
    callers: dict[Caller, tuple[TestClient, str]],
    endpoint: Endpoint,
    caller: Caller,
) -> None:
    client, csrf = callers[caller]
    target = endpoint.make(site.db)
    before = len(audit_entries(site.db))
    response = post(endpoint, client, target, csrf)

    entries = audit_entries(site.db)
    assert len(entries) == before + 1, "every attempt is audited exactly once"
    entry = entries[-1]
    assert (entry.action, entry.target) == (endpoint.audit[0], f"{endpoint.audit[1]}:{target}")
    assert entry.remote == client._transport.client[0]  # type: ignore[attr-defined]

    allowed = caller.authenticated and caller.role is not None and caller.role.allows(Role.SHIFTER)
    if allowed:
        assert caller.role is not None
        assert response.status_code == (303 if endpoint.form else 200), response.text
        if endpoint.form:
            assert response.headers["location"] == BACK
        assert endpoint.acted(site.db, target, actor_name(caller))
        assert (entry.outcome, entry.actor, entry.via) == ("done", actor_name(caller), caller.via)
        assert entry.role == caller.role.value
        return
    assert endpoint.unchanged(site.db, target), "a refused attempt must change nothing"
    assert entry.outcome == "refused"
    if caller.authenticated:  # a viewer
        assert response.status_code == 403
        assert entry.detail["reason"] == "needs the shifter role"
        return
    # Anonymous, or a forged DN header, which is ignored entirely.
    if endpoint.form:
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=/runs/1%3Ftab%3Djobs"
    else:
        assert response.status_code == 401
    assert (entry.actor, entry.via, entry.role) == ("anonymous", "anonymous", None)
    if caller.via == "forged":
        assert caller.role is not None
        assert entry.detail["ignored_dn_header"] == dn(caller.role)


@pytest.mark.parametrize("csrf", ["", "wrong-token", None], ids=["empty", "wrong", "missing"])
@pytest.mark.parametrize("via", ["session", "x509"])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_browser_callers_need_the_csrf_token(
    site: Site,
    callers: dict[Caller, tuple[TestClient, str]],
    endpoint: Endpoint,
    via: str,
    csrf: str | None,
) -> None:
    """Cookies and client certificates are sent by the browser by itself: without the page's
    token, an admin's POST is refused. Tokens need none (see the table above)."""
    client, _ = callers[Caller(Role.ADMIN, via)]
    target = endpoint.make(site.db)
    response = post(endpoint, client, target, csrf)
    assert response.status_code == 403
    assert endpoint.unchanged(site.db, target)
    entry = audit_entries(site.db)[-1]
    assert (entry.outcome, entry.via) == ("refused", via)
    assert entry.detail["reason"] == "missing or wrong CSRF token"


def test_one_sessions_token_does_not_serve_another(
    site: Site, callers: dict[Caller, tuple[TestClient, str]]
) -> None:
    client, _ = callers[Caller(Role.ADMIN, "session")]
    _, other = callers[Caller(Role.SHIFTER, "session")]
    _, certificate = callers[Caller(Role.ADMIN, "x509")]
    task = add_task(site.db, TaskState.FAILED)
    for token in (other, certificate):
        assert post(ENDPOINTS[0], client, task, token).status_code == 403
    assert task_state(site.db, task) is TaskState.FAILED


@pytest.mark.parametrize(
    ("verb", "state", "reason"),
    [
        ("retry", TaskState.RUNNING, "task {id} is running; only failed, cancelled or done"),
        ("cancel", TaskState.DONE, "task {id} is done and cannot be cancelled"),
    ],
)
def test_an_action_not_allowed_in_the_tasks_state_is_409_with_the_reason(
    site: Site,
    callers: dict[Caller, tuple[TestClient, str]],
    verb: str,
    state: TaskState,
    reason: str,
) -> None:
    client, _ = callers[Caller(Role.SHIFTER, "token")]
    task = add_task(site.db, state)
    response = client.post(f"/api/v1/tasks/{task}/{verb}")
    assert response.status_code == 409
    assert response.json()["detail"].startswith(reason.format(id=task))
    assert task_state(site.db, task) is state
    entry = audit_entries(site.db)[-1]
    assert (entry.outcome, entry.detail["status"]) == ("failed", 409)

    browser, csrf = callers[Caller(Role.SHIFTER, "session")]
    page = browser.post(
        f"/actions/tasks/{task}/{verb}",
        data={"csrf_token": csrf, "next": BACK},
        headers={"Accept": "text/html"},
    )
    assert page.status_code == 409
    assert reason.format(id=task) in page.text
    assert f'href="{BACK}"' in page.text.replace("&amp;", "&")


def test_missing_targets_are_404(site: Site, callers: dict[Caller, tuple[TestClient, str]]) -> None:
    client, _ = callers[Caller(Role.ADMIN, "token")]
    assert client.post("/api/v1/tasks/999999/retry").status_code == 404
    assert client.post("/api/v1/tasks/999999/cancel").status_code == 404
    assert client.post("/api/v1/alarms/999999/ack", json={"comment": "x"}).status_code == 404
    assert (
        client.post(f"/api/v1/tasks/{add_task(site.db, TaskState.FAILED)}/explode").status_code
        == 404
    )
    assert audit_entries(site.db)[-1].detail["status"] == 404


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"comment": ""}', b'{"comment": 5}', b'{"comment": "x", "y": 1}'],
)
def test_a_bad_ack_body_is_422_after_authorisation(
    site: Site, callers: dict[Caller, tuple[TestClient, str]], body: bytes
) -> None:
    shifter, _ = callers[Caller(Role.SHIFTER, "token")]
    alarm = add_alarm(site.db)
    headers = {"Content-Type": "application/json"}
    response = shifter.post(f"/api/v1/alarms/{alarm}/ack", content=body, headers=headers)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert alarm_row(site.db, alarm)[0] is AlarmState.OPEN
    # Nobody learns anything about the body before being allowed to act.
    anonymous, _ = callers[Caller(None, "none")]
    assert (
        anonymous.post(f"/api/v1/alarms/{alarm}/ack", content=body, headers=headers).status_code
        == 401
    )


def test_an_ack_form_without_a_comment_is_refused(
    site: Site, callers: dict[Caller, tuple[TestClient, str]]
) -> None:
    client, csrf = callers[Caller(Role.SHIFTER, "session")]
    alarm = add_alarm(site.db)
    response = client.post(
        f"/actions/alarms/{alarm}/ack",
        data={"csrf_token": csrf, "comment": "  "},
        headers={"Accept": "text/html"},
    )
    assert response.status_code == 422
    assert "comment" in response.text
    assert alarm_row(site.db, alarm)[0] is AlarmState.OPEN


def test_an_ack_records_who_and_uses_ack_hours(
    site: Site, callers: dict[Caller, tuple[TestClient, str]]
) -> None:
    client, _ = callers[Caller(Role.EXPERT, "token")]
    alarm = add_alarm(site.db)
    response = client.post(f"/api/v1/alarms/{alarm}/ack", json={"comment": "calling the expert"})
    assert response.status_code == 200
    body = response.json()["alarm"]
    assert (body["state"], body["acknowledged_by"]) == ("acknowledged", "expert-script")
    assert alarm_row(site.db, alarm) == (
        AlarmState.ACKNOWLEDGED,
        "expert-script",
        "calling the expert",
    )
    import datetime as dt

    expires = dt.datetime.fromisoformat(body["ack_expires_at"])
    left = expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=3.9) < left <= dt.timedelta(hours=4)  # [alarms] ack_hours = 4


@pytest.mark.parametrize(
    ("referer", "next_field", "expected"),
    [
        ("http://testserver/alarms?state=open", None, "/alarms?state=open"),
        ("https://evil.example/alarms", None, "/alarms"),
        (None, "//evil.example/x", "/alarms"),
        (None, "https://evil.example/x", "/alarms"),
        (None, "/run/7", "/run/7"),
    ],
)
def test_a_form_returns_to_a_page_of_this_site_only(
    site: Site,
    callers: dict[Caller, tuple[TestClient, str]],
    referer: str | None,
    next_field: str | None,
    expected: str,
) -> None:
    client, csrf = callers[Caller(Role.SHIFTER, "session")]
    data = {"csrf_token": csrf, "comment": "ok"}
    if next_field is not None:
        data["next"] = next_field
    headers = {"Accept": "text/html"}
    if referer is not None:
        headers["Referer"] = referer
    response = client.post(f"/actions/alarms/{add_alarm(site.db)}/ack", data=data, headers=headers)
    assert response.status_code == 303
    assert response.headers["location"] == expected


def test_the_audit_log_is_for_admins(
    site: Site, callers: dict[Caller, tuple[TestClient, str]]
) -> None:
    shifter, _ = callers[Caller(Role.SHIFTER, "token")]
    admin, _ = callers[Caller(Role.ADMIN, "session")]
    task = add_task(site.db, TaskState.FAILED)
    assert shifter.post(f"/api/v1/tasks/{task}/retry").status_code == 200
    assert shifter.get("/api/v1/audit").status_code == 403
    assert callers[Caller(None, "none")][0].get("/api/v1/audit").status_code == 401
    entries = admin.get("/api/v1/audit", params={"action": "task.retry", "limit": 1}).json()
    assert [(e["actor"], e["target"], e["outcome"]) for e in entries["entries"]] == [
        ("shifter-script", f"task:{task}", "done")
    ]
    page = admin.get("/audit", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert f"task:{task}" in page.text
    anonymous_page = callers[Caller(None, "none")][0].get("/audit", headers={"Accept": "text/html"})
    assert anonymous_page.status_code == 303
    assert anonymous_page.headers["location"] == "/login?next=/audit"


def test_actions_on_every_database(any_db: Database, tmp_path: Path) -> None:
    site = build_site(tmp_path, any_db)
    task, alarm = add_task(any_db, TaskState.FAILED), add_alarm(any_db)
    with site.client() as client:
        assert login(client, "shifter").status_code == 303
        csrf = client.get("/api/v1/whoami").json()["csrf_token"]
        headers = {"X-CSRF-Token": csrf}
        assert client.post(f"/api/v1/tasks/{task}/retry", headers=headers).status_code == 200
        assert client.post(f"/api/v1/tasks/{task}/retry", headers=headers).status_code == 409
        ack = client.post(f"/api/v1/alarms/{alarm}/ack", json={"comment": "x"}, headers=headers)
        assert ack.status_code == 200
    assert task_state(any_db, task) is TaskState.READY
    assert [(e.action, e.outcome) for e in audit_entries(any_db)] == [
        ("login", "done"),
        ("task.retry", "done"),
        ("task.retry", "failed"),
        ("alarm.ack", "done"),
    ]


def test_a_shifter_retries_from_the_jobs_tab_and_returns_to_it(site: Site) -> None:
    """The real page's form, its CSRF token and the Referer, as a browser uses them."""
    task = add_task(site.db, TaskState.FAILED)
    page_url = "/runs/1?tab=jobs"
    with site.client() as viewer:
        assert login(viewer, "viewer").status_code == 303
        assert f"/actions/tasks/{task}/retry" not in viewer.get(page_url).text
    with site.client() as shifter:
        assert login(shifter, "shifter").status_code == 303
        page = shifter.get(page_url)
        assert page.status_code == 200
        form = page.text.split(f'action="/actions/tasks/{task}/retry"')[1]
        csrf = form.split('name="csrf_token" value="')[1].split('"')[0]
        response = shifter.post(
            f"/actions/tasks/{task}/retry",
            data={"csrf_token": csrf},
            headers={"Accept": "text/html", "Referer": f"http://testserver{page_url}"},
        )
        assert response.status_code == 303
        assert response.headers["location"] == page_url
    assert task_state(site.db, task) is TaskState.READY


def test_pages_and_the_api_need_a_login_when_reading_is_not_public(
    tmp_path: Path, db: Database
) -> None:
    site = build_site(tmp_path, db, public_read=False)
    add_task(db, TaskState.DONE)
    with site.client() as client:
        assert client.get("/api/v1/runs").status_code == 401
        assert client.get("/api/v1/runs/1").status_code == 401
        for page in ("/", "/runs/1?tab=jobs", "/alarms"):
            response = client.get(page, headers={"Accept": "text/html"})
            assert response.status_code == 303, page
            assert response.headers["location"].startswith("/login?next=/")
        assert login(client, "viewer", next="/runs/1?tab=jobs").headers["location"] == (
            "/runs/1?tab=jobs"
        )
        assert client.get("/runs/1?tab=jobs").status_code == 200
        assert client.get("/api/v1/runs").status_code == 200
