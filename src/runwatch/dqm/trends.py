"""Per-run summary quantities for trend plots across runs (``DqmTrendPoint``).

Built in, for any experiment (a quantity is left out when it cannot be known):

- ``events``, ``files``: what the run's merge includes; ``event_rate_hz``: its events over
  the run's duration (start to end, or to the merge while the run is still taken);
- ``pmt_dead``, ``pmt_hot``, ``pmt_normal``, ``pmt_other``, ``pmt_unknown``: PMTs per class;
- ``checks_good``, ``checks_warning``, ``checks_bad``: non-shadow check results per
  verdict, and ``verdict``: the run's, as 0 (good), 1 (warning), 2 (bad);
- ``latency_s``: keep-up latency, from the end of data taking to the final merge.

``[dqm] trends`` adds histogram-derived ones, ``name = "histogram:statistic"`` with a
statistic of ``STATISTICS`` (e.g. ``energy_mean = "energy:mean"``). A run's points are
replaced whenever it is evaluated.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import Run
from runwatch.config import TREND_STATISTICS
from runwatch.dqm.histogram import Hist, stats_from_bins
from runwatch.dqm.models import DqmMerge, DqmTrendPoint
from runwatch.dqm.pmtstatus import PmtStatus
from runwatch.dqm.verdict import CheckResult, Verdict

STATISTICS = TREND_STATISTICS
"""What a configured trend takes of a histogram: mean and RMS of x or y (ROOT's, from
the global sums), ROOT's entries, or the sum of the in-range bins."""


def statistic(hist: Hist, name: str) -> float | None:
    """One of ``STATISTICS`` of a histogram; None when undefined (no entries, no y axis)."""
    if name == "entries":
        return hist.entries
    inner = tuple(slice(1, -1) for _ in hist.axes)
    if name == "integral":
        return float(hist.sumw[inner].sum())
    axis = "y" if name.endswith("_y") else "x"
    if axis == "y" and len(hist.axes) < 2:
        return None
    stats = hist.stats if hist.stats.get("fTsumw", 0.0) > 0 else stats_from_bins(hist)
    sumw = stats.get("fTsumw", 0.0)
    if not sumw > 0:
        return None
    mean = stats.get(f"fTsumw{axis}", 0.0) / sumw
    if name.startswith("mean"):
        return mean
    return math.sqrt(max(stats.get(f"fTsumw{axis}2", 0.0) / sumw - mean * mean, 0.0))


def trend_values(
    run: Run,
    merge: DqmMerge,
    hists: Mapping[str, Hist],
    status: PmtStatus | None,
    results: Sequence[CheckResult],
    verdict: Verdict,
    configured: Mapping[str, str],
) -> dict[str, float]:
    """The run's trend quantities from its evaluation (see the module docstring)."""
    values: dict[str, float] = {
        "events": float(merge.events_included),
        "files": float(merge.files_included),
        "verdict": float(verdict.severity),
    }
    end = run.ended_at or merge.merged_at
    if run.started_at is not None and end > run.started_at:
        values["event_rate_hz"] = merge.events_included / (end - run.started_at).total_seconds()
    if merge.final and run.ended_at is not None:
        values["latency_s"] = (merge.merged_at - run.ended_at).total_seconds()
    if status is not None:
        values |= {f"pmt_{cls.value}": float(n) for cls, n in status.counts().items()}
    for level in Verdict:
        counted = [r for r in results if not r.shadow and r.verdict is level]
        values[f"checks_{level.value}"] = float(len(counted))
    for quantity, source in configured.items():
        name, _, stat = source.rpartition(":")
        value = statistic(hists[name], stat) if name in hists else None
        if value is not None and math.isfinite(value):
            values[quantity] = value
    return values


def store_trends(session: Session, run: Run, values: Mapping[str, float], now: dt.datetime) -> None:
    """Replace the run's trend points with ``values``."""
    session.execute(sa.delete(DqmTrendPoint).where(DqmTrendPoint.run_id == run.id))
    session.add_all(
        DqmTrendPoint(run_id=run.id, quantity=q, value=v, updated_at=now) for q, v in values.items()
    )


def trend(
    session: Session, quantity: str, last: int = 50, stream: str | None = None
) -> list[tuple[int, float]]:
    """(run number, value) of a quantity over the ``last`` runs that have it, oldest first."""
    query = (
        sa.select(Run.number, DqmTrendPoint.value)
        .join(DqmTrendPoint, DqmTrendPoint.run_id == Run.id)
        .where(DqmTrendPoint.quantity == quantity)
        .order_by(Run.number.desc())
        .limit(last)
    )
    if stream is not None:
        query = query.where(Run.stream == stream)
    return sorted((int(n), float(v)) for n, v in session.execute(query))


def quantities(session: Session) -> list[str]:
    """Every quantity stored for some run."""
    query = sa.select(DqmTrendPoint.quantity).distinct().order_by(DqmTrendPoint.quantity)
    return list(session.scalars(query))
