"""The hist step: one file's data-quality histograms, from its calib and rec outputs.

Every histogram has a fixed name and a fixed binning that never depends on the data, so
the histograms of many files add bin by bin (the DQM merges them per run and compares
them with references). Hit and per-PMT histograms come from every calibrated event;
vertex and energy histograms from the reconstructed entries, which may be a sample of
the events (``rec --sample-fraction``): ``n_events`` and ``n_rec_events`` say how many
events each group saw. Without a rec file the rec histograms are written empty, so a
file's set of names is always the same.

Both inputs are streamed in chunks; the histograms themselves are the only state kept,
about 0.6 MB whatever the file's size. docs/juno.md lists every histogram.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import boost_histogram as bh
import numpy as np
import uproot

from runwatch.experiments.juno import detector, formats, rootio
from runwatch.experiments.juno.calib import STEP_EVENTS, Progress, check_pmt_ids
from runwatch.storage.atomic import written_atomically

CALIB_INPUTS = ("timestamp_ns", "trigger_type", "pmt_id", "npe", "time_ns")
REC_INPUTS = ("x_mm", "y_mm", "z_mm", "t0_ns", "energy_mev", "fit_ok")

Histogram = bh.Histogram[bh.storage.Double]
"""Every histogram counts unweighted entries in double-precision bins (ROOT's TH1D/TH2D)."""

R3_UNIT = detector.LS_RADIUS_MM**3
"""r³ is histogrammed in units of the scintillator sphere's radius cubed: uniform events
fill [0, 1) evenly."""


@dataclass(frozen=True)
class Axis:
    """A regular axis: ``bins`` equal bins from ``start`` to ``stop``, and its label."""

    bins: int
    start: float
    stop: float
    label: str


@dataclass(frozen=True)
class Spec:
    """A histogram's fixed name, title and axes; ``source`` is the tree it is filled from."""

    name: str
    title: str
    source: str  # "calib": every event; "rec": the reconstructed (maybe sampled) entries
    axes: tuple[Axis, ...]

    def book(self) -> Histogram:
        """An empty histogram; uproot writes its title and axis labels into the TH1D/TH2D."""
        axes = [
            bh.axis.Regular(a.bins, a.start, a.stop, __dict__={"label": a.label}) for a in self.axes
        ]
        return bh.Histogram(*axes, storage=bh.storage.Double(), __dict__={"title": self.title})


MM = (-20_000.0, 20_000.0)  # vertex axes: a little beyond the PMT sphere
R3 = "(r / 17.7 m)^{3}"


def specs(n_pmt: int = detector.N_PMT) -> tuple[Spec, ...]:
    """Every histogram hist writes, in the order it writes them."""
    pmt = Axis(n_pmt, -0.5, n_pmt - 0.5, "PMT id")  # bin i is centred on PMT id i
    count = Axis(1, 0, 1, "")
    calib: list[tuple[Any, ...]] = [
        ("n_events", "Events read from the calib file", count),
        ("trigger_type", "Trigger type (1 global, 2 calib, 3 random)", Axis(3, 0.5, 3.5, "type")),
        (
            "trigger_rate",
            "Trigger rate (events per 1 s bin) versus time since the file's first event",
            Axis(600, 0, 600, "time since the file's first event [s]"),
        ),
        ("nhit", "Fired PMTs per event", Axis(180, 0, 18_000, "fired PMTs")),
        ("total_pe", "Total charge per event", Axis(300, 0, 30_000, "total charge [PE]")),
        ("hit_time", "Calibrated hit time, all hits", Axis(600, -100, 1_100, "hit time [ns]")),
        ("hit_npe", "Hit charge, all hits", Axis(200, 0, 20, "hit charge [PE]")),
        ("pmt_hits", "Events in which each PMT fired", pmt),
        ("pmt_fired_fraction", "Fraction of the file's events each PMT fired in", pmt),
        ("pmt_npe_sum", "Summed charge of each PMT's hits [PE]", pmt),
        ("pmt_time_sum", "Summed calibrated time of each PMT's hits [ns]", pmt),
    ]
    rec: list[tuple[Any, ...]] = [
        ("n_rec_events", "Reconstructed events (sampled)", count),
        ("energy", "Reconstructed energy", Axis(300, 0, 15, "energy [MeV]")),
        ("vertex_x", "Reconstructed vertex x", Axis(200, *MM, "x [mm]")),
        ("vertex_y", "Reconstructed vertex y", Axis(200, *MM, "y [mm]")),
        ("vertex_z", "Reconstructed vertex z", Axis(200, *MM, "z [mm]")),
        ("vertex_r3", "Reconstructed r^{3}", Axis(150, 0, 1.5, R3)),
        ("t0", "Fitted event time", Axis(200, 0, 1_000, "t0 [ns]")),
        ("fit_ok", "Time fit converged (0 no, 1 yes)", Axis(2, -0.5, 1.5, "fit_ok")),
        (
            "energy_vs_r3",
            "Reconstructed energy versus r^{3}",
            Axis(60, 0, 1.2, R3),
            Axis(75, 0, 15, "energy [MeV]"),
        ),
        (
            "vertex_xy",
            "Reconstructed vertex, y versus x",
            Axis(80, *MM, "x [mm]"),
            Axis(80, *MM, "y [mm]"),
        ),
        (
            "vertex_rho2_z",
            "Reconstructed vertex, z versus #rho^{2}",
            Axis(75, 0, 1.5, "(#rho / 17.7 m)^{2}"),
            Axis(80, *MM, "z [mm]"),
        ),
    ]
    return tuple(
        Spec(name, title, source, tuple(axes))
        for source, rows in (("calib", calib), ("rec", rec))
        for name, title, *axes in rows
    )


class HistogramFiller:
    """Fills one file's histograms chunk by chunk; ``finish`` derives the per-file ratios.

    ``trigger_rate`` counts time from the first event of the first calib chunk, so the
    chunks must come in the file's order (``rootio.iterate`` gives them so).
    """

    def __init__(self, n_pmt: int = detector.N_PMT) -> None:
        self.n_pmt = n_pmt
        self.histograms = {spec.name: spec.book() for spec in specs(n_pmt)}
        self._first_ns: int | None = None

    def fill_calib(self, chunk: ak.Array, source: Path) -> None:
        """Fill the event and hit histograms from a chunk of the calib tree."""
        timestamps = np.asarray(chunk["timestamp_ns"], dtype=np.int64)
        if not len(timestamps):
            return
        if self._first_ns is None:
            self._first_ns = int(timestamps[0])
        h = self.histograms
        h["n_events"].view()[0] += len(timestamps)
        h["trigger_type"].fill(np.asarray(chunk["trigger_type"], dtype=np.float64))
        h["trigger_rate"].fill((timestamps - self._first_ns) * 1e-9)
        h["nhit"].fill(np.asarray(ak.num(chunk["pmt_id"], axis=1), dtype=np.float64))
        h["total_pe"].fill(np.asarray(ak.sum(chunk["npe"], axis=1), dtype=np.float64))
        self._fill_hits(chunk, source)

    def _fill_hits(self, chunk: ak.Array, source: Path) -> None:
        pmt = np.asarray(ak.flatten(chunk["pmt_id"], axis=1), dtype=np.int64)
        check_pmt_ids(pmt, self.n_pmt, source)
        # boost-histogram and bincount both work in float64: convert once for all uses.
        npe = np.asarray(ak.flatten(chunk["npe"], axis=1), dtype=np.float64)
        time_ns = np.asarray(ak.flatten(chunk["time_ns"], axis=1), dtype=np.float64)
        h = self.histograms
        h["hit_time"].fill(time_ns)
        h["hit_npe"].fill(npe)
        # Bin i is PMT i, so a bincount of the ids is the per-PMT histogram's view.
        h["pmt_hits"].view()[:] += np.bincount(pmt, minlength=self.n_pmt)
        h["pmt_npe_sum"].view()[:] += np.bincount(pmt, weights=npe, minlength=self.n_pmt)
        h["pmt_time_sum"].view()[:] += np.bincount(pmt, weights=time_ns, minlength=self.n_pmt)

    def fill_rec(self, chunk: ak.Array) -> None:
        """Fill the vertex and energy histograms from a chunk of the rec tree."""
        x, y, z = (np.asarray(chunk[b], dtype=np.float64) for b in ("x_mm", "y_mm", "z_mm"))
        energy = np.asarray(chunk["energy_mev"], dtype=np.float64)
        rho2 = x * x + y * y
        r3 = (rho2 + z * z) ** 1.5 / R3_UNIT
        h = self.histograms
        h["n_rec_events"].view()[0] += len(x)
        h["energy"].fill(energy)
        h["vertex_x"].fill(x)
        h["vertex_y"].fill(y)
        h["vertex_z"].fill(z)
        h["vertex_r3"].fill(r3)
        h["t0"].fill(np.asarray(chunk["t0_ns"], dtype=np.float64))
        h["fit_ok"].fill(np.asarray(chunk["fit_ok"], dtype=np.float64))
        h["energy_vs_r3"].fill(r3, energy)
        h["vertex_xy"].fill(x, y)
        h["vertex_rho2_z"].fill(rho2 / detector.LS_RADIUS_MM**2, z)

    def finish(self) -> dict[str, Histogram]:
        """The histograms, with ``pmt_fired_fraction`` = ``pmt_hits`` / ``n_events``."""
        h = self.histograms
        events = h["n_events"].view()[0]
        if events:
            h["pmt_fired_fraction"].view()[:] = h["pmt_hits"].view() / events
        return h


@dataclass(frozen=True)
class HistResult:
    """What one hist run read, for the command to report."""

    events: int
    rec_events: int


def fill_histograms(
    calib: Path,
    rec: Path | None,
    n_pmt: int = detector.N_PMT,
    step_events: int = STEP_EVENTS,
    progress: Progress | None = None,
) -> dict[str, Histogram]:
    """Every histogram of ``specs`` filled from a calib file and, if given, a rec file."""
    filler = HistogramFiller(n_pmt)
    for chunk in rootio.iterate(calib, formats.CALIB_TREE, list(CALIB_INPUTS), step_events):
        filler.fill_calib(chunk, calib)
        if progress:
            progress(len(chunk))
    if rec is not None:
        for chunk in rootio.iterate(rec, formats.REC_TREE, list(REC_INPUTS), step_events):
            filler.fill_rec(chunk)
            if progress:
                progress(len(chunk))
    return filler.finish()


def write_histograms(path: Path, histograms: Mapping[str, Histogram]) -> None:
    """Write ``histograms`` to a ROOT file (TH1D/TH2D) that appears only when complete."""
    with (
        written_atomically(path) as part,
        uproot.recreate(part, compression=rootio.COMPRESSION) as file,
    ):
        for name, histogram in histograms.items():
            file[name] = histogram


def run_hist(
    calib: Path,
    rec: Path | None,
    output: Path,
    n_pmt: int = detector.N_PMT,
    step_events: int = STEP_EVENTS,
    progress: Progress | None = None,
) -> HistResult:
    """Fill and write one file's histograms; ``rootio.InputFileError`` leaves no output."""
    histograms = fill_histograms(calib, rec, n_pmt, step_events, progress)
    write_histograms(output, histograms)
    return HistResult(
        events=int(histograms["n_events"].view()[0]),
        rec_events=int(histograms["n_rec_events"].view()[0]),
    )
