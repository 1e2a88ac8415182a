"""Rendering a task into the job the wrapper runs (``Attempt.spec``), at submit time."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import File, Run
from runwatch.config import Settings
from runwatch.jobs.spec import InputSpec, JobSpec
from runwatch.workflow.models import Task, TaskDependency, TaskOutput
from runwatch.workflow.spec import Pipeline
from runwatch.workflow.templates import render_step


@dataclass(frozen=True)
class RenderedJob:
    spec: JobSpec
    workdir: str
    log_path: str


def task_inputs(session: Session, task: Task) -> list[str]:
    """Input URLs: the raw file for a first step, else the outputs of the tasks it needs,
    in file order, then step, then output name (stable, so a rerun sees the same list)."""
    if task.scope == "file":
        has_needs = session.scalar(
            sa.select(sa.func.count()).where(TaskDependency.task_id == task.id)
        )
        if not has_needs:
            assert task.file_id is not None
            file = session.get(File, task.file_id)
            assert file is not None
            return [file.url]
    rows = session.execute(
        sa.select(TaskOutput.url)
        .join(Task, Task.id == TaskOutput.task_id)
        .join(TaskDependency, TaskDependency.needs_id == Task.id)
        .outerjoin(File, File.id == Task.file_id)
        .where(TaskDependency.task_id == task.id)
        .order_by(File.sequence, File.id, Task.id, TaskOutput.name)
    ).scalars()
    return list(rows)


def local_path(url: str, workdir: Path) -> str:
    """Where the wrapper will find an input: in place for file://, else staged in."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        return unquote(parts.path)
    return str(workdir / "inputs" / posixpath.basename(unquote(parts.path)))


def render_job(
    session: Session, task: Task, pipeline: Pipeline, settings: Settings, attempt_number: int
) -> RenderedJob:
    step = pipeline.steps[task.step]
    run = session.get(Run, task.run_id)
    assert run is not None
    workdir = (
        Path(settings.work_root)
        / task.pipeline
        / task.step
        / str(run.number)
        / (f"task-{task.id}-attempt-{attempt_number}")
    )
    log_path = Path(settings.work_root) / "logs" / str(task.id) / f"attempt-{attempt_number}.log"
    urls = task_inputs(session, task)
    task.inputs = urls
    inputs: list[InputSpec] = [
        {"url": url, "path": local_path(url, workdir), "adler32": None} for url in urls
    ]
    context = _template_context(session, task, run, [i["path"] for i in inputs])
    context.update(
        threads=step.threads,
        sample_fraction=step.sample_fraction,
        params={**pipeline.params, **step.params},
    )
    command, outputs = render_step(step, pipeline, context)
    stream = _stream_of(session, task, run)
    destination = Path(settings.data_root) / stream / str(run.number) / task.step
    spec: JobSpec = {
        "command": command,
        "inputs": inputs,
        "outputs": outputs,
        "destination": destination.as_uri() + "/",
        "timeout_s": task.timeout_s,
        "threads": task.threads,
        "heartbeat_s": max(1.0, settings.scheduler.heartbeat_timeout_seconds / 6),
        "env": {"RUNWATCH_TASK": task.key, "RUNWATCH_RUN": str(run.number)},
        "retry": {
            "backoff_seconds": settings.scheduler.backoff_seconds,
            "backoff_max_seconds": settings.scheduler.backoff_max_seconds,
        },
    }
    return RenderedJob(spec=spec, workdir=str(workdir), log_path=str(log_path))


def _stream_of(session: Session, task: Task, run: Run) -> str:
    if task.file_id is not None:
        file = session.get(File, task.file_id)
        assert file is not None
        return file.stream
    return run.stream


def _template_context(session: Session, task: Task, run: Run, inputs: list[str]) -> dict[str, Any]:
    context: dict[str, Any] = {
        "run": {"number": run.number, "stream": run.stream},
        "inputs": inputs,
        "task": {"id": task.id, "key": task.key, "batch": task.batch, "final": task.final},
    }
    if task.file_id is not None:
        file = session.get(File, task.file_id)
        assert file is not None
        context["file"] = {
            "name": file.name,
            "stem": file.name.rsplit(".", 1)[0],
            "url": file.url,
            "run": run.number,
            "stream": file.stream,
            "sequence": file.sequence,
            "meta": dict(file.meta or {}),
        }
    return context
