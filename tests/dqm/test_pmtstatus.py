from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from runwatch.dqm.histogram import Axis, Hist, read_histograms
from runwatch.dqm.pmtstatus import (
    CODES,
    DEFAULT_CUTS,
    JUNO_TEST_CUTS,
    Cuts,
    CutsError,
    PmtClass,
    changed_since,
    classify,
    pmt_status,
    status_from_fraction,
    status_from_hists,
)
from runwatch.experiments.juno import formats, hist, rootio
from runwatch.experiments.juno.geometry import load_geometry
from runwatch.experiments.juno.physics import make_pmt_truth, simulate_chunk

D, H, N, OT, U = (PmtClass.DEAD, PmtClass.HOT, PmtClass.NORMAL, PmtClass.OTHER, PmtClass.UNKNOWN)


def classes(codes: np.ndarray) -> list[PmtClass]:
    return [list(PmtClass)[c] for c in codes.tolist()]


def test_default_cuts_at_their_boundaries() -> None:
    fractions = [0.0, 0.0099, 0.01, 0.049, 0.05, 0.10, 0.15, 0.151, 0.99, 0.991, 1.0]
    assert classes(classify(fractions)) == [D, D, OT, OT, N, N, N, OT, OT, H, H]


def test_juno_test_cuts() -> None:
    fractions = [0.0, 0.0599, 0.06, 0.0931, 0.0932, 0.0937, 0.0942, 0.0943, 0.13, 0.1301]
    assert classes(classify(fractions, JUNO_TEST_CUTS)) == [D, D, OT, OT, N, N, N, OT, OT, H]


def test_nan_fraction_is_unknown_and_out_of_range_is_refused() -> None:
    assert classes(classify([np.nan, 0.1])) == [U, N]
    with pytest.raises(ValueError, match="between 0 and 1"):
        classify([0.1, 1.2])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dead": 0.05}, r"dead \(0.05\) must be < normal_low \(0.05\)"),
        ({"normal_low": 0.2}, r"normal_low \(0.2\) must be ≤ normal_high \(0.15\)"),
        ({"hot": 0.15}, r"normal_high \(0.15\) must be < hot \(0.15\)"),
        ({"hot": 1.5}, "hot: 1.5 is not a fraction between 0 and 1"),
        ({"dead": -0.1}, "dead: -0.1 is not a fraction"),
        ({"dead": "1%"}, "dead: expected a fraction"),
        ({"min_events": 0}, "min_events: expected at least 1"),
        ({"min_events": 10.5}, "min_events: expected a whole number"),
        ({"dead": True}, "dead: expected a fraction"),
    ],
)
def test_invalid_cuts_are_refused_with_the_field_named(values: dict, message: str) -> None:
    with pytest.raises(CutsError, match=message):
        DEFAULT_CUTS.override(**values)


def test_cuts_from_configuration_and_a_run_override() -> None:
    detector = Cuts.from_mapping(
        {"dead": 0.06, "hot": 0.13, "normal_low": 0.0932, "normal_high": 0.0942}
    )
    run = detector.override(min_events=300)
    assert (run.dead, run.hot, run.min_events) == (0.06, 0.13, 300)
    assert detector.min_events == DEFAULT_CUTS.min_events
    with pytest.raises(CutsError, match="unknown cut 'deadd'"):
        Cuts.from_mapping({"deadd": 0.1})


def test_too_few_events_leave_every_pmt_unknown() -> None:
    hits = np.array([0, 5, 50, 100])
    few = pmt_status(hits, 100, DEFAULT_CUTS)
    assert few.counts()[U] == 4 and few.counts()[D] == 0
    enough = pmt_status(hits, 100, DEFAULT_CUTS.override(min_events=100))
    assert classes(enough.codes) == [D, N, OT, H]
    assert pmt_status(hits * 0, 0).counts()[U] == 4
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        pmt_status([101], 100)


