"""Evaluating declared checks on a run's histograms and PMT status (no I/O).

``evaluate_histogram`` runs the histogram kinds (ks, chi2, entries, mean, rms,
bin_content) and ``evaluate_status`` the channel-status kinds (dead, hot, new_dead,
new_hot); each gives a ``CheckResult`` with a verdict, a one-line reason and the values
computed. The verdict: outside the ``bad`` limits BAD, else outside ``warning`` WARNING,
else GOOD. What cannot be measured has a result, never an exception:

- an empty histogram or reference, or a PMT status from too few events, gives the
  check's ``on_empty`` verdict (WARNING unless declared) with the reason;
- a histogram whose binning differs from its reference's is BAD: the comparison is
  impossible, and a changed binning is itself something the shifter must see.

A check that does not apply to the histogram (ks on a TProfile, a mean of a y axis a 1D
histogram lacks, bins outside the axis) is a mistake in the check file and raises
``CheckError``, so that it is fixed rather than shown as a verdict about the run.

``rolling_reference`` sums the histograms of recent good runs into one reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from runwatch.dqm.checkspec import COMPARISON_KINDS, CheckSpec
from runwatch.dqm.comparisons import ComparisonError, chi2_test, ks_test
from runwatch.dqm.histogram import (
    Hist,
    IncompatibleHistograms,
    accumulate,
    check_compatible,
    stats_from_bins,
)
from runwatch.dqm.pmtstatus import CODES, PmtClass, PmtStatus, changed_since
from runwatch.dqm.verdict import CheckResult, Verdict, run_verdict

__all__ = [
    "CheckError",
    "CheckResult",
    "Verdict",
    "evaluate_histogram",
    "evaluate_status",
    "grade",
    "rolling_reference",
    "run_verdict",
]

HISTOGRAM_KINDS = frozenset({"ks", "chi2", "entries", "mean", "rms", "bin_content"})
STATUS_KINDS = frozenset({"dead", "hot", "new_dead", "new_hot"})
LISTED_IDS = 10
"""PMT ids named in a reason; the full list is the status's, not the reason's."""


class CheckError(ValueError):
    """A check that cannot apply to the histogram it was given (a check-file mistake)."""


def grade(spec: CheckSpec, value: float) -> tuple[Verdict, str]:
    """The verdict of a value against the check's limits, and how it broke them."""
    for verdict, limits in ((Verdict.BAD, spec.bad), (Verdict.WARNING, spec.warning)):
        broken = None if limits is None else limits.broken(value)
        if broken is not None:
            return verdict, f"{broken} ({verdict})"
    return Verdict.GOOD, "(good)"


def _result(
    spec: CheckSpec, verdict: Verdict, reason: str, values: dict[str, float]
) -> CheckResult:
    return CheckResult(
        spec.histogram, spec.name, spec.kind, verdict, reason, values, shadow=spec.shadow
    )


def _graded(spec: CheckSpec, label: str, value: float, values: dict[str, float]) -> CheckResult:
    verdict, how = grade(spec, value)
    return _result(spec, verdict, f"{label}={value:.4g} {how}", values)


def _empty(spec: CheckSpec, reason: str) -> CheckResult:
    return _result(spec, spec.on_empty, f"{reason} ({spec.on_empty})", {})


# -- histogram checks -------------------------------------------------------------------


def evaluate_histogram(spec: CheckSpec, hist: Hist, reference: Hist | None = None) -> CheckResult:
    """Evaluate a histogram kind of check; ``reference`` is needed by ks and chi2."""
    if spec.kind not in HISTOGRAM_KINDS:
        raise CheckError(f"{spec.key}: a {spec.kind} check is evaluated on a PMT status")
    if len(hist.axes) > 2:
        raise CheckError(f"{spec.key}: only 1D and 2D histograms are checked")
    if spec.kind in COMPARISON_KINDS:
        return _compare(spec, hist, reference)
    if spec.kind == "entries":
        return _graded(spec, "entries", hist.entries, {"entries": hist.entries})
    if spec.kind == "bin_content":
        return _bin_content(spec, hist)
    return _moment(spec, hist)


def _compare(spec: CheckSpec, hist: Hist, reference: Hist | None) -> CheckResult:
    if reference is None:
        raise CheckError(f"{spec.key}: a {spec.kind} check needs a reference histogram")
    if hist.is_profile or reference.is_profile:
        raise CheckError(f"{spec.key}: {spec.kind} compares counts, not a TProfile's means")
    try:
        check_compatible(hist, reference)
    except IncompatibleHistograms as exc:
        return _result(spec, Verdict.BAD, f"binning differs from the reference: {exc}", {})
    inner = tuple(slice(1, -1) for _ in hist.axes)
    arrays = (hist.sumw[inner], hist.sumw2[inner], reference.sumw[inner], reference.sumw2[inner])
    try:
        if spec.kind == "ks":
            ks = ks_test(*arrays)
            values = {"p_value": ks.p_value, "distance": ks.distance, "z": ks.z}
            return _graded(spec, "KS p", ks.p_value, values)
        chi2 = chi2_test(*arrays)
    except ComparisonError as exc:
        if exc.problem in ("empty", "reference empty"):
            return _empty(spec, str(exc))
        return _result(spec, Verdict.BAD, f"{spec.kind} impossible: {exc}", {})
    values = {"p_value": chi2.p_value, "chi2": chi2.chi2, "ndf": float(chi2.ndf)}
    label = f"χ²/ndf={chi2.chi2:.4g}/{chi2.ndf} ({chi2.mode}) p"
    return _graded(spec, label, chi2.p_value, values)


