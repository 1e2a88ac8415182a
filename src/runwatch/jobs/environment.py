"""What a batch job needs to start the job wrapper: its command line and environment.

The scheduler puts both into every ``JobRequest``; a batch executor passes them on to the
job. With ``[worker] report = "database"`` the wrapper gets the database URL (inside the
firewall); with ``"http"`` it gets the web server's URL and a token good for its own
attempt only (``runwatch.jobs.report``), and never the database URL.
"""

from __future__ import annotations

import shlex
import sys

from runwatch.config import Settings
from runwatch.jobs.tokens import attempt_token, load_secret, secret_path
from runwatch.workflow.nudge import NUDGE_ENV, socket_path

DATABASE_URL_ENV = "RUNWATCH_DATABASE_URL"  # not in argv: ps would show a password
API_URL_ENV = "RUNWATCH_API_URL"
ATTEMPT_TOKEN_ENV = "RUNWATCH_ATTEMPT_TOKEN"
REPORT_RETRY_ENV = "RUNWATCH_REPORT_RETRY_SECONDS"
# Which start of its batch job the wrapper runs in (0 the first; set by the batch
# executors in the job itself, from the batch system's own count: Slurm's
# SLURM_RESTART_COUNT, HTCondor's NumJobStarts). Unset for the local executor, whose jobs
# are never started again.
JOB_START_ENV = "RUNWATCH_JOB_START"
# A batch executor's file in the attempt's work folder that sets the job's environment
# (HTCondor's: the job ad would show it to anyone). The wrapper keeps it while the attempt
# may yet be run again by a restart of its job, and removes it once the attempt ended.
JOB_ENV_FILE = ".runwatch-env.sh"


def wrapper_command(settings: Settings) -> tuple[str, ...]:
    """How a worker node runs runwatch: ``[worker] command``, or this Python's -m runwatch."""
    if settings.worker.command:
        return tuple(shlex.split(settings.worker.command))
    return (sys.executable, "-m", "runwatch")


def job_environment(settings: Settings, attempt_id: int) -> dict[str, str]:
    """The environment the wrapper of attempt ``attempt_id`` needs to report its outcome."""
    worker = settings.worker
    if worker.report == "http":
        if not worker.api_url:
            raise ValueError('[worker] report = "http" needs [worker] api_url')
        secret = load_secret(secret_path(settings))
        return {
            API_URL_ENV: worker.api_url,
            ATTEMPT_TOKEN_ENV: attempt_token(secret, attempt_id),
            REPORT_RETRY_ENV: f"{worker.report_retry_seconds:g}",
        }
    return {
        DATABASE_URL_ENV: settings.database_url,
        NUDGE_ENV: socket_path(settings.work_root),
    }
