"""The job wrapper's API for worker nodes outside the firewall (``[worker] report = "http"``).

``POST /api/v1/attempts/{id}/claim``, ``/heartbeat`` and ``/finish`` do what the wrapper
does in the database when it can reach it, with the same guarded transitions
(``runwatch.jobs.report.DatabaseReporter``), so either path changes the database alike.

Each call needs ``Authorization: Bearer <token>`` with the attempt's own token
(``runwatch.jobs.tokens``): 401 without one, 403 with a token for another attempt or a
forged one. These tokens open nothing else: the rest of the site looks Bearer tokens up
among the accounts' API tokens, where they are not.

Each call carries ``job_start``, the start of the batch job the worker is (0 the first,
and without it): a requeued job starting again takes its attempt over, and the earlier
start's heartbeats and finish are then refused (``running`` false, 409).

Answers: 409 when the attempt is not the caller's any more (given up, cancelled, lost,
already ended differently): nothing changed. A finish repeated after its answer was lost
is answered 200 with ``"already": true`` when the stored end matches the report (state,
exit code, reason, log tail and, for a success, the outputs), so a worker that retries
never gets an error for its own report. 503 when the database cannot be reached (the
worker retries), 422 for a report that cannot be recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from runwatch.db import Database, utcnow
from runwatch.jobs.report import DatabaseReporter, outcome_from_document
from runwatch.jobs.tokens import load_secret, secret_path, token_allows
from runwatch.web.auth import bearer_token
from runwatch.web.state import app_db, app_settings
from runwatch.workflow.models import ATTEMPTS, OUTPUTS
from runwatch.workflow.nudge import nudge, socket_path
from runwatch.workflow.service import _CLAIMABLE, AttemptOutcome, Claim, RetryPolicy, heartbeat
from runwatch.workflow.states import AttemptState

router = APIRouter(prefix="/api/v1/attempts", tags=["workers"])

LOG_TAIL_MAX = 65536  # the wrapper sends 4 KiB


def attempt_access(attempt_id: Annotated[int, Path(ge=1)], request: Request) -> int:
    """The attempt id of the path, once the request's token is proved to be for it."""
    token = bearer_token(request)
    if token is None:
        raise HTTPException(
            status_code=401,
            detail="an attempt token is needed",
            headers={"WWW-Authenticate": "Bearer"},
        )
    secret = load_secret(secret_path(app_settings(request)))
    if not token_allows(secret, token, attempt_id):
        raise HTTPException(status_code=403, detail=f"this token is not for attempt {attempt_id}")
    return attempt_id


AttemptId = Annotated[int, Depends(attempt_access)]


@contextlib.contextmanager
def database_reached() -> Iterator[None]:
    """A database that cannot be reached is the server's passing trouble (503: retry)."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise HTTPException(status_code=503, detail="database unavailable") from exc


# Which start of its batch job the worker is (RUNWATCH_JOB_START): 0 the first.
JOB_START = Field(0, ge=0, description="The start of the batch job reporting (0: the first)")


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, max_length=255, description="The worker node's name")
    job_start: int = JOB_START


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_start: int = JOB_START


class OutputReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    url: str = Field(min_length=1, max_length=4096)
    size: int = Field(ge=0)
    adler32: str = Field(max_length=16)
    meta: dict[str, Any] = Field(default_factory=dict)


class OutcomeReport(BaseModel):
    """How the attempt ended, as the wrapper saw it. A worker reports the ends it can
    know of; LOST and CANCELLED are the scheduler's to decide."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["succeeded", "failed", "timed_out"]
    reason: str | None = Field(None, max_length=LOG_TAIL_MAX)
    exit_code: int | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    log_tail: str | None = Field(None, max_length=LOG_TAIL_MAX)
    outputs: list[OutputReport] = Field(default_factory=list, max_length=10_000)
    job_start: int = JOB_START

    def outcome(self) -> AttemptOutcome:
        return outcome_from_document(self.model_dump())


