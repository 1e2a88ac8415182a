"""The histogram store: merge tasks' files registered as ``DqmMerge`` and ``DqmHistogram``.

A merge task (a run-scoped step with ``dqm: merge``) leaves one merged ROOT file whose
contribution list (``runwatch.dqm.merge``) says which per-file histogram files it holds.
Registering it records what the run's merged histograms include (files and events against
the run's, the inputs left out and why) and every histogram object, both of the merged
file and of each contribution, with the task attempt that produced it. The files are the
truth; these rows are an index of them, written once per merge task.

An unreadable merged file is registered all the same, as a merge of nothing whose
``errors`` say why, so that it is shown, never retried every tick, and spoils nothing
else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import File, Run
from runwatch.dqm.histogram import Hist, HistFile, HistogramFileError, read_file
from runwatch.dqm.merge import META_FORMAT
from runwatch.dqm.models import DqmHistogram, DqmMerge
from runwatch.storage.cache import OutputCache, ReplacedError, default_cache
from runwatch.storage.checksum import adler32_file, normalise_adler32
from runwatch.storage.transfer import StageError
from runwatch.storage.urls import URLError, is_file_url, is_root_url, split_root_url, url_to_path
from runwatch.workflow.models import PipelineRevision, Task, TaskOutput
from runwatch.workflow.planner import ACTIVE_RUN
from runwatch.workflow.revisions import RevisionCache
from runwatch.workflow.states import TaskState

MERGE_STEP = "merge"
"""A step's ``dqm`` value that makes its tasks DQM merges."""
MERGED_FILE = "(merged file)"
CONTRIBUTION_KEYS = ("key", "checksum", "events", "path")
"""What a ``DqmMerge`` keeps of each contribution (not the inventory: the store has it)."""
LOOKBACK = dt.timedelta(days=1)
"""How long after a run last changed its merge tasks are still looked for."""
"""The ``key`` of a merge's error about its own merged file."""


@dataclass(frozen=True)
class MergedFile:
    """A merged file as read: its histograms and its contribution list, or why not."""

    hists: dict[str, Hist]
    contributions: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    readable: bool = True


def merge_steps(session: Session, revisions: RevisionCache) -> list[tuple[int, str]]:
    """(revision id, step name) of every step with ``dqm: merge`` in any pipeline revision.

    The revision texts never change and are parsed once by ``revisions``, so after the
    first call this costs one query of the (small) revisions table.
    """
    ids = session.scalars(sa.select(PipelineRevision.id)).all()
    found = []
    for revision_id in ids:
        pipeline = revisions.get(session, revision_id)
        for step in pipeline.steps.values():
            if step.dqm == MERGE_STEP:
                found.append((revision_id, step.name))
    return found


def unregistered_merge_tasks(
    session: Session, steps: Collection[tuple[int, str]], now: dt.datetime
) -> list[tuple[Task, TaskOutput]]:
    """DONE merge tasks whose output is not registered (a re-run task's new output
    included), with the output, oldest first.

    Only tasks of runs in play are looked at (``recent_tasks_floor``), so the query costs
    the same whatever the size of the tasks table.
    """
    floor = recent_tasks_floor(session, now) if steps else None
    if floor is None:
        return []
    registered = (
        sa.select(DqmMerge.id)
        .where(DqmMerge.task_id == Task.id, DqmMerge.attempt_id == TaskOutput.attempt_id)
        .exists()
    )
    query = (
        sa.select(Task, TaskOutput)
        .join(TaskOutput, TaskOutput.task_id == Task.id)
        .where(Task.id >= floor, Task.state == TaskState.DONE, ~registered)
        .where(sa.tuple_(Task.revision_id, Task.step).in_(list(steps)))
        .order_by(Task.id)
    )
    return [(task, output) for task, output in session.execute(query)]


def recent_tasks_floor(session: Session, now: dt.datetime) -> int | None:
    """The first task id of the runs in play: active runs, and runs changed within
    ``LOOKBACK`` of now or of the last registration (so a scheduler that was down for a
    while still finds what finished meanwhile). None when there are none."""
    since = now - LOOKBACK
    last = session.scalar(sa.select(sa.func.max(DqmMerge.registered_at)))
    if last is not None:
        since = min(since, last - LOOKBACK)
    runs = sa.select(Run.id).where(sa.or_(Run.status.in_(ACTIVE_RUN), Run.updated_at >= since))
    floor: int | None = session.scalar(sa.select(sa.func.min(Task.id)).where(Task.run_id.in_(runs)))
    return floor


