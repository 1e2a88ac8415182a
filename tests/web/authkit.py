"""What the security tests share: an app whose settings trust one proxy network, an
account, a token and a certificate DN for each role, and tasks and alarms to act on."""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import Run, RunStatus
from runwatch.config import AlarmSettings, IngestSettings, Settings, WebSettings
from runwatch.db import Database, utcnow
from runwatch.dqm.models import Alarm, AlarmState
from runwatch.web import accounts
from runwatch.web.app import create_app
from runwatch.web.models import ApiToken, AuditEntry, Role, WebUser
from runwatch.workflow.models import PipelineRevision, Task
from runwatch.workflow.states import TaskState

# Starlette's TestClient now prefers the httpx2 package; httpx (a runwatch dependency) still
# works, and this one import is the only place the deprecation is tolerated.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

PROXY = ("10.0.0.5", 40000)  # in trusted_proxies (10.0.0.0/24)
OUTSIDER = ("192.0.2.66", 40000)  # anywhere else
DN_HEADER = "X-SSL-Client-S-DN"
PASSWORD = "correct horse battery"
FAST_HASH = 2**10  # scrypt cost for test accounts: the scheme is the same, only cheaper


def dn(role: Role) -> str:
    return f"CN={role.value} person,OU=JUNO,O=IHEP,C=CN"


def make_settings(tmp: Path, db_url: str, **web: Any) -> Settings:
    values: dict[str, Any] = {
        "session_secret": "test-secret",
        "cookie_secure": False,
        "trusted_proxies": ["10.0.0.0/24", "::1"],
        "dn_header": DN_HEADER,
        "dn_roles": {dn(role): role.value for role in Role},
    }
    values.update(web)
    return Settings.model_construct(
        database_url=db_url,
        data_root=str(tmp / "data"),
        work_root=str(tmp / "work"),
        ingest=IngestSettings(api_tokens=["ingest-token"]),
        alarms=AlarmSettings(ack_hours=4),
        web=WebSettings(**values),
    )


def add_user(db: Database, name: str, role: Role, *, disabled: bool = False) -> None:
    with db.session() as session:
        session.add(
            WebUser(
                name=name,
                password_hash=accounts.hash_password(PASSWORD, n=FAST_HASH),
                role=role,
                disabled=disabled,
            )
        )


def add_token(db: Database, name: str, role: Role) -> str:
    with db.session() as session:
        _, token = accounts.add_token(session, name, role, "tester", utcnow())
    return token


@dataclass
class Site:
    """An app with a user (named after the role), a token and a DN for each role."""

    db: Database
    settings: Settings
    tokens: dict[Role, str] = field(default_factory=dict)

    def client(self, peer: tuple[str, int] = ("testclient", 50000), **kw: Any) -> TestClient:
        base = "https://testserver" if self.settings.web.cookie_secure else "http://testserver"
        return TestClient(
            create_app(self.settings, self.db),
            base_url=base,
            client=peer,
            follow_redirects=False,
            **kw,
        )


def build_site(tmp: Path, db: Database, **web: Any) -> Site:
    site = Site(db, make_settings(tmp, db.url, **web))
    for role in Role:
        add_user(db, role.value, role)
        site.tokens[role] = add_token(db, f"{role.value}-script", role)
    return site


def module_site(tmp: Path) -> Iterator[Site]:
    """A site on its own migrated SQLite database in ``tmp``, for a module's tests."""
    db = Database(f"sqlite:///{tmp / 'runwatch.db'}")
    db.upgrade()
    try:
        yield build_site(tmp, db)
    finally:
        db.dispose()


def login(client: TestClient, name: str, password: str = PASSWORD, next: str = "/") -> Any:
    """Fill in the login form as a browser would (fetching the form's CSRF token first)."""
    page = client.get("/login", params={"next": next})
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    return client.post(
        "/login",
        data={"name": name, "password": password, "csrf_token": token, "next": next},
        headers={"Accept": "text/html"},
    )


def add_task(db: Database, state: TaskState) -> int:
    with db.session() as session:
        run = _run(session)
        revision = session.scalar(sa.select(PipelineRevision).limit(1))
        if revision is None:
            revision = PipelineRevision(name="juno", digest="0" * 64, path="juno.yaml", content="")
            session.add(revision)
            session.flush()
        count = session.scalar(sa.select(sa.func.count()).select_from(Task)) or 0
        task = Task(
            key=f"juno/rec/run:{run.number}/{count}",
            revision_id=revision.id,
            pipeline="juno",
            step="rec",
            scope="run",
            run_id=run.id,
            state=state,
            priority_at=utcnow(),
        )
        session.add(task)
        session.flush()
        return task.id


def add_alarm(db: Database, state: AlarmState = AlarmState.OPEN) -> int:
    with db.session() as session:
        run = _run(session)
        count = session.scalar(sa.select(sa.func.count()).select_from(Alarm)) or 0
        alarm = Alarm(
            key=f"verdict:run:{run.id}:{count}",
            kind="verdict",
            severity="bad",
            run_id=run.id,
            message="energy/shape: KS p=0.003 < 0.01",
            state=state,
        )
        session.add(alarm)
        session.flush()
        return alarm.id


def _run(session: Session) -> Run:
    run = session.scalar(sa.select(Run).where(Run.number == 1))
    if run is None:
        run = Run(number=1, stream="physics", status=RunStatus.REC_RUNNING, started_at=utcnow())
        session.add(run)
        session.flush()
    return run


def task_state(db: Database, task_id: int) -> TaskState:
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task.state


def alarm_row(db: Database, alarm_id: int) -> tuple[AlarmState, str | None, str | None]:
    with db.session() as session:
        alarm = session.get(Alarm, alarm_id)
        assert alarm is not None
        return alarm.state, alarm.acknowledged_by, alarm.ack_comment


def audit_entries(db: Database) -> list[AuditEntry]:
    with db.session() as session:
        return list(session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id)))


def token_row(db: Database, name: str) -> ApiToken:
    with db.session() as session:
        row = session.scalar(sa.select(ApiToken).where(ApiToken.name == name))
        assert row is not None
        return row


def iso_hours_from_now(hours: float) -> str:
    return (utcnow() + dt.timedelta(hours=hours)).isoformat()