@router.post("/{attempt_id}/claim")
def claim(attempt_id: AttemptId, body: ClaimRequest, request: Request) -> dict[str, Any]:
    """Take the attempt (SUBMITTED → RUNNING) and answer its job; 409 if not yours to run."""
    with database_reached():
        reporter = DatabaseReporter(app_db(request), retries=1, job_start=body.job_start)
        claimed = reporter.claim(attempt_id, body.host)
    if claimed is None:
        raise HTTPException(
            status_code=409,
            detail=f"attempt {attempt_id} is not yours to run (given up, cancelled or taken)",
        )
    return {"claim": dataclasses.asdict(claimed)}


@router.post("/{attempt_id}/heartbeat")
def beat(
    attempt_id: AttemptId, request: Request, body: HeartbeatRequest | None = None
) -> dict[str, bool]:
    """Keep the attempt alive; ``running`` false once it was given up or taken over by a
    later start of the batch job (kill the job)."""
    job_start = body.job_start if body is not None else 0
    with database_reached(), app_db(request).transaction() as tx:
        return {"running": heartbeat(tx, attempt_id, utcnow(), job_start)}


@router.post("/{attempt_id}/finish")
def finish(attempt_id: AttemptId, report: OutcomeReport, request: Request) -> dict[str, bool]:
    """Record how the attempt ended and move its task on, as the wrapper does in the
    database; 409 (nothing changed) if its fate was decided elsewhere."""
    db = app_db(request)
    outcome = report.outcome()
    with database_reached():
        claimed, policy = running_job(db, attempt_id)
        if claimed is not None:  # recorded only if this start of the job still holds it
            claimed = dataclasses.replace(claimed, job_start=report.job_start)
        try:
            recorded = DatabaseReporter(db, retries=1).record(attempt_id, outcome, policy, claimed)
        except (sa.exc.OperationalError, sa.exc.InterfaceError):
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise HTTPException(status_code=422, detail=f"cannot record: {exc}") from exc
        if recorded:
            nudge(socket_path(app_settings(request).work_root))
            return {"recorded": True, "already": False}
        if already_recorded(db, attempt_id, outcome):
            return {"recorded": True, "already": True}
    raise HTTPException(
        status_code=409, detail=f"attempt {attempt_id} was ended elsewhere; report not recorded"
    )


# What a claim learns (the service's own query), and whether the attempt still runs.
_RUNNING_JOB = _CLAIMABLE.add_columns(ATTEMPTS.c.state)


def running_job(db: Database, attempt_id: int) -> tuple[Claim | None, RetryPolicy]:
    """What the worker's claim told it, read again (the server keeps no state between
    calls), and the retry policy of the job the scheduler rendered: the worker's word is
    not taken for either. No claim unless the attempt runs: recording then fails anyway."""
    with db.read_connection() as connection:
        row = connection.execute(_RUNNING_JOB, {"attempt_id": attempt_id}).first()
    if row is None:
        return None, RetryPolicy()
    policy = RetryPolicy(**dict(row.spec or {}).get("retry", {}))
    if row.state != AttemptState.RUNNING:
        return None, policy
    return Claim(row[0], row[1], row[2], row[3], row[4], row[5], row[6]), policy


_ENDED_AS = sa.select(
    ATTEMPTS.c.state, ATTEMPTS.c.exit_code, ATTEMPTS.c.reason, ATTEMPTS.c.log_tail
).where(ATTEMPTS.c.id == sa.bindparam("attempt_id"))
_OUTPUTS_OF = sa.select(OUTPUTS.c.name, OUTPUTS.c.url, OUTPUTS.c.adler32).where(
    OUTPUTS.c.attempt_id == sa.bindparam("attempt_id")
)


def already_recorded(db: Database, attempt_id: int, outcome: AttemptOutcome) -> bool:
    """Whether the attempt already ended just as ``outcome`` says: the same report,
    delivered before (its answer lost), not a different end decided elsewhere."""
    with db.read_connection() as tx:
        ended = tx.execute(_ENDED_AS, {"attempt_id": attempt_id}).first()
        stored = sorted(tuple(row) for row in tx.execute(_OUTPUTS_OF, {"attempt_id": attempt_id}))
    if ended is None:
        return False
    reported = sorted((o.name, o.url, o.adler32) for o in outcome.outputs)
    if outcome.state is not AttemptState.SUCCEEDED:
        reported = []  # a failure's outputs are not recorded
    return (
        tuple(ended) == (outcome.state, outcome.exit_code, outcome.reason, outcome.log_tail)
        and stored == reported
    )
