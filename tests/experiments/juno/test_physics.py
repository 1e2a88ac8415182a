"""The event generator: light yield, hit times, PMT constants, dark, dead and hot PMTs."""

from __future__ import annotations

import numpy as np
import pytest

from runwatch.experiments.juno import detector, formats, physics
from runwatch.experiments.juno.geometry import Geometry, load_geometry
from runwatch.experiments.juno.physics import (
    EVENT_KINDS,
    PmtTruth,
    RawChunk,
    TruthChunk,
    make_pmt_truth,
    simulate_chunk,
)


@pytest.fixture(scope="module")
def geometry() -> Geometry:
    return load_geometry()


def quiet_pmts(seed: int = 1) -> PmtTruth:
    """PMTs with their true constants but no dark counts: every hit is light."""
    pmts = make_pmt_truth(np.random.default_rng(seed))
    return PmtTruth(
        pmts.gain_adc_per_pe, pmts.time_offset_ns, np.zeros(detector.N_PMT), pmts.dead, pmts.hot
    )


def event_of_hits(raw: RawChunk) -> np.ndarray:
    return np.repeat(np.arange(len(raw)), raw.nhit)


def test_an_event_at_the_centre_yields_pe_per_mev_times_energy(geometry: Geometry) -> None:
    rng = np.random.default_rng(2)
    for energy, n in ((1.0, 300), (4.0, 100)):
        _, truth = simulate_chunk(
            rng, geometry, quiet_pmts(), n, energy_mev=energy, position_mm=(0, 0, 0), waves=False
        )
        expected = detector.PE_PER_MEV * energy
        # Poisson: the mean of n events is within 5 standard errors
        assert abs(truth.n_pe.mean() - expected) < 5 * np.sqrt(expected / n)
        assert truth.n_pe.std() == pytest.approx(np.sqrt(expected), rel=0.25)
        assert set(truth.kind) == {0}


def test_hits_come_after_the_time_of_flight(geometry: Geometry) -> None:
    rng = np.random.default_rng(3)
    pmts = quiet_pmts()
    raw, truth = simulate_chunk(rng, geometry, pmts, 50, energy_mev=2.0, waves=False)
    event = event_of_hits(raw)
    vertex = np.column_stack([truth.x_mm, truth.y_mm, truth.z_mm])[event]
    flight = np.linalg.norm(geometry.positions[raw.pmt_id] - vertex, axis=1)
    true_time = raw.tdc - pmts.time_offset_ns[raw.pmt_id]
    residual = true_time - truth.t0_ns[event] - flight / detector.LIGHT_SPEED_MM_PER_NS
    # only the transit-time spread can make a photon early: never by 6 sigma
    assert residual.min() > -6 * detector.TTS_SIGMA_NS
    # first hits: mostly the fast scintillation component, a few ns after the flight
    assert 0 < np.median(residual) < detector.SCINTILLATION_TAU_NS[0]
    assert np.all(truth.t0_ns > detector.TRIGGER_TIME_NS - 10)


def test_the_true_gains_and_time_offsets_are_applied(geometry: Geometry) -> None:
    rng = np.random.default_rng(4)
    pmts = quiet_pmts()
    raw, truth = simulate_chunk(rng, geometry, pmts, 100, waves=False)
    npe = raw.adc / pmts.gain_adc_per_pe[raw.pmt_id]
    per_event = np.bincount(event_of_hits(raw), weights=npe, minlength=len(raw))
    # summed single-PE charges of 30 % resolution: within 5 sigma of the true count
    tolerance = 5 * physics.SPE_RESOLUTION * np.sqrt(truth.n_pe) + 1
    assert np.all(np.abs(per_event - truth.n_pe) < tolerance)
    # without the offsets the times line up: the residual does not follow the offset
    event = event_of_hits(raw)
    vertex = np.column_stack([truth.x_mm, truth.y_mm, truth.z_mm])[event]
    flight = np.linalg.norm(geometry.positions[raw.pmt_id] - vertex, axis=1)
    residual = raw.tdc - truth.t0_ns[event] - flight / detector.LIGHT_SPEED_MM_PER_NS
    slope = np.polyfit(pmts.time_offset_ns[raw.pmt_id], residual, 1)[0]
    assert slope == pytest.approx(1.0, abs=0.05)
    constants = pmts.constants()
    assert np.array_equal(constants.gain_adc_per_pe, pmts.gain_adc_per_pe)
    spread = pmts.gain_adc_per_pe.std() / detector.NOMINAL_GAIN_ADC_PER_PE
    assert spread == pytest.approx(physics.GAIN_SPREAD, rel=0.1)


def test_dead_pmts_never_fire_and_hot_ones_nearly_always(geometry: Geometry) -> None:
    rng = np.random.default_rng(5)
    pmts = make_pmt_truth(rng, dead=40, hot=12)
    dead, hot = np.flatnonzero(pmts.dead), np.flatnonzero(pmts.hot)
    assert (len(dead), len(hot)) == (40, 12)
    assert not np.intersect1d(dead, hot).size
    raw, _ = simulate_chunk(rng, geometry, pmts, 400, waves=False)
    fired = np.bincount(raw.pmt_id, minlength=detector.N_PMT) / len(raw)
    assert fired[dead].max() == 0
    assert fired[hot].min() > 0.99
    explicit = make_pmt_truth(rng, dead=[3, 5], hot=[7])
    assert list(np.flatnonzero(explicit.dead)) == [3, 5]
    assert list(np.flatnonzero(explicit.hot)) == [7]


