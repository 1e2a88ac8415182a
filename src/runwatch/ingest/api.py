"""HTTP intake of file-ready messages: ``POST /api/v1/messages`` and a look at what came in.

The endpoints are plain ``def`` functions: FastAPI runs them in its thread pool, so the
database work never blocks the event loop. The body is read raw (not parsed by FastAPI)
so that it is stored exactly as sent and rejected with runwatch's own precise reasons.
"""

from __future__ import annotations

import hmac
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.ingest.models import MessageStatus, ReceivedMessage
from runwatch.ingest.service import receive_in_parts
from runwatch.web.state import app_db, app_settings
from runwatch.workflow.nudge import nudge, socket_path

SOURCE = "http"

router = APIRouter(prefix="/api/v1", tags=["ingest"])


def require_token(
    settings: Settings = Depends(app_settings),
    authorization: str | None = Header(None, description="Bearer <token>"),
) -> None:
    """Refuse requests without one of ``ingest.api_tokens`` (none configured: refuse all)."""
    scheme, _, given = (authorization or "").partition(" ")
    accepted = False
    # Compare against every token, without stopping early, in constant time for each.
    for token in settings.ingest.api_tokens:
        accepted |= hmac.compare_digest(given.strip().encode(), token.encode())
    if scheme.lower() != "bearer" or not given or not accepted:
        raise HTTPException(
            status_code=401,
            detail="a valid 'Authorization: Bearer <token>' header is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def raw_body(request: Request) -> bytes:
    return await request.body()


COMMIT_EVERY = 10  # messages of a list committed together


# require_token runs before the body is read, and a refused request stores nothing: unlike
# a malformed message from the transfer system, an unauthenticated body is not ours to
# keep, and storing it would let anyone fill the database.
@router.post("/messages", dependencies=[Depends(require_token)])
def post_messages(
    request: Request,
    body: bytes = Depends(raw_body),
    db: Database = Depends(app_db),
    settings: Settings = Depends(app_settings),
) -> JSONResponse:
    """Receive one file-ready message (a JSON object) or a JSON list of them.

    Every message is stored, accepted or not. 200 if none was rejected, else 422 with each
    message's receipt (the others are accepted all the same).
    """
    origin = request.client.host if request.client else None
    scheduler = socket_path(settings.work_root)
    # A long list is committed in parts, each followed by a nudge: the scheduler plans
    # the first files while the rest are stored. A client that resends the whole body
    # after a failure only makes duplicates, which are no-ops.
    receipts = receive_in_parts(
        db, body, SOURCE, origin, utcnow(), COMMIT_EVERY, lambda: nudge(scheduler)
    )
    rejected = any(r.status is MessageStatus.REJECTED for r in receipts)
    return JSONResponse(
        {"receipts": [r.as_dict() for r in receipts]}, status_code=422 if rejected else 200
    )


@router.get("/messages", dependencies=[Depends(require_token)])
def list_messages(
    status: MessageStatus | None = Query(None, description="Only messages with this status."),
    limit: int = Query(50, ge=1, le=1000, description="At most this many, newest first."),
    db: Database = Depends(app_db),
) -> dict[str, list[dict[str, Any]]]:
    """Recent messages, newest first (without their bodies)."""
    query = sa.select(ReceivedMessage).order_by(ReceivedMessage.id.desc()).limit(limit)
    if status is not None:
        query = query.where(ReceivedMessage.status == status)
    with db.read_session() as session:
        return {"messages": [message_summary(m) for m in session.scalars(query)]}


@router.get("/messages/{message_id}", dependencies=[Depends(require_token)])
def get_message(message_id: int, db: Database = Depends(app_db)) -> dict[str, Any]:
    """One message with its body exactly as received."""
    with db.read_session() as session:
        message = session.get(ReceivedMessage, message_id)
        if message is None:
            raise HTTPException(status_code=404, detail=f"no message {message_id}")
        return {**message_summary(message), "body": message.body}


def message_summary(message: ReceivedMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "received_at": message.received_at.isoformat(),
        "source": message.source,
        "origin": message.origin,
        "status": message.status.value,
        "reason": message.reason,
        "file_name": message.file_name,
        "run_number": message.run_number,
        "file_id": message.file_id,
    }
