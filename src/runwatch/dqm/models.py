"""The DQM's tables: merges and the histogram store, PMT status, check results, run
verdicts, trend points and alarms.

The merged histograms themselves live in ROOT files (written by the merge task, see
``runwatch.dqm.merge``); these tables say what each file holds and what the DQM concluded
from it. Every row can be rebuilt from the files and the engine's tables, so the DQM
service replaces rather than patches: re-evaluating a run rewrites its results.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column

from runwatch.db import Base, UTCDateTime, utcnow
from runwatch.dqm.verdict import Verdict
from runwatch.enums import enum_column_type

# A PMT array of a run (17,612 float32 = 70 kB) is larger than MySQL's BLOB (64 kB).
ARRAY_BLOB = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")


class DqmMerge(Base):
    """One merged file of a run, made by one merge task: what it includes of the run."""

    __tablename__ = "dqm_merges"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"), unique=True)
    attempt_id: Mapped[int] = mapped_column(sa.ForeignKey("attempts.id"))
    url: Mapped[str] = mapped_column(sa.String(1024), doc="The merged ROOT file.")
    final: Mapped[bool] = mapped_column(doc="The merge after the run ended, of all its files.")
    files_included: Mapped[int]
    files_total: Mapped[int] = mapped_column(doc="The run's files known when it was merged.")
    events_included: Mapped[int] = mapped_column(sa.BigInteger)
    events_total: Mapped[int | None] = mapped_column(
        sa.BigInteger, doc="The run's events, when its files' metadata say it."
    )
    contributions: Mapped[list[dict[str, Any]]] = mapped_column(
        sa.JSON, default=list, doc="Included inputs: key (task), adler32, events, url."
    )
    errors: Mapped[list[dict[str, Any]]] = mapped_column(
        sa.JSON, default=list, doc="Inputs left out, each with its reason."
    )
    merged_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class DqmHistogram(Base):
    """The histogram store: one histogram object in a task's output file, or in a merge."""

    __tablename__ = "dqm_histograms"
    __table_args__ = (sa.UniqueConstraint("task_id", "output", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"))
    attempt_id: Mapped[int] = mapped_column(sa.ForeignKey("attempts.id"))
    merge_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("dqm_merges.id"), index=True, doc="Set for a run-level merged histogram."
    )
    output: Mapped[str] = mapped_column(sa.String(255), doc="The task's output name.")
    url: Mapped[str] = mapped_column(sa.String(1024))
    path: Mapped[str] = mapped_column(sa.String(255), doc="Object path inside the file.")
    classname: Mapped[str] = mapped_column(sa.String(32), doc="TH1F, TH2D, TProfile, ...")
    entries: Mapped[float]


class DqmRunCuts(Base):
    """A run's own PMT cuts, overriding the detector's (``[dqm] cuts``) for this run."""

    __tablename__ = "dqm_run_cuts"

    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), primary_key=True)
    cuts: Mapped[dict[str, float]] = mapped_column(sa.JSON)
    set_by: Mapped[str] = mapped_column(sa.String(255))
    set_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    comment: Mapped[str] = mapped_column(sa.Text, default="")


