"""The DQM over the database: register merges, judge runs, re-judge them, PMT history.

``register_merges`` runs in every full scheduler tick: it registers each DONE merge task
(``runwatch.dqm.store``) and evaluates the run on the new merge with ``evaluate_run``:

1. the PMT status, with the run's cuts (``[dqm] cuts_preset`` and ``cuts``, then the
   run's own ``DqmRunCuts``), stored as ``DqmPmtStatus``;
2. the checks of ``[dqm] checks``, references resolved (``runwatch.dqm.references``),
   stored as ``DqmCheckResult`` rows that replace the run's previous ones;
3. the run's verdict (``DqmRunQuality``: the worst non-shadow result; ``final`` when the
   merge is the final one) and its trend points (``runwatch.dqm.trends``).

What cannot be evaluated is a result with its reason, never an exception that stops the
scheduler: a histogram the check names but the run lacks is BAD (a product is missing);
a reference that cannot be had (no good run yet) gives the check's ``on_empty`` verdict;
a check that cannot apply to its histogram, a check file or cuts in error, give WARNING,
so the mistake is seen without condemning the run. Everything is rebuilt from the files,
so ``reevaluate`` re-judges past runs after a check file or cuts change.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import Run
from runwatch.config import Settings
from runwatch.db import utcnow
from runwatch.dqm.checks import (
    STATUS_KINDS,
    CheckError,
    evaluate_histogram,
    evaluate_status,
)
from runwatch.dqm.checkspec import REFERENCE_KINDS, CheckSpec, CheckSpecError, load_checks
from runwatch.dqm.histogram import Hist
from runwatch.dqm.models import (
    DqmCheckResult,
    DqmMerge,
    DqmPmtStatus,
    DqmRunCuts,
    DqmRunQuality,
)
from runwatch.dqm.pmtstatus import (
    CLASSES,
    DEFAULT_CUTS,
    JUNO_TEST_CUTS,
    ClassChanges,
    Cuts,
    CutsError,
    PmtStatus,
    changed_since,
    status_from_hists,
)
from runwatch.dqm.references import NoReference, References
from runwatch.dqm.store import (
    latest_merge,
    merge_steps,
    read_merged_file,
    register_merge,
    unregistered_merge_tasks,
)
from runwatch.dqm.trends import store_trends, trend_values
from runwatch.dqm.verdict import CheckResult, Verdict, run_verdict
from runwatch.storage.cache import output_cache
from runwatch.workflow.revisions import RevisionCache

log = logging.getLogger(__name__)

PRESETS = {"default": DEFAULT_CUTS, "juno-test": JUNO_TEST_CUTS}
REASONS_SHOWN = 3
"""Worst results named in a run's verdict reason."""


# -- registering ------------------------------------------------------------------------


def register_merges(
    session: Session, settings: Settings, revisions: RevisionCache, now: dt.datetime
) -> list[int]:
    """Register DONE merge tasks not yet registered and judge their runs; the new ids.

    A merge is judged only when it is the run's latest (a live merge finishing after the
    final one does not override it).
    """
    new = []
    cache = output_cache(settings)
    for task, output in unregistered_merge_tasks(session, merge_steps(session, revisions), now):
        merge, merged = register_merge(session, task, output, now, cache)
        new.append(merge.id)
        log.info("run id %d: merge %d registered from task %d", task.run_id, merge.id, task.id)
        latest = latest_merge(session, task.run_id)
        if merged.readable and latest is not None and latest.id == merge.id:
            _judge(session, settings, session.get_one(Run, task.run_id), merge, merged.hists, now)
    return new


def _judge(
    session: Session,
    settings: Settings,
    run: Run,
    merge: DqmMerge,
    hists: Mapping[str, Hist],
    now: dt.datetime,
) -> None:
    """``evaluate_run`` in a savepoint: a fault judging one run (a bug, a check the library
    cannot handle) is logged and leaves the merges registered and the other runs judged,
    rather than failing every pass on the same merge for ever."""
    try:
        with session.begin_nested():
            evaluate_run(session, settings, run, merge, hists=hists, now=now)
    except Exception:
        log.exception("run %d: merge %d registered, but judging it failed", run.number, merge.id)


# -- cuts -------------------------------------------------------------------------------


