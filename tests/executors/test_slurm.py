"""The Slurm executor: its sbatch options and job script, the state mapping, and jobs in
the real single-node Slurm (``RUNWATCH_TEST_SLURM_PARTITION``)."""

from __future__ import annotations

import contextlib
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from runwatch.config import Settings, SlurmSettings
from runwatch.db import Database
from runwatch.executors.base import JobRequest, JobStatus, load_executor
from runwatch.executors.slurm import SlurmExecutor, SqueueLine, parse_external_id
from runwatch.executors.slurm_script import batch_script, sbatch_options, time_limit_minutes
from runwatch.workflow.pipeline_file import parse_pipeline
from runwatch.workflow.scheduler import Scheduler
from runwatch.workflow.states import AttemptState, TaskState
from tests.executors.slurm_cluster import (  # noqa: F401 (fixtures)
    executor_fixture,
    info_of,
    job_processes,
    on_slurm_fixture,
    request_for,
    submit_attempt,
    wait_for_status,
)
from tests.jobs.test_wrapper import attempt_row, make_attempt
from tests.waiting import wait_for

SECRET_URL = "postgresql+psycopg://runwatch:s3cret@db.example/runwatch"


def job(**fields: object) -> JobRequest:
    values: dict[str, object] = {
        "attempt_id": 7,
        "task_key": "chain/calib/file:3",
        "threads": 4,
        "memory_mb": 2000,
        "timeout_s": 3600,
        "workdir": "/work/chain/calib/1/task-3-attempt-1",
        "log_path": "/work/logs/1/task-3-attempt-1.log",
        "argv": ("/opt/venv/bin/python", "-m", "runwatch", "job", "run", "7"),
        "env": {"RUNWATCH_DATABASE_URL": SECRET_URL},
        **fields,
    }
    return JobRequest(**values)  # type: ignore[arg-type]


# -- sbatch options and the job script (no cluster needed) ---------------------------------


def test_sbatch_options_carry_the_jobs_resources_then_the_sites_then_the_steps() -> None:
    site = SlurmSettings(
        partition="juno", account="dyb", qos="prod", sbatch_options=["--constraint=avx2"]
    )
    options = sbatch_options(
        site, job(disk_mb=5000, submit={"slurm": ["--time=30", "--exclusive"]})
    )
    assert options[:8] == [
        "--job-name=chain/calib/file:3",
        "--chdir=/work/chain/calib/1/task-3-attempt-1",
        "--output=/work/logs/1/task-3-attempt-1.log",
        "--open-mode=append",
        "--requeue",
        "--export=NONE",
        "--ntasks=1",
        "--cpus-per-task=4",
    ]
    assert options[8:] == [
        "--mem=2000M",
        "--tmp=5000M",
        f"--time={time_limit_minutes(3600)}",
        "--partition=juno",
        "--account=dyb",
        "--qos=prod",
        "--constraint=avx2",
        "--time=30",  # the step's, after ours: sbatch takes the last
        "--exclusive",
    ]
    assert not any(SECRET_URL in option for option in options), "ps would show the password"


def test_unset_resources_are_left_to_slurm_and_a_percent_is_not_a_pattern() -> None:
    options = sbatch_options(
        SlurmSettings(), job(threads=0, memory_mb=0, timeout_s=0, log_path="/l/100%.log")
    )
    assert "--cpus-per-task=1" in options
    assert "--output=/l/100%%.log" in options
    assert not [o for o in options if o.startswith(("--mem", "--tmp", "--time", "--part"))]


def test_the_time_limit_leaves_the_wrapper_and_the_scheduler_time_to_act_first() -> None:
    assert time_limit_minutes(0) is None
    assert time_limit_minutes(60) == 7  # 60 s + 10 s grace + 300 s staging, rounded up
    assert time_limit_minutes(3600) == 71  # 3600 + 360 + 300 s


def test_the_job_script_exports_the_environment_and_becomes_the_wrapper() -> None:
    script = batch_script(job(env={"RUNWATCH_DATABASE_URL": SECRET_URL, "B": "it's"}))
    assert script.splitlines() == [
        "#!/bin/sh",
        "# runwatch attempt 7",
        "export B='it'\"'\"'s'",
        f"export RUNWATCH_DATABASE_URL={SECRET_URL}",
        'export RUNWATCH_JOB_START="${SLURM_RESTART_COUNT:-0}"',  # counted by Slurm
        "exec /opt/venv/bin/python -m runwatch job run 7",
    ]
    with pytest.raises(ValueError, match="not an environment variable name"):
        batch_script(job(env={"A;rm -rf /": "x"}))
    with pytest.raises(ValueError, match="list of sbatch options"):
        sbatch_options(SlurmSettings(), job(submit={"slurm": "--exclusive"}))