class DqmPmtStatus(Base):
    """A run's PMT status from its latest merge: per-PMT fractions and classes as arrays
    (one row per run, not per PMT: 17,612 rows a run would be most of the database)."""

    __tablename__ = "dqm_pmt_status"

    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), primary_key=True)
    merge_id: Mapped[int] = mapped_column(sa.ForeignKey("dqm_merges.id"))
    n_events: Mapped[int] = mapped_column(sa.BigInteger)
    cuts: Mapped[dict[str, float]] = mapped_column(sa.JSON, doc="The cuts in force.")
    counts: Mapped[dict[str, int]] = mapped_column(sa.JSON, doc="PMTs per class.")
    fractions: Mapped[bytes] = mapped_column(ARRAY_BLOB, doc="float32 per PMT, by id.")
    classes: Mapped[bytes] = mapped_column(ARRAY_BLOB, doc="int8 PmtClass code per PMT.")
    evaluated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class DqmCheckResult(Base):
    """One check on one histogram of a run, as last evaluated."""

    __tablename__ = "dqm_check_results"
    __table_args__ = (sa.UniqueConstraint("run_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    merge_id: Mapped[int | None] = mapped_column(sa.ForeignKey("dqm_merges.id"))
    key: Mapped[str] = mapped_column(sa.String(255), doc="histogram/check")
    histogram: Mapped[str] = mapped_column(sa.String(255))
    check: Mapped[str] = mapped_column(sa.String(128))
    kind: Mapped[str] = mapped_column(sa.String(32))
    verdict: Mapped[Verdict] = mapped_column(enum_column_type(Verdict, "check_verdict"))
    reason: Mapped[str] = mapped_column(sa.Text)
    values: Mapped[dict[str, float]] = mapped_column(sa.JSON, default=dict)
    shadow: Mapped[bool] = mapped_column(default=False)
    reference: Mapped[str | None] = mapped_column(
        sa.String(255), doc="The reference runs compared with, e.g. '1230' or '1221-1230'."
    )
    evaluated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class DqmRunQuality(Base):
    """A run's DQM verdict, derived from its non-shadow check results."""

    __tablename__ = "dqm_run_quality"

    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), primary_key=True)
    merge_id: Mapped[int | None] = mapped_column(sa.ForeignKey("dqm_merges.id"))
    verdict: Mapped[Verdict] = mapped_column(enum_column_type(Verdict, "run_verdict"), index=True)
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    final: Mapped[bool] = mapped_column(
        default=False, doc="From the final merge: only final GOOD runs serve as references."
    )
    evaluated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class DqmTrendPoint(Base):
    """One per-run summary quantity (event rate, mean energy, dead PMTs, latency, ...)."""

    __tablename__ = "dqm_trend_points"

    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), primary_key=True)
    quantity: Mapped[str] = mapped_column(sa.String(64), primary_key=True, index=True)
    value: Mapped[float]
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AlarmState(enum.StrEnum):
    OPEN = "open"  # raised, nobody has acknowledged it
    ACKNOWLEDGED = "acknowledged"  # someone is on it; re-raised when the acknowledgement expires
    CLEARED = "cleared"  # its condition is gone


class Alarm(Base):
    """Something wrong that a person must see: one row per condition (``key``), raised,
    acknowledged, re-raised and cleared over its life; ``alarm_events`` logs each step."""

    __tablename__ = "alarms"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(
        sa.String(255), unique=True, doc="The condition: 'verdict:run:ID', 'stale:run:ID', ..."
    )
    kind: Mapped[str] = mapped_column(sa.String(32), index=True)
    severity: Mapped[str] = mapped_column(sa.String(16), doc="warning or bad")
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    task_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tasks.id"))
    message: Mapped[str] = mapped_column(sa.Text)
    state: Mapped[AlarmState] = mapped_column(
        enum_column_type(AlarmState, "alarm_state"), default=AlarmState.OPEN, index=True
    )
    raised_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    times_raised: Mapped[int] = mapped_column(default=1)
    acknowledged_by: Mapped[str | None] = mapped_column(sa.String(255))
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ack_comment: Mapped[str | None] = mapped_column(sa.Text)
    ack_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cleared_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    notified_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime, doc="Last time the notifiers were told; None: they are still to be told."
    )


class AlarmEvent(Base):
    """One step in an alarm's life: raised, notified, acknowledged, re-raised, cleared."""

    __tablename__ = "alarm_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    alarm_id: Mapped[int] = mapped_column(sa.ForeignKey("alarms.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    action: Mapped[str] = mapped_column(sa.String(32))
    by: Mapped[str | None] = mapped_column(sa.String(255))
    comment: Mapped[str | None] = mapped_column(sa.Text)
