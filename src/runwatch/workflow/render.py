"""Rendering a task into the job the wrapper runs (``Attempt.spec``), at submit time.

The scheduler renders every job it submits, so what rendering needs of the database is
read with few Core queries: one for the READY tasks with their run and file
(``ready_tasks``), one for the inputs of all of them that need others (``task_inputs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa

from runwatch.catalogue.models import FILES, RUNS
from runwatch.config import Settings
from runwatch.jobs.spec import InputSpec, JobSpec
from runwatch.storage.urls import folder_url, staged_path
from runwatch.workflow.models import (
    ATTEMPTS,
    DEPENDENCIES,
    OUTPUTS,
    TASKS,
)
from runwatch.workflow.spec import Pipeline
from runwatch.workflow.states import TaskState
from runwatch.workflow.templates import render_step


@dataclass(frozen=True)
class ReadyTask:
    """A READY task with what rendering its job needs."""

    id: int
    key: str
    revision_id: int
    pipeline: str
    step: str
    scope: str
    batch: int | None
    final: bool
    threads: int
    memory_mb: int
    timeout_s: float
    run_number: int
    run_stream: str
    file: dict[str, Any] | None  # name, url, stream, sequence, meta; None for a run task
    has_needs: bool
    next_attempt: int  # the number the attempt about to be made gets


_READY_COLUMNS = (
    TASKS.c.id,
    TASKS.c.key,
    TASKS.c.revision_id,
    TASKS.c.pipeline,
    TASKS.c.step,
    TASKS.c.scope,
    TASKS.c.batch,
    TASKS.c.final,
    TASKS.c.threads,
    TASKS.c.memory_mb,
    TASKS.c.timeout_s,
    RUNS.c.number,
    RUNS.c.stream,
    FILES.c.id,
    FILES.c.name,
    FILES.c.url,
    FILES.c.stream,
    FILES.c.sequence,
    FILES.c["metadata"],
    sa.exists().where(DEPENDENCIES.c.task_id == TASKS.c.id).label("has_needs"),
    sa.select(sa.func.coalesce(sa.func.max(ATTEMPTS.c.number), 0))
    .where(ATTEMPTS.c.task_id == TASKS.c.id)
    .scalar_subquery()
    .label("attempts"),
)


def _ready_query(newest_first: bool) -> sa.Select[Any]:
    order = TASKS.c.priority_at.desc() if newest_first else TASKS.c.priority_at.asc()
    return (
        sa.select(*_READY_COLUMNS)
        .select_from(
            TASKS.join(RUNS, RUNS.c.id == TASKS.c.run_id).outerjoin(
                FILES, FILES.c.id == TASKS.c.file_id
            )
        )
        .where(TASKS.c.state == TaskState.READY)
        .order_by(order, TASKS.c.id)
        .limit(sa.bindparam("limit"))
    )


_READY = {True: _ready_query(True), False: _ready_query(False)}


def ready_tasks(connection: sa.Connection, limit: int, newest_first: bool) -> list[ReadyTask]:
    """Up to ``limit`` READY tasks, newest data first (or oldest), then by id."""
    return [_ready_task(row) for row in connection.execute(_READY[newest_first], {"limit": limit})]


def _ready_task(row: sa.Row[Any]) -> ReadyTask:
    values: tuple[Any, ...] = tuple(row)
    (
        *task_columns,
        run_number,
        run_stream,
        file_id,
        file_name,
        file_url,
        file_stream,
        file_sequence,
        file_meta,
        has_needs,
        attempts,
    ) = values
    file = None
    if file_id is not None:
        file = {
            "name": file_name,
            "url": file_url,
            "stream": file_stream,
            "sequence": file_sequence,
            "meta": dict(file_meta or {}),
        }
    task_id, key, revision_id, pipeline, step, scope, batch, final, threads, memory, timeout = (
        task_columns
    )
    return ReadyTask(
        id=task_id,
        key=key,
        revision_id=revision_id,
        pipeline=pipeline,
        step=step,
        scope=scope,
        batch=batch,
        final=bool(final),
        threads=threads,
        memory_mb=memory,
        timeout_s=timeout,
        run_number=run_number,
        run_stream=run_stream,
        file=file,
        has_needs=bool(has_needs),
        next_attempt=int(attempts) + 1,
    )


_NEEDED_OUTPUTS = (
    sa.select(DEPENDENCIES.c.task_id, OUTPUTS.c.url)
    .join(TASKS, TASKS.c.id == OUTPUTS.c.task_id)
    .join(DEPENDENCIES, DEPENDENCIES.c.needs_id == TASKS.c.id)
    .outerjoin(FILES, FILES.c.id == TASKS.c.file_id)
    .where(DEPENDENCIES.c.task_id.in_(sa.bindparam("task_ids", expanding=True)))
    .order_by(DEPENDENCIES.c.task_id, FILES.c.sequence, FILES.c.id, TASKS.c.id, OUTPUTS.c.name)
)


def task_inputs(connection: sa.Connection, tasks: Sequence[ReadyTask]) -> dict[int, list[str]]:
    """Input URLs of each task, by task id: the raw file for a first step, else the
    outputs of the tasks it needs, in file order, then step, then output name (stable,
    so a rerun sees the same list). One query for all the tasks."""
    inputs: dict[int, list[str]] = {}
    needing = []
    for task in tasks:
        if task.scope == "file" and not task.has_needs:
            assert task.file is not None
            inputs[task.id] = [task.file["url"]]
        else:
            inputs[task.id] = []
            needing.append(task.id)
    if needing:
        for task_id, url in connection.execute(_NEEDED_OUTPUTS, {"task_ids": needing}):
            inputs[task_id].append(url)
    return inputs


@dataclass(frozen=True)
class RenderedJob:
    spec: JobSpec
    workdir: str
    log_path: str
    disk_mb: int = 0
    submit: Mapping[str, Any] = field(default_factory=dict)  # the step's, by executor name


INPUTS_ENV = "RUNWATCH_INPUTS"
"""The step's environment variable naming the folder its remote inputs are staged into
(``runwatch dqm merge`` keys such an input by its URL, not by the attempt's path)."""


def local_path(url: str, workdir: Path) -> str:
    """Where the wrapper will find an input: in place for file://, else staged in."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        return unquote(parts.path)
    return str(staged_path(url, workdir / "inputs"))


def render_job(
    task: ReadyTask,
    inputs: Sequence[str],
    pipeline: Pipeline,
    settings: Settings,
) -> RenderedJob:
    """The job of ``task``'s next attempt, whose inputs are the URLs ``inputs``."""
    step = pipeline.steps[task.step]
    workdir = (
        Path(settings.work_root)
        / task.pipeline
        / task.step
        / str(task.run_number)
        / f"task-{task.id}-attempt-{task.next_attempt}"
    )
    # One folder of logs per run, not per task: a task's folder cost a directory made
    # for every task, and millions of folders in one.
    log_path = (
        Path(settings.work_root)
        / "logs"
        / str(task.run_number)
        / f"task-{task.id}-attempt-{task.next_attempt}.log"
    )
    specs: list[InputSpec] = [
        {"url": url, "path": local_path(url, workdir), "adler32": None} for url in inputs
    ]
    context = _template_context(task, [i["path"] for i in specs])
    context.update(
        threads=step.threads,
        sample_fraction=step.sample_fraction,
        params={**pipeline.params, **step.params},
    )
    command, outputs = render_step(step, pipeline, context)
    stream = task.file["stream"] if task.file is not None else task.run_stream
    # [storage] output_root (EOS, a WebDAV store) or, by default, the data root.
    root = settings.storage.output_root or settings.data_root
    destination = folder_url(root, (stream, str(task.run_number), task.step))
    spec: JobSpec = {
        "command": command,
        "inputs": specs,
        "outputs": outputs,
        "destination": destination,
        "timeout_s": task.timeout_s,
        "threads": task.threads,
        "heartbeat_s": max(1.0, settings.scheduler.heartbeat_timeout_seconds / 6),
        "env": {
            "RUNWATCH_TASK": task.key,
            "RUNWATCH_RUN": str(task.run_number),
            INPUTS_ENV: str(workdir / "inputs"),
        },
        "retry": {
            "backoff_seconds": settings.scheduler.backoff_seconds,
            "backoff_max_seconds": settings.scheduler.backoff_max_seconds,
        },
        "storage": settings.storage.model_dump(),
    }
    return RenderedJob(
        spec=spec,
        workdir=str(workdir),
        log_path=str(log_path),
        disk_mb=step.disk_mb,
        submit=step.submit,
    )


def _template_context(task: ReadyTask, inputs: list[str]) -> dict[str, Any]:
    context: dict[str, Any] = {
        "run": {"number": task.run_number, "stream": task.run_stream},
        "inputs": inputs,
        "task": {"id": task.id, "key": task.key, "batch": task.batch, "final": task.final},
    }
    if task.file is not None:
        file = task.file
        context["file"] = {
            "name": file["name"],
            "stem": file["name"].rsplit(".", 1)[0],
            "url": file["url"],
            "run": task.run_number,
            "stream": file["stream"],
            "sequence": file["sequence"],
            "meta": file["meta"],
        }
    return context
