"""What a shifter may do from the web: retry or cancel a task, acknowledge an alarm.

Each action has a form route for the pages (``POST /actions/...``: the CSRF token in a
form field, then a redirect back to the page it came from -- Post/Redirect/Get) and a JSON
twin for scripts (``POST /api/v1/...``). Both go through ``perform``, which writes an
audit entry for every attempt: done, refused (not logged in, no CSRF token, role too
low) or failed (no such task, not allowed in its state). A refused attempt changes
nothing but the audit log.

Authorisation is checked before the body is looked at, so an anonymous caller learns
nothing, not even whether the body would have been valid.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from runwatch.db import Database, utcnow
from runwatch.dqm.alarms import AlarmError, acknowledge
from runwatch.dqm.models import Alarm
from runwatch.web import accounts
from runwatch.web.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    Principal,
    client_address,
    current_principal,
    form_fields,
    ignored_dn,
    local_path,
    peer_address,
    referring_page,
    refusal,
    require_role,
    wants_html,
)
from runwatch.web.login import render
from runwatch.web.models import Role
from runwatch.web.state import app_db, app_settings
from runwatch.workflow.models import Task
from runwatch.workflow.service import OperatorError, cancel_task, retry_task

router = APIRouter(tags=["actions"])


class AckBody(BaseModel):
    """What an acknowledgement says: what is being done about the alarm."""

    model_config = ConfigDict(extra="forbid")

    comment: str = Field(min_length=1, max_length=2000, description="What is being done.")


class ActionError(Exception):
    """An authorised action that cannot be carried out: no such thing (404), a bad body
    (422); ``OperatorError`` and ``AlarmError`` (not in this state) become 409."""

    def __init__(self, status: int, reason: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Outcome:
    """How an attempted action ended: an HTTP status, a reason, and what it returned."""

    status: int
    reason: Any = ""
    result: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


Do = Callable[[Session, Principal, dt.datetime], dict[str, Any]]


def perform(request: Request, action: str, target: str, csrf_given: str | None, do: Do) -> Outcome:
    """Check who asks, do ``do`` if a shifter or above may, and audit the attempt whatever
    its end. ``csrf_given``: the token the request carried."""
    db = app_db(request)
    principal = current_principal(request)
    now = utcnow()
    entry: dict[str, Any] = {
        "actor": principal.name if principal else "anonymous",
        "role": principal.role.value if principal else None,
        "via": principal.via if principal else "anonymous",
        "action": action,
        "target": target,
        "remote": peer_address(request),
        "now": now,
    }
    detail: dict[str, Any] = {}
    if (client := client_address(request)) != entry["remote"]:
        detail["client"] = client  # as forwarded by a trusted proxy
    if (dn := ignored_dn(request)) is not None:
        detail["ignored_dn_header"] = dn[:255]  # forged, or a proxy missing from the list
    problem = refusal(principal, Role.SHIFTER, csrf_given)
    if problem is not None:
        detail.update(status=problem.status_code, reason=problem.detail)
        _record(db, entry, "refused", detail)
        return Outcome(problem.status_code, problem.detail, headers=dict(problem.headers or {}))
    assert principal is not None
    try:
        with db.session() as session:
            result = do(session, principal, now)
            accounts.audit(session, **entry, outcome="done", detail=detail)
        return Outcome(200, result=result)
    except (ActionError, OperatorError, AlarmError) as exc:
        status, reason = (
            (exc.status, exc.reason) if isinstance(exc, ActionError) else (409, str(exc))
        )
        detail.update(status=status, reason=reason if isinstance(reason, str) else "bad body")
        _record(db, entry, "failed", detail)
        return Outcome(status, reason)


def _record(db: Database, entry: dict[str, Any], outcome: str, detail: dict[str, Any]) -> None:
    """Audit an attempt that changed nothing, in a transaction of its own."""
    with db.session() as session:
        accounts.audit(session, **entry, outcome=outcome, detail=detail)


async def _perform(
    request: Request, action: str, target: str, csrf_given: str | None, do: Do
) -> Outcome:
    return await run_in_threadpool(perform, request, action, target, csrf_given, do)


def _task_action(verb: str, task_id: int) -> Do:
    operate = TASK_ACTIONS.get(verb)

    def do(session: Session, principal: Principal, now: dt.datetime) -> dict[str, Any]:
        if operate is None:
            raise ActionError(404, f"no task action {verb!r} (retry or cancel)")
        if session.get(Task, task_id) is None:
            raise ActionError(404, f"no task {task_id}")
        task = operate(session, task_id, now)
        return {"task": {"id": task.id, "key": task.key, "state": task.state.value}}

    return do


def _ack_action(alarm_id: int, body: AckBody | ActionError, ack_hours: float) -> Do:
    def do(session: Session, principal: Principal, now: dt.datetime) -> dict[str, Any]:
        if isinstance(body, ActionError):
            raise body
        if session.get(Alarm, alarm_id) is None:
            raise ActionError(404, f"no alarm {alarm_id}")
        alarm = acknowledge(
            session, alarm_id, principal.name, body.comment, now, ack_hours=ack_hours
        )
        expires = alarm.ack_expires_at
        return {
            "alarm": {
                "id": alarm.id,
                "state": alarm.state.value,
                "acknowledged_by": alarm.acknowledged_by,
                "ack_expires_at": expires.isoformat() if expires else None,
            }
        }

    return do


TASK_ACTIONS: dict[str, Callable[[Session, int, dt.datetime], Task]] = {
    "retry": retry_task,
    "cancel": cancel_task,
}


def _ack_hours(request: Request) -> float:
    settings = app_settings(request)
    return settings.alarms.ack_hours


# --- forms (pages) -----------------------------------------------------------------------


def _after_form(request: Request, outcome: Outcome, back: str) -> Response:
    """Post/Redirect/Get: back to the page on success, to the login page when anonymous,
    else a short page saying why, with a link back."""
    if outcome.status == 200:
        return RedirectResponse(back, status_code=303)
    if outcome.status == 401 and wants_html(request):
        return RedirectResponse(f"/login?next={quote(back)}", status_code=303)
    reason = outcome.reason if isinstance(outcome.reason, str) else "invalid form"
    response = render(
        request,
        "auth/refused.html",
        outcome.status,
        status=outcome.status,
        reason=reason,
        back=back,
    )
    response.headers.update(outcome.headers)
    return response


def _back(request: Request, fields: dict[str, str], default: str) -> str:
    return local_path(fields.get("next")) or referring_page(request, default)


@router.post("/actions/tasks/{task_id}/{verb}", include_in_schema=False)
async def task_form(request: Request, task_id: int, verb: str) -> Response:
    """Retry or cancel a task from a page's form (fields ``csrf_token``, optional ``next``)."""
    fields = await form_fields(request)
    csrf = request.headers.get(CSRF_HEADER) or fields.get(CSRF_FIELD, "")
    do = _task_action(verb, task_id)
    outcome = await _perform(request, f"task.{verb}", f"task:{task_id}", csrf, do)
    return _after_form(request, outcome, _back(request, fields, "/"))


