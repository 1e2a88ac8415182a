"""The Hist type, its addition, and reading and writing ROOT files of histograms."""

from __future__ import annotations

import json
from pathlib import Path

import boost_histogram as bh
import numpy as np
import pytest
import uproot

from runwatch.dqm import fastread
from runwatch.dqm.histogram import (
    META_KEY,
    Axis,
    Hist,
    HistogramFileError,
    IncompatibleHistograms,
    accumulate,
    add,
    read_file,
    read_histograms,
    write_histograms,
)
from runwatch.experiments.juno import hist as juno_hist
from tests.conftest import shared_path
from tests.dqm.samples import assert_same, sample_hists, write_sample

REAL_ROOT_FILES = ("B8_Spectrum_Histo.root", "Detsim_PDFs_FV14.root")


@pytest.mark.parametrize("name", REAL_ROOT_FILES)
def test_files_written_by_real_root_are_read(name: str) -> None:
    path = shared_path("data", "root", name)
    hists = read_histograms(path)
    with uproot.open(path) as file:
        keys = file.keys(cycle=False)
        assert sorted(hists) == sorted(keys)
        for key in keys:
            h, model = hists[key], file[key]
            assert h.classname == "TH1F"
            np.testing.assert_array_equal(h.sumw, model.values(flow=True))
            np.testing.assert_allclose(np.sqrt(h.sumw2), model.errors(flow=True), rtol=1e-6)
            np.testing.assert_array_equal(h.axes[0].edges, model.axis().edges())
            assert h.entries == model.member("fEntries")


@pytest.mark.parametrize("name", REAL_ROOT_FILES)
def test_the_fast_decoder_agrees_with_uproot_on_real_root_files(name: str) -> None:
    path = shared_path("data", "root", name)
    fast = fastread.read_fast(path, META_KEY)
    assert not fast.fallback
    generic = read_file(path, fast=False).hists
    assert sorted(fast.hists) == sorted(generic)
    for key, hist in fast.hists.items():
        assert_same(hist, generic[key])


def test_round_trip_is_equal_bin_by_bin_in_every_family(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    written = write_sample(tmp_path / "h.root", rng, {"run": 7, "files": ["a", "b"]})
    found = read_file(tmp_path / "h.root")
    assert found.meta == {"run": 7, "files": ["a", "b"]}
    assert sorted(found.hists) == sorted(written)
    for key, hist in written.items():
        assert_same(found.hists[key], hist)
    assert found.hists["pmt_hits"].classname == "TH1D"
    assert found.hists["pmt_time"].classname == "TProfile"


def test_written_files_mean_the_same_to_uproot(tmp_path: Path) -> None:
    """uproot's own model (as JSROOT and ROOT read the file) sees our contents."""
    written = write_sample(tmp_path / "h.root", np.random.default_rng(2))
    with uproot.open(tmp_path / "h.root") as file:
        xy = file["rec/maps/xy"]
        np.testing.assert_array_equal(xy.values(flow=True), written["rec/maps/xy"].sumw)
        profile = file["pmt_time"]
        np.testing.assert_allclose(profile.values(), written["pmt_time"].values(), rtol=1e-12)
        labels = file["trigger"].member("fXaxis").member("fLabels")
        assert [str(s) for s in labels] == ["global", "calib", "random"]
        assert [s.member("@fUniqueID") for s in labels] == [1, 2, 3]
        assert json.loads(str(file[META_KEY])) == {}


def test_juno_hist_files_are_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    booked = {spec.name: spec.book() for spec in juno_hist.specs(n_pmt=30)}
    for histogram in booked.values():
        histogram.view(flow=True)[...] = rng.poisson(3.0, histogram.view(flow=True).shape)
    juno_hist.write_histograms(tmp_path / "juno.root", booked)
    found = read_histograms(tmp_path / "juno.root")
    assert sorted(found) == sorted(booked)
    for name, histogram in booked.items():
        np.testing.assert_array_equal(found[name].sumw, histogram.view(flow=True))
    assert found["vertex_xy"].classname == "TH2D"
    assert found["pmt_hits"].axes[0].title == "PMT id"


def test_the_fast_decoder_agrees_with_uproot_on_our_files(tmp_path: Path) -> None:
    write_sample(tmp_path / "h.root", np.random.default_rng(4))
    fast = fastread.read_fast(tmp_path / "h.root", META_KEY)
    assert set(fast.fallback) == {"trigger"}  # bin labels are left to uproot
    generic = read_file(tmp_path / "h.root", fast=False)
    assert sorted(generic.hists) == sorted([*fast.hists, *fast.fallback])
    assert read_file(tmp_path / "h.root").meta == generic.meta
    for key, hist in fast.hists.items():
        assert_same(hist, generic.hists[key])


def test_highest_cycle_wins(tmp_path: Path) -> None:
    path = tmp_path / "cycles.root"
    with uproot.recreate(path) as file:
        file["h"] = bh.Histogram(bh.axis.Regular(3, 0, 3))
        file["h"] = bh.Histogram(bh.axis.Regular(5, 0, 5))  # cycle 2
    assert read_histograms(path)["h"].axes[0].nbins == 5


def test_unsupported_classes_are_skipped_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "th3.root"
    with uproot.recreate(path) as file:
        file["cube"] = bh.Histogram(*(bh.axis.Regular(2, 0, 1) for _ in range(3)))
        file["line"] = bh.Histogram(bh.axis.Regular(2, 0, 1))
    found = read_file(path)
    assert list(found.hists) == ["line"]
    assert found.skipped == {"cube": "unsupported class TH3D"}


def test_names_select_histograms(tmp_path: Path) -> None:
    write_sample(tmp_path / "h.root", np.random.default_rng(5))
    assert sorted(read_histograms(tmp_path / "h.root", ["rec/energy", "trigger"])) == [
        "rec/energy",
        "trigger",
    ]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a ROOT file"),
        (b"hello, not root", "not a ROOT file (it starts with b'hell')"),
    ],
)
def test_non_root_files_are_a_clear_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.root"
    path.write_bytes(content)
    with pytest.raises(HistogramFileError, match="not a ROOT file") as caught:
        read_histograms(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_files_are_a_clear_error(tmp_path: Path, fraction: float) -> None:
    full = tmp_path / "full.root"
    write_sample(full, np.random.default_rng(6))
    data = full.read_bytes()
    cut = tmp_path / "cut.root"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(HistogramFileError) as caught:
        read_histograms(cut)
    assert caught.value.path == str(cut)
    assert caught.value.reason


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HistogramFileError, match="no such file"):
        read_histograms(tmp_path / "absent.root")