def _typed(values: Mapping[str, float]) -> dict[str, float | int]:
    """Cut values as ``Cuts`` takes them: min_events whole (JSON and TOML give floats)."""
    return {
        k: int(v) if k == "min_events" and float(v).is_integer() else v for k, v in values.items()
    }


def detector_cuts(settings: Settings) -> Cuts:
    """The detector's cuts: ``[dqm] cuts_preset`` with ``[dqm] cuts`` over it."""
    return Cuts.from_mapping(_typed(settings.dqm.cuts), PRESETS[settings.dqm.cuts_preset])


def run_cuts(session: Session, settings: Settings, run: Run) -> Cuts:
    """The cuts in force for a run: the detector's, with the run's own overrides."""
    cuts = detector_cuts(settings)
    own = session.get(DqmRunCuts, run.id)
    return cuts if own is None else Cuts.from_mapping(_typed(own.cuts), cuts)


def set_run_cuts(
    session: Session,
    settings: Settings,
    run: Run,
    values: Mapping[str, float],
    by: str,
    comment: str = "",
    now: dt.datetime | None = None,
) -> Cuts:
    """Store overrides of a run's cuts (added to earlier ones) and re-judge the run.

    ``CutsError`` (nothing stored) for an unknown cut or cuts out of order.
    """
    own = session.get(DqmRunCuts, run.id)
    merged = {**(own.cuts if own is not None else {}), **values}
    cuts = Cuts.from_mapping(_typed(merged), detector_cuts(settings))
    now = now or utcnow()
    if own is None:
        session.add(DqmRunCuts(run_id=run.id, cuts=merged, set_by=by, set_at=now, comment=comment))
    else:
        own.cuts, own.set_by, own.set_at, own.comment = merged, by, now, comment
    session.flush()
    reevaluate(session, settings, [run.number], now=now)
    return cuts


# -- evaluating -------------------------------------------------------------------------


@dataclass
class _RunChecks:
    """Evaluates declared checks on one run's merged histograms."""

    settings: Settings
    hists: Mapping[str, Hist]
    cuts: Cuts
    references: References
    _statuses: dict[tuple[str, tuple[int, ...]], PmtStatus] = field(default_factory=dict)

    def result(self, spec: CheckSpec) -> tuple[CheckResult, str | None]:
        """The check's result and its reference's runs ('1230', '1221-1230')."""
        try:
            return self.evaluate(spec)
        except NoReference as exc:
            return _unevaluated(spec, spec.on_empty, f"no reference: {exc}"), None
        except (CheckError, ValueError) as exc:
            return _unevaluated(spec, Verdict.WARNING, f"not evaluated: {exc}"), None

    def evaluate(self, spec: CheckSpec) -> tuple[CheckResult, str | None]:
        n_events = self.settings.dqm.n_events_histogram
        status_kind = spec.kind in STATUS_KINDS
        needed = (spec.histogram, n_events) if status_kind else (spec.histogram,)
        missing = [name for name in needed if name not in self.hists]
        if missing:
            reason = f"{' and '.join(missing)} not in the run's merged histograms"
            return _unevaluated(spec, Verdict.BAD, reason), None
        resolved = None
        if spec.kind in REFERENCE_KINDS:
            assert spec.reference is not None  # the check file requires one
            resolved = self.references.histograms(spec.reference, needed)
        label = None if resolved is None else resolved[spec.histogram].label
        if not status_kind:
            ref = None if resolved is None else resolved[spec.histogram].hist
            return evaluate_histogram(spec, self.hists[spec.histogram], ref), label
        status = self.status(self.hists, spec.histogram, ())
        ref_status = None
        if resolved is not None:
            ref_hists = {name: r.hist for name, r in resolved.items()}
            ref_status = self.status(ref_hists, spec.histogram, resolved[n_events].runs)
        return evaluate_status(spec, status, ref_status), label

    def status(self, hists: Mapping[str, Hist], name: str, runs: tuple[int, ...]) -> PmtStatus:
        if (name, runs) not in self._statuses:
            n_events = hists[self.settings.dqm.n_events_histogram]
            self._statuses[(name, runs)] = status_from_hists(hists[name], n_events, self.cuts)
        return self._statuses[(name, runs)]


def _unevaluated(spec: CheckSpec, verdict: Verdict, reason: str) -> CheckResult:
    return CheckResult(
        spec.histogram, spec.name, spec.kind, verdict, f"{reason} ({verdict})", {}, spec.shadow
    )