def test_dead_and_hot_pmts_must_be_real_and_distinct() -> None:
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="outside"):
        make_pmt_truth(rng, dead=[detector.N_PMT])
    with pytest.raises(ValueError, match="both dead and hot"):
        make_pmt_truth(rng, dead=[4], hot=[4, 9])
    with pytest.raises(ValueError, match="cannot make"):
        make_pmt_truth(rng, dead=detector.N_PMT + 1)


def test_a_normal_pmt_fires_in_about_a_tenth_of_physics_events(geometry: Geometry) -> None:
    rng = np.random.default_rng(7)
    pmts = make_pmt_truth(rng, dead=5, hot=5)
    raw, truth = simulate_chunk(rng, geometry, pmts, 1000, waves=False)
    normal = ~(pmts.dead | pmts.hot)
    fired = np.bincount(raw.pmt_id, minlength=detector.N_PMT)[normal] / len(raw)
    # JUNO: ~9-10 %; the DQM's normal band is 5-15 %
    assert 0.085 < fired.mean() < 0.11
    assert np.mean((fired > 0.05) & (fired < 0.15)) > 0.999
    assert set(np.unique(truth.kind)) <= set(EVENT_KINDS) - {0, 6}


def test_events_are_inside_the_scintillator_with_the_spectrum_of_their_kind(
    geometry: Geometry,
) -> None:
    rng = np.random.default_rng(8)
    truth = physics.generate_events(rng, 20_000, first_event_id=0)
    radius = np.sqrt(truth.x_mm**2 + truth.y_mm**2 + truth.z_mm**2)
    assert radius.max() < detector.LS_RADIUS_MM
    # uniform in volume: half of the events beyond 0.794 R
    assert np.mean(radius > 0.5 ** (1 / 3) * detector.LS_RADIUS_MM) == pytest.approx(0.5, abs=0.02)
    for kind, (low, high) in {1: (0.5, 0.5), 2: (0.5, 3.0), 3: (1.46, 1.47), 5: (1.0, 8.0)}.items():
        energy = truth.energy_mev[truth.kind == kind]
        assert len(energy) and low - 1e-3 <= energy.min() and energy.max() <= high + 1e-3
    calib = physics.generate_events(rng, 10, 0, mix=physics.CALIB_MIX)
    assert set(calib.kind) == {6} and not np.any(calib.x_mm)
    with pytest.raises(ValueError, match="mix"):
        physics.generate_events(rng, 10, 0, mix={99: 1.0})
    with pytest.raises(ValueError, match="not inside the PMTs"):
        simulate_chunk(rng, geometry, quiet_pmts(), 1, position_mm=(0, 0, 19_500))


def test_waveforms_hold_the_charge_of_each_hit(geometry: Geometry) -> None:
    rng = np.random.default_rng(9)
    raw, _ = simulate_chunk(rng, geometry, make_pmt_truth(rng), 20)
    samples = detector.WAVE_SAMPLES
    assert raw.wave.dtype == np.int16 and len(raw.wave) == len(raw.adc) * samples
    wave = raw.wave.reshape(-1, samples).astype(np.float64)
    # the integral of a pulse is its charge (baseline noise averages out over many hits)
    assert wave.sum(axis=1).mean() == pytest.approx(raw.adc.mean(), rel=0.01)
    big = raw.adc > 500
    assert np.all(np.abs(wave[big].sum(axis=1) - raw.adc[big]) < 8 * np.sqrt(2 * samples) + 5)


def test_chunks_match_the_tree_formats_and_the_seed_decides_everything(
    geometry: Geometry,
) -> None:
    pmts = make_pmt_truth(np.random.default_rng(10))
    first = simulate_chunk(np.random.default_rng(11), geometry, pmts, 30, first_event_id=500)
    again = simulate_chunk(np.random.default_rng(11), geometry, pmts, 30, first_event_id=500)
    raw, truth = first
    assert isinstance(truth, TruthChunk)
    assert set(raw.branches()) == set(formats.RAW_BRANCHES)
    assert set(truth.branches()) == set(formats.TRUTH_BRANCHES)
    assert list(raw.event_id) == list(range(500, 530)) == list(truth.event_id)
    for name in ("pmt_id", "adc", "tdc", "wave"):
        assert np.array_equal(getattr(raw, name), getattr(again[0], name))
    # each PMT at most once per event, in increasing order
    for start, stop in zip(raw.offsets[:-1], raw.offsets[1:], strict=True):
        assert np.all(np.diff(raw.pmt_id[start:stop]) > 0)
    empty, none = simulate_chunk(np.random.default_rng(12), geometry, pmts, 0)
    assert len(empty) == len(none) == 0 and len(empty.branches()["pmt_id"]) == 0
