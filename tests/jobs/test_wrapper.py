"""The job wrapper with real commands, real files and a real database."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from runwatch.catalogue.models import File, Run
from runwatch.cli import build
from runwatch.db import Database, utcnow
from runwatch.jobs import wrapper
from runwatch.jobs.wrapper import (
    EXIT_FAILED,
    EXIT_OK,
    JOB_ENV_FILE,
    claim,
    command_argv,
    fresh_workdir,
    run_attempt,
    run_claimed,
    setup_logging,
)
from runwatch.storage.checksum import adler32_file
from runwatch.workflow.models import Attempt, PipelineRevision, Task, TaskOutput
from runwatch.workflow.nudge import NUDGE_ENV, NudgeListener, socket_path
from runwatch.workflow.service import cancel_task
from runwatch.workflow.states import AttemptState, TaskState

HOST = "worker-1"


def make_attempt(
    db: Database,
    root: Path,
    command: str,
    outputs: dict[str, str] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    timeout_s: float = 0.0,
    heartbeat_s: float = 5.0,
    retries: int = 1,
    state: AttemptState = AttemptState.SUBMITTED,
    env: dict[str, str] | None = None,
) -> int:
    """A run, a file, a SUBMITTED task and its attempt with a job spec, as the scheduler
    leaves them just before the executor starts the wrapper."""
    now = utcnow()
    with db.session() as s:
        count = s.scalar(sa.select(sa.func.count()).select_from(Task)) or 0
        number = 1000 + count
        rev = PipelineRevision(
            name=f"p{number}", digest=f"{number:064d}", path="-", content="", loaded_at=now
        )
        run = Run(number=number, stream="Physics", updated_at=now)
        s.add_all([rev, run])
        s.flush()
        file = File(run_id=run.id, name=f"raw{number}", url=f"file:///raw/{number}", stream="P")
        s.add(file)
        s.flush()
        task = Task(
            key=f"p/step/file:{file.id}",
            revision_id=rev.id,
            pipeline="p",
            step="step",
            scope="file",
            run_id=run.id,
            file_id=file.id,
            state=TaskState.SUBMITTED if state is AttemptState.SUBMITTED else TaskState.RUNNING,
            priority_at=now,
            retries=retries,
            timeout_s=timeout_s,
        )
        s.add(task)
        s.flush()
        workdir = root / "work" / f"task-{task.id}-attempt-1"
        attempt = Attempt(
            task_id=task.id,
            number=1,
            state=state,
            executor="local",
            submitted_at=now,
            spec={
                "command": command,
                "inputs": inputs or [],
                "outputs": outputs or {},
                "destination": (root / "data" / "Physics" / str(number) / "step").as_uri() + "/",
                "timeout_s": timeout_s,
                "threads": 3,
                "heartbeat_s": heartbeat_s,
                "env": {"RUNWATCH_TASK": task.key, **(env or {})},
                "retry": {"backoff_seconds": 0.05, "backoff_max_seconds": 0.2},
            },
            command=command,
            workdir=str(workdir),
            log_path=str(root / "logs" / str(task.id) / "attempt-1.log"),
        )
        s.add(attempt)
        s.flush()
        return attempt.id


def attempt_row(db: Database, attempt_id: int) -> tuple[Attempt, Task, list[TaskOutput]]:
    with db.session() as s:
        attempt = s.get(Attempt, attempt_id)
        assert attempt is not None
        task = s.get(Task, attempt.task_id)
        assert task is not None
        outputs = list(s.scalars(sa.select(TaskOutput).where(TaskOutput.task_id == task.id)))
        return attempt, task, outputs


def start_wrapper(db: Database, attempt_id: int, log: Path) -> subprocess.Popen[bytes]:
    """The wrapper as its own process, the way an executor starts it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "runwatch.jobs.wrapper", str(attempt_id), "--db", db.url],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def gone(pid: int) -> bool:
    """Ended (an orphan may stay a zombie until init reaps it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- success ------------------------------------------------------------------------------


def test_success_stores_outputs_with_checksums_and_records_usage(
    any_db: Database, tmp_path: Path
) -> None:
    raw = tmp_path / "raw" / "RUN.1.raw"
    raw.parent.mkdir()
    raw.write_bytes(b"event data\n" * 1000)
    remote = tmp_path / "other" / "calib.db"
    remote.parent.mkdir()
    remote.write_text("constants\n")
    workdir_inputs = tmp_path / "staged" / "calib.db"
    command = (
        f"mkdir -p sub && cp {workdir_inputs} sub/calib.copy && tr a-z A-Z < {raw} > out.rec; "
        'echo "threads=$OMP_NUM_THREADS/$RUNWATCH_THREADS task=$RUNWATCH_TASK" >> out.rec; '
        f"{sys.executable} -c 'b = bytearray(60_000_000); n = sum(range(3_000_000))'; "
        "echo step finished"
    )
    attempt_id = make_attempt(
        any_db,
        tmp_path,
        command,
        outputs={"rec": "out.rec", "calib": "sub/calib.copy"},
        inputs=[
            {"url": raw.as_uri(), "path": str(raw), "adler32": adler32_file(raw)},
            {"url": remote.as_uri(), "path": str(workdir_inputs), "adler32": None},
        ],
    )
    assert run_attempt(any_db, attempt_id, HOST) == EXIT_OK
    attempt, task, outputs = attempt_row(any_db, attempt_id)
    assert (attempt.state, task.state) == (AttemptState.SUCCEEDED, TaskState.DONE)
    assert attempt.host == HOST and attempt.exit_code == 0 and attempt.reason is None
    assert attempt.wall_s is not None and 0.05 < attempt.wall_s < 10
    assert attempt.cpu_s is not None and attempt.cpu_s > 0.05
    assert attempt.peak_rss_mb is not None and attempt.peak_rss_mb > 60
    assert attempt.log_tail is not None and "step finished" in attempt.log_tail
    assert attempt.command is not None and "step finished" in attempt.command
    assert sorted(o.name for o in outputs) == ["calib", "rec"]
    dest = tmp_path / "data" / "Physics"
    for out in outputs:
        path = Path(out.url.removeprefix("file://"))
        assert path.parent.parent.parent == dest
        assert adler32_file(path) == out.adler32 and path.stat().st_size == out.size
        assert out.attempt_id == attempt_id
    rec = next(o for o in outputs if o.name == "rec")
    text = Path(rec.url.removeprefix("file://")).read_text()
    assert text.startswith("EVENT DATA\n")
    assert f"threads=3/3 task={task.key}" in text
    assert Path(next(o.url for o in outputs if o.name == "calib")).name == "calib.copy"
    assert not Path(attempt.workdir or "").exists(), "the work directory is freed on success"
    assert not [p for p in dest.rglob(".*") if p.is_file()], "no temporary files left"


# -- failures -----------------------------------------------------------------------------


def test_failing_command_retries_with_the_exit_code_as_reason(db: Database, tmp_path: Path) -> None:
    attempt_id = make_attempt(db, tmp_path, "echo oops >&2; exit 3", outputs={"x": "x"})
    assert run_attempt(db, attempt_id, HOST) == EXIT_FAILED
    attempt, task, outputs = attempt_row(db, attempt_id)
    assert attempt.state is AttemptState.FAILED
    assert (attempt.reason, attempt.exit_code) == ("exit code 3", 3)
    assert (task.state, task.failures, task.reason) == (TaskState.RETRYING, 1, "exit code 3")
    assert task.not_before is not None
    assert outputs == []
    assert "oops" in (attempt.log_tail or "")
    assert Path(attempt.workdir or "").is_dir(), "a failed attempt's work directory is kept"


def test_failure_without_retries_left_fails_the_task(db: Database, tmp_path: Path) -> None:
    attempt_id = make_attempt(db, tmp_path, "kill -9 $$", retries=0)
    assert run_attempt(db, attempt_id, HOST) == EXIT_FAILED
    attempt, task, _ = attempt_row(db, attempt_id)
    assert attempt.reason == "killed by signal SIGKILL" and attempt.exit_code is None
    assert (task.state, task.reason) == (TaskState.FAILED, "killed by signal SIGKILL")


def test_missing_declared_output_fails(any_db: Database, tmp_path: Path) -> None:
    attempt_id = make_attempt(
        any_db, tmp_path, "touch a.hist", outputs={"hist": "a.hist", "rec": "a.rec"}
    )
    assert run_attempt(any_db, attempt_id, HOST) == EXIT_FAILED
    attempt, task, outputs = attempt_row(any_db, attempt_id)
    assert attempt.state is AttemptState.FAILED
    assert attempt.reason == "declared output 'rec' (a.rec) was not written"
    assert task.state is TaskState.RETRYING and outputs == []
    assert not (tmp_path / "data").exists(), "nothing stored when an output is missing"


def test_timeout_kills_the_command_group(db: Database, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    attempt_id = make_attempt(
        db, tmp_path, f"sleep 30 & echo $! > {pids}; sleep 30", timeout_s=0.5, heartbeat_s=0.2
    )
    started = time.monotonic()
    assert run_attempt(db, attempt_id, HOST) == EXIT_FAILED
    assert time.monotonic() - started < 5
    attempt, task, _ = attempt_row(db, attempt_id)
    assert attempt.state is AttemptState.TIMED_OUT
    assert attempt.reason == "timed out after 0.5 s"
    assert task.state is TaskState.RETRYING and task.reason == "timed out after 0.5 s"
    assert attempt.wall_s is not None and 0.4 < attempt.wall_s < 4
    background = int(pids.read_text())
    deadline = time.monotonic() + 3
    while not gone(background) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(background), "the step's background process was killed with its group"


def test_missing_input_fails_with_the_stage_error(db: Database, tmp_path: Path) -> None:
    missing = tmp_path / "raw" / "gone.raw"
    attempt_id = make_attempt(
        db,
        tmp_path,
        "touch out",
        outputs={"out": "out"},
        inputs=[{"url": missing.as_uri(), "path": str(tmp_path / "w" / "x"), "adler32": None}],
    )
    assert run_attempt(db, attempt_id, HOST) == EXIT_FAILED
    attempt, task, _ = attempt_row(db, attempt_id)
    assert attempt.state is AttemptState.FAILED
    assert attempt.reason == f"cannot stage in {missing.as_uri()}: no such file {missing}"
    assert attempt.exit_code is None and attempt.wall_s is None
    assert task.state is TaskState.RETRYING


def test_input_checksum_mismatch_fails(db: Database, tmp_path: Path) -> None:
    raw = tmp_path / "in.raw"
    raw.write_text("payload")
    attempt_id = make_attempt(
        db,
        tmp_path,
        "touch out",
        outputs={"out": "out"},
        inputs=[{"url": raw.as_uri(), "path": str(raw), "adler32": "00000001"}],
    )
    assert run_attempt(db, attempt_id, HOST) == EXIT_FAILED
    attempt, _, _ = attempt_row(db, attempt_id)
    assert attempt.reason == (
        f"checksum mismatch for {raw.as_uri()}: expected 00000001, got {adler32_file(raw)}"
    )


def test_a_bad_spec_is_recorded_as_a_wrapper_error(db: Database, tmp_path: Path) -> None:
    attempt_id = make_attempt(db, tmp_path, "true")
    with db.session() as s:
        s.execute(sa.update(Attempt).where(Attempt.id == attempt_id).values(spec={"x": 1}))
    assert run_attempt(db, attempt_id, HOST) == EXIT_FAILED
    attempt, task, _ = attempt_row(db, attempt_id)
    assert attempt.state is AttemptState.FAILED
    assert (attempt.reason or "").startswith("wrapper error: ValueError: job spec lacks command")
    assert task.state is TaskState.RETRYING


def test_log_tail_is_the_last_4_kb(db: Database, tmp_path: Path) -> None:
    command = "for i in $(seq 1 2000); do echo line $i; done; echo the-end"
    attempt_id = make_attempt(db, tmp_path, command)
    assert run_attempt(db, attempt_id, HOST) == EXIT_OK
    attempt, _, _ = attempt_row(db, attempt_id)
    tail = attempt.log_tail or ""
    assert len(tail.encode()) == 4096
    assert tail.endswith("line 2000\nthe-end\n")
    log = Path(attempt.log_path or "").read_text()
    assert log.startswith("line 1\n") or "line 1\n" in log
    assert log.endswith(tail)


# -- claims, cancels and signals ----------------------------------------------------------


@pytest.mark.parametrize("state", [AttemptState.RUNNING, AttemptState.LOST])
def test_claim_refused_when_not_submitted(
    db: Database, tmp_path: Path, state: AttemptState, caplog: pytest.LogCaptureFixture
) -> None:
    attempt_id = make_attempt(db, tmp_path, "touch ran", state=state)
    caplog.set_level("INFO")
    assert run_attempt(db, attempt_id, HOST) == EXIT_OK
    attempt, _, _ = attempt_row(db, attempt_id)
    assert attempt.state is state and attempt.host is None and attempt.log_tail is None
    assert f"attempt {attempt_id} was given up; not running" in caplog.text
    assert not Path(attempt.workdir or "").exists()


def test_unknown_attempt_is_not_run(db: Database) -> None:
    assert run_attempt(db, 424242, HOST) == EXIT_OK


def test_cancelled_while_running_kills_the_command_and_records_nothing(
    any_db: Database, tmp_path: Path
) -> None:
    pid_file = tmp_path / "step.pid"
    attempt_id = make_attempt(
        any_db,
        tmp_path,
        f"echo $$ > {pid_file}; sleep 30; touch out",
        outputs={"out": "out"},
        heartbeat_s=0.2,
    )
    wrapper = start_wrapper(any_db, attempt_id, tmp_path / "wrapper.log")
    try:
        step = int(wait_for_file(pid_file))
        _, task, _ = attempt_row(any_db, attempt_id)
        assert task.state is TaskState.RUNNING
        with any_db.session() as s:
            cancel_task(s, task.id, utcnow())
        assert wrapper.wait(timeout=10) == EXIT_OK
    finally:
        wrapper.kill()
        wrapper.wait()
    assert gone(step)
    attempt, task, outputs = attempt_row(any_db, attempt_id)
    assert attempt.state is AttemptState.CANCELLED and attempt.reason == "cancelled by operator"
    assert attempt.log_tail is None and attempt.exit_code is None
    assert task.state is TaskState.CANCELLED and outputs == []
    log = (tmp_path / "wrapper.log").read_text()
    assert "given up while running; nothing recorded" in log


def test_sigterm_kills_the_step_and_records_killed(db: Database, tmp_path: Path) -> None:
    pid_file = tmp_path / "step.pid"
    attempt_id = make_attempt(db, tmp_path, f"echo $$ > {pid_file}; sleep 30")
    wrapper = start_wrapper(db, attempt_id, tmp_path / "wrapper.log")
    try:
        step = int(wait_for_file(pid_file))
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=10) == EXIT_FAILED
    finally:
        wrapper.kill()
        wrapper.wait()
    assert gone(step)
    attempt, task, _ = attempt_row(db, attempt_id)
    assert attempt.state is AttemptState.FAILED and attempt.reason == "killed (SIGTERM)"
    assert task.state is TaskState.RETRYING


def test_cli_runs_an_attempt_and_documents_itself(db: Database, tmp_path: Path) -> None:
    help_text = CliRunner().invoke(build(), ["job", "run", "--help"]).output
    assert "started by executors" in help_text.lower()
    attempt_id = make_attempt(db, tmp_path, "echo hi > out", outputs={"out": "out"})
    env = {**os.environ, "RUNWATCH_DATABASE_URL": db.url}
    done = subprocess.run(
        [sys.executable, "-m", "runwatch", "job", "run", str(attempt_id)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    attempt, task, outputs = attempt_row(db, attempt_id)
    assert task.state is TaskState.DONE and [o.name for o in outputs] == ["out"]
    assert Path(outputs[0].url.removeprefix("file://")).read_text() == "hi\n"
    assert attempt.state is AttemptState.SUCCEEDED


def test_cli_without_a_database_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RUNWATCH_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "runwatch.jobs.wrapper", "7"],
        env=env,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert b"no database" in done.stderr


def test_heartbeats_are_recorded_while_the_step_runs(db: Database, tmp_path: Path) -> None:
    attempt_id = make_attempt(db, tmp_path, "sleep 0.8", heartbeat_s=0.2)
    assert run_attempt(db, attempt_id, HOST) == EXIT_OK
    attempt, _, _ = attempt_row(db, attempt_id)
    assert attempt.started_at is not None and attempt.heartbeat_at is not None
    assert (attempt.heartbeat_at - attempt.started_at).total_seconds() > 0.4


def test_plain_commands_are_execd_directly_and_shell_syntax_runs_in_bash(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "mytool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    path = f"{tool.parent}:/usr/bin:/bin"
    assert command_argv("mytool --in a.raw  --out b", path) == [
        str(tool),
        "--in",
        "a.raw",
        "--out",
        "b",
    ]
    assert command_argv("true", path)[0].endswith("/true")
    for shell in (
        "mytool > out",
        "mytool | wc -l",
        "echo $HOME",
        "A=1 mytool",
        "mytool 'two words'",
        "exit 3",
        "cd /tmp",
        "./run.sh",
        "no-such-program x",
        "mytool *.raw",
    ):
        assert command_argv(shell, path) == ["bash", "-c", shell], shell


def test_a_program_found_is_remembered_while_it_stays_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
    path = f"{first}:{second}"
    tool = second / "mytool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert command_argv("mytool x", path)[0] == str(tool)
    earlier = first / "mytool"
    earlier.write_text("#!/bin/sh\n")
    earlier.chmod(0o755)
    assert command_argv("mytool x", path)[0] == str(tool), "remembered"
    monkeypatch.setattr(wrapper, "WHICH_KEEP_S", 0.0)
    assert command_argv("mytool x", path)[0] == str(earlier), "searched again once stale"
    monkeypatch.undo()
    earlier.unlink()
    assert command_argv("mytool x", path)[0] == str(tool), "gone: searched again"
    tool.unlink()
    assert command_argv("mytool x", path) == ["bash", "-c", "mytool x"]


def test_a_work_directory_is_made_or_emptied_and_a_shallow_one_refused(tmp_path: Path) -> None:
    fresh = tmp_path / "work" / "run" / "attempt-1"
    fresh_workdir(fresh)
    assert fresh.is_dir() and not any(fresh.iterdir())
    (fresh / "old.root").write_text("an earlier try's output")
    (fresh / "sub").mkdir()
    (fresh / JOB_ENV_FILE).write_text("KEEP=1")
    fresh_workdir(fresh)
    assert [p.name for p in fresh.iterdir()] == [JOB_ENV_FILE]
    root = tmp_path / "root"
    root.symlink_to("/")
    with pytest.raises(ValueError, match="refusing"):
        fresh_workdir(root)


def test_a_plain_command_runs_and_is_timed(db: Database, tmp_path: Path) -> None:
    attempt_id = make_attempt(db, tmp_path, "sleep 0.2")
    assert run_attempt(db, attempt_id, "h") == 0
    attempt, task, _ = attempt_row(db, attempt_id)
    assert (attempt.state, task.state) == (AttemptState.SUCCEEDED, TaskState.DONE)
    assert attempt.wall_s is not None and attempt.wall_s >= 0.2


def test_a_claim_that_fails_half_way_changes_nothing(
    any_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt and its task go RUNNING together or not at all, on every database."""
    from runwatch.jobs import report, wrapper
    from runwatch.workflow import service

    attempt_id = make_attempt(any_db, tmp_path, "touch ran")

    def failing_transition(*args: object, **kwargs: object) -> bool:
        raise sa.exc.OperationalError("UPDATE tasks ...", {}, Exception("connection lost"))

    def failing_claim(*args: object, **kwargs: object) -> None:
        raise sa.exc.OperationalError("WITH claimed_attempt ...", {}, Exception("lost"))

    monkeypatch.setattr(service, "transition", failing_transition)
    monkeypatch.setattr(report, "claim_attempt_at_once", failing_claim)
    with pytest.raises(sa.exc.OperationalError):
        wrapper.claim(any_db, attempt_id, HOST)
    attempt, task, _ = attempt_row(any_db, attempt_id)
    assert (attempt.state, task.state) == (AttemptState.SUBMITTED, TaskState.SUBMITTED)
    assert attempt.host is None


