"""How the job wrapper reports on its attempt: straight into the database, or through the
web server's API.

A ``Reporter`` does the three things the wrapper tells the world: it claims the attempt
(learning its job), beats the heart while the job runs (learning whether the scheduler
gave the attempt up), and records how it ended. Two implementations:

- ``DatabaseReporter``: the guarded transitions of ``runwatch.workflow.service`` on the
  database, in one statement each where PostgreSQL allows (inside the firewall; the local
  executor's workers and JUNO's job server work this way);
- ``HttpReporter``: the same calls as ``POST /api/v1/attempts/{id}/claim|heartbeat|finish``
  with the attempt's token (``runwatch.jobs.tokens``), for worker nodes that cannot reach
  the database. The server applies them with a ``DatabaseReporter``, so both paths change
  the database in exactly the same way.

Both carry the start of the batch job they report for (``RUNWATCH_JOB_START``, set by the
batch executors; 0 without it): a job its batch system requeued starts again with a
higher number, takes its attempt over, and the earlier start can no longer beat or record.

When the server cannot be reached (refused, timed out, a 5xx answer) the HTTP reporter
retries with backoff until ``[worker] report_retry_seconds`` have passed. A heartbeat that
fails is only logged: the scheduler's heartbeat timeout decides whether the attempt lives.
A report is kept in ``runwatch-report.json`` in the attempt's work directory (written
atomically, before it is first sent) until the server has answered it; if the deadline
passes, the file stays and ``flush`` (``runwatch job flush SPOOL``) delivers
it later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import sqlalchemy as sa

from runwatch.db import Database, utcnow
from runwatch.jobs.environment import (
    API_URL_ENV,
    ATTEMPT_TOKEN_ENV,
    JOB_START_ENV,
    REPORT_RETRY_ENV,
)
from runwatch.workflow.service import (
    AttemptOutcome,
    Claim,
    OutputRecord,
    RetryPolicy,
    can_finish_at_once,
    claim_attempt,
    claim_attempt_at_once,
    finish_at_once,
    finish_attempt,
    heartbeat,
)
from runwatch.workflow.states import AttemptState

log = logging.getLogger("runwatch.job")

RECORD_RETRIES = 5  # a database blip must not leave a finished attempt RUNNING
SPOOL_NAME = "runwatch-report.json"
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
REQUEST_TIMEOUT_S = 10.0
HEARTBEAT_TIMEOUT_S = 5.0  # the watcher waits for it: keep a dead server's cost short
DEFAULT_RETRY_S = 600.0

T = TypeVar("T")


class Reporter(Protocol):
    """What the wrapper needs to report on one attempt. Methods are called from the
    wrapper's main thread (claim, record) and its watcher thread (heartbeat), never at the
    same time for one attempt."""

    # Which start of its batch job the wrapper is (``job_start_from_env``); None: not a
    # batch job its batch system may start again (a local worker's).
    job_start: int | None

    def claim(self, attempt_id: int, host: str) -> Claim | None:
        """Take the attempt (SUBMITTED → RUNNING) and return its job; None if it is not
        ours to run (given up, cancelled, or taken by another worker)."""
        ...

    def heartbeat(self, attempt_id: int) -> bool:
        """Say the attempt is alive; False once it was given up (then kill the command).
        Trouble reaching the database or server counts as alive."""
        ...

    def record(
        self,
        attempt_id: int,
        outcome: AttemptOutcome,
        policy: RetryPolicy,
        claimed: Claim | None,
    ) -> bool:
        """Record how the attempt ended; False (and nothing changed) if its fate was
        decided elsewhere. Raises ``ReportUndelivered`` when it could not be delivered in
        time, other errors when it cannot be recorded at all."""
        ...


class ReportRejected(Exception):
    """The server answered that it will not take this report (bad token or content)."""


class ReportUndelivered(Exception):
    """The server could not be reached before the deadline."""


class Unreachable(Exception):
    """One try to reach the server failed in a way worth retrying."""


def job_start_from_env(environ: Mapping[str, str]) -> int | None:
    """The start of its batch job the wrapper runs in (``RUNWATCH_JOB_START``); None when
    unset or not a count."""
    text = environ.get(JOB_START_ENV, "").strip()
    return int(text) if text.isdigit() else None


# -- inside the firewall ------------------------------------------------------------------


class DatabaseReporter:
    """Reports with the database's guarded transitions. ``retries``: tries of a record
    that fails on a connection error (the web server, which has its own client retrying,
    tries once)."""

    def __init__(
        self, db: Database, retries: int = RECORD_RETRIES, job_start: int | None = None
    ) -> None:
        self.db = db
        self.retries = retries
        self.job_start = job_start

    def claim(self, attempt_id: int, host: str) -> Claim | None:
        start = self.job_start or 0
        if self.db.engine.dialect.name == "postgresql":
            with self.db.one_statement() as connection:
                claimed = claim_attempt_at_once(connection, attempt_id, host, utcnow(), start)
            if claimed is not None or start == 0:
                return claimed
            # Not SUBMITTED: maybe this job's earlier start holds it (a requeue).
        with self.db.transaction() as tx:
            return claim_attempt(tx, attempt_id, host, utcnow(), start)

    def heartbeat(self, attempt_id: int) -> bool:
        try:
            with self.db.transaction() as tx:
                return heartbeat(tx, attempt_id, utcnow(), self.job_start or 0)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("attempt %d: heartbeat failed: %s", attempt_id, exc)
            return True

    def record(
        self,
        attempt_id: int,
        outcome: AttemptOutcome,
        policy: RetryPolicy,
        claimed: Claim | None,
    ) -> bool:
        at_once = can_finish_at_once(self.db.engine.dialect.name, outcome, claimed)
        for attempt in range(self.retries):
            try:
                if at_once:
                    assert claimed is not None  # can_finish_at_once needs it
                    with self.db.one_statement() as connection:
                        return finish_at_once(
                            connection, attempt_id, outcome, utcnow(), claimed.job_start
                        )
                with self.db.transaction() as tx:
                    return finish_attempt(tx, attempt_id, outcome, policy, utcnow(), claim=claimed)
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                if attempt == self.retries - 1:
                    raise
                log.warning("attempt %d: recording failed (%s); retrying", attempt_id, exc)
                time.sleep(2**attempt)
        raise AssertionError("unreachable")


# -- outside the firewall -----------------------------------------------------------------


def outcome_document(outcome: AttemptOutcome) -> dict[str, Any]:
    """The outcome as the finish endpoint takes it (the command is the scheduler's)."""
    document = dataclasses.asdict(outcome)
    document.pop("command")
    document["state"] = outcome.state.value
    return document


def outcome_from_document(document: Mapping[str, Any]) -> AttemptOutcome:
    outputs = tuple(OutputRecord(**output) for output in document.get("outputs", ()))
    fields = {k: v for k, v in document.items() if k not in ("state", "outputs", "job_start")}
    return AttemptOutcome(state=AttemptState(document["state"]), outputs=outputs, **fields)


def attempt_workdir(attempt_id: int, workdir: str | None) -> Path:
    """The attempt's work directory: the scheduler's choice, else one in the temp folder."""
    if workdir:
        return Path(workdir)
    return Path(tempfile.gettempdir()) / f"runwatch-attempt-{attempt_id}"


class HttpReporter:
    """Reports through the web server with the attempt's token; keeps a report it cannot
    deliver at once in a spool file and retries it until ``retry_s`` have passed."""

    def __init__(
        self,
        api_url: str,
        token: str,
        retry_s: float = DEFAULT_RETRY_S,
        job_start: int | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.retry_s = retry_s
        self.job_start = job_start
        self.client = httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=REQUEST_TIMEOUT_S,
        )
        self.heart_failing = False  # log a lost connection once, not every beat

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HttpReporter | None:
        """The reporter the environment asks for (``job_environment``), or None."""
        url, token = environ.get(API_URL_ENV), environ.get(ATTEMPT_TOKEN_ENV)
        if not url or not token:
            return None
        retry_s = float(environ.get(REPORT_RETRY_ENV) or DEFAULT_RETRY_S)
        return cls(url, token, retry_s, job_start_from_env(environ))

    def close(self) -> None:
        self.client.close()

    def claim(self, attempt_id: int, host: str) -> Claim | None:
        answer = self.patiently(
            f"attempt {attempt_id}: claim",
            lambda: self.post(
                f"/api/v1/attempts/{attempt_id}/claim",
                {"host": host, "job_start": self.job_start or 0},
            ),
        )
        if answer.status_code == 409:
            return None
        return Claim(**answer.json()["claim"])

    def heartbeat(self, attempt_id: int) -> bool:
        try:
            answer = self.post(
                f"/api/v1/attempts/{attempt_id}/heartbeat",
                {"job_start": self.job_start or 0},
                HEARTBEAT_TIMEOUT_S,
            )
        except (Unreachable, ReportRejected) as exc:
            if not self.heart_failing:
                log.warning("attempt %d: heartbeat failed (%s); still trying", attempt_id, exc)
            self.heart_failing = True
            return True
        if self.heart_failing:
            log.info("attempt %d: heartbeats get through again", attempt_id)
            self.heart_failing = False
        try:
            return bool(answer.json()["running"])
        except (ValueError, KeyError, TypeError):  # not runwatch answering (a proxy page?)
            log.warning("attempt %d: odd heartbeat answer: %.200s", attempt_id, answer.text)
            return True

    def record(
        self,
        attempt_id: int,
        outcome: AttemptOutcome,
        policy: RetryPolicy,
        claimed: Claim | None,
    ) -> bool:
        del policy  # the server applies the retry policy of the job it rendered
        # Only this start of the batch job may record it (a requeued one took it over?).
        document = {**outcome_document(outcome), "job_start": claimed.job_start if claimed else 0}
        workdir = attempt_workdir(attempt_id, claimed.workdir if claimed else None)
        spool = workdir / SPOOL_NAME
        # Kept before it is sent: a wrapper killed while it waits for the server (say, at
        # its wall-time limit) leaves the report behind, not nothing.
        write_spool(spool, self.spool_document(attempt_id, document))
        try:
            recorded = self.finish(attempt_id, document)
        except Unreachable as exc:
            log.warning(
                "attempt %d: cannot reach %s (%s); report kept in %s, retrying for %g s",
                attempt_id,
                self.api_url,
                exc,
                spool,
                self.retry_s,
            )
            recorded = self.deliver(attempt_id, document, spool)
        spool.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            workdir.rmdir()  # made again for the spool file after a success emptied it
        return recorded

    def spool_document(self, attempt_id: int, outcome: Mapping[str, Any]) -> dict[str, Any]:
        # The token is only good for this attempt; the file is private to its owner.
        return {
            "api_url": self.api_url,
            "attempt_id": attempt_id,
            "token": self.token,
            "outcome": dict(outcome),
        }

    def deliver(self, attempt_id: int, document: Mapping[str, Any], spool: Path) -> bool:
        """Send a spooled report until delivered or the deadline; the spool file goes
        once the server has answered for good."""
        try:
            recorded = self.patiently(
                f"attempt {attempt_id}: report", lambda: self.finish(attempt_id, document)
            )
        except ReportUndelivered:
            log.error(
                "attempt %d: could not report to %s for %g s; the report stays in %s "
                "(deliver it with: runwatch job flush %s)",
                attempt_id,
                self.api_url,
                self.retry_s,
                spool,
                spool,
            )
            raise
        spool.unlink(missing_ok=True)
        log.info("attempt %d: report delivered", attempt_id)
        return recorded

    def finish(self, attempt_id: int, document: Mapping[str, Any]) -> bool:
        answer = self.post(f"/api/v1/attempts/{attempt_id}/finish", document)
        return answer.status_code != 409

    def patiently(self, what: str, call: Callable[[], T]) -> T:
        """``call()`` until it gets through, with backoff, for ``retry_s`` at most."""
        deadline = time.monotonic() + self.retry_s
        delay = FIRST_BACKOFF_S
        while True:
            try:
                return call()
            except Unreachable as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReportUndelivered(f"{what}: {exc}") from exc
                log.debug("%s: %s; retrying in %.1f s", what, exc, min(delay, left))
                time.sleep(min(delay, left))
                delay = min(delay * 2, MAX_BACKOFF_S)

    def post(
        self, path: str, body: Mapping[str, Any], timeout: float = REQUEST_TIMEOUT_S
    ) -> httpx.Response:
        """One request; raises ``Unreachable`` for what a retry may cure, and
        ``ReportRejected`` for an answer no retry will change (409 is an answer)."""
        try:
            answer = self.client.post(path, json=body, timeout=timeout)
        except httpx.TransportError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
        if answer.status_code >= 500:
            raise Unreachable(f"HTTP {answer.status_code}: {answer.text[:200]}")
        if answer.status_code != 409 and answer.status_code >= 400:
            raise ReportRejected(f"HTTP {answer.status_code}: {answer.text[:200]}")
        return answer


def write_spool(path: Path, document: Mapping[str, Any]) -> None:
    """Write the spool file whole or not at all (a crash mid-write leaves the old one)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(document, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError:
        # Still retried from memory until the deadline; only a restart would lose it.
        log.exception("cannot keep the report in %s", path)


def spool_file(path: Path) -> Path:
    """A spool file given itself or the work directory holding it."""
    return path / SPOOL_NAME if path.is_dir() else path


def flush(path: Path, retry_s: float = 0.0) -> bool | None:
    """Deliver the report kept in ``path`` (a spool file or its work directory), trying
    for ``retry_s``: True recorded, False refused as decided elsewhere (the file goes
    either way), None if there is no spool file. Raises ``ReportUndelivered``."""
    spool = spool_file(path)
    try:
        document = json.loads(spool.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    reporter = HttpReporter(document["api_url"], document["token"], retry_s)
    try:
        return reporter.deliver(int(document["attempt_id"]), document["outcome"], spool)
    finally:
        reporter.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``runwatch job flush SPOOL...``: deliver kept reports; exit 3 if one
    still cannot be delivered."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: runwatch job flush SPOOL_FILE_OR_WORKDIR...", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            result = flush(Path(path))
        except (ReportUndelivered, ReportRejected) as exc:
            log.error("%s: %s", path, exc)
            status = 3
            continue
        if result is None:
            log.info("%s: no report kept there", path)
    return status


if __name__ == "__main__":
    sys.exit(main())