def evaluate_run(
    session: Session,
    settings: Settings,
    run: Run,
    merge: DqmMerge,
    *,
    hists: Mapping[str, Hist] | None = None,
    now: dt.datetime | None = None,
) -> DqmRunQuality:
    """Judge a run on one of its merges (its histograms read unless given); see above."""
    now = now or utcnow()
    problems: list[str] = []
    if hists is None:
        merged = read_merged_file(merge.url, cache=output_cache(settings))
        hists = merged.hists
        problems += [str(e["reason"]) for e in merged.errors if not merged.readable]
    try:
        cuts = run_cuts(session, settings, run)
    except CutsError as exc:
        problems.append(f"PMT cuts: {exc} (the default cuts are used)")
        cuts = DEFAULT_CUTS
    status = store_pmt_status(session, settings, run, merge, hists, cuts, now)
    specs: list[CheckSpec] = []
    if settings.dqm.checks:
        try:
            specs = load_checks(settings.dqm.checks)
        except CheckSpecError as exc:
            problems.append(f"check file: {exc}")
    checks = _RunChecks(settings, hists, cuts, References(session, run, output_cache(settings)))
    evaluated = [checks.result(spec) for spec in specs]
    _store_results(session, run, merge, evaluated, now)
    results = [result for result, _ in evaluated]
    quality = _store_quality(session, run, merge, results, problems, now)
    values = trend_values(run, merge, hists, status, results, quality.verdict, settings.dqm.trends)
    store_trends(session, run, values, now)
    session.flush()
    return quality


def store_pmt_status(
    session: Session,
    settings: Settings,
    run: Run,
    merge: DqmMerge,
    hists: Mapping[str, Hist],
    cuts: Cuts,
    now: dt.datetime,
) -> PmtStatus | None:
    """Classify the run's PMTs and store it; None (nothing stored) without the histograms."""
    names = (settings.dqm.pmt_hits_histogram, settings.dqm.n_events_histogram)
    if not all(name in hists for name in names):
        return None
    try:
        status = status_from_hists(hists[names[0]], hists[names[1]], cuts)
    except ValueError as exc:
        log.warning("run %d: no PMT status: %s", run.number, exc)
        return None
    row = session.get(DqmPmtStatus, run.id) or DqmPmtStatus(run_id=run.id)
    fill_pmt_status(row, merge.id, status, cuts, now)
    session.add(row)
    return status


def fill_pmt_status(
    row: DqmPmtStatus, merge_id: int, status: PmtStatus, cuts: Cuts, now: dt.datetime
) -> None:
    """Store ``status`` in ``row``: the arrays as bytes, the counts and cuts as JSON."""
    row.merge_id = merge_id
    row.n_events = status.n_events or 0
    row.cuts = {k: float(v) for k, v in vars(cuts).items()}
    row.counts = {cls.value: n for cls, n in status.counts().items()}
    row.fractions = status.fraction.astype(np.float32).tobytes()
    row.classes = status.codes.astype(np.int8).tobytes()
    row.evaluated_at = now


def _store_results(
    session: Session,
    run: Run,
    merge: DqmMerge,
    evaluated: Iterable[tuple[CheckResult, str | None]],
    now: dt.datetime,
) -> None:
    session.execute(sa.delete(DqmCheckResult).where(DqmCheckResult.run_id == run.id))
    session.add_all(
        DqmCheckResult(
            run_id=run.id,
            merge_id=merge.id,
            key=result.key,
            histogram=result.histogram,
            check=result.check,
            kind=result.kind,
            verdict=result.verdict,
            reason=result.reason,
            values=dict(result.values),
            shadow=result.shadow,
            reference=reference,
            evaluated_at=now,
        )
        for result, reference in evaluated
    )


def _store_quality(
    session: Session,
    run: Run,
    merge: DqmMerge,
    results: Sequence[CheckResult],
    problems: Sequence[str],
    now: dt.datetime,
) -> DqmRunQuality:
    verdict = run_verdict(results)
    if problems and verdict is Verdict.GOOD:
        verdict = Verdict.WARNING
    row = session.get(DqmRunQuality, run.id) or DqmRunQuality(run_id=run.id)
    row.merge_id, row.final, row.evaluated_at = merge.id, merge.final, now
    row.verdict = verdict
    row.reason = verdict_reason(results, problems)
    session.add(row)
    return row


