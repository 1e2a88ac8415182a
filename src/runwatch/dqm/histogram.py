"""One histogram as plain data (``Hist``), its addition, and ROOT file I/O.

A ``Hist`` holds what ROOT keeps for a TH1, TH2 or TProfile: the bin sums including the
under- and overflow bins, the entries and the global sums ROOT derives the mean and RMS
from. Adding two of them is exactly what ROOT's ``TH1::Add``/``hadd`` does for histograms
of equal binning, so a merged histogram from runwatch and one from ``hadd`` agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Family = Literal["TH1", "TH2", "TProfile"]

TH1_CLASSES = frozenset(f"TH1{t}" for t in "CSIFD")
TH2_CLASSES = frozenset(f"TH2{t}" for t in "CSIFD")
PROFILE_CLASSES = frozenset({"TProfile"})
SUPPORTED_CLASSES = TH1_CLASSES | TH2_CLASSES | PROFILE_CLASSES

STATS_KEYS: dict[Family, tuple[str, ...]] = {
    "TH1": ("fTsumw", "fTsumw2", "fTsumwx", "fTsumwx2"),
    "TH2": ("fTsumw", "fTsumw2", "fTsumwx", "fTsumwx2", "fTsumwy", "fTsumwy2", "fTsumwxy"),
    "TProfile": ("fTsumw", "fTsumw2", "fTsumwx", "fTsumwx2", "fTsumwy", "fTsumwy2"),
}
"""The global sums ROOT keeps per family, under ROOT's own member names."""


class IncompatibleHistograms(ValueError):
    """Two histograms cannot be added: different class family or different binning."""


def family_of(classname: str) -> Family:
    """``TH1``, ``TH2`` or ``TProfile`` for a supported ROOT class name; ValueError otherwise."""
    if classname in TH1_CLASSES:
        return "TH1"
    if classname in TH2_CLASSES:
        return "TH2"
    if classname in PROFILE_CLASSES:
        return "TProfile"
    raise ValueError(f"unsupported histogram class {classname!r}")