def read_merged_file(
    url: str, checksum: str | None = None, cache: OutputCache | None = None
) -> MergedFile:
    """A merged file's histograms and contribution list; unreadable: ``readable`` False.

    With ``checksum`` (the adler32 the merge task recorded), a file that no longer has it
    is unreadable too: a later merge replaced it (a pipeline may keep one merged file per
    run, every merge replacing the previous one), and it no longer holds this merge.
    A ``file://`` file is read in place; one on ``root://`` or ``https://`` through a
    local copy in ``cache`` (``[storage] output_root``; default: ``default_cache()``).
    """
    try:
        if is_file_url(url):
            path = url_to_path(url)
            if checksum is not None and adler32_file(path) != normalise_adler32(checksum):
                raise ReplacedError(url)
        else:
            path = (cache or default_cache()).local_path(url, checksum)
        found = read_file(path)
        meta = found.meta or {}
        if meta.get("format") != META_FORMAT:
            raise HistogramFileError(url, "not a merged histogram file (no contribution list)")
    except ReplacedError:
        reason = "replaced by a later merge since (another checksum)"
        return MergedFile({}, [], [{"key": MERGED_FILE, "path": url, "reason": reason}], False)
    except (HistogramFileError, URLError, StageError, OSError) as exc:
        reason = exc.reason if isinstance(exc, HistogramFileError) else str(exc)
        return MergedFile({}, [], [{"key": MERGED_FILE, "path": url, "reason": reason}], False)
    return MergedFile(found.hists, list(meta["contributions"]), list(meta.get("excluded", [])))


def register_merge(
    session: Session,
    task: Task,
    output: TaskOutput,
    now: dt.datetime,
    cache: OutputCache | None = None,
) -> tuple[DqmMerge, MergedFile]:
    """Register one merge task's merged file and the histograms it and its inputs hold
    (``cache``: where a merged file on root:// or https:// is copied to be read).

    A task re-run by an operator keeps its ``DqmMerge`` row (results point at it), which
    is rewritten from the new output.
    """
    merged = read_merged_file(output.url, output.adler32, cache)
    files_total, events_total = run_totals(session, task.run_id)
    merge = session.scalar(sa.select(DqmMerge).where(DqmMerge.task_id == task.id))
    if merge is None:
        merge = DqmMerge(run_id=task.run_id, task_id=task.id)
        session.add(merge)
    else:
        session.execute(sa.delete(DqmHistogram).where(DqmHistogram.merge_id == merge.id))
    merge.attempt_id, merge.url, merge.final = output.attempt_id, output.url, task.final
    merge.files_included, merge.files_total = len(merged.contributions), files_total
    merge.events_included = sum(int(c.get("events", 0)) for c in merged.contributions)
    merge.events_total = events_total
    merge.contributions = [{k: c.get(k) for k in CONTRIBUTION_KEYS} for c in merged.contributions]
    merge.errors = merged.errors
    merge.merged_at, merge.registered_at = task.finished_at or task.updated_at, now
    session.flush()
    _trim_superseded(session, merge)
    if merged.readable:
        objects = [(path, h.classname, h.entries) for path, h in merged.hists.items()]
        _add_histograms(session, task.run_id, output, objects, merge.id)
        _register_contributions(session, task.run_id, merged.contributions)
    return merge, merged


def _trim_superseded(session: Session, merge: DqmMerge) -> None:
    """Empty the contribution lists of the run's earlier live merges.

    A live merge every minute of a long run would otherwise store the run's whole list
    again every minute (hundreds of MB a day); the counts stay, and each merged file
    still lists its own contributions.
    """
    session.execute(
        sa.update(DqmMerge)
        .where(DqmMerge.run_id == merge.run_id, DqmMerge.id < merge.id)
        .where(DqmMerge.final.is_(False), DqmMerge.merged_at <= merge.merged_at)
        .values(contributions=[])
    )


