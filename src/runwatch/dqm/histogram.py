"""One histogram as plain data (``Hist``), its addition, and ROOT file I/O.

A ``Hist`` holds what ROOT keeps for a TH1, TH2 or TProfile: the bin sums including the
under- and overflow bins, the entries and the global sums ROOT derives the mean and RMS
from. Adding two of them is exactly what ROOT's ``TH1::Add``/``hadd`` does for histograms
of equal binning, so a merged histogram from runwatch and one from ``hadd`` agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import uproot
import uproot.writing.identify as build

from runwatch.storage.atomic import written_atomically

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


META_KEY = "runwatch_meta"
"""The TObjString (JSON text) in which ``write_histograms`` stores a file's ``meta``."""


class HistogramFileError(Exception):
    """A file that is not a readable ROOT file of histograms: missing, corrupt or truncated."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


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


@dataclass
class HistFile:
    """What ``read_file`` found in one ROOT file.

    ``hists`` by path in the file (``dir/name``, no cycle); ``meta`` the file's
    ``write_histograms`` metadata (``None`` if it has none); ``skipped`` maps each object
    left out to why (an unsupported class, such as TH3 or TProfile2D).
    """

    hists: dict[str, Hist]
    meta: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)


def read_histograms(path: str | Path, names: Collection[str] | None = None) -> dict[str, Hist]:
    """Every TH1, TH2 and TProfile in a ROOT file, sub-directories included, by path.

    ``names`` restricts the result to those paths. Raises ``HistogramFileError`` for a
    file that cannot be read; objects of other classes are skipped (``read_file`` says which).
    """
    return read_file(path, names).hists


def read_file(
    path: str | Path, names: Collection[str] | None = None, *, fast: bool = True
) -> HistFile:
    """The histograms, metadata and skipped objects of a ROOT file; see ``read_histograms``.

    The fast decoder (``fastread``) reads what it knows; uproot reads anything else, and
    the whole file when the decoder cannot, so that uproot says what is wrong with it.
    ``fast=False`` reads everything with uproot's object model (to compare the two).
    """
    # Imported here: fastread builds on this module's types.
    from runwatch.dqm import fastread

    wanted = None if names is None else set(names)
    if not fast:
        return _read_with_uproot(path, wanted, None)
    try:
        decoded = fastread.read_fast(path, META_KEY, wanted)
    except Exception:
        return _read_with_uproot(path, wanted, None)
    result = HistFile(decoded.hists, skipped=_skip_notes(decoded.skipped))
    if META_KEY in decoded.strings:
        result.meta = _parse_meta(path, decoded.strings[META_KEY])
    if decoded.fallback:
        result.hists.update(_read_with_uproot(path, wanted, set(decoded.fallback)).hists)
    return result


def _skip_notes(classes: Mapping[str, str]) -> dict[str, str]:
    return {
        key: f"unsupported class {classname}"
        for key, classname in classes.items()
        if classname.startswith(("TH", "TProfile"))
    }


def _read_with_uproot(path: str | Path, wanted: set[str] | None, only: set[str] | None) -> HistFile:
    """uproot's full object model: every object (or just ``only``) of the file."""
    with _reading(path):
        with open(path, "rb") as stream:
            magic = stream.read(4)
        if magic != b"root":
            raise HistogramFileError(path, f"not a ROOT file (it starts with {magic!r})")
        file = uproot.open(path)
        size, end = os.path.getsize(path), file.file.fEND
    if size < end:
        file.close()  # ROOT's own check: the header records where the file ends
        raise HistogramFileError(path, f"truncated: {size} bytes, its header says {end}")
    with file:
        result = HistFile({})
        with _reading(path):
            objects = _latest_cycles(file)
        skipped = {}
        for key, classname in objects.items():
            if only is not None and key not in only:
                continue
            if key == META_KEY:
                result.meta = _parse_meta(path, _fetch(file, key))
            elif wanted is not None and key not in wanted:
                continue
            elif classname in SUPPORTED_CLASSES:
                result.hists[key] = _convert(path, key, _fetch(file, key))
            else:
                skipped[key] = classname
        result.skipped = _skip_notes(skipped)
        return result


