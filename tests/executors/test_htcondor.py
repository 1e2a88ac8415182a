"""The HTCondor executor against a real personal pool (scripts/services/htcondor.sh)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import htcondor2
import pytest
from htcondor2 import classad

from runwatch.config import HTCondorSettings, Settings
from runwatch.db import Database
from runwatch.executors.base import JobInfo, JobRequest, JobStatus
from runwatch.executors.htcondor import (
    IDLE,
    RUNNING,
    SUSPENDED,
    HTCondorExecutor,
    JobId,
    job_info,
    parse_external_id,
)
from runwatch.executors.htcondor_submit import ENV_FILE, POOL_GRACE_S, condor_arguments
from runwatch.jobs.environment import DATABASE_URL_ENV
from runwatch.workflow.states import AttemptState
from tests.executors.htcondor_pool import (
    condor_config,
    condor_db,
    condor_settings,
    job_ads,
    job_user,
    poll_until,
    pool_root,
)
from tests.jobs.test_wrapper import attempt_row, make_attempt

__all__ = ["condor_config", "condor_db", "job_user", "pool_root"]  # fixtures in use


@pytest.fixture
def condor_executor(pool_root: Path, condor_db: Database, job_user: str) -> HTCondorExecutor:
    return HTCondorExecutor(condor_settings(pool_root, condor_db, job_user))


@pytest.fixture
def cleanup(condor_executor: HTCondorExecutor) -> Iterator[list[str]]:
    """External ids to remove from the pool after the test, whatever happened."""
    ids: list[str] = []
    yield ids
    for external_id in ids:
        condor_executor.cancel(external_id)


def shell_job(root: Path, n: int, script: str, **fields: object) -> JobRequest:
    """A job that runs ``script`` in sh instead of the wrapper."""
    values: dict[str, object] = {
        "attempt_id": n,
        "task_key": f"raw/step/file:{n}",
        "threads": 1,
        "memory_mb": 64,
        "timeout_s": 0.0,
        "workdir": str(root / "work" / f"job-{n}"),
        "log_path": str(root / "work" / "logs" / f"job-{n}.log"),
        "argv": ("/bin/sh", "-c", script),
        **fields,
    }
    return JobRequest(**values)  # type: ignore[arg-type]


def status_of(executor: HTCondorExecutor, external_id: str) -> JobInfo:
    return executor.poll([external_id])[external_id]


def test_external_ids_name_the_schedd_and_the_job() -> None:
    job = JobId("schedd@pool.example", 12, 3)
    assert str(job) == "htcondor:schedd@pool.example/12.3"
    assert parse_external_id(str(job)) == job
    assert parse_external_id("local:12") is None
    assert parse_external_id("htcondor:12.3") is None
    assert condor_arguments(["-c", "echo 'a b'", 'say "hi"']) == (
        "\"'-c' 'echo ''a b''' 'say \"\"hi\"\"'\""
    )


def test_a_job_runs_the_wrapper_which_records_its_attempt(
    condor_executor: HTCondorExecutor, condor_db: Database, pool_root: Path
) -> None:
    attempt_id = make_attempt(
        condor_db, pool_root, "echo hello > out.txt", outputs={"out": "out.txt"}
    )
    attempt = attempt_row(condor_db, attempt_id)[0]
    settings = condor_executor.settings
    job = JobRequest(
        attempt_id=attempt_id,
        task_key="p/step/file:1",
        threads=1,
        memory_mb=128,
        timeout_s=60,
        workdir=attempt.workdir or "",
        log_path=attempt.log_path or "",
        argv=(*_python(), "-m", "runwatch", "job", "run", str(attempt_id)),
        env={DATABASE_URL_ENV: settings.database_url},
    )
    [external_id] = condor_executor.submit([job])
    assert status_of(condor_executor, external_id).status in {JobStatus.QUEUED, JobStatus.RUNNING}
    poll_until(
        lambda: attempt_row(condor_db, attempt_id)[0].state is AttemptState.SUCCEEDED,
        90,
        f"attempt {attempt_id} to succeed",
    )
    poll_until(
        lambda: status_of(condor_executor, external_id).status is JobStatus.GONE, 60, "the job"
    )
    assert status_of(condor_executor, external_id).exit_code == 0  # from the history
    log = _read(attempt.log_path)
    assert "claimed on" in log and "succeeded" in log
    # The environment file (with the database password) went with the work folder.
    assert not (Path(job.workdir) / ENV_FILE).exists()


def _python() -> tuple[str]:
    import sys

    return (sys.executable,)


def _read(path: str | None) -> str:
    try:
        return Path(path or "").read_text()
    except OSError as exc:
        return str(exc)


@pytest.mark.parametrize(
    ("status", "starts", "start"),
    [(IDLE, 0, 0), (RUNNING, 1, 0), (IDLE, 1, 1), (RUNNING, 2, 1), (SUSPENDED, 3, 2)],
)
def test_poll_numbers_a_jobs_starts_as_its_wrapper_does(
    status: int, starts: int, start: int
) -> None:
    """NumJobStarts counts the starts so far, the running one included; the wrapper's
    RUNWATCH_JOB_START counts those before its own (0 the first)."""
    info = job_info(classad.ClassAd({"JobStatus": status, "NumJobStarts": starts}))
    assert info.start == start and info.status is not JobStatus.GONE
    waits_again = status == IDLE and starts > 0
    assert info.reason == (f"idle, requeued {starts}x" if waits_again else None)


def test_a_batch_is_one_cluster_with_each_jobs_own_requests(
    condor_executor: HTCondorExecutor, pool_root: Path, cleanup: list[str]
) -> None:
    site = condor_executor.condor
    site.accounting_group = "juno.prod"
    site.submit = {"+JunoSite": '"IHEP"', "priority": "3"}
    secret = {"RUNWATCH_DATABASE_URL": "postgresql://u:secret@h/db"}
    jobs = [
        shell_job(pool_root, 1, "sleep 60", memory_mb=100, disk_mb=10, timeout_s=30, env=secret),
        shell_job(pool_root, 2, "sleep 60", threads=2, memory_mb=0, env=secret),
        shell_job(pool_root, 3, "sleep 60", submit={"htcondor": {"priority": "7"}}),
        # A step that adds a line of its own: a cluster of its own.
        shell_job(pool_root, 4, "sleep 60", submit={"htcondor": {"+JunoStep": '"rec"'}}),
    ]
    ids = condor_executor.submit(jobs)
    cleanup.extend(ids)
    clusters = [job.cluster for job in map(parse_external_id, ids) if job]
    assert clusters[0] == clusters[1] == clusters[2] != clusters[3]
    ads = job_ads(
        ids,
        "ProcId", "RunwatchAttempt", "RequestCpus", "RequestMemory", "RequestDisk",
        "AllowedJobDuration", "AcctGroup", "JobPrio", "JunoSite", "JunoStep", "Iwd", "Out",
        "Environment", "Env", "Args", "Arguments", "Owner",
    )  # fmt: skip
    by_attempt = {int(ad["RunwatchAttempt"]): ad for ad in ads}
    assert set(by_attempt) == {1, 2, 3, 4}
    first, second, third, fourth = (by_attempt[n] for n in (1, 2, 3, 4))
    assert (first["RequestCpus"], first["RequestMemory"], first["RequestDisk"]) == (1, 100, 10240)
    assert first["AllowedJobDuration"] == 30 + 10 + POOL_GRACE_S
    # What a job leaves out is the pool's default, not the value of the job before it.
    assert (second["RequestCpus"], second["RequestMemory"]) == (2, 128)
    assert second.eval("RequestDisk") != 10240
    assert second.eval("AllowedJobDuration") is htcondor2.classad.Value.Undefined
    assert first["AcctGroup"] == "juno.prod" == fourth["AcctGroup"]
    assert [ad["JobPrio"] for ad in (first, second, third, fourth)] == [3, 3, 7, 3]
    assert first["JunoSite"] == "IHEP" and fourth["JunoStep"] == "rec"
    assert "JunoStep" not in third
    assert first["Iwd"] == jobs[0].workdir and first["Out"] == jobs[0].log_path
    # The password is in no job ad, only in a file that the job's user alone can read.
    assert all("secret" not in str(ad) for ad in ads)
    # Which start of the job it is, for the wrapper: NumJobStarts when the job is matched.
    assert "RUNWATCH_JOB_START=$$([NumJobStarts])" in str(first.get("Environment"))
    env_file = Path(jobs[0].workdir) / ENV_FILE
    assert str(env_file) in str(first.get("Args") or first.get("Arguments"))
    assert "secret" in env_file.read_text()
    mode = env_file.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == _uid(first["Owner"])
    # Work and log folders belong to the job's user.
    assert Path(jobs[0].workdir).stat().st_uid == _uid(first["Owner"])
    assert Path(jobs[0].log_path).parent.stat().st_uid == _uid(first["Owner"])


def test_many_jobs_are_submitted_in_one_cluster_quickly(
    condor_executor: HTCondorExecutor, pool_root: Path, cleanup: list[str]
) -> None:
    condor_executor.condor.submit = {"hold": "True"}  # queued, never run
    jobs = [shell_job(pool_root, n, "true", env={"A": "b"}) for n in range(1, 201)]
    started = time.perf_counter()
    ids = condor_executor.submit(jobs)
    elapsed = time.perf_counter() - started
    cleanup.extend(ids)
    assert len({job.cluster for job in map(parse_external_id, ids) if job}) == 1
    assert [job.proc for job in map(parse_external_id, ids) if job] == list(range(200))
    started = time.perf_counter()
    infos = condor_executor.poll(ids)
    polled = time.perf_counter() - started
    assert all(info.status is JobStatus.GONE for info in infos.values())  # held
    print(
        f"submitted 200 jobs in {elapsed:.2f} s ({200 / elapsed:.0f}/s); polled in {polled:.2f} s"
    )
    assert 200 / elapsed >= 50


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_poll_follows_a_job_and_cancel_removes_it(
    condor_executor: HTCondorExecutor, pool_root: Path, cleanup: list[str]
) -> None:
    marker = pool_root / "work" / "started"
    [external_id] = condor_executor.submit([shell_job(pool_root, 1, f"touch {marker}; sleep 120")])
    cleanup.append(external_id)
    poll_until(marker.exists, 60, "the job to start")
    poll_until(
        lambda: status_of(condor_executor, external_id).status is JobStatus.RUNNING,
        30,
        "the pool to report the job running",
    )
    condor_executor.cancel(external_id)
    poll_until(
        lambda: status_of(condor_executor, external_id).status is JobStatus.GONE, 60, "removal"
    )
    info = status_of(condor_executor, external_id)
    assert info.reason is not None and "runwatch: cancelled" in info.reason, info
    condor_executor.cancel(external_id)  # gone already: no error
    # A fresh executor (a scheduler after a crash) knows the job from its id alone, and
    # one poll answers for many jobs, some unknown.
    fresh = HTCondorExecutor(condor_executor.settings)
    unknown = str(JobId(parse_external_id(external_id).schedd, 999999, 0))  # type: ignore[union-attr]
    infos = fresh.poll([external_id, unknown, "local:5"])
    assert infos[external_id].status is JobStatus.GONE
    assert infos[unknown] == JobInfo(JobStatus.GONE, reason="unknown to the HTCondor schedd")
    assert infos["local:5"].status is JobStatus.GONE


def test_a_held_job_is_removed_and_reported_gone_with_the_hold_reason(
    condor_executor: HTCondorExecutor, pool_root: Path, cleanup: list[str]
) -> None:
    # The pool holds a job that runs past its allowed duration (a step may set its own).
    job = shell_job(pool_root, 1, "sleep 120", submit={"htcondor": {"allowed_job_duration": "2"}})
    [external_id] = condor_executor.submit([job])
    cleanup.append(external_id)
    poll_until(
        lambda: status_of(condor_executor, external_id).status is JobStatus.GONE,
        90,
        "the pool to hold the job",
    )
    first = status_of(condor_executor, external_id)
    assert first.reason is not None and first.reason.startswith("held by HTCondor:"), first
    assert first.failed, "a held job fails its attempt (it is not merely lost)"
    assert "duration" in first.reason.lower(), first
    poll_until(lambda: not job_ads([external_id], "JobStatus"), 60, "the held job to leave")
    # Removed now (a scheduler that missed the first answer still learns the reason).
    later = status_of(condor_executor, external_id)
    assert later.status is JobStatus.GONE and later.reason is not None
    assert later.reason.startswith(first.reason) and later.failed, later


def test_a_pool_that_cannot_be_reached_leaves_jobs_unknown_not_gone(
    condor_executor: HTCondorExecutor, pool_root: Path, condor_db: Database, job_user: str
) -> None:
    settings: Settings = condor_settings(pool_root, condor_db, job_user)
    settings.htcondor = HTCondorSettings(collector="127.0.0.1:9", schedd="nowhere")
    lost = HTCondorExecutor(settings)
    assert lost.poll(["htcondor:nowhere/1.0"]) == {}
    lost.cancel("htcondor:nowhere/1.0")  # logged, not raised
    with pytest.raises(Exception, match=r"collector|communication|schedd"):
        lost.submit([shell_job(pool_root, 1, "true")])
    assert os.path.isdir(pool_root)