def run_totals(session: Session, run_id: int) -> tuple[int, int | None]:
    """The run's files now, and its events when every file's metadata gives them."""
    metas = session.scalars(sa.select(File.meta).where(File.run_id == run_id)).all()
    events = [m.get("events") for m in metas if isinstance(m, Mapping)]
    known = [int(e) for e in events if isinstance(e, int | float) and not isinstance(e, bool)]
    return len(metas), (sum(known) if metas and len(known) == len(metas) else None)


def _add_histograms(
    session: Session,
    run_id: int,
    output: TaskOutput,
    objects: Iterable[tuple[str, str, float]],
    merge_id: int | None,
) -> None:
    session.add_all(
        DqmHistogram(
            run_id=run_id,
            task_id=output.task_id,
            attempt_id=output.attempt_id,
            merge_id=merge_id,
            output=output.name,
            url=output.url,
            path=path,
            classname=classname,
            entries=float(entries),
        )
        for path, classname, entries in objects
    )


def _register_contributions(
    session: Session, run_id: int, contributions: Sequence[Mapping[str, Any]]
) -> None:
    """Histogram rows of each contribution's task output, once per output and attempt (a
    re-run task's rows are replaced)."""
    outputs = {_path_of(o.url): o for o in _run_outputs(session, run_id)}
    registered = (
        sa.select(DqmHistogram.task_id, DqmHistogram.output, DqmHistogram.attempt_id)
        .where(DqmHistogram.run_id == run_id, DqmHistogram.merge_id.is_(None))
        .distinct()
    )
    done = {(task_id, name): attempt for task_id, name, attempt in session.execute(registered)}
    for contribution in contributions:
        # The key is the input's URL when it was staged in from root:// or https://
        # (``runwatch dqm merge``), its absolute path when it was read in place.
        output = outputs.get(_path_of(str(contribution.get("key")))) or outputs.get(
            str(contribution.get("path"))
        )
        if output is None or done.get((output.task_id, output.name)) == output.attempt_id:
            continue
        objects = _objects_of(contribution)
        if objects is None:
            continue
        if (output.task_id, output.name) in done:
            session.execute(
                sa.delete(DqmHistogram).where(
                    DqmHistogram.task_id == output.task_id,
                    DqmHistogram.output == output.name,
                    DqmHistogram.merge_id.is_(None),
                )
            )
        _add_histograms(session, run_id, output, objects, None)
        done[(output.task_id, output.name)] = output.attempt_id


def _run_outputs(session: Session, run_id: int) -> Sequence[TaskOutput]:
    query = sa.select(TaskOutput).join(Task, Task.id == TaskOutput.task_id)
    return session.scalars(query.where(Task.run_id == run_id)).all()


def _path_of(url: str) -> str:
    """What identifies an output's file, whatever the spelling of its URL: the local path
    of a ``file://`` one, the server and path of a ``root://`` one (one or two slashes)."""
    try:
        if is_root_url(url):
            server, path = split_root_url(url)
            return f"{server}/{path}"
        return str(url_to_path(url))
    except URLError:
        return url


def _objects_of(contribution: Mapping[str, Any]) -> list[tuple[str, str, float]] | None:
    """A contribution's histogram objects: the merge's inventory of it, else read from it
    (files merged before inventories were recorded have none)."""
    listed = contribution.get("inventory")
    if listed:
        return [(h["path"], h["classname"], float(h["entries"])) for h in listed]
    try:
        found: HistFile = read_file(str(contribution["path"]))
    except (HistogramFileError, OSError, KeyError):
        return None
    return [(path, h.classname, h.entries) for path, h in found.hists.items()]


def latest_merge(session: Session, run_id: int) -> DqmMerge | None:
    """The run's merge to judge it by: the newest final one, else the newest live one.

    Merges whose file could not be read are passed over.
    """
    query = (
        sa.select(DqmMerge)
        .where(DqmMerge.run_id == run_id)
        .order_by(DqmMerge.final.desc(), DqmMerge.merged_at.desc(), DqmMerge.id.desc())
    )
    for merge in session.scalars(query):
        if not any(e.get("key") == MERGED_FILE for e in merge.errors):
            return merge
    return None