@contextmanager
def _reading(path: str | Path) -> Iterator[None]:
    """Turn uproot's errors on a damaged file into one ``HistogramFileError``."""
    try:
        yield
    except HistogramFileError:
        raise
    except FileNotFoundError:
        raise HistogramFileError(path, "no such file") from None
    except Exception as error:
        # uproot reports a damaged file through many exception types (ValueError, OSError,
        # zlib/lz4 errors, DeserializationError, ...): at this edge all of them mean the same.
        reason = " ".join(str(error).split())  # uproot's messages span several lines
        raise HistogramFileError(path, f"not a readable ROOT file ({reason})") from error


def _convert(path: str | Path, key: str, obj: Any) -> Hist:
    try:
        return hist_from_uproot(obj)
    except ValueError as error:
        raise HistogramFileError(path, f"{key}: {error}") from None


def _fetch(file: Any, key: str) -> Any:
    with _reading(file.file_path):
        return file[key]


def _latest_cycles(file: Any) -> dict[str, str]:
    """``{path: classname}`` for the highest cycle of every object (ROOT's own choice)."""
    best: dict[str, tuple[int, str]] = {}
    for key, classname in file.classnames(recursive=True, cycle=True).items():
        name, _, cycle = key.rpartition(";")
        if name not in best or int(cycle) > best[name][0]:
            best[name] = (int(cycle), classname)
    return {name: classname for name, (_, classname) in best.items()}


def _parse_meta(path: str | Path, text: Any) -> dict[str, Any]:
    try:
        meta = json.loads(str(text))
    except ValueError as error:
        raise HistogramFileError(path, f"{META_KEY} is not JSON ({error})") from None
    if not isinstance(meta, dict):
        raise HistogramFileError(path, f"{META_KEY} is not a JSON object")
    return meta


def _array(model: Any) -> FloatArray:
    return np.asarray(model, dtype=np.float64)


def _contents(obj: Any) -> FloatArray:
    """The bin array: the TArrayF/TArrayD a histogram class derives from (TProfile via TH1D)."""
    while not obj.classname.startswith("TArray"):
        obj = obj.bases[-1]
    return _array(obj)


def _axis_from_uproot(taxis: Any) -> Axis:
    nbins = int(taxis.member("fNbins"))
    edges = _array(taxis.member("fXbins"))
    if len(edges) != nbins + 1:  # a regular axis stores only its range
        edges = np.linspace(taxis.member("fXmin"), taxis.member("fXmax"), nbins + 1)
    labels = taxis.member("fLabels")
    label_tuple = None
    if labels is not None and len(labels):
        by_bin = {int(label.member("@fUniqueID")): str(label) for label in labels}
        label_tuple = tuple(by_bin.get(i, "") for i in range(1, nbins + 1))
    return Axis(edges, str(taxis.member("fTitle")), label_tuple)


def regrid(flat: FloatArray, axes: tuple[Axis, ...]) -> FloatArray:
    """ROOT's flat bin order (x fastest) as an ``[ix, iy]`` array; ValueError on a size mismatch."""
    shape = tuple(axis.nbins + 2 for axis in axes)
    if flat.size != np.prod(shape):
        bins = " x ".join(str(n) for n in shape)
        raise ValueError(f"{flat.size} bin values for {bins} bins (flow bins included)")
    if len(axes) == 1:
        return flat
    return flat.reshape(shape[::-1]).T.copy()


