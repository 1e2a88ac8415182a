"""The HTCondor executor: one job per attempt in an HTCondor pool, through ``htcondor2``.

Each ``submit`` call is one cluster (``runwatch.executors.htcondor_submit``). Each ``poll``
is one query of the schedd's queue for the clusters of all the jobs asked about, plus one
query of its history for the jobs no longer queued; nothing is kept in memory between
calls, so a scheduler started after a kill -9 polls the jobs of the one before. The
external id names the schedd and the job: ``htcondor:SCHEDD/CLUSTER.PROC``.

A held job will not run again by itself: ``poll`` removes it and reports it gone with the
hold reason, which the scheduler records as the attempt's end. A job held while it runs
(past its time limit, ``allowed_job_duration``, say) first gets SIGTERM from the pool: its
wrapper records nothing (it cannot tell a hold from an eviction), and the attempt ends
with the hold reason too. A job the pool evicts or vacates goes back to idle and runs
again: ``poll`` reports which start it is on (``NumJobStarts``), and its next start takes
the same attempt over.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import htcondor2

from runwatch.config import Settings
from runwatch.executors.base import JobInfo, JobRequest, JobStatus
from runwatch.executors.htcondor_submit import (
    HOME_ATTRIBUTE,
    Batch,
    JobFiles,
    batches,
    classad_string,
)

log = logging.getLogger(__name__)

PREFIX = "htcondor"
PROJECTION = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "HoldReason",
    "ExitCode",
    "RemoveReason",
    "NumJobStarts",
]
# A schedd or collector that cannot be reached or found.
CONDOR_ERRORS = (htcondor2.HTCondorException, LookupError)
# HTCondor's JobStatus codes.
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)
HELD_BY = "held by HTCondor:"
ALIVE = {
    IDLE: JobStatus.QUEUED,
    RUNNING: JobStatus.RUNNING,
    TRANSFERRING_OUTPUT: JobStatus.RUNNING,
    SUSPENDED: JobStatus.RUNNING,
}


@dataclass(frozen=True, order=True)
class JobId:
    schedd: str
    cluster: int
    proc: int

    def __str__(self) -> str:
        return f"{PREFIX}:{self.schedd}/{self.cluster}.{self.proc}"

    @property
    def job(self) -> str:
        """As HTCondor's commands write it."""
        return f"{self.cluster}.{self.proc}"


def parse_external_id(text: str) -> JobId | None:
    prefix, _, rest = text.partition(":")
    schedd, _, job = rest.rpartition("/")
    cluster, _, proc = job.partition(".")
    if prefix != PREFIX or not schedd or not cluster.isdigit() or not proc.isdigit():
        return None
    return JobId(schedd, int(cluster), int(proc))


def clusters_constraint(ids: Iterable[JobId]) -> str:
    clusters = ", ".join(str(c) for c in sorted({i.cluster for i in ids}))
    return f"member(ClusterId, {{{clusters}}})"


def jobs_constraint(ids: Iterable[JobId]) -> str:
    return " || ".join(f"(ClusterId == {i.cluster} && ProcId == {i.proc})" for i in sorted(ids))


def job_start(status: int, starts: int) -> int:
    """Which start of the job runs, or comes next while it waits, numbered as the job's
    RUNWATCH_JOB_START (``htcondor_submit.JOB_START_LINE``): NumJobStarts counts the
    starts so far, this one included once it runs."""
    return starts if status == IDLE else max(0, starts - 1)


def job_info(ad: Any) -> JobInfo:
    """What a job ad from the queue or the history says of the job."""
    status = int(ad.get("JobStatus", 0))
    if status in ALIVE:
        starts = int(ad.get("NumJobStarts", 0))
        # Idle after it ran (evicted, vacated): say so, as Slurm's "requeued 1x" does.
        again = f"idle, requeued {starts}x" if status == IDLE and starts else None
        return JobInfo(ALIVE[status], reason=again, start=job_start(status, starts))
    if status == HELD:
        held = f"{HELD_BY} {ad.get('HoldReason', '')}"
        return JobInfo(JobStatus.GONE, reason=held, failed=True)
    if status == REMOVED:
        reason = str(ad.get("RemoveReason", ""))
        # Held, then removed by poll: the hold reason, which poll put in the removal's.
        if HELD_BY in reason:
            return JobInfo(JobStatus.GONE, reason=reason, failed=True)
        return JobInfo(JobStatus.GONE, reason=f"removed: {reason}")
    exit_code = ad.get("ExitCode")
    return JobInfo(JobStatus.GONE, exit_code=None if exit_code is None else int(exit_code))


