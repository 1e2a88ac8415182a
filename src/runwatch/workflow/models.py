"""Pipeline revisions, tasks, their dependencies, attempts and outputs; the scheduler lease."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from runwatch.db import Base, UTCDateTime, utcnow
from runwatch.enums import enum_column_type
from runwatch.workflow.states import AttemptState, TaskState


class PipelineRevision(Base):
    """One version of a pipeline file, kept forever: tasks point at the one they were planned
    with, so editing a pipeline never changes tasks already planned."""

    __tablename__ = "pipeline_revisions"
    __table_args__ = (sa.UniqueConstraint("name", "digest"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    digest: Mapped[str] = mapped_column(sa.String(64), doc="sha256 of the file's text.")
    path: Mapped[str] = mapped_column(sa.String(1024))
    content: Mapped[str] = mapped_column(sa.Text)
    loaded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Task(Base):
    """One step applied to one file (scope file) or to a run's files (scope run)."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(
        sa.String(255), unique=True, doc="pipeline/step/file:ID or pipeline/step/run:ID/batch"
    )
    revision_id: Mapped[int] = mapped_column(sa.ForeignKey("pipeline_revisions.id"))
    pipeline: Mapped[str] = mapped_column(sa.String(128))
    step: Mapped[str] = mapped_column(sa.String(128))
    scope: Mapped[str] = mapped_column(sa.String(8))
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    file_id: Mapped[int | None] = mapped_column(sa.ForeignKey("files.id"), index=True)
    batch: Mapped[int | None] = mapped_column(doc="Batch number of a run-scoped task.")
    final: Mapped[bool] = mapped_column(
        default=True, doc="False for a run task made by a batch rule before the run ended."
    )
    state: Mapped[TaskState] = mapped_column(
        enum_column_type(TaskState, "task_state"), default=TaskState.WAITING, index=True
    )
    priority_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, doc="When the task's data was taken; keep-up runs the newest first."
    )
    threads: Mapped[int] = mapped_column(default=1)
    memory_mb: Mapped[int] = mapped_column(default=0)
    timeout_s: Mapped[float] = mapped_column(default=0.0)
    retries: Mapped[int] = mapped_column(default=0, doc="Retries allowed after a failure.")
    failures: Mapped[int] = mapped_column(default=0)
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    inputs: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    reason: Mapped[str | None] = mapped_column(sa.Text, doc="Why it failed or was blocked.")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    attempts: Mapped[list[Attempt]] = relationship(back_populates="task", order_by="Attempt.number")
    outputs: Mapped[list[TaskOutput]] = relationship(
        back_populates="task", order_by="TaskOutput.name"
    )


class TaskDependency(Base):
    __tablename__ = "task_dependencies"

    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"), primary_key=True)
    needs_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"), primary_key=True, index=True)


class Attempt(Base):
    """One try at running a task: a job on the executor."""

    __tablename__ = "attempts"
    __table_args__ = (sa.UniqueConstraint("task_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"))
    number: Mapped[int]
    state: Mapped[AttemptState] = mapped_column(
        enum_column_type(AttemptState, "attempt_state"),
        default=AttemptState.SUBMITTED,
        index=True,
    )
    executor: Mapped[str] = mapped_column(sa.String(32))
    # The batch system's job id; NULL where the executor derives it from the attempt's
    # id (the local executor: ``executors.base.own_job_id``).
    external_id: Mapped[str | None] = mapped_column(sa.String(128))
    host: Mapped[str | None] = mapped_column(sa.String(255))
    submitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None]
    wall_s: Mapped[float | None]
    cpu_s: Mapped[float | None]
    peak_rss_mb: Mapped[float | None]
    spec: Mapped[dict[str, Any]] = mapped_column(
        sa.JSON, default=dict, doc="The job as rendered at submit time; see jobs.spec."
    )
    command: Mapped[str | None] = mapped_column(sa.Text)
    workdir: Mapped[str | None] = mapped_column(sa.String(1024))
    log_path: Mapped[str | None] = mapped_column(sa.String(1024))
    log_tail: Mapped[str | None] = mapped_column(sa.Text)
    reason: Mapped[str | None] = mapped_column(sa.Text)
    job_start: Mapped[int] = mapped_column(
        default=0,
        server_default=sa.text("0"),
        doc="Which start of its batch job holds the attempt (0 the first; a requeued job "
        "starts again with a higher one and takes the attempt over).",
    )
    batch_status: Mapped[str | None] = mapped_column(
        sa.String(255), doc="Why the batch system keeps the job waiting, as last polled."
    )

    task: Mapped[Task] = relationship(back_populates="attempts")


class TaskOutput(Base):
    """A file a task produced, stored under the data root; one row per declared output."""

    __tablename__ = "task_outputs"
    __table_args__ = (sa.UniqueConstraint("task_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"))
    attempt_id: Mapped[int] = mapped_column(sa.ForeignKey("attempts.id"))
    name: Mapped[str] = mapped_column(sa.String(255))
    url: Mapped[str] = mapped_column(sa.String(1024))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    adler32: Mapped[str] = mapped_column(sa.String(8))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    task: Mapped[Task] = relationship(back_populates="outputs")


class SchedulerLease(Base):
    """Who is the active scheduler: one row, renewed every tick, taken over when expired."""

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(255))
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


# The tables themselves, for the Core statements of the paths run for every task.
TASKS = cast(sa.Table, Task.__table__)
ATTEMPTS = cast(sa.Table, Attempt.__table__)
DEPENDENCIES = cast(sa.Table, TaskDependency.__table__)
OUTPUTS = cast(sa.Table, TaskOutput.__table__)
