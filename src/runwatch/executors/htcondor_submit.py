"""The HTCondor executor's submit descriptions: one cluster for a batch of jobs.

Every job of a batch is one item of a single ``queue ... from`` statement, so a batch is
one cluster and one round trip to the schedd. A submit line whose value is the same for
every job of the batch is written once; the others become item columns (``$(rwvN)``).
Every job of a cluster must set the same lines (a proc that leaves one out, or sets it
empty, inherits the cluster's value), so the lines runwatch sets always have a value, the
pool's default where the job asks for nothing; only jobs whose steps add different submit
lines go to clusters of their own, one per set of lines.

A job runs ``/bin/sh -c '. "$0" && exec "$@"' ENV_FILE ARGV...``: its environment (which
holds the database password or an API token) is read from a file only the job's user can
read, because the job ad's ``Environment`` is shown to anyone by ``condor_q -l``.
"""

from __future__ import annotations

import math
import os
import pwd
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import htcondor2

from runwatch.config import HTCondorSettings
from runwatch.executors.base import JobRequest
from runwatch.jobs.environment import JOB_ENV_FILE, JOB_START_ENV
from runwatch.workflow.supervise import timeout_grace

ATTEMPT_ATTRIBUTE = "RunwatchAttempt"  # in every job ad: which attempt the job runs
TASK_ATTRIBUTE = "RunwatchTask"
HOME_ATTRIBUTE = "RunwatchHome"  # the deployment's work_root: whose job it is
# The pool removes a job this long after the scheduler's own limit would have: the
# scheduler (and before it the wrapper) should act first, the pool only if they cannot.
POOL_GRACE_S = 30.0
SHELL = "/bin/sh"
ENV_FILE = JOB_ENV_FILE
SOURCE_ENV = '. "$0" && exec "$@"'  # $0: the environment file; "$@": the wrapper's argv
# Which start of the job this is: the job's NumJobStarts when it is matched to a slot
# counts the starts before this one (0 the first; a vacated or evicted job runs again with
# 1). Not a secret: set in the job ad. A site's or step's own ``environment`` replaces it.
JOB_START_LINE = f'"{JOB_START_ENV}=$$([NumJobStarts])"'

# The same for every job of every batch.
FIXED_LINES = {
    "universe": "vanilla",
    # Work and log folders are on a shared file system (as the local executor's are):
    # nothing to transfer, and the job writes its outputs where the wrapper stores them.
    "should_transfer_files": "NO",
    "leave_in_queue": "False",
}


def default(knob: str) -> str:
    """The value condor_submit gives a request the job leaves out (the client's config)."""
    return str(htcondor2.param[knob])


def condor_arguments(argv: Sequence[str]) -> str:
    """``argv`` in the submit language's new syntax: double quotes around the whole, each
    argument in single quotes (a quote inside doubled)."""
    quoted = ("'" + arg.replace("'", "''").replace('"', '""') + "'" for arg in argv)
    return '"' + " ".join(quoted) + '"'


def classad_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _merge(lines: dict[str, tuple[str, str]], extra: Mapping[str, Any]) -> None:
    """Add ``extra`` to ``lines`` (keyed by lower-case name: the submit language ignores
    case), overriding what is there."""
    for key, value in extra.items():
        lines[key.lower()] = (key, str(value))


@dataclass
class JobFiles:
    """The jobs' folders and environment files, and who must own them."""

    home: Path  # the work root
    owner: tuple[int, int] | None = None  # uid, gid of [htcondor] job_user
    _made: set[Path] = field(default_factory=set)

    @classmethod
    def for_settings(cls, work_root: str, settings: HTCondorSettings) -> JobFiles:
        owner = None
        if settings.job_user:
            entry = pwd.getpwnam(settings.job_user)
            owner = (entry.pw_uid, entry.pw_gid)
        return cls(Path(work_root), owner)

    def folder(self, path: Path, remember: bool = True) -> None:
        """Make ``path`` and its missing parents, owned by the job user if one is set (the
        wrapper empties and remakes a work folder, so it must own the parent too). Folders
        made or seen are remembered, but for those of one attempt (``remember=False``)."""
        if path in self._made:
            return
        parent = path.parent
        if parent not in self._made:
            if parent.is_dir():
                self._made.add(parent)
            else:
                self.folder(parent)
        try:
            path.mkdir()
        except FileExistsError:
            pass
        else:
            if self.owner is not None:
                os.chown(path, *self.owner)
        if remember:
            self._made.add(path)

    def environment(self, env: Mapping[str, str], workdir: Path) -> str:
        """The path of a file in ``workdir`` setting ``env`` for sh, readable by the job
        user only. The wrapper keeps it while the job may start again (a restart sources
        it anew) and removes it once the attempt ended: a per-attempt token or a password
        does not linger."""
        path = workdir / ENV_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            os.fchmod(fd, 0o600)  # an earlier file of this name may have been readable
            os.write(fd, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()).encode())
        finally:
            os.close(fd)
        return str(path)