class HTCondorExecutor:
    """Runs attempts as jobs of an HTCondor pool (``[htcondor]`` settings)."""

    name = "htcondor"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.condor = settings.htcondor
        self.files = JobFiles.for_settings(settings.work_root, self.condor)
        self._schedds: dict[str, tuple[str, htcondor2.Schedd]] = {}  # name: (its name, it)

    def capacity(self) -> int:
        return self.condor.slots

    def queue_ahead(self) -> int:
        return self.condor.queue_ahead

    # -- the schedd -----------------------------------------------------------------------

    def _locate(self, name: str | None) -> tuple[str, htcondor2.Schedd]:
        """The schedd called ``name`` (None: the configured one), found by the collector
        once and then kept until an error."""
        key = name or self.condor.schedd
        if key in self._schedds:
            return self._schedds[key]
        collector = htcondor2.Collector(self.condor.collector or None)
        location = collector.locate(htcondor2.DaemonType.Schedd, key or None)
        if location is None:
            raise LookupError(f"the HTCondor collector knows no schedd {key!r}")
        found = (str(location["Name"]), htcondor2.Schedd(location))
        self._schedds[key] = self._schedds[found[0]] = found
        return found

    def _forget(self) -> None:
        """Locate the schedds again next time (one may have moved or restarted)."""
        self._schedds.clear()

    # -- submit ---------------------------------------------------------------------------

    def submit(self, jobs: Sequence[JobRequest]) -> list[str]:
        ids = [""] * len(jobs)
        for indices, cluster in batches(jobs, self.condor, self.files):
            for index, external_id in zip(indices, self._submit(cluster), strict=True):
                ids[index] = external_id
        return ids

    def _submit(self, cluster: Batch) -> list[str]:
        name, schedd = self._locate(None)
        try:
            result = schedd.submit(
                htcondor2.Submit(cluster.description), itemdata=iter(cluster.items)
            )
        except CONDOR_ERRORS:
            self._forget()
            raise
        first, count = result.first_proc(), result.num_procs()
        if count != len(cluster.items):
            raise RuntimeError(f"asked for {len(cluster.items)} jobs, HTCondor made {count}")
        return [str(JobId(name, result.cluster(), first + n)) for n in range(count)]

    # -- poll and cancel ------------------------------------------------------------------

    def poll(self, external_ids: Sequence[str]) -> dict[str, JobInfo]:
        """One queue query per schedd for every job asked about, one history query for
        those gone from the queue. A schedd that cannot be asked leaves its jobs out: the
        scheduler then knows nothing of them this time, which is not that they are gone."""
        infos: dict[str, JobInfo] = {}
        by_schedd: dict[str, list[JobId]] = defaultdict(list)
        for text in external_ids:
            job = parse_external_id(text)
            if job is None:
                infos[text] = JobInfo(JobStatus.GONE, reason=f"not an HTCondor job id: {text}")
            else:
                by_schedd[job.schedd].append(job)
        for name, jobs in by_schedd.items():
            try:
                found = self._poll_schedd(name, jobs)
            except CONDOR_ERRORS as exc:
                log.warning("cannot ask HTCondor schedd %s about %d jobs: %s", name, len(jobs), exc)
                self._forget()
                continue
            infos.update({str(job): info for job, info in found.items()})
        return infos

    def _poll_schedd(self, name: str, jobs: list[JobId]) -> dict[JobId, JobInfo]:
        _, schedd = self._locate(name)
        wanted = set(jobs)
        infos: dict[JobId, JobInfo] = {}
        held: dict[str, list[JobId]] = defaultdict(list)  # by hold reason
        # Also every held job of ours, asked about or not: one held while it ran was
        # killed by the pool, and its wrapper then recorded the attempt's end itself.
        home = classad_string(str(self.files.home))
        constraint = f"{clusters_constraint(jobs)} || "
        constraint += f"(JobStatus == {HELD} && {HOME_ATTRIBUTE} =?= {home})"
        for ad in schedd.query(constraint, PROJECTION):
            job = JobId(name, int(ad["ClusterId"]), int(ad["ProcId"]))
            info = job_info(ad)
            if job in wanted:
                infos[job] = info
            if int(ad["JobStatus"]) == HELD:
                held[info.reason or ""].append(job)
        for reason, jobs_held in held.items():
            # A held job would wait for an operator; its attempt has ended. The removal
            # keeps the reason, for polls after this one.
            self._remove(schedd, jobs_held, reason)
        missing = wanted - infos.keys()
        if missing:
            for ad in schedd.history(jobs_constraint(missing), PROJECTION, match=len(missing)):
                job = JobId(name, int(ad["ClusterId"]), int(ad["ProcId"]))
                if job in missing:
                    infos[job] = job_info(ad)
        for job in wanted - infos.keys():
            infos[job] = JobInfo(JobStatus.GONE, reason="unknown to the HTCondor schedd")
        return infos

    @staticmethod
    def _remove(schedd: htcondor2.Schedd, jobs: Sequence[JobId], reason: str) -> None:
        schedd.act(htcondor2.JobAction.Remove, [job.job for job in jobs], (reason, 0))

    def cancel(self, external_id: str) -> None:
        """Remove the job; one already gone (or a schedd that cannot be reached, which the
        pool's own time limit backs up) is only logged."""
        job = parse_external_id(external_id)
        if job is None:
            return
        try:
            _, schedd = self._locate(job.schedd)
            self._remove(schedd, [job], "runwatch: cancelled or timed out")
        except CONDOR_ERRORS as exc:
            log.warning("cannot remove HTCondor job %s: %s", external_id, exc)
            self._forget()