def test_counts_and_ids_per_class() -> None:
    status = status_from_fraction([0.0, 0.1, 0.1, 1.0, 0.03, 0.0])
    assert status.counts() == {N: 2, OT: 1, D: 2, H: 1, U: 0}
    assert status.ids(D).tolist() == [0, 5]
    assert status.classes()[:2] == [D, N]


def test_changed_since_lists_id_old_and_new() -> None:
    before = status_from_fraction([0.1, 0.1, 0.0, 1.0, 0.1])
    after = status_from_fraction([0.1, 0.0, 0.1, 1.0, 1.0])
    changes = changed_since(before, after)
    assert list(changes) == [(1, N, D), (2, D, N), (4, N, H)]
    assert changes.became(D).tolist() == [1]
    assert changes.became(H).tolist() == [4]


def test_coming_out_of_unknown_is_a_change_but_not_a_new_dead_pmt() -> None:
    unknown = pmt_status([0, 10], 10)  # below min_events
    now = pmt_status([0, 10_000], 10_000)
    changes = changed_since(unknown, now)
    assert list(changes) == [(0, U, D), (1, U, H)]
    assert len(changes.became(D)) == 0


def test_changed_since_is_vectorised_for_the_whole_detector() -> None:
    rng = np.random.default_rng(4)
    before = rng.integers(0, 4, 17_612).astype(np.int8)
    after = before.copy()
    flipped = rng.choice(17_612, 40, replace=False)
    after[flipped] = (after[flipped] + 1) % 4
    start = time.perf_counter()
    changes = changed_since(before, after)
    elapsed = time.perf_counter() - start
    assert sorted(changes.ids.tolist()) == sorted(flipped.tolist())
    assert elapsed < 0.02
    with pytest.raises(ValueError, match="not the same detector"):
        changed_since(before, after[:-1])


def test_status_from_hists_reads_pmt_hits_without_flow_bins() -> None:
    edges = np.arange(5) - 0.5
    sumw = np.array([7.0, 0.0, 1000.0, 100.0, 990.0, 3.0])  # flow bins 7 and 3
    pmt_hits = Hist("pmt_hits", "", "TH1D", (Axis(edges),), sumw, sumw.copy(), 2100.0)
    one = np.array([0.0, 1000.0, 0.0])
    n_events = Hist("n_events", "", "TH1D", (Axis(np.array([0.0, 1.0])),), one, one.copy())
    status = status_from_hists(pmt_hits, n_events)
    assert classes(status.codes) == [D, H, N, OT]
    assert status.n_events == 1000


def test_simulated_dead_and_hot_pmts_are_all_found_and_none_invented(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    geometry = load_geometry()
    truth = make_pmt_truth(rng, geometry.n_pmt, dead=40, hot=12)
    raw, _ = simulate_chunk(rng, geometry, truth, 300, waves=False)
    # Through the chain's own files: a calib file (ADC counts stand in for charges, which
    # the per-PMT counts ignore), the hist step, and the histograms read back.
    branches = {k: v for k, v in raw.branches().items() if k in formats.CALIB_BRANCHES}
    branches |= {"npe": raw.branches()["adc"], "time_ns": raw.branches()["tdc"]}
    with rootio.TreeWriter(tmp_path / "c.root", formats.CALIB_TREE, formats.CALIB_BRANCHES) as w:
        w.extend(branches)
    hist.run_hist(tmp_path / "c.root", None, tmp_path / "h.root", n_pmt=geometry.n_pmt)
    hists = read_histograms(tmp_path / "h.root", ["pmt_hits", "n_events"])
    cuts = DEFAULT_CUTS.override(min_events=300)
    status = status_from_hists(hists["pmt_hits"], hists["n_events"], cuts)
    assert status.n_events == 300
    assert status.ids(D).tolist() == np.flatnonzero(truth.dead).tolist()
    assert status.ids(H).tolist() == np.flatnonzero(truth.hot).tolist()
    assert status.counts()[N] > 0.9 * geometry.n_pmt
    assert CODES[U] not in set(status.codes.tolist())
