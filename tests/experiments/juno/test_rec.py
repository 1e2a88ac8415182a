"""The rec step: quality against the simulation's truth, deterministic sampling, threads,
bad inputs and the command line.

The quality bounds are justified in docs/juno.md (## Reconstruction): each is several
statistical standard deviations of these sample sizes away from the measured values.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import typer
import uproot
from typer.testing import CliRunner

from runwatch.experiments.juno import formats, rec, rootio
from runwatch.experiments.juno.geometry import Geometry, load_geometry
from runwatch.experiments.juno.lightmodel import LightModel
from runwatch.experiments.juno.physics import make_pmt_truth, simulate_chunk
from runwatch.experiments.juno.recquality import (
    Quality,
    calibrated_hits,
    measure,
    photo_statistics_limit,
)
from runwatch.experiments.juno.timemodel import (
    ETA_BINS,
    HI_NS,
    LO_NS,
    TimeModel,
    first_hit_density,
    likeliest_photo_electrons,
)
from runwatch.experiments.juno.unusable import unusable_pmts
from runwatch.experiments.juno.vertexfit import Hits, Reconstructor


@pytest.fixture(scope="module")
def geometry() -> Geometry:
    return load_geometry()


@pytest.fixture(scope="module")
def reconstructor(geometry: Geometry) -> Reconstructor:
    return Reconstructor(geometry.positions)


def write_calib(path: Path, geometry: Geometry, n_events: int, seed: int) -> None:
    """A calib file of physics-mix events, calibrated with the true constants."""
    rng = np.random.default_rng(seed)
    pmts = make_pmt_truth(rng, geometry.n_pmt)
    raw, _ = simulate_chunk(rng, geometry, pmts, n_events, first_event_id=1_000, waves=False)
    hits = calibrated_hits(raw, pmts)
    with rootio.TreeWriter(path, formats.CALIB_TREE, formats.CALIB_BRANCHES) as writer:
        writer.extend(
            {
                "event_id": raw.event_id,
                "timestamp_ns": raw.timestamp_ns,
                "trigger_type": raw.trigger_type,
                "pmt_id": rootio.jagged(hits.pmt_id, hits.counts),
                "npe": rootio.jagged(hits.npe, hits.counts),
                "time_ns": rootio.jagged(hits.time_ns, hits.counts),
            }
        )


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory: pytest.TempPathFactory, geometry: Geometry) -> Path:
    path = tmp_path_factory.mktemp("rec") / "run.calib.root"
    write_calib(path, geometry, 400, seed=7)
    return path


def read_rec(path: Path) -> ak.Array:
    with uproot.open(path) as file:
        return file[formats.REC_TREE].arrays(list(formats.REC_BRANCHES))


# --- models -------------------------------------------------------------------------


def test_first_hit_density_is_normalised_and_earlier_for_more_photo_electrons() -> None:
    tau = np.arange(LO_NS, HI_NS, 0.05)
    modes = []
    for n_pe in (1, 2, 10, 64):
        density = first_hit_density(tau, n_pe)
        assert abs(density.sum() * 0.05 - 1.0) < 1e-3
        modes.append(tau[np.argmax(density)])
    assert modes == sorted(modes, reverse=True) and modes[0] > modes[-1] + 5.0


def test_time_model_slope_is_flat_on_the_dark_plateau() -> None:
    model = TimeModel.build(480.0)
    table = model.slope.reshape(-1, model.n_bins)
    assert not table[model.pad_row].any() and model.info[model.pad_row] == 0
    # Far from the light every row with a flat term has no slope: a dark hit is ignored.
    assert np.abs(table[1:, :25]).max() < 1e-3 and np.abs(table[1:, -25:]).max() < 1e-3
    assert (model.info[:-1] > 0).all()
    single = model.info[ETA_BINS - 1], model.info[0]
    assert single[0] < single[1]  # more dark counts, less information per hit


def test_likeliest_photo_electrons_weighs_charge_against_the_light_expected() -> None:
    charge = np.array([1.0, 1.6, 1.6, 1.4, 10.2, 30.0], dtype=np.float32)
    expected = np.array([0.05, 0.05, 5.0, 5.0, 10.0, 30.0], dtype=np.float32)
    counts = likeliest_photo_electrons(charge, expected, 0.3)
    assert counts.tolist() == [1, 1, 2, 2, 10, 30]


def test_light_model_yield_and_centroid(geometry: Geometry) -> None:
    light = LightModel.build(geometry.positions, 19_000.0)
    assert light.yield_ratio(np.array([0.0]))[0] == pytest.approx(1.0)
    assert light.yield_ratio(np.array([17_700.0]))[0] == pytest.approx(1.6, abs=0.03)
    assert np.all(np.diff(light.yield_ratio_table) > 0)  # attenuation favours the edge
    assert light.centre_shrinkage == pytest.approx(0.99, abs=0.005)
    radius = np.array([1_000.0, 10_000.0, 17_000.0])
    centroid = np.interp(radius, light.radius_mm, light.centroid_radius_table)
    assert np.allclose(light.vertex_radius(centroid), radius, atol=1.0)


# --- quality ------------------------------------------------------------------------


def check_energy(q: Quality, resolution_factor: float) -> None:
    assert q.fit_ok > 0.99
    assert abs(q.energy_bias) < 0.01, q
    assert q.energy_sigma < resolution_factor * photo_statistics_limit(q.energy_mev), q


@pytest.mark.parametrize("energy", [1.0, 4.0])
def test_uniform_events_vertex_and_energy(
    reconstructor: Reconstructor, geometry: Geometry, energy: float
) -> None:
    q = measure(reconstructor, geometry, energy, n_events=200, seed=int(energy * 10))
    # Measured (2,000 events): 42 mm at 1 MeV, 22 mm at 4 MeV per coordinate; the
    # biases within 2 mm, the radial one +4 to +7 mm (sigma of the mean here: 3 mm).
    limit_mm = 70.0 / np.sqrt(energy)
    assert max(q.vertex_sigma_mm) < limit_mm, q
    assert max(abs(b) for b in q.vertex_bias_mm) < 15.0, q
    assert abs(q.radial_bias_mm) < 20.0, q
    # Off-centre events see more light than the centre's 1,600 PE/MeV.
    check_energy(q, resolution_factor=1.15)


def test_centre_events_energy_at_the_photo_statistics_limit(
    reconstructor: Reconstructor, geometry: Geometry
) -> None:
    q = measure(reconstructor, geometry, 2.0, n_events=200, seed=3, centre=True)
    assert max(q.vertex_sigma_mm) < 50.0, q
    check_energy(q, resolution_factor=1.3)


def test_dead_and_hot_pmts_are_found_and_left_out(
    reconstructor: Reconstructor, geometry: Geometry
) -> None:
    rng = np.random.default_rng(11)
    pmts = make_pmt_truth(rng, geometry.n_pmt, dead=200, hot=20)
    raw, truth = simulate_chunk(rng, geometry, pmts, 600, energy_mev=0.5, waves=False)
    hits = calibrated_hits(raw, pmts)
    unusable = unusable_pmts(hits.pmt_id, hits.time_ns, 600, geometry.n_pmt)
    assert np.array_equal(unusable, pmts.dead | pmts.hot)
    fit = reconstructor.fit(hits, unusable)
    ratio = fit.energy_mev / truth.energy_mev
    assert fit.fit_ok.mean() > 0.99
    assert abs(ratio.mean() - 1.0) < 0.01  # 200 dead PMTs hold 1.1 % of the light
    assert fit.nhit.tolist() == raw.nhit.tolist()  # the record, hot PMTs included
    # Without the mask, the hot PMTs' dark charge in the prompt window spoils the fits.
    assert reconstructor.fit(hits).fit_ok.mean() < 0.8


def test_pmt_status_needs_enough_events() -> None:
    pmt_id = np.zeros(100, dtype=np.int32)
    assert not unusable_pmts(pmt_id, np.zeros(100, np.float32), 100, 50).any()


def test_empty_and_dark_only_events_are_not_fitted(reconstructor: Reconstructor) -> None:
    rng = np.random.default_rng(5)
    counts = np.array([0, 3, 500])  # nothing; three hits; a random trigger's dark counts
    n = int(counts.sum())
    hits = Hits(
        counts=counts,
        pmt_id=rng.integers(0, reconstructor.n_pmt, n).astype(np.int32),
        npe=np.ones(n, dtype=np.float32),
        time_ns=rng.uniform(0, 1000, n).astype(np.float32),
    )
    fit = reconstructor.fit(hits)
    assert fit.fit_ok.tolist() == [False, False, False]
    assert fit.nhit.tolist() == [0, 3, 500]


# --- sampling -----------------------------------------------------------------------


def test_sample_mask_is_a_function_of_the_event_id() -> None:
    ids = np.arange(10**6, 10**6 + 200_000, dtype=np.int64)
    keep = rec.sample_mask(ids, 0.2)
    assert abs(keep.mean() - 0.2) < 0.005  # binomial sigma: 0.0009
    assert np.array_equal(rec.sample_mask(ids[::-1], 0.2), keep[::-1])
    assert np.array_equal(rec.sample_mask(ids[5_000:7_000], 0.2), keep[5_000:7_000])
    assert not (rec.sample_mask(ids, 0.1) & ~keep).any()  # smaller samples are subsets
    assert rec.sample_mask(ids, 1.0).all()
    with pytest.raises(ValueError, match="sample fraction"):
        rec.sample_mask(ids, 0.0)


def test_sampling_selects_the_same_events_whatever_the_chunking(
    calib_file: Path, tmp_path: Path
) -> None:
    first = rec.run_rec(calib_file, tmp_path / "a.root", fraction=0.3, step_events=64)
    second = rec.run_rec(calib_file, tmp_path / "b.root", fraction=0.3, step_events=150)
    a, b = read_rec(tmp_path / "a.root"), read_rec(tmp_path / "b.root")
    assert first.events == second.events == 400
    assert first.selected == second.selected == len(a) == len(b)
    assert abs(first.selected / 400 - 0.3) < 0.08
    assert a["event_id"].tolist() == b["event_id"].tolist()
    expected = rec.sample_mask(np.arange(1_000, 1_400), 0.3)
    assert a["event_id"].tolist() == (np.flatnonzero(expected) + 1_000).tolist()
    # An event's fit does not depend on its neighbours (to float32 rounding).
    for name in ("x_mm", "y_mm", "z_mm", "energy_mev"):
        assert np.allclose(a[name], b[name], rtol=1e-4, atol=0.5)


def test_threads_give_the_same_output_as_one_thread(calib_file: Path, tmp_path: Path) -> None:
    rec.run_rec(calib_file, tmp_path / "one.root", threads=1, step_events=50)
    result = rec.run_rec(calib_file, tmp_path / "three.root", threads=3, step_events=50)
    one, three = read_rec(tmp_path / "one.root"), read_rec(tmp_path / "three.root")
    assert result.selected == 400
    for name in formats.REC_BRANCHES:
        assert np.array_equal(np.asarray(one[name]), np.asarray(three[name])), name


# --- bad inputs ---------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_truncated_input_fails_and_leaves_no_output(
    calib_file: Path, tmp_path: Path, threads: int
) -> None:
    truncated = tmp_path / "truncated.calib.root"
    data = calib_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    output = tmp_path / "out.rec.root"
    with pytest.raises(rootio.InputFileError, match="truncated"):
        rec.run_rec(truncated, output, threads=threads, step_events=50)
    assert list(tmp_path.iterdir()) == [truncated]


def test_input_that_is_not_root_or_not_calib_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.root"
    junk.write_bytes(b"not a ROOT file at all" * 100)
    with pytest.raises(rootio.InputFileError, match="not a readable ROOT file"):
        rec.run_rec(junk, tmp_path / "out.root")
    rec_file = tmp_path / "a.rec.root"
    with rootio.TreeWriter(rec_file, formats.REC_TREE, formats.REC_BRANCHES):
        pass
    with pytest.raises(rootio.InputFileError, match="no tree 'calib'"):
        rec.run_rec(rec_file, tmp_path / "out.root")
    assert not (tmp_path / "out.root").exists()


def test_pmt_ids_outside_the_geometry_are_an_input_error(calib_file: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    rows = load_geometry().positions[:100]
    small.write_text("".join(f"{i} {x} {y} {z} 0 0\n" for i, (x, y, z) in enumerate(rows)))
    with pytest.raises(rootio.InputFileError, match="outside the geometry"):
        rec.run_rec(calib_file, tmp_path / "out.root", geometry=small)
    assert not (tmp_path / "out.root").exists()


# --- command line -------------------------------------------------------------------


def test_cli_round_trip(app: typer.Typer, calib_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "run.rec.root"
    args = ["juno", "rec", str(calib_file), str(output), "--threads", "2"]
    result = CliRunner().invoke(app, [*args, "--sample-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    events = read_rec(output)
    assert f"400 events in, {len(events)} selected" in result.output
    assert "events/s" in result.output
    assert 150 < len(events) < 250
    assert events.fields == list(formats.REC_BRANCHES)
    assert np.asarray(events["fit_ok"]).mean() > 0.95


def test_cli_bad_input_exits_1_with_the_reason(app: typer.Typer, tmp_path: Path) -> None:
    output = tmp_path / "out.rec.root"
    result = CliRunner().invoke(app, ["juno", "rec", str(tmp_path / "none.root"), str(output)])
    assert result.exit_code == 1
    assert "error:" in result.output and "no such file" in result.output
    assert not output.exists()


def test_cli_refuses_a_sample_fraction_outside_0_1(app: typer.Typer, tmp_path: Path) -> None:
    args = ["juno", "rec", "in.root", str(tmp_path / "out.root"), "--sample-fraction", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "sample-fraction" in result.output