# -- waking the scheduler -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "deep_queue", "woken"),
    [
        ("true", False, True),  # the queue runs low: the scheduler refills it
        ("true", True, False),  # a deep queue: nothing for the scheduler to add
        ("exit 3", True, True),  # a failure always: it decides the retry
    ],
)
def test_a_worker_wakes_the_scheduler_only_when_needed(
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    deep_queue: bool,
    woken: bool,
) -> None:
    nudged = threading.Event()
    listener = NudgeListener(socket_path(tmp_path / "sched"), nudged.set)
    assert listener.start()
    monkeypatch.setenv(NUDGE_ENV, listener.path)
    try:
        attempt_id = make_attempt(db, tmp_path, command, outputs={})
        claimed = claim(db, attempt_id, HOST)
        assert claimed is not None
        run_claimed(db, attempt_id, claimed, handle_signals=False, nudge_if=lambda: not deep_queue)
        assert nudged.wait(0.5 if woken else 0.2) is woken
    finally:
        listener.stop()


def test_the_job_log_gets_no_line_per_http_request(capsys: pytest.CaptureFixture[str]) -> None:
    """A batch job's log (the wrapper's stderr) holds the wrapper's lines, not one per
    heartbeat or upload that httpx makes."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    chatty = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    try:
        setup_logging()
        answer = httpx.MockTransport(lambda request: httpx.Response(200))
        with httpx.Client(transport=answer) as client:
            client.get("https://server.invalid/api/v1/attempts/1/heartbeat")
        logging.getLogger("runwatch.job").info("attempt 1: running true")
    finally:
        root.handlers[:], root.level = saved
        for name, level in chatty.items():
            logging.getLogger(name).setLevel(level)
    err = capsys.readouterr().err
    assert "attempt 1: running true" in err
    assert "HTTP Request" not in err
