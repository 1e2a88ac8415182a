"""PMT status of a run: each PMT's fired fraction sorted into dead, hot, normal and other.

Pure (no I/O). The fired fraction of a PMT is the share of a run's events in which it
fired: the JUNO hist step's ``pmt_hits`` divided by ``n_events`` (docs/juno.md). With the
``Cuts`` (fractions, not percent):

- DEAD: fraction < ``dead``;  HOT: fraction > ``hot``;
- NORMAL: ``normal_low`` ≤ fraction ≤ ``normal_high``;  OTHER: anything in between;
- UNKNOWN: the run has fewer than ``min_events`` events, so no PMT is classified.

Why a floor on events rather than a per-PMT statistical margin: every cut of a detector
is only meaningful when a fraction can be measured to well below the width between cuts
(1/n_events), and a run either has that or not. A per-PMT margin would instead move PMTs
into and out of OTHER as the run grows, which reads as class changes that are not there.
The default floor, 1,000 events, resolves the default cuts (1 % and 5 %) to 0.1 % and
expects 10 firings at the dead cut. JUNO's narrow test band (9.32-9.42 %, 0.1 % wide) is
only meaningful once the binomial spread of a normal PMT (0.03 % at 10⁶ events) is well
inside it, so ``JUNO_TEST_CUTS`` asks for 10⁶ events, about 17 minutes of JUNO data.

Classes are stored as small integer codes (``CODES``) so that 17,612 PMTs are classified
and compared with a few numpy operations.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from runwatch.dqm.histogram import Hist

CodeArray = npt.NDArray[np.int8]


class PmtClass(enum.StrEnum):
    NORMAL = "normal"
    OTHER = "other"  # between the dead or hot cut and the normal band
    DEAD = "dead"
    HOT = "hot"
    UNKNOWN = "unknown"  # too few events in the run to tell


CLASSES: tuple[PmtClass, ...] = tuple(PmtClass)
"""The classes in code order: ``CLASSES[code]`` is the class of an entry of ``codes``."""
CODES: dict[PmtClass, int] = {cls: code for code, cls in enumerate(CLASSES)}


class CutsError(ValueError):
    """Cuts that cannot classify: not ordered 0 ≤ dead < normal_low ≤ normal_high < hot ≤ 1."""


@dataclass(frozen=True)
class Cuts:
    """Fired-fraction cuts of a detector (fractions of events, 0.01 is 1 %).

    Checked on construction; ``override`` gives a run's cuts from the detector's.
    """

    dead: float = 0.01
    hot: float = 0.99
    normal_low: float = 0.05
    normal_high: float = 0.15
    min_events: int = 1000

    def __post_init__(self) -> None:
        for name in ("dead", "hot", "normal_low", "normal_high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CutsError(f"{name}: expected a fraction between 0 and 1, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise CutsError(f"{name}: {value} is not a fraction between 0 and 1")
        if isinstance(self.min_events, bool) or not isinstance(self.min_events, int):
            raise CutsError(f"min_events: expected a whole number, got {self.min_events!r}")
        if self.min_events < 1:
            raise CutsError(f"min_events: expected at least 1, got {self.min_events}")
        order = [
            ("dead", self.dead, "<", "normal_low", self.normal_low),
            ("normal_low", self.normal_low, "≤", "normal_high", self.normal_high),
            ("normal_high", self.normal_high, "<", "hot", self.hot),
        ]
        for left, low, op, right, high in order:
            if low > high or (op == "<" and low == high):
                raise CutsError(
                    f"{left} ({low}) must be {op} {right} ({high}): "
                    "cuts are ordered 0 ≤ dead < normal_low ≤ normal_high < hot ≤ 1"
                )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: Cuts | None = None) -> Cuts:
        """Cuts from configuration (e.g. a detector's TOML table), over ``base``'s values."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CutsError(
                f"unknown cut {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(base or cls(), **dict(values))

    def override(self, **values: Any) -> Cuts:
        """These cuts with some replaced (a run's override of its detector's cuts), checked."""
        return Cuts.from_mapping(values, base=self)


DEFAULT_CUTS = Cuts()
JUNO_TEST_CUTS = Cuts(
    dead=0.06, hot=0.13, normal_low=0.0932, normal_high=0.0942, min_events=1_000_000
)
"""The cuts JUNO's DQM used in its tests: dead < 6 %, hot > 13 %, normal 9.32-9.42 %."""


@dataclass(frozen=True, eq=False)
class PmtStatus:
    """The class of every PMT of a run (index = PMT id), and what it was derived from."""

    codes: CodeArray
    fraction: npt.NDArray[np.float64]
    n_events: int | None
    cuts: Cuts

    def __len__(self) -> int:
        return len(self.codes)

    def counts(self) -> dict[PmtClass, int]:
        """PMTs per class, every class present (0 when none)."""
        tally = np.bincount(self.codes, minlength=len(CLASSES))
        return {cls: int(tally[code]) for cls, code in CODES.items()}

    def ids(self, cls: PmtClass) -> npt.NDArray[np.int64]:
        """The PMT ids of one class, increasing."""
        return np.flatnonzero(self.codes == CODES[cls])

    def classes(self) -> list[PmtClass]:
        """One ``PmtClass`` per PMT (for display; use ``codes`` for arithmetic)."""
        return [CLASSES[c] for c in self.codes.tolist()]


def classify(fraction: npt.ArrayLike, cuts: Cuts = DEFAULT_CUTS) -> CodeArray:
    """Class codes of fired fractions; NaN (a PMT never read out) is UNKNOWN."""
    f = np.asarray(fraction, dtype=np.float64)
    if np.any((f < 0) | (f > 1)):
        raise ValueError("fired fractions must be between 0 and 1")
    codes = np.full(f.shape, CODES[PmtClass.OTHER], dtype=np.int8)
    codes[(f >= cuts.normal_low) & (f <= cuts.normal_high)] = CODES[PmtClass.NORMAL]
    codes[f < cuts.dead] = CODES[PmtClass.DEAD]
    codes[f > cuts.hot] = CODES[PmtClass.HOT]
    codes[np.isnan(f)] = CODES[PmtClass.UNKNOWN]
    return codes


def status_from_fraction(
    fraction: npt.ArrayLike, cuts: Cuts = DEFAULT_CUTS, n_events: int | None = None
) -> PmtStatus:
    """Status from fired fractions; with ``n_events`` below ``cuts.min_events`` all UNKNOWN.

    Without ``n_events`` the fractions are trusted as they are (the caller knows them to
    be well measured).
    """
    f = np.asarray(fraction, dtype=np.float64)
    if f.ndim != 1:
        raise ValueError(f"expected one fraction per PMT (1D), got shape {f.shape}")
    if n_events is not None and n_events < cuts.min_events:
        codes = np.full(f.shape, CODES[PmtClass.UNKNOWN], dtype=np.int8)
    else:
        codes = classify(f, cuts)
    return PmtStatus(codes, f, n_events, cuts)


def pmt_status(hits: npt.ArrayLike, n_events: int, cuts: Cuts = DEFAULT_CUTS) -> PmtStatus:
    """Status from per-PMT counts of events in which each fired, out of ``n_events``."""
    counts = np.asarray(hits, dtype=np.float64)
    if n_events < 0:
        raise ValueError(f"n_events must not be negative, got {n_events}")
    if np.any(counts < 0) or (n_events > 0 and np.any(counts > n_events)):
        raise ValueError(f"a PMT's count of events is outside 0..{n_events}")
    fraction = np.full(counts.shape, np.nan) if n_events == 0 else counts / n_events
    return status_from_fraction(fraction, cuts, n_events)


def status_from_hists(pmt_hits: Hist, n_events: Hist, cuts: Cuts = DEFAULT_CUTS) -> PmtStatus:
    """Status from the JUNO hist step's ``pmt_hits`` and ``n_events`` histograms of a run.

    ``pmt_hits`` bin i (flow bins left out) is PMT id i; ``n_events`` is the total content
    of its histogram, flow bins included.
    """
    if len(pmt_hits.axes) != 1:
        raise ValueError(f"{pmt_hits.name}: expected a 1D histogram of one bin per PMT")
    total = float(n_events.sumw.sum())
    if total != round(total):
        raise ValueError(f"{n_events.name}: expected a whole number of events, got {total}")
    return pmt_status(pmt_hits.values(), round(total), cuts)


@dataclass(frozen=True, eq=False)
class ClassChanges:
    """PMTs whose class changed between two runs: ``ids[i]`` went ``old[i]`` → ``new[i]``."""

    ids: npt.NDArray[np.int64]
    old: CodeArray
    new: CodeArray

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[int, PmtClass, PmtClass]]:
        for pmt, old, new in zip(
            self.ids.tolist(), self.old.tolist(), self.new.tolist(), strict=True
        ):
            yield pmt, CLASSES[old], CLASSES[new]

    def became(self, cls: PmtClass) -> npt.NDArray[np.int64]:
        """PMTs that are ``cls`` now and were something known (not UNKNOWN) before.

        A PMT coming out of UNKNOWN is a first measurement, not a change of the detector,
        so it is listed as a change but not counted as a new dead or hot PMT.
        """
        mask = (self.new == CODES[cls]) & (self.old != CODES[PmtClass.UNKNOWN])
        became: npt.NDArray[np.int64] = self.ids[mask]
        return became


def changed_since(previous: PmtStatus | CodeArray, current: PmtStatus | CodeArray) -> ClassChanges:
    """The PMTs whose class differs between ``previous`` and ``current`` (same PMT count)."""
    old = previous.codes if isinstance(previous, PmtStatus) else np.asarray(previous, np.int8)
    new = current.codes if isinstance(current, PmtStatus) else np.asarray(current, np.int8)
    if old.shape != new.shape:
        raise ValueError(f"{len(old)} PMTs before and {len(new)} now: not the same detector")
    ids = np.flatnonzero(old != new)
    return ClassChanges(ids, old[ids], new[ids])