def hist_from_uproot(obj: Any) -> Hist:
    """A ``Hist`` from uproot's model of a TH1, TH2 or TProfile."""
    classname = str(obj.classname)
    family = family_of(classname)
    axis_members = ("fXaxis", "fYaxis") if family == "TH2" else ("fXaxis",)
    axes = tuple(_axis_from_uproot(obj.member(m)) for m in axis_members)
    data = _contents(obj)
    sumw2 = _array(obj.member("fSumw2"))
    stats = {key: float(obj.member(key)) for key in STATS_KEYS[family]}
    header = (str(obj.member("fName")), str(obj.member("fTitle")), classname, axes)
    entries = float(obj.member("fEntries"))
    if family != "TProfile":
        # Without fSumw2 ROOT takes the errors from the contents: unweighted fills.
        squares = sumw2 if len(sumw2) else data.copy()
        return Hist(*header, regrid(data, axes), regrid(squares, axes), entries, stats)
    bin_entries = _array(obj.member("fBinEntries"))
    bin_sumw2 = _array(obj.member("fBinSumw2"))
    return Hist(
        *header,
        bin_entries,
        bin_sumw2 if len(bin_sumw2) else bin_entries.copy(),
        entries,
        stats,
        sumwy=data,
        sumwy2=sumw2 if len(sumw2) else np.zeros_like(data),
    )


def write_histograms(path: str | Path, hists: Mapping[str, Hist], meta: Mapping[str, Any]) -> None:
    """Write ``hists`` (by path in the file) and ``meta`` to a ROOT file, atomically.

    Histograms are written as TH1D, TH2D or TProfile, readable by uproot, ROOT and JSROOT;
    ``meta`` (JSON-able) goes into the TObjString ``META_KEY``. The file is written under a
    temporary name and renamed, so ``path`` is at every instant either absent, the old
    complete file or the new complete one; a leftover temporary file from a killed writer
    is simply overwritten by the next write.
    """
    text = json.dumps(dict(meta), ensure_ascii=True, sort_keys=True)
    # durable: flushed before the rename, so a machine crash cannot leave a renamed empty
    # file whose contribution list a later merge would trust.
    with (
        written_atomically(Path(path), durable=True) as part,
        uproot.recreate(part, compression=None) as file,
    ):
        for key, hist in hists.items():
            file[key] = to_uproot(hist)
        file[META_KEY] = text


def _taxis(name: str, axis: Axis) -> Any:
    labels = None
    if axis.labels is not None:
        strings = []
        for index, label in enumerate(axis.labels, start=1):
            string = build.to_TObjString(label)
            # ROOT finds a label's bin through the TObjString's unique id.
            string.bases[0]._members["@fUniqueID"] = index
            strings.append(string)
        labels = build.to_THashList(strings)
    edges = axis.edges
    return build.to_TAxis(
        name,
        axis.title,
        axis.nbins,
        float(edges[0]),
        float(edges[-1]),
        fXbins=np.array([], dtype=np.float64) if axis.regular else edges,
        fLabels=labels,
    )


def _flat(grid: FloatArray) -> FloatArray:
    """An ``[ix, iy]`` array in ROOT's flat bin order (x fastest)."""
    return np.ascontiguousarray(grid.T).ravel()


def to_uproot(hist: Hist) -> Any:
    """uproot's writable model of ``hist``: a TH1D, TH2D or TProfile."""
    stats = {key: hist.stats.get(key, 0.0) for key in STATS_KEYS[hist.family]}
    xaxis = _taxis("xaxis", hist.axes[0])
    if hist.family == "TH1":
        return build.to_TH1x(
            hist.name, hist.title, hist.sumw, hist.entries, **stats, fSumw2=hist.sumw2, fXaxis=xaxis
        )
    if hist.family == "TH2":
        return build.to_TH2x(
            hist.name,
            hist.title,
            _flat(hist.sumw),
            hist.entries,
            **stats,
            fSumw2=_flat(hist.sumw2),
            fXaxis=xaxis,
            fYaxis=_taxis("yaxis", hist.axes[1]),
        )
    assert hist.sumwy is not None and hist.sumwy2 is not None
    return build.to_TProfile(
        hist.name,
        hist.title,
        hist.sumwy,
        hist.entries,
        **stats,
        fSumw2=hist.sumwy2,
        fBinEntries=hist.sumw,
        fBinSumw2=hist.sumw2,
        fXaxis=xaxis,
    )