def job_lines(
    job: JobRequest, settings: HTCondorSettings, files: JobFiles
) -> dict[str, tuple[str, str]]:
    """Every submit line of ``job`` but the fixed ones, by lower-case name."""
    workdir, log_path = Path(job.workdir), Path(job.log_path)
    files.folder(workdir, remember=False)
    files.folder(log_path.parent)
    if job.env:
        argv = [SHELL, "-c", SOURCE_ENV, files.environment(job.env, workdir), *job.argv]
    else:
        argv = list(job.argv)
    lines: dict[str, tuple[str, str]] = {}
    _merge(
        lines,
        {
            "executable": argv[0],
            "arguments": condor_arguments(argv[1:]),
            "initialdir": str(workdir),
            "output": str(log_path),
            "error": str(log_path),
            "request_cpus": str(max(1, job.threads)),
            f"+{ATTEMPT_ATTRIBUTE}": str(job.attempt_id),
            f"+{TASK_ATTRIBUTE}": classad_string(job.task_key),
            f"+{HOME_ATTRIBUTE}": classad_string(str(files.home)),
            "environment": JOB_START_LINE,
        },
    )
    # MiB and KiB; 0 asks for the pool's default, which condor_submit would fill in.
    memory = str(job.memory_mb) if job.memory_mb > 0 else default("JOB_DEFAULT_REQUESTMEMORY")
    disk = str(job.disk_mb * 1024) if job.disk_mb > 0 else default("JOB_DEFAULT_REQUESTDISK")
    limit = "undefined"  # no limit
    if job.timeout_s > 0:
        limit = str(math.ceil(job.timeout_s + timeout_grace(job.timeout_s) + POOL_GRACE_S))
    _merge(lines, {"request_memory": memory, "request_disk": disk, "allowed_job_duration": limit})
    if settings.accounting_group:
        _merge(lines, {"accounting_group": settings.accounting_group})
    if settings.accounting_group_user:
        _merge(lines, {"accounting_group_user": settings.accounting_group_user})
    _merge(lines, settings.submit)
    _merge(lines, job.submit.get("htcondor") or {})
    return lines


@dataclass(frozen=True)
class Batch:
    """One cluster's submit description and its item data."""

    description: dict[str, str]
    items: list[dict[str, str]]


def batches(
    jobs: Sequence[JobRequest], settings: HTCondorSettings, files: JobFiles
) -> list[tuple[list[int], Batch]]:
    """The clusters that submit ``jobs``, each with the indices of its jobs in ``jobs``:
    one cluster, unless steps add different submit lines."""
    per_job = [job_lines(job, settings, files) for job in jobs]
    groups: dict[frozenset[str], list[int]] = defaultdict(list)
    for index, lines in enumerate(per_job):
        groups[frozenset(lines)].append(index)
    return [(indices, batch([per_job[i] for i in indices])) for indices in groups.values()]


def batch(per_job: Sequence[dict[str, tuple[str, str]]]) -> Batch:
    """The description and items of one cluster of jobs that all set the same lines."""
    description = dict(FIXED_LINES)
    varying: list[str] = []
    for low, (key, value) in per_job[0].items():
        if all(lines[low][1] == value for lines in per_job):
            description[key] = value
        else:
            description[key] = f"$(rwv{len(varying)})"
            varying.append(low)
    items = [{f"rwv{n}": lines[low][1] for n, low in enumerate(varying)} for lines in per_job]
    if not varying:  # a queue statement needs a column: one that changes nothing
        items = [{"rwjob": str(n)} for n in range(len(per_job))]
    return Batch(description, items)
