"""Reporters, attempt tokens and spool files, without a web server (a closed port is a
server that cannot be reached)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runwatch.config import Settings
from runwatch.db import Database
from runwatch.jobs.report import (
    SPOOL_NAME,
    DatabaseReporter,
    HttpReporter,
    ReportUndelivered,
    flush,
    outcome_document,
    outcome_from_document,
)
from runwatch.jobs.tokens import attempt_token, load_secret, secret_path, token_allows
from runwatch.jobs.wrapper import EXIT_UNRECORDED, as_reporter, record
from runwatch.workflow.service import AttemptOutcome, Claim, OutputRecord, RetryPolicy
from runwatch.workflow.states import AttemptState

OUTCOME = AttemptOutcome(
    state=AttemptState.SUCCEEDED,
    exit_code=0,
    wall_s=2.5,
    cpu_s=1.5,
    peak_rss_mb=30.0,
    log_tail="done\n",
    outputs=(OutputRecord("rec", "file:///data/x.rec", 12, "1a2b3c4d", {"events": 3}),),
)


def closed_port_url() -> str:
    """The URL of a port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def claim_in(workdir: Path) -> Claim:
    return Claim(1, 1, 0, 2, {}, str(workdir), None)


def test_an_outcome_goes_over_the_wire_unchanged() -> None:
    document = json.loads(json.dumps(outcome_document(OUTCOME)))
    assert "command" not in document  # the scheduler's, not the worker's to say
    assert outcome_from_document(document) == OUTCOME


def test_a_token_opens_its_own_attempt_only(tmp_path: Path) -> None:
    secret = load_secret(tmp_path / "key")
    token = attempt_token(secret, 42)
    assert token.startswith("rwa1.42.") and token_allows(secret, token, 42)
    assert not token_allows(secret, token, 43)
    assert not token_allows(secret, attempt_token(secret, 43), 42)
    assert not token_allows(load_secret(tmp_path / "other"), token, 42)  # another secret
    assert not token_allows(secret, token.upper(), 42)
    assert not token_allows(secret, "", 42)


def test_the_secret_is_made_once_private_and_shared(settings: Settings) -> None:
    path = secret_path(settings)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(load_secret(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results[0]) == 64  # all made or read the same one
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    # Another process (the web server, say) reads the same secret.
    script = (
        "import sys; from pathlib import Path; from runwatch.jobs.tokens import load_secret;"
        "print(load_secret(Path(sys.argv[1])).decode())"
    )
    other = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert other.stdout.strip().encode() == results[0]


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("too short\n")
    with pytest.raises(ValueError, match="too short"):
        load_secret(tmp_path / "key")


def test_a_report_that_cannot_be_delivered_stays_in_its_spool_file(tmp_path: Path) -> None:
    url = closed_port_url()
    reporter = HttpReporter(url, "rwa1.7.abc", retry_s=0.6)
    workdir = tmp_path / "work" / "attempt-7"
    try:
        with pytest.raises(ReportUndelivered):
            reporter.record(7, OUTCOME, RetryPolicy(), claim_in(workdir))
        assert reporter.heartbeat(7) is True  # cannot tell: alive until the scheduler says
        assert reporter.heartbeat(7) is True
    finally:
        reporter.close()
    spool = workdir / SPOOL_NAME
    assert stat.S_IMODE(spool.stat().st_mode) == 0o600
    kept = json.loads(spool.read_text())
    assert kept == {
        "api_url": url,
        "attempt_id": 7,
        "token": "rwa1.7.abc",
        # With the start of the batch job reporting: only that start may record it.
        "outcome": {**json.loads(json.dumps(outcome_document(OUTCOME))), "job_start": 0},
    }
    assert [p.name for p in workdir.iterdir()] == [SPOOL_NAME]  # written whole, by rename
    with pytest.raises(ReportUndelivered):
        flush(workdir, retry_s=0.2)
    assert spool.exists()
    assert flush(tmp_path / "nothing-here") is None


def test_the_wrapper_exits_3_and_keeps_the_report_when_the_server_is_gone(
    tmp_path: Path,
) -> None:
    reporter = HttpReporter(closed_port_url(), "rwa1.9.abc", retry_s=0.3)
    try:
        code = record(reporter, 9, OUTCOME, RetryPolicy(), claim_in(tmp_path / "w"))
    finally:
        reporter.close()
    assert code == EXIT_UNRECORDED
    assert (tmp_path / "w" / SPOOL_NAME).exists()


def test_the_flush_command_says_what_it_could_not_deliver(tmp_path: Path) -> None:
    reporter = HttpReporter(closed_port_url(), "rwa1.5.abc", retry_s=0.1)
    try:
        with pytest.raises(ReportUndelivered):
            reporter.record(5, OUTCOME, RetryPolicy(), claim_in(tmp_path))
    finally:
        reporter.close()
    command = [sys.executable, "-m", "runwatch.jobs.report"]
    done = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "ConnectError" in done.stderr
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([*command, str(empty)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "no report kept there" in done.stderr


def test_the_environment_picks_the_reporter() -> None:
    assert HttpReporter.from_env({}) is None
    assert HttpReporter.from_env({"RUNWATCH_API_URL": "http://x"}) is None
    reporter = HttpReporter.from_env(
        {
            "RUNWATCH_API_URL": "https://runwatch.example.org/",
            "RUNWATCH_ATTEMPT_TOKEN": "rwa1.1.ab",
            "RUNWATCH_REPORT_RETRY_SECONDS": "42",
        }
    )
    assert reporter is not None
    try:
        assert (reporter.api_url, reporter.token, reporter.retry_s) == (
            "https://runwatch.example.org",
            "rwa1.1.ab",
            42.0,
        )
    finally:
        reporter.close()


def test_a_database_that_cannot_be_reached_counts_as_alive(db: Database) -> None:
    gone = Database("postgresql+psycopg://nobody:none@127.0.0.1:9/none")
    try:
        assert DatabaseReporter(gone).heartbeat(1) is True
    finally:
        gone.dispose()
    reporter = as_reporter(db)
    assert isinstance(reporter, DatabaseReporter) and reporter.db is db
    assert as_reporter(reporter) is reporter


def test_the_wrapper_without_any_way_to_report_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWATCH_")}
    env["RUNWATCH_API_URL"] = "http://127.0.0.1:9"  # no token: not enough to report
    done = subprocess.run(
        [sys.executable, "-m", "runwatch", "job", "run", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "RUNWATCH_ATTEMPT_TOKEN" in done.stderr