def verdict_reason(results: Sequence[CheckResult], problems: Sequence[str] = ()) -> str:
    """One line: the problems, then the worst non-shadow results by key and reason."""
    counted = [r for r in results if not r.shadow]
    worst = sorted(
        (r for r in counted if r.verdict is not Verdict.GOOD),
        key=lambda r: -r.verdict.severity,
    )
    parts = list(problems) + [f"{r.key}: {r.reason}" for r in worst[:REASONS_SHOWN]]
    if len(worst) > REASONS_SHOWN:
        parts.append(f"and {len(worst) - REASONS_SHOWN} more")
    if not parts:
        return f"{len(counted)} checks good" if counted else "no checks declared"
    return "; ".join(parts)


def reevaluate(
    session: Session,
    settings: Settings,
    run_numbers: Iterable[int],
    now: dt.datetime | None = None,
) -> list[DqmRunQuality]:
    """Judge past runs again on their latest merges, oldest first (so a window reference
    sees its runs' new verdicts); runs without a readable merge are left out."""
    qualities = []
    runs = session.scalars(
        sa.select(Run).where(Run.number.in_(set(run_numbers))).order_by(Run.number)
    )
    for run in runs:
        merge = latest_merge(session, run.id)
        if merge is not None:
            qualities.append(evaluate_run(session, settings, run, merge, now=now))
    return qualities


# -- PMT status over runs ---------------------------------------------------------------


def stored_status(row: DqmPmtStatus) -> PmtStatus:
    """A stored PMT status as the library's ``PmtStatus``."""
    values = dict(row.cuts)
    cuts = Cuts.from_mapping(_typed(values))
    codes = np.frombuffer(row.classes, dtype=np.int8).copy()
    fraction = np.frombuffer(row.fractions, dtype=np.float32).astype(np.float64)
    return PmtStatus(codes, fraction, row.n_events, cuts)


@dataclass(frozen=True)
class PmtPoint:
    """One PMT in one run: its fired fraction and class."""

    run: int
    fraction: float
    pmt_class: str


def pmt_history(
    session: Session,
    pmt_id: int,
    last: int = 50,
    stream: str | None = None,
    until: int | None = None,
) -> list[PmtPoint]:
    """A PMT's fraction and class in the ``last`` runs with a PMT status (up to run
    ``until``), oldest first."""
    query = (
        sa.select(Run.number, DqmPmtStatus)
        .join(DqmPmtStatus, DqmPmtStatus.run_id == Run.id)
        .order_by(Run.number.desc())
        .limit(last)
    )
    if stream is not None:
        query = query.where(Run.stream == stream)
    if until is not None:
        query = query.where(Run.number <= until)
    points = []
    for number, row in session.execute(query):
        status = stored_status(row)
        if 0 <= pmt_id < len(status):
            cls = CLASSES[int(status.codes[pmt_id])]
            points.append(PmtPoint(int(number), float(status.fraction[pmt_id]), cls.value))
    return sorted(points, key=lambda p: p.run)


@dataclass(frozen=True)
class StatusChanges:
    """PMTs whose class changed since a previous run."""

    previous_run: int
    changes: ClassChanges


def previous_good_run(session: Session, run: Run) -> Run | None:
    """The latest run of the stream before ``run`` with a final GOOD verdict and PMT status."""
    query = (
        sa.select(Run)
        .join(DqmRunQuality, DqmRunQuality.run_id == Run.id)
        .join(DqmPmtStatus, DqmPmtStatus.run_id == Run.id)
        .where(Run.stream == run.stream, Run.number < run.number)
        .where(DqmRunQuality.final.is_(True), DqmRunQuality.verdict == Verdict.GOOD)
        .order_by(Run.number.desc())
        .limit(1)
    )
    return session.scalar(query)


def changed_since_previous_good(session: Session, run: Run) -> StatusChanges | None:
    """The run's PMTs whose class changed since the previous good run (None: no status of
    this run, no such run, or another PMT count)."""
    current = session.get(DqmPmtStatus, run.id)
    previous = previous_good_run(session, run)
    if current is None or previous is None:
        return None
    before = session.get_one(DqmPmtStatus, previous.id)
    try:
        changes = changed_since(stored_status(before), stored_status(current))
    except ValueError:
        return None
    return StatusChanges(previous.number, changes)
