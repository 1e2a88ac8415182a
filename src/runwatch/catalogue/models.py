"""Runs and raw files: what the detector took."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from runwatch.db import Base, UTCDateTime, utcnow
from runwatch.enums import enum_column_type


class RunStatus(enum.StrEnum):
    """A run's status as shifters know it (JUNO DQM's words)."""

    DATA_TAKING = "Data Taking"  # files still arriving (no end of run, or files missing)
    REC_RUNNING = "Rec Running"  # all files in; tasks still to finish
    PARTLY_COMPLETED = "Partly Completed"  # nothing left to do, something failed for good
    ALL_COMPLETED = "All Completed"  # every task done


class Run(Base):
    __tablename__ = "runs"
    # The recent-runs list pages by end time or number within a status (a handful of Data
    # Taking runs among 100,000 must not be searched for along the whole end-time index).
    __table_args__ = (
        sa.Index("ix_runs_status_ended_at", "status", "ended_at"),
        sa.Index("ix_runs_status_number", "status", "number"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(sa.BigInteger, unique=True)
    stream: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[RunStatus] = mapped_column(
        enum_column_type(RunStatus, "run_status"), default=RunStatus.DATA_TAKING, index=True
    )
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    end_of_run_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime, doc="When the end-of-run message was received."
    )
    expected_files: Mapped[int | None] = mapped_column(
        doc="Number of files the run has, known from the end-of-run message."
    )
    n_files: Mapped[int] = mapped_column(default=0)
    n_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    files: Mapped[list[File]] = relationship(back_populates="run", order_by="File.sequence")


class File(Base):
    """A raw data file announced by the transfer system."""

    __tablename__ = "files"
    __table_args__ = (sa.Index("ix_files_run_id_sequence", "run_id", "sequence"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"))
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    url: Mapped[str] = mapped_column(sa.String(1024))
    stream: Mapped[str] = mapped_column(sa.String(64))
    sequence: Mapped[int | None]
    size: Mapped[int | None] = mapped_column(sa.BigInteger)
    adler32: Mapped[str | None] = mapped_column(sa.String(8))
    created_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    planned_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime, index=True, doc="When the planner made this file's tasks."
    )
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", sa.JSON, default=dict)

    run: Mapped[Run] = relationship(back_populates="files")


# The tables themselves, for Core statements.
RUNS = cast(sa.Table, Run.__table__)
FILES = cast(sa.Table, File.__table__)
