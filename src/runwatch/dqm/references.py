"""References of a run's checks: a chosen run's merged histograms, or recent good runs'.

``ReferenceRun(n)`` is run n's latest merged file (its final merge when there is one).
``ReferenceWindow(n)`` is the sum (``rolling_reference``) of the last n runs of the same
stream before this one whose final verdict is GOOD: only final verdicts count, so a run
still being taken, or judged on a partial merge, never becomes anyone's reference.
Histograms are read once per reference run and summed once per histogram.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import Run
from runwatch.dqm.checks import rolling_reference
from runwatch.dqm.checkspec import Reference, ReferenceRun, ReferenceWindow
from runwatch.dqm.histogram import Hist, IncompatibleHistograms
from runwatch.dqm.models import DqmRunQuality
from runwatch.dqm.store import latest_merge, read_merged_file
from runwatch.dqm.verdict import Verdict
from runwatch.storage.cache import OutputCache


class NoReference(Exception):
    """A reference that cannot be had (no such run, no good run yet, histogram missing)."""


@dataclass(frozen=True)
class Resolved:
    """A reference's histogram and the runs it comes from (for the stored result)."""

    hist: Hist
    runs: tuple[int, ...]

    @property
    def label(self) -> str:
        """'1230' for one run, '1221-1230' for a window (lowest to highest)."""
        low, high = min(self.runs), max(self.runs)
        return str(low) if low == high else f"{low}-{high}"


@dataclass
class References:
    """Resolves the references of one run's checks, reading each run's merge once."""

    session: Session
    run: Run
    cache: OutputCache | None = None  # where merged files on root:// or https:// are read
    _hists: dict[int, dict[str, Hist]] = field(default_factory=dict)
    _windows: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def runs_of(self, reference: Reference) -> tuple[int, ...]:
        """The run numbers a reference stands for; NoReference when there are none."""
        if isinstance(reference, ReferenceRun):
            return (reference.run,)
        return self.window(reference)

    def window(self, reference: ReferenceWindow) -> tuple[int, ...]:
        if reference.runs not in self._windows:
            query = (
                sa.select(Run.number)
                .join(DqmRunQuality, DqmRunQuality.run_id == Run.id)
                .where(Run.stream == self.run.stream, Run.number < self.run.number)
                .where(DqmRunQuality.final.is_(True), DqmRunQuality.verdict == Verdict.GOOD)
                .order_by(Run.number.desc())
                .limit(reference.runs)
            )
            self._windows[reference.runs] = tuple(self.session.scalars(query))
        runs = self._windows[reference.runs]
        if not runs:
            raise NoReference(f"no final GOOD {self.run.stream} run before {self.run.number}")
        return runs

    def hists(self, number: int) -> dict[str, Hist]:
        """The histograms of a run's latest merge (NoReference without a readable one)."""
        if number not in self._hists:
            run = self.session.scalar(sa.select(Run).where(Run.number == number))
            merge = None if run is None else latest_merge(self.session, run.id)
            if merge is None:
                raise NoReference(f"reference run {number} has no merged histograms")
            merged = read_merged_file(merge.url, cache=self.cache)
            if not merged.readable:
                raise NoReference(f"reference run {number}: {merged.errors[0]['reason']}")
            self._hists[number] = merged.hists
        return self._hists[number]

    def histograms(self, reference: Reference, names: tuple[str, ...]) -> dict[str, Resolved]:
        """Each named histogram of the reference, summed over a window's runs."""
        runs = self.runs_of(reference)
        found: dict[str, Resolved] = {}
        for name in names:
            parts = [self.hists(number).get(name) for number in runs]
            missing = [n for n, h in zip(runs, parts, strict=True) if h is None]
            if missing:
                raise NoReference(f"{name} not in reference run {', '.join(map(str, missing))}")
            try:
                summed = rolling_reference([h for h in parts if h is not None])
            except IncompatibleHistograms as exc:
                raise NoReference(f"the reference runs' {name} differ in binning: {exc}") from exc
            found[name] = Resolved(summed, runs)
        return found