@router.post("/actions/alarms/{alarm_id}/ack", include_in_schema=False)
async def ack_form(request: Request, alarm_id: int) -> Response:
    """Acknowledge an alarm from a page's form (fields ``comment``, ``csrf_token``)."""
    fields = await form_fields(request)
    csrf = request.headers.get(CSRF_HEADER) or fields.get(CSRF_FIELD, "")
    body: AckBody | ActionError
    try:
        body = AckBody(comment=fields.get("comment", "").strip())
    except ValidationError:
        body = ActionError(
            422, "say what is being done about the alarm (comment, 1-2000 characters)"
        )
    do = _ack_action(alarm_id, body, _ack_hours(request))
    outcome = await _perform(request, "alarm.ack", f"alarm:{alarm_id}", csrf, do)
    return _after_form(request, outcome, _back(request, fields, "/alarms"))


# --- JSON (scripts) ----------------------------------------------------------------------


def _json(outcome: Outcome) -> JSONResponse:
    if outcome.status == 200:
        return JSONResponse(outcome.result)
    return JSONResponse({"detail": outcome.reason}, outcome.status, headers=outcome.headers)


REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not logged in (no valid token, certificate or session)."},
    403: {"description": "Role below shifter, or a browser's request without the CSRF token."},
    404: {"description": "No such task or alarm."},
    409: {"description": "Not allowed in its present state (the reason says why)."},
}


