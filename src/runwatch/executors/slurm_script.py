"""What the Slurm executor hands sbatch for one attempt: its options and its job script.

Pure: no I/O, so every rule is tested without a cluster.

The job script sets the wrapper's environment itself and runs it with ``--export=NONE``
(a clean login environment on the node, not the scheduler's): the script reaches sbatch on
its standard input, so the database password never shows in ``ps``; Slurm keeps the
script where only root, SlurmUser and the job's owner can read it, and runs the same
script again when it requeues the job.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence

from runwatch.config import SlurmSettings
from runwatch.executors.base import JobRequest
from runwatch.jobs.environment import JOB_START_ENV
from runwatch.workflow.supervise import timeout_grace

# Beyond the wrapper's own timeout and the scheduler's grace after it: the wrapper stages
# in before its command and stages out after it, outside its own timeout.
STAGING_MARGIN_S = 300.0


def time_limit_minutes(timeout_s: float) -> int | None:
    """sbatch --time in whole minutes, a margin over the wrapper's timeout, so that the
    wrapper or the scheduler ends a job that runs too long, with a clear reason, before
    Slurm does; None without a timeout (the partition's default limit)."""
    if timeout_s <= 0:
        return None
    return math.ceil((timeout_s + timeout_grace(timeout_s) + STAGING_MARGIN_S) / 60)


def sbatch_options(slurm: SlurmSettings, job: JobRequest) -> list[str]:
    """sbatch's options for ``job``: the job's own, then the site's ``[slurm]`` ones, then
    the step's ``submit.slurm`` ones (sbatch takes the last of an option given twice)."""
    options = [
        f"--job-name={job.task_key}",
        f"--chdir={job.workdir}",
        f"--output={job.log_path.replace('%', '%%')}",  # % starts a pattern
        "--open-mode=append",  # a requeued job adds to its log instead of emptying it
        "--requeue",  # node failure or preemption: run the job again
        "--export=NONE",
        "--ntasks=1",
        f"--cpus-per-task={max(1, job.threads)}",
    ]
    if job.memory_mb > 0:
        options.append(f"--mem={job.memory_mb}M")
    if job.disk_mb > 0:
        options.append(f"--tmp={job.disk_mb}M")
    minutes = time_limit_minutes(job.timeout_s)
    if minutes is not None:
        options.append(f"--time={minutes}")
    for flag, value in (
        ("--partition", slurm.partition),
        ("--account", slurm.account),
        ("--qos", slurm.qos),
    ):
        if value:
            options.append(f"{flag}={value}")
    return [*options, *slurm.sbatch_options, *step_options(job)]


def step_options(job: JobRequest) -> list[str]:
    """The step's ``submit: {slurm: [...]}`` options."""
    extra = job.submit.get("slurm", [])
    if isinstance(extra, str) or not isinstance(extra, Sequence):
        raise ValueError(f"submit.slurm must be a list of sbatch options, not {extra!r}")
    return [str(option) for option in extra]


def batch_script(job: JobRequest) -> str:
    """The job script: export the wrapper's environment, then become the wrapper. Which
    start of the job it is comes from Slurm when it runs (SLURM_RESTART_COUNT, unset on
    the first start): a requeued start takes its attempt over."""
    lines = ["#!/bin/sh", f"# runwatch attempt {job.attempt_id}"]
    for name, value in sorted(job.env.items()):
        if not (name.isascii() and name.isidentifier()):
            raise ValueError(f"not an environment variable name: {name!r}")
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append(f'export {JOB_START_ENV}="${{SLURM_RESTART_COUNT:-0}}"')
    lines.append(f"exec {shlex.join(job.argv)}")
    return "\n".join(lines) + "\n"