def _moment(spec: CheckSpec, hist: Hist) -> CheckResult:
    """Mean or RMS (ROOT's standard deviation) of one axis, from the global sums."""
    if spec.axis == "y" and hist.family == "TH1":
        raise CheckError(f"{spec.key}: a 1D histogram has no y axis")
    stats = hist.stats if hist.stats.get("fTsumw", 0.0) > 0 else stats_from_bins(hist)
    sumw = stats.get("fTsumw", 0.0)
    if not sumw > 0:
        return _empty(spec, f"{spec.kind} undefined: no entries in range")
    moment = f"fTsumw{spec.axis}"
    mean = stats.get(moment, 0.0) / sumw
    rms = math.sqrt(max(stats.get(f"{moment}2", 0.0) / sumw - mean * mean, 0.0))
    values = {"mean": mean, "rms": rms, "sumw": sumw}
    label = spec.kind if spec.axis == "x" else f"{spec.kind} y"
    return _graded(spec, label, mean if spec.kind == "mean" else rms, values)


def _bin_content(spec: CheckSpec, hist: Hist) -> CheckResult:
    """Every bin of ``bins`` (x bins of a 2D histogram, all its y bins) within the limits."""
    nbins = hist.axes[0].nbins
    first, last = spec.bins if spec.bins is not None else (1, nbins)
    if last > nbins + 1:
        raise CheckError(f"{spec.key}: bins [{first}, {last}] beyond the overflow bin {nbins + 1}")
    content = hist.values(flow=True)[first : last + 1]
    if content.ndim == 2:
        content = content[:, 1:-1]
    values = {"min": float(content.min()), "max": float(content.max())}
    span = f"{first}..{last}"
    for verdict, limits in ((Verdict.BAD, spec.bad), (Verdict.WARNING, spec.warning)):
        if limits is None:
            continue
        low = content < (-math.inf if limits.min is None else limits.min)
        high = content > (math.inf if limits.max is None else limits.max)
        outside = low | high
        if outside.any():
            at = tuple(np.argwhere(outside)[0])
            how = f"< {limits.min:g}" if low[at] else f"> {limits.max:g}"
            reason = (
                f"{int(outside.sum())} of {outside.size} bins {span} outside the {verdict} "
                f"limits; first: bin {first + int(at[0])} = {content[at]:.4g} {how} ({verdict})"
            )
            return _result(spec, verdict, reason, values)
    return _result(spec, Verdict.GOOD, f"bins {span} within limits (good)", values)


# -- channel-status checks --------------------------------------------------------------


def evaluate_status(
    spec: CheckSpec, status: PmtStatus, reference: PmtStatus | None = None
) -> CheckResult:
    """Evaluate a channel-status check; new_dead and new_hot need the reference's status."""
    if spec.kind not in STATUS_KINDS:
        raise CheckError(f"{spec.key}: a {spec.kind} check is evaluated on a histogram")
    cls = PmtClass.DEAD if spec.kind in ("dead", "new_dead") else PmtClass.HOT
    if _unclassified(status):
        return _empty(spec, f"PMT status unknown: {_events(status)}")
    if spec.kind in ("dead", "hot"):
        ids = status.ids(cls)
        label = f"{cls} PMTs"
    else:
        if reference is None:
            raise CheckError(f"{spec.key}: a {spec.kind} check needs the reference's status")
        if _unclassified(reference):
            return _empty(spec, f"reference PMT status unknown: {_events(reference)}")
        ids = changed_since(reference, status).became(cls)
        label = f"new {cls} PMTs since the reference"
    verdict, how = grade(spec, float(len(ids)))
    listed = ", ".join(str(i) for i in ids[:LISTED_IDS].tolist())
    more = "" if len(ids) <= LISTED_IDS else f", … ({len(ids) - LISTED_IDS} more)"
    detail = f": {listed}{more}" if len(ids) else ""
    reason = f"{len(ids)} {label} {how}{detail}"
    return _result(spec, verdict, reason, {"count": float(len(ids))})


def _unclassified(status: PmtStatus) -> bool:
    return not np.any(status.codes != CODES[PmtClass.UNKNOWN])


def _events(status: PmtStatus) -> str:
    if status.n_events is None:
        return "no fired fractions"
    return f"{status.n_events} events < {status.cuts.min_events} needed"


# -- references -------------------------------------------------------------------------


def rolling_reference(hists: Sequence[Hist], scale_to: float | None = None) -> Hist:
    """The sum of recent good runs' histograms, as one reference for comparisons.

    A sum keeps the runs' true statistics, so a χ² test stays "UU" and the tests'
    effective entries are right; the tests normalise each side themselves. With
    ``scale_to`` the sum is scaled to that in-range integral (for drawing over a run's
    histogram), its variances by the square, so the χ² test treats it as weighted ("WW").
    """
    if not hists:
        raise ValueError("a rolling reference needs at least one run's histogram")
    total = hists[0].copy()
    for hist in hists[1:]:
        accumulate(total, hist)
    if scale_to is not None:
        if total.is_profile:
            raise ValueError(f"{total.name}: a TProfile's means are not scaled")
        inner = tuple(slice(1, -1) for _ in total.axes)
        integral = float(total.sumw[inner].sum())
        if integral <= 0:
            raise ValueError(f"{total.name}: cannot scale an empty reference")
        factor = scale_to / integral
        total.sumw *= factor
        total.sumw2 *= factor * factor
        # Every global sum is linear in the weights except fTsumw2, the sum of their squares.
        total.stats = {
            k: v * (factor * factor if k == "fTsumw2" else factor) for k, v in total.stats.items()
        }
    return total
