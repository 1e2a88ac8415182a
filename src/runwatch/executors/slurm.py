"""The Slurm executor: one batch job per attempt, through sbatch, squeue and scancel.

``submit`` runs one ``sbatch`` per attempt (sbatch takes one job script a call; a few run
at once from a small thread pool). The job script comes on sbatch's standard input and
carries the wrapper's environment (``runwatch.executors.slurm_script``), so the database
password never appears on a command line, and a requeued job starts again with everything
it needs. ``poll`` is one ``squeue --states=all`` for all the jobs asked about: it shows
every job the controller still remembers (``MinJobAge``, 300 s by default, after its end),
with its exit code; a job it no longer shows has ended. Nothing is kept in memory: the
external id, ``slurm:JOBID``, is all a scheduler started after a kill -9 needs.

Jobs are submitted with ``--requeue``: when a node fails or a job is preempted, Slurm runs
the job again, and ``poll`` reports it QUEUED meanwhile, with its start count, and the
next start takes the same attempt over (see docs/executors-slurm.md). A job pending for
a reason Slurm never lifts by itself (a dependency that can no longer be met, a launch
that failed again and again) is reported gone with that reason, and ``poll`` cancels it.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runwatch.config import Settings
from runwatch.executors.base import JobInfo, JobRequest, JobStatus
from runwatch.executors.slurm_script import batch_script, sbatch_options

log = logging.getLogger(__name__)

PREFIX = "slurm"
COMMAND_TIMEOUT_S = 60.0  # a controller that does not answer in this long is down
SUBMITTERS = 4  # sbatch calls at once: each waits on the controller more than on a CPU

# squeue's fields, each ended by '|' (JobID:| is the field with no padding and that suffix).
SQUEUE_FORMAT = "JobID:|,State:|,RestartCnt:|,exit_code:|,Reason:|"

# Slurm's job states (squeue's long names) by what they mean for the attempt. Any other,
# e.g. COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL,
# DEADLINE, PREEMPTED (ended by preemption, not requeued), is the job's end.
WAITING = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SUSPENDED"})
STARTED = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"})
# Ends that Slurm imposed on the job itself (over its time or memory, a launch that
# failed): its attempt FAILED with Slurm's reason. Any other end with the attempt still
# open (the node failed, someone cancelled the job, the wrapper exited or was killed
# without a record: FAILED for NonZeroExitCode or RaisedSignal) leaves it LOST.
FAILED_BY_SLURM = frozenset({"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "DEADLINE"})
WRAPPER_ENDED = ("NonZeroExitCode", "RaisedSignal")
# Pending reasons after which the job never starts by itself: its attempt FAILED too.
NEVER_STARTS = frozenset(
    {
        "launch_failed_requeued_held",
        "BadConstraints",
        "DependencyNeverSatisfied",
        "InvalidAccount",
        "InvalidQOS",
        "PartitionTimeLimit",
    }
)


def external_id(job_id: str) -> str:
    return f"{PREFIX}:{job_id}"


def parse_external_id(text: str) -> str | None:
    """The Slurm job id in ``slurm:JOBID``, or None."""
    prefix, _, job_id = text.partition(":")
    return job_id if prefix == PREFIX and job_id.isdigit() else None


@dataclass(frozen=True)
class SqueueLine:
    """One job as squeue shows it."""

    job_id: str
    state: str
    restarts: int
    exit_code: str
    reason: str

    @classmethod
    def parse(cls, line: str) -> SqueueLine | None:
        fields = line.split("|")
        if len(fields) < 5 or not fields[0].isdigit():
            return None
        restarts = int(fields[2]) if fields[2].isdigit() else 0
        return cls(fields[0], fields[1], restarts, fields[3], "|".join(fields[4:]).rstrip("|"))

    def never_starts(self) -> bool:
        """Pending for a reason that Slurm will not lift by itself."""
        return self.state in WAITING and self.reason in NEVER_STARTS

    def failed_by_slurm(self) -> bool:
        """Slurm ended the job for something about the job itself (see FAILED_BY_SLURM);
        or cancelled it for a reason that kept it from starting (``poll`` did, likely)."""
        if self.reason in NEVER_STARTS:
            return True
        return self.state in FAILED_BY_SLURM and not self.reason.startswith(WRAPPER_ENDED)

    def info(self) -> JobInfo:
        reason = None if self.reason in ("", "None") else self.reason
        if self.restarts:
            again = f"requeued {self.restarts}x"
            reason = f"{reason}, {again}" if reason else again
        # RestartCnt numbers the job's starts as SLURM_RESTART_COUNT does in the job.
        if self.state in WAITING and not self.never_starts():
            return JobInfo(
                JobStatus.QUEUED, reason=reason or self.state.lower(), start=self.restarts
            )
        if self.state in STARTED:
            return JobInfo(JobStatus.RUNNING, reason=reason, start=self.restarts)
        exit_code, signalled = wait_status(self.exit_code)
        if signalled:
            reason = f"{reason}, signal {signalled}" if reason else f"signal {signalled}"
        return JobInfo(
            JobStatus.GONE,
            exit_code=exit_code,
            reason=f"Slurm job {self.state}" + (f" ({reason})" if reason else ""),
            failed=self.failed_by_slurm(),
        )


def wait_status(text: str) -> tuple[int | None, int | None]:
    """The exit code and the signal in squeue's exit_code, which is the job script's
    wait status (exit 3 shows as 768)."""
    if not text.isdigit():
        return None, None
    status = int(text)
    if status & 0x7F:
        return None, status & 0x7F
    return status >> 8, None


class SlurmExecutor:
    """Runs attempts as Slurm batch jobs (``[slurm]`` settings)."""

    name = "slurm"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slurm = settings.slurm
        self.pool: ThreadPoolExecutor | None = None

    def capacity(self) -> int:
        return self.slurm.slots

    def queue_ahead(self) -> int:
        return self.slurm.queue_ahead

    def command(self, name: str) -> str:
        return str(Path(self.slurm.bin_dir) / name) if self.slurm.bin_dir else name

    # -- submit ---------------------------------------------------------------------------

    def submit(self, jobs: Sequence[JobRequest]) -> list[str]:
        if not jobs:
            return []
        if self.pool is None:
            self.pool = ThreadPoolExecutor(SUBMITTERS, thread_name_prefix="sbatch")
        results = list(self.pool.map(self._submit_one, jobs))
        ids = [r for r in results if not isinstance(r, Exception)]
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            # All or nothing: the scheduler retries every attempt of a failed batch. (A job
            # left behind would find its attempt failed, and do nothing.)
            submitted = [parse_external_id(ext) for ext in ids]
            self._scancel([job_id for job_id in submitted if job_id is not None])
            raise RuntimeError(f"{len(errors)} of {len(jobs)} sbatch calls failed: {errors[0]}")
        return ids

    def _submit_one(self, job: JobRequest) -> str | Exception:
        """sbatch one job; its external id, or the error (raised by ``submit`` for all)."""
        try:
            # Slurm opens the log and changes into the work folder before the wrapper
            # runs: both must exist (on a shared file system, seen from the node).
            Path(job.log_path).parent.mkdir(parents=True, exist_ok=True)
            Path(job.workdir).mkdir(parents=True, exist_ok=True)
            done = subprocess.run(
                [self.command("sbatch"), "--parsable", *sbatch_options(self.slurm, job)],
                input=batch_script(job),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return exc
        if done.returncode != 0:
            return RuntimeError(f"sbatch: {done.stderr.strip() or done.returncode}")
        job_id = done.stdout.strip().partition(";")[0]  # "JOBID" or "JOBID;CLUSTER"
        if not job_id.isdigit():
            return RuntimeError(f"sbatch printed no job id: {done.stdout!r}")
        return external_id(job_id)

    # -- poll and cancel ------------------------------------------------------------------

    def poll(self, external_ids: Sequence[str]) -> dict[str, JobInfo]:
        """One squeue for all; a job it does not show has ended. If squeue fails (the
        controller is down or busy) the jobs are left out: unknown is not gone."""
        infos: dict[str, JobInfo] = {}
        wanted: dict[str, str] = {}
        for ext in external_ids:
            job_id = parse_external_id(ext)
            if job_id is None:
                infos[ext] = JobInfo(JobStatus.GONE, reason=f"not a Slurm job id: {ext}")
            else:
                wanted[job_id] = ext
        if not wanted:
            return infos
        shown = self._squeue(list(wanted))
        if shown is None:
            return infos
        for job_id, ext in wanted.items():
            line = shown.get(job_id)
            infos[ext] = (
                line.info()
                if line is not None
                else JobInfo(JobStatus.GONE, reason="Slurm no longer knows the job")
            )
        # A job that will never start is gone for the scheduler: take it out of the queue
        # too, rather than leave it pending there for ever.
        stuck = [line.job_id for line in shown.values() if line.never_starts()]
        if stuck:
            self._scancel(stuck)
        return infos

    def _squeue(self, job_ids: list[str]) -> dict[str, SqueueLine] | None:
        # squeue fails on a single unknown id but not on a list: name the first one twice.
        listed = ",".join(job_ids if len(job_ids) > 1 else job_ids * 2)
        argv = [self.command("squeue"), "--noheader", "--states=all", "--jobs", listed]
        try:
            done = subprocess.run(
                [*argv, "--Format", SQUEUE_FORMAT],
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("squeue failed: %s", exc)
            return None
        if done.returncode != 0:
            log.warning("squeue failed: %s", done.stderr.strip() or done.returncode)
            return None
        lines = (SqueueLine.parse(text) for text in done.stdout.splitlines())
        return {line.job_id: line for line in lines if line is not None}

    def cancel(self, external_id: str) -> None:
        """scancel the job; a job that ended already is no error."""
        job_id = parse_external_id(external_id)
        if job_id is not None:
            self._scancel([job_id])

    def _scancel(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        try:
            done = subprocess.run(
                [self.command("scancel"), *job_ids],
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("scancel %s failed: %s", " ".join(job_ids), exc)
            return
        if done.returncode != 0:
            # scancel of an ended job exits 0 with a note; this is a real failure.
            log.warning("scancel %s failed: %s", " ".join(job_ids), done.stderr.strip())

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Jobs carry on in Slurm; only the submitting threads end."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