def test_add_is_bin_by_bin_and_adds_entries_and_sums() -> None:
    rng = np.random.default_rng(7)
    a, b = sample_hists(rng), sample_hists(rng)
    for key in a:
        total = add(a[key], b[key])
        np.testing.assert_array_equal(total.sumw, a[key].sumw + b[key].sumw)
        np.testing.assert_array_equal(total.sumw2, a[key].sumw2 + b[key].sumw2)
        assert total.entries == a[key].entries + b[key].entries
        for name, value in total.stats.items():
            assert value == pytest.approx(a[key].stats[name] + b[key].stats[name])
    profile = add(a["pmt_time"], b["pmt_time"])
    assert profile.sumwy is not None and a["pmt_time"].sumwy is not None
    np.testing.assert_allclose(profile.sumwy, a["pmt_time"].sumwy + b["pmt_time"].sumwy)


def test_add_leaves_its_inputs_unchanged() -> None:
    a = sample_hists(np.random.default_rng(8))["rec/maps/xy"]
    before = a.sumw.copy()
    add(a, a)
    np.testing.assert_array_equal(a.sumw, before)


def test_different_binning_is_a_precise_error() -> None:
    rng = np.random.default_rng(9)
    a = sample_hists(rng)["rec/energy"]
    moved = Hist(
        a.name,
        a.title,
        a.classname,
        (Axis(np.array([0.0, 1.0, 3.5, 7.0, 15.0])),),
        a.sumw.copy(),
        a.sumw2.copy(),
    )
    with pytest.raises(IncompatibleHistograms, match=r"axis x bin edges differ .* indices 2\.\.2"):
        accumulate(a, moved)
    fewer = sample_hists(rng, n_pmt=20)["pmt_hits"]
    with pytest.raises(IncompatibleHistograms, match="axis x has 40 bins in one and 20"):
        add(sample_hists(rng)["pmt_hits"], fewer)


def test_different_families_do_not_add() -> None:
    hists = sample_hists(np.random.default_rng(10))
    with pytest.raises(IncompatibleHistograms, match="TProfile to a TH1D"):
        add(hists["pmt_hits"], hists["pmt_time"])


def test_a_failed_add_changes_nothing() -> None:
    rng = np.random.default_rng(11)
    a, other = sample_hists(rng)["pmt_hits"], sample_hists(rng, n_pmt=10)["pmt_hits"]
    before = (a.sumw.copy(), a.entries)
    with pytest.raises(IncompatibleHistograms):
        accumulate(a, other)
    np.testing.assert_array_equal(a.sumw, before[0])
    assert a.entries == before[1]


def test_plain_data_round_trip() -> None:
    for hist in sample_hists(np.random.default_rng(12)).values():
        assert_same(Hist.from_dict(json.loads(json.dumps(hist.to_dict()))), hist)


def test_writing_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "h.root"
    old = write_sample(path, np.random.default_rng(13))

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("disk full")

    monkeypatch.setattr("runwatch.dqm.histogram.to_uproot", broken)
    with pytest.raises(RuntimeError):
        write_histograms(path, sample_hists(np.random.default_rng(14)), {})
    assert [p.name for p in tmp_path.iterdir()] == ["h.root"]
    assert_same(read_histograms(path)["pmt_hits"], old["pmt_hits"])