async def _task_api(request: Request, verb: str, task_id: int) -> JSONResponse:
    csrf = request.headers.get(CSRF_HEADER, "")
    do = _task_action(verb, task_id)
    return _json(await _perform(request, f"task.{verb}", f"task:{task_id}", csrf, do))


@router.post("/api/v1/tasks/{task_id}/retry", tags=["actions"], responses=REFUSALS)
async def retry_api(request: Request, task_id: int) -> JSONResponse:
    """Run a failed, cancelled or done task again, with fresh retries; shifter or above.

    Scripts authenticate with ``Authorization: Bearer <token>``; a browser session or a
    client certificate must also send the ``X-CSRF-Token`` header (``GET /api/v1/whoami``).
    """
    return await _task_api(request, "retry", task_id)


@router.post("/api/v1/tasks/{task_id}/cancel", tags=["actions"], responses=REFUSALS)
async def cancel_api(request: Request, task_id: int) -> JSONResponse:
    """Stop a task (a running job is killed); shifter or above. Authentication as for retry."""
    return await _task_api(request, "cancel", task_id)


@router.post(
    "/api/v1/alarms/{alarm_id}/ack",
    tags=["actions"],
    responses={**REFUSALS, 422: {"description": 'The body is not {"comment": "..."}.'}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": AckBody.model_json_schema()}},
        }
    },
)
async def ack_api(request: Request, alarm_id: int) -> JSONResponse:
    """Acknowledge an open alarm with a comment; shifter or above.

    The alarm is not re-raised for ``[alarms] ack_hours``; it is acknowledged in the
    caller's name (user, token name or certificate DN).
    """
    csrf = request.headers.get(CSRF_HEADER, "")
    body: AckBody | ActionError
    try:
        body = AckBody.model_validate_json(await request.body())
    except ValidationError as exc:
        body = ActionError(422, json.loads(exc.json(include_url=False, include_context=False)))
    do = _ack_action(alarm_id, body, _ack_hours(request))
    return _json(await _perform(request, "alarm.ack", f"alarm:{alarm_id}", csrf, do))


# --- the audit log -----------------------------------------------------------------------


@router.get("/api/v1/audit", tags=["actions"])
def audit_api(
    request: Request,
    limit: int = Query(100, ge=1, le=1000, description="At most this many, newest first."),
    actor: str | None = Query(None, description="Only this actor's entries."),
    action: str | None = Query(None, description="Only this action (e.g. task.retry)."),
    outcome: str | None = Query(None, description="Only done, refused or failed."),
    principal: Principal = Depends(require_role(Role.ADMIN)),
) -> dict[str, list[dict[str, Any]]]:
    """The audit log, newest first (admin)."""
    db = app_db(request)
    with db.read_session() as session:
        entries = accounts.read_audit(
            session, limit=limit, actor=actor, action=action, outcome=outcome
        )
        return {"entries": [accounts.audit_dict(e) for e in entries]}


@router.get("/audit", include_in_schema=False, response_class=HTMLResponse)
def audit_page(
    request: Request,
    limit: int = Query(200, ge=1, le=2000),
    principal: Principal = Depends(require_role(Role.ADMIN)),
) -> Response:
    """The audit log as a table (admin)."""
    db = app_db(request)
    with db.read_session() as session:
        entries = [accounts.audit_dict(e) for e in accounts.read_audit(session, limit=limit)]
    return render(request, "auth/audit.html", entries=entries)