@pytest.mark.parametrize(
    ("line", "status", "exit_code", "reason", "failed"),
    [
        ("12|PENDING|0|0|Resources|", JobStatus.QUEUED, None, "Resources", False),
        ("12|PENDING|0|0|None|", JobStatus.QUEUED, None, "pending", False),
        ("12|PENDING|1|0|BeginTime|", JobStatus.QUEUED, None, "BeginTime, requeued 1x", False),
        ("12|REQUEUED|2|0|None|", JobStatus.QUEUED, None, "requeued 2x", False),
        ("12|SUSPENDED|0|0|None|", JobStatus.QUEUED, None, "suspended", False),
        ("12|RUNNING|0|0|None|", JobStatus.RUNNING, None, None, False),
        ("12|COMPLETING|0|0|None|", JobStatus.RUNNING, None, None, False),
        ("12|CONFIGURING|0|0|None|", JobStatus.RUNNING, None, None, False),
        ("12|COMPLETED|0|0|None|", JobStatus.GONE, 0, "Slurm job COMPLETED", False),
        ("12|FAILED|0|4021|JobLaunchFailure|", JobStatus.GONE, None, "Slurm job FAILED (Job", True),
        ("12|FAILED|0|768|NonZeroExitCode|", JobStatus.GONE, 3, "Slurm job FAILED (NonZero", False),
        ("12|FAILED|0|9|RaisedSignal:9(Killed)|", JobStatus.GONE, None, "Slurm job FAI", False),
        ("12|FAILED|0|9|None|", JobStatus.GONE, None, "Slurm job FAILED (signal 9)", True),
        ("12|TIMEOUT|0|0|TimeLimit|", JobStatus.GONE, 0, "Slurm job TIMEOUT (TimeLimit)", True),
        ("12|NODE_FAIL|0|0|None|", JobStatus.GONE, 0, "Slurm job NODE_FAIL", False),
        ("12|OUT_OF_MEMORY|0|0|None|", JobStatus.GONE, 0, "Slurm job OUT_OF_MEMORY", True),
        ("12|CANCELLED|0|0|None|", JobStatus.GONE, 0, "Slurm job CANCELLED", False),
        ("12|CANCELLED|0|0|BadConstraints|", JobStatus.GONE, 0, "Slurm job CANCELLED (", True),
        ("12|PREEMPTED|0|0|None|", JobStatus.GONE, 0, "Slurm job PREEMPTED", False),
        ("12|BRAND_NEW|0||None|", JobStatus.GONE, None, "Slurm job BRAND_NEW", False),
        (
            "12|PENDING|3|0|launch_failed_requeued_held|",
            JobStatus.GONE,
            0,
            "Slurm job PENDING (launch_failed_requeued_held, requeued 3x)",
            True,
        ),
    ],
)
def test_slurm_states_map_to_job_statuses_with_a_reason(
    line: str, status: JobStatus, exit_code: int | None, reason: str | None, failed: bool
) -> None:
    parsed = SqueueLine.parse(line)
    assert parsed is not None
    info = parsed.info()
    assert (info.status, info.exit_code, info.failed) == (status, exit_code, failed)
    if reason is None:
        assert info.reason is None
    else:
        assert info.reason is not None and info.reason.startswith(reason)
    if status is not JobStatus.GONE:  # which start of the job: RestartCnt
        assert info.start == parsed.restarts == int(line.split("|")[2])


def test_without_slurm_jobs_are_unknown_not_gone_and_submitting_fails(
    settings: Settings, tmp_path: Path
) -> None:
    """A controller that cannot be asked must not make the scheduler give jobs up."""
    broken = settings.model_copy(update={"slurm": SlurmSettings(bin_dir=str(tmp_path / "none"))})
    executor = SlurmExecutor(broken)
    try:
        assert executor.poll(["slurm:12", "slurm:13"]) == {}
        assert executor.poll(["local:1"])["local:1"].status is JobStatus.GONE
        with pytest.raises(RuntimeError, match="2 of 2 sbatch calls failed"):
            executor.submit(
                [
                    job(attempt_id=n, workdir=str(tmp_path / f"w{n}"), log_path=str(tmp_path / "l"))
                    for n in (1, 2)
                ]
            )
        executor.cancel("slurm:12")  # logged, not raised
    finally:
        executor.close()


DOCS = Path(__file__).resolve().parents[2] / "docs" / "executors-slurm.md"