@dataclass(frozen=True, eq=False)
class Axis:
    """One axis: its bin edges (``nbins + 1``, increasing), title and optional bin labels.

    ``labels`` are ROOT's alphanumeric bin labels, for bins 1..nbins in order (``None``
    when the axis has none).
    """

    edges: FloatArray
    title: str = ""
    labels: tuple[str, ...] | None = None

    @property
    def nbins(self) -> int:
        return len(self.edges) - 1

    @property
    def regular(self) -> bool:
        """Equal-width bins: ROOT stores only (nbins, min, max) for such an axis."""
        widths = np.diff(self.edges)
        return bool(np.allclose(widths, widths[0], rtol=1e-9, atol=0.0))

    @classmethod
    def regular_axis(cls, nbins: int, low: float, high: float, title: str = "") -> Axis:
        """``nbins`` equal bins from ``low`` to ``high``, with edges computed as ROOT does."""
        return cls(np.linspace(low, high, nbins + 1), title)

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": self.edges.tolist(),
            "title": self.title,
            "labels": None if self.labels is None else list(self.labels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Axis:
        labels = data.get("labels")
        return cls(
            np.asarray(data["edges"], dtype=np.float64),
            str(data.get("title", "")),
            None if labels is None else tuple(str(label) for label in labels),
        )


@dataclass(eq=False)
class Hist:
    """A TH1, TH2 or TProfile as plain data.

    Arrays are float64 whatever ROOT stored, and include the flow bins: shape ``(nx + 2,)``
    for one axis, ``(nx + 2, ny + 2)`` indexed ``[ix, iy]`` for two, index 0 the underflow.

    - ``sumw``: the sum of weights per bin (a TH1's content; a TProfile's ``fBinEntries``).
    - ``sumw2``: the sum of squared weights per bin (ROOT's ``fSumw2``, or for a TProfile
      ``fBinSumw2``); equal to ``sumw`` for unweighted fills, as ROOT assumes when absent.
    - ``sumwy``, ``sumwy2``: TProfile only, the sums of w·y and w·y² per bin (ROOT's
      ``fArray`` and ``fSumw2``); the bin's mean is ``sumwy / sumw``.
    - ``entries``: ROOT's ``fEntries``; ``stats``: the global sums (``STATS_KEYS``) ROOT
      computes the mean and RMS from, under ROOT's member names.

    ``classname`` is the class read (``TH1F`` ...); additions check the ``family`` only,
    and ``write_histograms`` writes double precision (TH1D, TH2D, TProfile).
    """

    name: str
    title: str
    classname: str
    axes: tuple[Axis, ...]
    sumw: FloatArray
    sumw2: FloatArray
    entries: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    sumwy: FloatArray | None = None
    sumwy2: FloatArray | None = None

    @property
    def family(self) -> Family:
        return family_of(self.classname)

    @property
    def is_profile(self) -> bool:
        return self.family == "TProfile"

    def values(self, flow: bool = False) -> FloatArray:
        """Bin contents; for a TProfile the mean of y per bin (0 where the bin is empty)."""
        if self.sumwy is not None:
            content = np.divide(
                self.sumwy, self.sumw, out=np.zeros_like(self.sumwy), where=self.sumw != 0
            )
        else:
            content = self.sumw
        return content if flow else content[tuple(slice(1, -1) for _ in self.axes)]

    def copy(self) -> Hist:
        """A deep copy: adding into it leaves this histogram unchanged."""
        return Hist(
            self.name,
            self.title,
            self.classname,
            self.axes,
            self.sumw.copy(),
            self.sumw2.copy(),
            self.entries,
            dict(self.stats),
            None if self.sumwy is None else self.sumwy.copy(),
            None if self.sumwy2 is None else self.sumwy2.copy(),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; ``Hist.from_dict`` gives back an equal histogram."""
        return {
            "name": self.name,
            "title": self.title,
            "classname": self.classname,
            "axes": [axis.to_dict() for axis in self.axes],
            "sumw": self.sumw.tolist(),
            "sumw2": self.sumw2.tolist(),
            "entries": self.entries,
            "stats": dict(self.stats),
            "sumwy": None if self.sumwy is None else self.sumwy.tolist(),
            "sumwy2": None if self.sumwy2 is None else self.sumwy2.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hist:
        def array(value: Any) -> FloatArray:
            return np.asarray(value, dtype=np.float64)

        return cls(
            name=str(data["name"]),
            title=str(data.get("title", "")),
            classname=str(data["classname"]),
            axes=tuple(Axis.from_dict(a) for a in data["axes"]),
            sumw=array(data["sumw"]),
            sumw2=array(data["sumw2"]),
            entries=float(data.get("entries", 0.0)),
            stats={str(k): float(v) for k, v in data.get("stats", {}).items()},
            sumwy=None if data.get("sumwy") is None else array(data["sumwy"]),
            sumwy2=None if data.get("sumwy2") is None else array(data["sumwy2"]),
        )


def check_compatible(a: Hist, b: Hist) -> None:
    """Raise ``IncompatibleHistograms`` unless ``a`` and ``b`` can be added bin by bin."""
    if a.family != b.family:
        raise IncompatibleHistograms(
            f"{a.name!r}: cannot add a {b.classname} to a {a.classname} (different class family)"
        )
    for index, (axis_a, axis_b) in enumerate(zip(a.axes, b.axes, strict=True)):
        where = f"{a.name!r}: axis {'xyz'[index]}"
        if axis_a.nbins != axis_b.nbins:
            raise IncompatibleHistograms(
                f"{where} has {axis_a.nbins} bins in one and {axis_b.nbins} in the other"
            )
        if not np.array_equal(axis_a.edges, axis_b.edges):
            differ = np.flatnonzero(axis_a.edges != axis_b.edges)
            first = int(differ[0])
            raise IncompatibleHistograms(
                f"{where} bin edges differ at {len(differ)} of {axis_a.nbins + 1} edges, "
                f"edge indices {first}..{int(differ[-1])} "
                f"(first: {float(axis_a.edges[first])!r} vs {float(axis_b.edges[first])!r})"
            )
        if axis_a.labels != axis_b.labels:
            raise IncompatibleHistograms(f"{where} bin labels differ")


def accumulate(into: Hist, other: Hist) -> None:
    """Add ``other`` into ``into`` in place, after ``check_compatible``.

    Entries and the global sums add, as in ROOT's ``hadd``; on an error ``into`` is unchanged.
    """
    check_compatible(into, other)
    into.sumw += other.sumw
    into.sumw2 += other.sumw2
    if into.sumwy is not None and other.sumwy is not None:
        into.sumwy += other.sumwy
    if into.sumwy2 is not None and other.sumwy2 is not None:
        into.sumwy2 += other.sumwy2
    into.entries += other.entries
    for key in STATS_KEYS[into.family]:
        into.stats[key] = into.stats.get(key, 0.0) + other.stats.get(key, 0.0)


def add(a: Hist, b: Hist) -> Hist:
    """A new histogram, ``a + b``; neither input changes."""
    total = a.copy()
    accumulate(total, b)
    return total


def bin_centres(axis: Axis) -> FloatArray:
    """Centres of every bin including the flow bins (whose centres are never used)."""
    centres = np.empty(axis.nbins + 2)
    centres[1:-1] = 0.5 * (axis.edges[:-1] + axis.edges[1:])
    centres[0], centres[-1] = axis.edges[0], axis.edges[-1]
    return centres


def stats_from_bins(hist: Hist) -> dict[str, float]:
    """The global sums recomputed from the in-range bins at their centres (``TH1::ResetStats``).

    For histograms built from arrays rather than filled entry by entry.
    """
    inner = tuple(slice(1, -1) for _ in hist.axes)
    w, w2 = hist.sumw[inner], hist.sumw2[inner]
    x = bin_centres(hist.axes[0])[1:-1]
    if hist.family == "TH2":
        y = bin_centres(hist.axes[1])[1:-1]
        wx, wy = w.sum(axis=1), w.sum(axis=0)
        return {
            "fTsumw": float(w.sum()),
            "fTsumw2": float(w2.sum()),
            "fTsumwx": float(wx @ x),
            "fTsumwx2": float(wx @ (x * x)),
            "fTsumwy": float(wy @ y),
            "fTsumwy2": float(wy @ (y * y)),
            "fTsumwxy": float(x @ w @ y),
        }
    stats = {
        "fTsumw": float(w.sum()),
        "fTsumw2": float(w2.sum()),
        "fTsumwx": float(w @ x),
        "fTsumwx2": float(w @ (x * x)),
    }
    if hist.sumwy is not None and hist.sumwy2 is not None:
        stats["fTsumwy"] = float(hist.sumwy[inner].sum())
        stats["fTsumwy2"] = float(hist.sumwy2[inner].sum())
    return stats
