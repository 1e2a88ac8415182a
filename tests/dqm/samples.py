"""Histograms with random contents for the dqm tests: every family, flow bins filled."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runwatch.dqm.histogram import Axis, Hist, stats_from_bins, write_histograms


def _finish(hist: Hist) -> Hist:
    hist.stats = stats_from_bins(hist)
    return hist


def sample_hists(rng: np.random.Generator, n_pmt: int = 40) -> dict[str, Hist]:
    """A TH1D, a variable-bin TH1D, a labelled TH1D, a TH2D and a TProfile, by path."""
    pmt = Axis.regular_axis(n_pmt, -0.5, n_pmt - 0.5, "PMT id")
    var = Axis(np.array([0.0, 1.0, 3.0, 7.0, 15.0]), "energy [MeV]")
    labelled = Axis(np.arange(4.0), "trigger", ("global", "calib", "random"))
    xy = (Axis.regular_axis(6, -1.0, 1.0, "x"), Axis.regular_axis(5, 0.0, 10.0, "y"))

    def counts(*shape: int) -> np.ndarray:
        return rng.poisson(5.0, shape).astype(np.float64)

    hits, energy, trig, grid = counts(n_pmt + 2), counts(6), counts(5), counts(8, 7)
    n = counts(n_pmt + 2)
    y = rng.normal(100.0, 5.0, n_pmt + 2) * n
    return {
        "pmt_hits": _finish(Hist("pmt_hits", "hits", "TH1D", (pmt,), hits, hits.copy(), 9.0)),
        "rec/energy": _finish(Hist("energy", "E", "TH1D", (var,), energy, energy * 2, 4.0)),
        "trigger": _finish(Hist("trigger", "t", "TH1D", (labelled,), trig, trig.copy(), 3.0)),
        "rec/maps/xy": _finish(Hist("xy", "y vs x", "TH2D", xy, grid, grid.copy(), 11.0)),
        "pmt_time": _finish(
            Hist("pmt_time", "mean time", "TProfile", (pmt,), n, n.copy(), 8.0, None, y, y * 90)
        ),
    }


def write_sample(
    path: Path, rng: np.random.Generator, meta: dict[str, object] | None = None
) -> dict[str, Hist]:
    """Write ``sample_hists`` to ``path``; return them."""
    hists = sample_hists(rng)
    write_histograms(path, hists, meta or {})
    return hists


def assert_same(a: Hist, b: Hist) -> None:
    """Equal bin by bin (flow bins included), and in everything else a Hist holds."""
    assert (a.name, a.title, a.family, a.entries) == (b.name, b.title, b.family, b.entries)
    assert a.stats.keys() == b.stats.keys()
    for key in a.stats:
        assert np.isclose(a.stats[key], b.stats[key], rtol=1e-12), key
    assert len(a.axes) == len(b.axes)
    for axis_a, axis_b in zip(a.axes, b.axes, strict=True):
        np.testing.assert_array_equal(axis_a.edges, axis_b.edges)
        assert (axis_a.title, axis_a.labels) == (axis_b.title, axis_b.labels)
    np.testing.assert_allclose(a.sumw, b.sumw, rtol=1e-12)
    np.testing.assert_allclose(a.sumw2, b.sumw2, rtol=1e-12)
    for x, y in ((a.sumwy, b.sumwy), (a.sumwy2, b.sumwy2)):
        assert (x is None) == (y is None)
        if x is not None and y is not None:
            np.testing.assert_allclose(x, y, rtol=1e-12)