def test_the_docs_examples_load() -> None:
    """docs/executors-slurm.md's runwatch.toml and pipeline step are valid as written."""
    text = DOCS.read_text()
    toml = text.split("```toml\n", 1)[1].split("```", 1)[0]
    settings = Settings.model_validate(tomllib.loads(toml))
    assert settings.scheduler.executor == "slurm" and settings.slurm.partition == "juno"
    steps = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    pipeline = parse_pipeline(f"name: reco\nstreams: [Physics]\n{steps}", DOCS)
    rec = pipeline.steps["rec"]
    assert (rec.threads, rec.memory_mb, rec.disk_mb, rec.timeout_s) == (4, 8192, 20480, 7200)
    assert rec.submit == {"slurm": ["--qos=high", "--constraint=avx512"]}


def test_external_ids() -> None:
    assert parse_external_id("slurm:123") == "123"
    assert parse_external_id("slurm:12_3") is None
    assert parse_external_id("local:123") is None


# -- jobs in the real Slurm ----------------------------------------------------------------


def test_the_executor_is_found_by_name(on_slurm: Settings) -> None:
    found = load_executor(on_slurm)
    assert isinstance(found, SlurmExecutor)
    assert (found.capacity(), found.queue_ahead()) == (8, 8)


def test_a_job_runs_the_wrapper_which_records_the_attempt(
    executor: SlurmExecutor, on_slurm: Settings, db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(db, tmp_path, "echo from the step > out.txt", {"out": "out.txt"})
    ext = submit_attempt(executor, on_slurm, db, attempt_id)
    assert parse_external_id(ext) is not None
    wait_for(lambda: attempt_row(db, attempt_id)[1].state is TaskState.DONE, 60, "the task done")
    attempt, _, outputs = attempt_row(db, attempt_id)
    assert attempt.state is AttemptState.SUCCEEDED
    assert attempt.host  # the node that ran it
    assert [o.name for o in outputs] == ["out"]
    info = wait_for_status(executor, ext, JobStatus.GONE)
    assert (info.exit_code, info.reason) == (0, "Slurm job COMPLETED")
    assert attempt.log_path is not None
    assert f"attempt {attempt_id}: succeeded" in Path(attempt.log_path).read_text()


def test_a_pending_job_shows_its_reason_and_cancel_removes_it(
    executor: SlurmExecutor, on_slurm: Settings, db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(db, tmp_path, "true")
    ext = submit_attempt(executor, on_slurm, db, attempt_id, submit={"slurm": ["--begin=now+3600"]})
    info = wait_for_status(executor, ext, JobStatus.QUEUED, 30)
    assert info.reason == "BeginTime"
    scheduler = Scheduler(on_slurm, db, executor)
    scheduler.supervise()
    assert attempt_row(db, attempt_id)[0].batch_status == "BeginTime"  # for operators
    with statements_seen(db) as seen:
        scheduler.supervise()
    assert not [s for s in seen if s.startswith("UPDATE")]  # written when it changes only
    executor.cancel(ext)
    info = wait_for_status(executor, ext, JobStatus.GONE, 30)
    assert info.reason is not None and info.reason.startswith("Slurm job CANCELLED")
    executor.cancel(ext)  # gone already: no error
    executor.cancel("slurm:999999999")
    unknown = info_of(executor, "slurm:999999999")
    assert (unknown.status, unknown.reason) == (JobStatus.GONE, "Slurm no longer knows the job")
    assert attempt_row(db, attempt_id)[0].state is AttemptState.SUBMITTED  # never ran


@contextlib.contextmanager
def statements_seen(db: Database) -> Iterator[list[str]]:
    """The SQL statements ``db`` runs meanwhile."""
    seen: list[str] = []

    def note(*args: Any) -> None:
        seen.append(str(args[2]).lstrip().upper())

    sa.event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", note)


def test_cancel_kills_a_running_job(
    executor: SlurmExecutor, on_slurm: Settings, db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(db, tmp_path, "sleep 300")
    ext = submit_attempt(executor, on_slurm, db, attempt_id)
    wait_for(lambda: attempt_row(db, attempt_id)[0].state is AttemptState.RUNNING, 60, "a start")
    assert info_of(executor, ext).status is JobStatus.RUNNING
    wait_for(lambda: any("sleep" in p.name() for p in job_processes(ext)), 30, "the step")
    steps = [p for p in job_processes(ext) if p.name() == "sleep"]
    executor.cancel(ext)
    wait_for_status(executor, ext, JobStatus.GONE, 60)
    wait_for(lambda: not any(p.is_running() for p in steps), 30, "the step killed")
    # The wrapper cannot tell a cancel from a requeue (SIGTERM either way): it leaves the
    # attempt RUNNING, and the scheduler learns from Slurm that the job is gone.
    attempt = attempt_row(db, attempt_id)[0]
    assert attempt.state is AttemptState.RUNNING and attempt.log_path is not None
    wait_for(
        lambda: "stopped by the batch system" in Path(attempt.log_path or "").read_text(),
        30,
        "the wrapper's word",
    )
    Scheduler(on_slurm, db, executor).supervise()
    attempt = attempt_row(db, attempt_id)[0]
    assert attempt.state is AttemptState.LOST
    assert attempt.reason is not None and "Slurm job CANCELLED" in attempt.reason


def test_a_job_slurm_cannot_start_ends_the_attempt_with_slurms_reason(
    executor: SlurmExecutor, on_slurm: Settings, db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(db, tmp_path, "true", retries=0)
    unwritable = "--output=/proc/runwatch-test/job.log"  # Slurm cannot open the log
    ext = submit_attempt(executor, on_slurm, db, attempt_id, submit={"slurm": [unwritable]})
    info = wait_for_status(executor, ext, JobStatus.GONE, 60)
    assert info.reason is not None and info.reason.startswith("Slurm job FAILED")
    Scheduler(on_slurm, db, executor).supervise()
    attempt, task, _ = attempt_row(db, attempt_id)
    assert attempt.state is AttemptState.FAILED  # failed by Slurm, not lost
    assert attempt.reason is not None and attempt.reason.startswith("Slurm job FAILED (JobLaunch")
    assert task.state is TaskState.FAILED


def test_a_job_that_can_never_start_ends_the_attempt_and_leaves_the_queue(
    executor: SlurmExecutor, on_slurm: Settings, db: Database, tmp_path: Path
) -> None:
    failing = subprocess.run(
        ["sbatch", "--parsable", "--output=/dev/null", f"--chdir={tmp_path}", "--wrap=exit 1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    attempt_id = make_attempt(db, tmp_path, "true", retries=0)
    after = f"--dependency=afterok:{failing}"  # never met: that job fails
    ext = submit_attempt(executor, on_slurm, db, attempt_id, submit={"slurm": [after]})
    info = wait_for_status(executor, ext, JobStatus.GONE, 60)
    assert info.reason == "Slurm job PENDING (DependencyNeverSatisfied)"
    Scheduler(on_slurm, db, executor).supervise()
    # Whether the scheduler saw it pending or cancelled already, it failed for that reason.
    attempt = attempt_row(db, attempt_id)[0]
    assert attempt.state is AttemptState.FAILED
    assert attempt.reason is not None and "(DependencyNeverSatisfied)" in attempt.reason
    info = wait_for_status(executor, ext, JobStatus.GONE, 30)
    assert info.reason == "Slurm job CANCELLED (DependencyNeverSatisfied)" and info.failed


def test_a_batch_is_submitted_whole_or_not_at_all(
    executor: SlurmExecutor, on_slurm: Settings, db: Database, tmp_path: Path
) -> None:
    good, bad = (make_attempt(db, tmp_path, "sleep 300") for _ in range(2))
    jobs = [
        request_for(on_slurm, db, good),
        request_for(on_slurm, db, bad, submit={"slurm": ["--partition=no-such-partition"]}),
    ]
    with pytest.raises(RuntimeError, match=r"1 of 2 sbatch calls failed: sbatch: .*partition"):
        executor.submit(jobs)

    def left_in_slurm() -> list[str]:
        shown = subprocess.run(
            ["squeue", "--noheader", "--format=%Z"], capture_output=True, text=True, check=True
        ).stdout.split()
        return [w for w in shown if Path(w).is_relative_to(tmp_path)]

    wait_for(lambda: not left_in_slurm(), 30, "the submitted half cancelled")


@pytest.mark.slow
def test_a_job_over_its_slurm_time_limit_fails_with_slurms_message(
    executor: SlurmExecutor, on_slurm: Settings, db: Database, tmp_path: Path
) -> None:
    attempt_id = make_attempt(db, tmp_path, "sleep 600", timeout_s=3600)
    ext = submit_attempt(executor, on_slurm, db, attempt_id, submit={"slurm": ["--time=1"]})
    # Slurm checks time limits every 30 s or so: the job ends 60-100 s after its start.
    info = wait_for_status(executor, ext, JobStatus.GONE, 180)
    assert info.reason is not None and info.reason.startswith("Slurm job TIMEOUT")
    # The wrapper, sent SIGTERM, records nothing (as for a requeue); the scheduler fails
    # the attempt with Slurm's reason.
    assert attempt_row(db, attempt_id)[0].state is AttemptState.RUNNING
    Scheduler(on_slurm, db, executor).supervise()
    attempt = attempt_row(db, attempt_id)[0]
    assert attempt.state is AttemptState.FAILED
    assert attempt.reason is not None and attempt.reason.startswith("Slurm job TIMEOUT")
    assert attempt.log_path is not None
    log = Path(attempt.log_path).read_text()
    assert "DUE TO TIME LIMIT" in log and "stopped by the batch system (SIGTERM)" in log
