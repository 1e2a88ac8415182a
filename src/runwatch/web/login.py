"""Logging in and out with a local account, and ``GET /api/v1/whoami``.

A failed login says only "wrong name or password" and takes as long whichever part was
wrong (``accounts.check_password``). Repeated failures from one address are throttled:
after ``MAX_FAILURES`` within ``FAILURE_WINDOW`` seconds its logins are refused (429) until
the oldest failure ages out -- by address, not by name, so nobody can lock a shifter out
of their own account by mistyping the name on purpose.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from runwatch.db import utcnow
from runwatch.web import accounts
from runwatch.web.auth import (
    CSRF_FIELD,
    client_address,
    csrf_matches,
    csrf_token,
    current_principal,
    end_session,
    form_fields,
    given_csrf,
    keep_login_csrf,
    local_path,
    login_csrf,
    login_csrf_matches,
    peer_address,
    start_session,
)
from runwatch.web.models import Role
from runwatch.web.state import app_db

router = APIRouter(tags=["auth"])
TEMPLATES = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=TEMPLATES)

MAX_FAILURES = 10
FAILURE_WINDOW = 600.0  # seconds


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """One of the auth pages, inside the site's layout when the pages provide one."""
    layout = "base.html" if (TEMPLATES / "base.html").exists() else "auth/layout.html"
    principal = current_principal(request)
    return templates.TemplateResponse(
        request,
        template,
        {
            "layout": layout,
            "principal": principal,
            "can_act": principal is not None and principal.role.allows(Role.SHIFTER),
            "csrf_token": csrf_token(request),
            "page": "auth",
            **context,
        },
        status_code=status_code,
    )


class FailedLogins:
    """Recent failed logins per client address, to throttle password guessing."""

    def __init__(self) -> None:
        self.failures: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self.failures.setdefault(client, deque())
        while times and times[0] <= now - FAILURE_WINDOW:
            times.popleft()
        return times

    def blocked(self, client: str) -> bool:
        with self.lock:
            return len(self._recent(client, time.monotonic())) >= MAX_FAILURES

    def add(self, client: str) -> None:
        with self.lock:
            now = time.monotonic()
            self._recent(client, now).append(now)
            if len(self.failures) > 10_000:  # forget idle addresses
                for key in [k for k, v in self.failures.items() if not self._recent(k, now)]:
                    del self.failures[key]


def _failed_logins(request: Request) -> FailedLogins:
    state = request.app.state
    if not hasattr(state, "failed_logins"):
        state.failed_logins = FailedLogins()
    failed: FailedLogins = state.failed_logins
    return failed


def _login_form(
    request: Request, next: str, name: str = "", error: str = "", status_code: int = 200
) -> HTMLResponse:
    token = login_csrf(request)
    response = render(
        request,
        "auth/login.html",
        status_code,
        login_csrf=token,
        next=local_path(next) or "/",
        name=name,
        error=error,
    )
    keep_login_csrf(request, response, token)
    return response


@router.get("/login", include_in_schema=False, response_class=HTMLResponse)
def login_page(request: Request, next: str = Query("/")) -> Response:
    """The login form; ``next``: the page to return to (a path on this site)."""
    return _login_form(request, next)


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    """Check a name and password (form fields ``name``, ``password``, ``csrf_token``)."""
    fields = await form_fields(request)
    return await run_in_threadpool(_login, request, fields)


def _login(request: Request, fields: dict[str, str]) -> Response:
    db = app_db(request)
    name, next = fields.get("name", "").strip(), fields.get("next", "/")
    client = client_address(request)
    entry: dict[str, Any] = {
        "actor": name or "anonymous",
        "role": None,
        "via": "session",
        "action": "login",
        "target": f"user:{name}",
        "remote": peer_address(request),
    }
    failed = _failed_logins(request)
    status, reason = 0, ""
    if not login_csrf_matches(request, fields.get(CSRF_FIELD, "")):
        status, reason = 403, "the form expired or came from another site; please try again"
    elif failed.blocked(client):
        status, reason = 429, "too many failed logins from your address; try again later"
    if status:
        with db.session() as session:
            detail = {"status": status, "reason": reason}
            accounts.audit(session, **entry, outcome="refused", detail=detail, now=utcnow())
        return _login_form(request, next, name, reason, status)
    with db.session() as session:
        now = utcnow()
        user = accounts.check_password(session, name, fields.get("password", ""), now)
        role = user.role if user is not None else None
        outcome = "done" if user is not None else "refused"
        detail = {} if user is not None else {"status": 401, "reason": "wrong name or password"}
        entry["role"] = role.value if role else None
        accounts.audit(session, **entry, outcome=outcome, detail=detail, now=now)
    if role is None:
        failed.add(client)
        return _login_form(request, next, name, "Wrong name or password.", 401)
    response = RedirectResponse(local_path(next) or "/", status_code=303)
    start_session(request, response, name, role)
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    """End the session (form field ``csrf_token``) and go to the home page."""
    given = await given_csrf(request)
    return await run_in_threadpool(_logout, request, given)


def _logout(request: Request, given: str) -> Response:
    principal = current_principal(request)
    response = RedirectResponse("/", status_code=303)
    if principal is None or principal.via != "session":
        return response  # nothing to end: tokens and certificates have no session
    db = app_db(request)
    allowed = csrf_matches(principal, given)
    with db.session() as session:
        accounts.audit(
            session,
            actor=principal.name,
            role=principal.role.value,
            via=principal.via,
            action="logout",
            target=f"user:{principal.name}",
            outcome="done" if allowed else "refused",
            remote=peer_address(request),
            detail={} if allowed else {"status": 403, "reason": "missing or wrong CSRF token"},
            now=utcnow(),
        )
    if not allowed:  # another site must not log people out either
        return render(
            request,
            "auth/refused.html",
            403,
            status=403,
            reason="missing or wrong CSRF token",
            back="/",
        )
    end_session(response)
    return response


@router.get("/api/v1/whoami", tags=["auth"])
def whoami(request: Request) -> dict[str, Any]:
    """Who the server takes the caller for, and the CSRF token a browser session or a
    client certificate must send (``X-CSRF-Token``) with a POST."""
    principal = current_principal(request)
    if principal is None:
        return {"name": None, "role": None, "via": "anonymous", "csrf_token": ""}
    return {
        "name": principal.name,
        "role": principal.role.value,
        "via": principal.via,
        "csrf_token": principal.csrf,
    }
