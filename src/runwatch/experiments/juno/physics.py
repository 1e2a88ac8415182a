"""JUNO's central detector as an event generator: vertices, energies, light, PMT hits.

Pure functions of a seeded ``numpy.random.Generator``; nothing here does I/O. The API::

    from runwatch.experiments.juno.geometry import load_geometry
    from runwatch.experiments.juno.physics import make_pmt_truth, simulate_chunk

    rng = np.random.default_rng(42)
    geometry = load_geometry()                   # built-in 17,612 PMTs
    pmts = make_pmt_truth(rng, geometry.n_pmt)   # true gains, time offsets, dead/hot PMTs
    raw, truth = simulate_chunk(rng, geometry, pmts, n_events=500, first_event_id=0)
    raw.branches()     # formats.RAW_BRANCHES   -> rootio.TreeWriter.extend
    truth.branches()   # formats.TRUTH_BRANCHES
    pmts.constants()   # constants.PmtConstants (the truth the calib step should find)

``simulate_chunk(..., energy_mev=2.0, position_mm=(0, 0, 5000))`` fixes the energy
(kind 0, "fixed_energy") and/or the vertex of every event (a float or one value per event;
a point or an ``n x 3`` array), as a reconstruction test needs. ``raw`` holds flat hit
arrays plus ``nhit`` per event (``raw.pmt_id[raw.offsets[i]:raw.offsets[i + 1]]`` are
event ``i``'s), ``truth`` one row per event.

The model, vectorised over a chunk of events (no Python loop per event or per PMT):

- vertices uniform in the liquid-scintillator sphere; energies from a mix of event kinds
  (``EVENT_KINDS``, ``PHYSICS_MIX``): low-energy radioactivity and positron-like events;
- the mean photo-electrons in PMT ``j`` are proportional to the solid angle it subtends
  (cosine of incidence over distance squared) times ``exp(-d / attenuation length)``,
  normalised so that an event at the centre yields ``PE_PER_MEV * E`` on average; the
  count is Poisson;
- each photo-electron arrives at ``t0 + d / c + scintillation time + transit-time
  spread``; a PMT records its first one and the sum of the single-PE charges, times its
  gain; its time offset is added to the time;
- dark counts at each PMT's dark rate, uniform in the readout window, are merged with the
  light on the same PMT (earliest time, summed charge); dead PMTs never fire, hot PMTs
  fire in nearly every event;
- a waveform of ``detector.WAVE_SAMPLES`` samples per fired PMT: a pulse whose integral
  is the charge, plus baseline noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from runwatch.experiments.juno import detector
from runwatch.experiments.juno.constants import PmtConstants
from runwatch.experiments.juno.geometry import Geometry
from runwatch.experiments.juno.rootio import jagged

EVENT_KINDS = {
    0: "fixed_energy",  # energy given by the caller (tests, studies)
    1: "po210_alpha",  # 5.3 MeV alpha, quenched to ~0.5 MeV visible
    2: "beta_continuum",  # U/Th-chain betas, falling from 0.5 to 3 MeV
    3: "k40_gamma",  # 1.461 MeV
    4: "tl208_gamma",  # 2.614 MeV
    5: "positron",  # inverse-beta-decay-like prompt signal, 1-8 MeV
    6: "co60_source",  # calibration source at the centre, 2.506 MeV (both gammas)
}
"""Event kinds stored in the truth's ``kind``."""

PHYSICS_MIX: Mapping[int, float] = {1: 0.74, 2: 0.18, 3: 0.03, 4: 0.01, 5: 0.04}
"""Fractions of each kind in a Physics run: mostly radioactivity near threshold, as at
JUNO (mean energy ~0.8 MeV), which puts a normal PMT's fired fraction at ~9.7 %, dark
counts included."""

CALIB_MIX: Mapping[int, float] = {6: 1.0}
"""A calibration run: a Co-60 source deployed at the centre."""

LINES_MEV = {1: 0.5, 3: 1.461, 4: 2.614, 6: 2.506}
CALIB_SOURCE_MM = (0.0, 0.0, 0.0)

GAIN_SPREAD = 0.10
"""Relative spread (one sigma) of the true gains around NOMINAL_GAIN_ADC_PER_PE."""
TIME_OFFSET_SIGMA_NS = 3.0
"""Spread of the true time offsets (cables, electronics)."""
SPE_RESOLUTION = 0.30
"""Relative width of one photo-electron's charge."""
SPE_FLOOR = 0.05
"""Smallest charge of a hit, in photo-electrons (a Gaussian tail would go negative)."""
T0_JITTER_NS = 2.0
"""Spread of an event's time in the readout window around TRIGGER_TIME_NS."""
WAVE_NOISE_BITS = 8
"""Baseline noise of a waveform sample: set bits of a random byte, less their mean."""
WAVE_PRE_SAMPLES = 3
"""Samples kept before the hit time."""

SIGNAL_BATCH = 64
"""Events whose light is computed at once (64 x 17,612 PMTs: 4.5 MB per float32 array);
fastest measured, between cache misses (more) and per-batch overhead (fewer)."""


@dataclass(frozen=True)
class PmtTruth:
    """The true state of each PMT in a simulated run, by PMT id."""

    gain_adc_per_pe: np.ndarray
    time_offset_ns: np.ndarray
    dark_rate_hz: np.ndarray
    dead: np.ndarray  # bool
    hot: np.ndarray  # bool

    @property
    def n_pmt(self) -> int:
        return len(self.gain_adc_per_pe)

    def constants(self) -> PmtConstants:
        """The constants a perfect calibration would find."""
        return PmtConstants(self.gain_adc_per_pe, self.time_offset_ns)


def make_pmt_truth(
    rng: np.random.Generator,
    n_pmt: int = detector.N_PMT,
    *,
    dead: int | Sequence[int] = 0,
    hot: int | Sequence[int] = 0,
) -> PmtTruth:
    """Gains, time offsets and dark rates of ``n_pmt`` PMTs drawn from ``rng``.

    ``dead`` and ``hot`` are a count (PMTs chosen at random) or explicit ids; a PMT
    cannot be both.
    """
    gain = detector.NOMINAL_GAIN_ADC_PER_PE * rng.normal(1.0, GAIN_SPREAD, n_pmt).clip(0.5)
    offset = rng.normal(0.0, TIME_OFFSET_SIGMA_NS, n_pmt)
    dead_ids = _choose(rng, n_pmt, dead, exclude=np.array([], dtype=np.int64), what="dead")
    hot_ids = _choose(rng, n_pmt, hot, exclude=dead_ids, what="hot")
    dead_mask = np.zeros(n_pmt, dtype=bool)
    dead_mask[dead_ids] = True
    hot_mask = np.zeros(n_pmt, dtype=bool)
    hot_mask[hot_ids] = True
    rate = np.where(hot_mask, detector.HOT_DARK_RATE_HZ, detector.DARK_RATE_HZ)
    rate[dead_mask] = 0.0
    return PmtTruth(gain, offset, rate, dead_mask, hot_mask)


def _choose(
    rng: np.random.Generator,
    n_pmt: int,
    spec: int | Sequence[int],
    exclude: np.ndarray,
    what: str,
) -> np.ndarray:
    if isinstance(spec, int | np.integer):
        if not 0 <= spec <= n_pmt - len(exclude):
            raise ValueError(f"cannot make {spec} of {n_pmt} PMTs {what}")
        free = np.setdiff1d(np.arange(n_pmt), exclude)
        return np.sort(rng.choice(free, size=int(spec), replace=False))
    ids = np.unique(np.asarray(spec, dtype=np.int64))
    outside = ids[(ids < 0) | (ids >= n_pmt)]
    if len(outside):
        raise ValueError(f"{what} PMT id {outside[0]} is outside 0..{n_pmt - 1}")
    both = np.intersect1d(ids, exclude)
    if len(both):
        raise ValueError(f"PMT {both[0]} cannot be both dead and {what}")
    return ids


@dataclass(frozen=True)
class RawChunk:
    """Raw events as the DAQ writes them: per-event values and flat hit arrays.

    Event ``i``'s hits are ``pmt_id[offsets[i]:offsets[i + 1]]`` (and ``adc``, ``tdc``),
    in increasing PMT id; its waveform samples are ``wave`` over the same range times
    ``detector.WAVE_SAMPLES``.
    """

    event_id: np.ndarray  # int64
    timestamp_ns: np.ndarray  # int64
    trigger_type: np.ndarray  # int32
    nhit: np.ndarray  # int32, fired PMTs per event
    pmt_id: np.ndarray  # int32
    adc: np.ndarray  # float32
    tdc: np.ndarray  # float32
    wave: np.ndarray  # int16, empty when waveforms were not asked for

    def __len__(self) -> int:
        return len(self.event_id)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.nhit, dtype=np.int64)])

    def branches(self) -> dict[str, Any]:
        """The chunk as ``formats.RAW_BRANCHES``, jagged where the format says ``var``."""
        samples = detector.WAVE_SAMPLES if len(self.wave) else 0
        return {
            "event_id": self.event_id,
            "timestamp_ns": self.timestamp_ns,
            "trigger_type": self.trigger_type,
            "pmt_id": jagged(self.pmt_id, self.nhit),
            "adc": jagged(self.adc, self.nhit),
            "tdc": jagged(self.tdc, self.nhit),
            "wave": jagged(self.wave, self.nhit * samples),
        }


@dataclass(frozen=True)
class TruthChunk:
    """What was generated, one entry per event (``formats.TRUTH_BRANCHES``)."""

    event_id: np.ndarray  # int64
    kind: np.ndarray  # int32, a key of EVENT_KINDS
    x_mm: np.ndarray  # float32
    y_mm: np.ndarray
    z_mm: np.ndarray
    t0_ns: np.ndarray  # float32, event time in the readout window
    energy_mev: np.ndarray  # float32
    n_pe: np.ndarray  # int32, signal photo-electrons (no dark counts)

    def __len__(self) -> int:
        return len(self.event_id)

    def branches(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class _Hits:
    """Hits sorted by ``key = event index * n_pmt + pmt id``."""

    key: np.ndarray  # int64
    time_ns: np.ndarray  # float32, true time in the readout window
    charge_pe: np.ndarray  # float32


def simulate_chunk(
    rng: np.random.Generator,
    geometry: Geometry,
    pmt_truth: PmtTruth,
    n_events: int,
    first_event_id: int = 0,
    *,
    mix: Mapping[int, float] = PHYSICS_MIX,
    energy_mev: float | np.ndarray | None = None,
    position_mm: Sequence[float] | np.ndarray | None = None,
    timestamps_ns: np.ndarray | None = None,
    trigger_type: int = 1,
    waves: bool = True,
) -> tuple[RawChunk, TruthChunk]:
    """``n_events`` raw events numbered from ``first_event_id``, and their truth.

    ``timestamps_ns`` defaults to a regular 1 kHz clock from 0. Memory grows with
    ``n_events`` (~30 MB per 1,000 events of hits, twice that with waveforms): callers
    stream long runs in chunks of a few hundred to a few thousand events.
    """
    if pmt_truth.n_pmt != geometry.n_pmt:
        raise ValueError(f"{pmt_truth.n_pmt} PMT constants for {geometry.n_pmt} PMTs")
    if position_mm is not None:
        reach = np.linalg.norm(np.asarray(position_mm, dtype=np.float64), axis=-1).max()
        if reach >= geometry.radius_mm.min():
            raise ValueError(f"a vertex {reach:.0f} mm from the centre is not inside the PMTs")
    if n_events < 0:
        raise ValueError(f"n_events must not be negative, got {n_events}")
    truth = generate_events(rng, n_events, first_event_id, mix, energy_mev, position_mm)
    hits, n_pe = _hits(rng, geometry, pmt_truth, truth)
    truth = _with_n_pe(truth, n_pe)
    if timestamps_ns is None:
        timestamps_ns = (first_event_id + np.arange(n_events, dtype=np.int64)) * 1_000_000
    raw = _digitise(rng, hits, pmt_truth, truth.event_id, timestamps_ns, trigger_type, waves)
    return raw, truth


def generate_events(
    rng: np.random.Generator,
    n_events: int,
    first_event_id: int,
    mix: Mapping[int, float] = PHYSICS_MIX,
    energy_mev: float | np.ndarray | None = None,
    position_mm: Sequence[float] | np.ndarray | None = None,
) -> TruthChunk:
    """Kinds, energies, vertices and times of ``n_events`` events (``n_pe`` left at 0)."""
    if energy_mev is None:
        kind = _draw_kinds(rng, n_events, mix)
        energy = _draw_energies(rng, kind)
    else:
        kind = np.zeros(n_events, dtype=np.int32)
        energy = np.broadcast_to(np.asarray(energy_mev, dtype=np.float64), (n_events,)).copy()
    if position_mm is None:
        vertex = uniform_in_sphere(rng, n_events, detector.LS_RADIUS_MM)
        vertex[kind == 6] = CALIB_SOURCE_MM
    else:
        vertex = np.broadcast_to(np.asarray(position_mm, dtype=np.float64), (n_events, 3))
    t0 = detector.TRIGGER_TIME_NS + rng.normal(0.0, T0_JITTER_NS, n_events)
    return TruthChunk(
        event_id=first_event_id + np.arange(n_events, dtype=np.int64),
        kind=kind.astype(np.int32),
        x_mm=vertex[:, 0].astype(np.float32),
        y_mm=vertex[:, 1].astype(np.float32),
        z_mm=vertex[:, 2].astype(np.float32),
        t0_ns=t0.astype(np.float32),
        energy_mev=energy.astype(np.float32),
        n_pe=np.zeros(n_events, dtype=np.int32),
    )


def uniform_in_sphere(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    """``n`` points (n x 3) uniform in a sphere of ``radius``."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    return direction * (radius * np.cbrt(rng.random(n)))[:, None]


def _draw_kinds(rng: np.random.Generator, n: int, mix: Mapping[int, float]) -> np.ndarray:
    unknown = sorted(set(mix) - set(EVENT_KINDS))
    if unknown or not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"not a mix of EVENT_KINDS with positive fractions: {dict(mix)}")
    kinds = np.fromiter(mix, dtype=np.int32)
    weights = np.fromiter(mix.values(), dtype=np.float64)
    return rng.choice(kinds, size=n, p=weights / weights.sum())


def _draw_energies(rng: np.random.Generator, kind: np.ndarray) -> np.ndarray:
    energy = np.zeros(len(kind))
    for code, line in LINES_MEV.items():
        energy[kind == code] = line
    beta = kind == 2
    # density falling linearly from 0.5 to 3 MeV, by inverting its cumulative distribution
    energy[beta] = 3.0 - 2.5 * np.sqrt(rng.random(int(beta.sum())))
    positron = kind == 5
    # 1 MeV of annihilation plus a kinetic energy peaked near 2 MeV, up to 7 MeV
    energy[positron] = 1.0 + 7.0 * rng.beta(2.0, 4.0, int(positron.sum()))
    return energy


def _with_n_pe(truth: TruthChunk, n_pe: np.ndarray) -> TruthChunk:
    values = truth.branches()
    values["n_pe"] = n_pe.astype(np.int32)
    return TruthChunk(**values)


def centre_normalisation(geometry: Geometry) -> float:
    """Sum over PMTs of cos / d^2 * exp(-d / L) for an event at the centre."""
    r = geometry.radius_mm
    return float(np.sum(np.exp(-r / detector.ATTENUATION_LENGTH_MM) / (r * r)))


def _hits(
    rng: np.random.Generator,
    geometry: Geometry,
    pmt_truth: PmtTruth,
    truth: TruthChunk,
) -> tuple[_Hits, np.ndarray]:
    """Every fired (event, PMT) with its first time and charge; signal PEs per event."""
    n_events, n_pmt = len(truth), geometry.n_pmt
    light = _Light(geometry, pmt_truth)
    scale = truth.energy_mev * (detector.PE_PER_MEV / centre_normalisation(geometry))
    vertex = np.column_stack([truth.x_mm, truth.y_mm, truth.z_mm]).astype(np.float32)
    batches = [slice(i, i + SIGNAL_BATCH) for i in range(0, n_events, SIGNAL_BATCH)]
    parts = [light.fired(rng, scale[b], vertex[b], b.start) for b in batches]
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return _Hits(empty, empty.astype(np.float32), empty.astype(np.float32)), empty
    event, pmt, k, mean, d = (np.concatenate(column) for column in zip(*parts, strict=True))
    arrival = truth.t0_ns[event] + d * np.float32(1.0 / detector.LIGHT_SPEED_MM_PER_NS)
    # Each count is a dark count with probability dark / (signal + dark mean).
    dark_fraction = light.dark[pmt] / mean
    time, charge, signal_pe = _first_times_and_charges(rng, k, arrival, dark_fraction)
    n_pe = np.bincount(event, weights=signal_pe, minlength=n_events).astype(np.int64)
    return _Hits(event * n_pmt + pmt, time, charge), n_pe


class _Light:
    """Mean counts (light and dark) of every (event, PMT) pair, and which pairs fired.

    Works in float32 on three scratch arrays of SIGNAL_BATCH x N_PMT reused from batch to
    batch: fresh arrays each time would cost page faults and cache misses.
    """

    def __init__(self, geometry: Geometry, pmt_truth: PmtTruth) -> None:
        self.n_pmt = geometry.n_pmt
        radius = geometry.radius_mm
        # Both geometric factors of every pair come out of one matrix product each:
        # d^2 = [v, |v|^2, 1] . [-2 R u, 1, R^2] and s (R - u.v) = s [v, 1] . [-u, R].
        self.to_distance2 = np.vstack(
            [-2.0 * radius * geometry.unit.T, np.ones_like(radius), radius * radius]
        ).astype(np.float32)
        self.to_facing = np.vstack([-geometry.unit.T, radius]).astype(np.float32)
        window_s = detector.READOUT_WINDOW_NS * 1e-9
        self.dark = (pmt_truth.dark_rate_hz * window_s).astype(np.float32)
        self.alive = (~pmt_truth.dead).astype(np.float32) if pmt_truth.dead.any() else None
        shape = (SIGNAL_BATCH, self.n_pmt)
        self.scratch = [np.empty(shape, dtype=np.float32) for _ in range(3)]

    def fired(
        self, rng: np.random.Generator, scale: np.ndarray, vertex: np.ndarray, first: int
    ) -> tuple[np.ndarray, ...]:
        """Event index, PMT id, counts, mean count and distance of each fired pair."""
        facing, d2, d = (array[: len(vertex)] for array in self.scratch)
        ones = np.ones((len(vertex), 1), dtype=np.float32)
        square = np.einsum("ij,ij->i", vertex, vertex)[:, None]
        np.matmul(np.hstack([vertex, square, ones]), self.to_distance2, out=d2)
        np.sqrt(d2, out=d)
        # light in a PMT ~ cos(incidence) / d^2 = (R - u.v) / d^3 (the PMT faces the centre)
        scaled = scale.astype(np.float32)[:, None]
        np.matmul(np.hstack([vertex, ones]) * scaled, self.to_facing, out=facing)
        d2 *= d
        facing /= d2
        mean = np.multiply(d, np.float32(-1.0 / detector.ATTENUATION_LENGTH_MM), out=d2)
        np.exp(mean, out=mean)
        mean *= facing
        if self.alive is not None:
            mean *= self.alive  # dead PMTs see no light (and have no dark counts)
        mean += self.dark  # light and dark counts: one Poisson process of the summed rate
        # P(fired) = 1 - exp(-mean); 16 random bits per pair (to 2^-16) are 20x cheaper
        # than a float, and this is the one random number drawn for every pair.
        threshold = np.negative(mean, out=facing)
        np.expm1(threshold, out=threshold)
        threshold *= np.float32(-65536.0)
        bits = rng.bit_generator.random_raw(-(-mean.size // 4)).view(np.uint16)
        fired = np.flatnonzero(bits[: mean.size] < threshold.ravel())
        mean_fired = mean.ravel()[fired]
        k = _zero_truncated_poisson(rng, mean_fired.astype(np.float64))
        event, pmt = np.divmod(fired, self.n_pmt)
        return event + first, pmt, k, mean_fired, d.ravel()[fired]


def _zero_truncated_poisson(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    """Poisson counts of ``mean`` given that they are at least 1 (the PMT fired).

    By inversion of the cumulative distribution from a uniform drawn above P(0): most
    counts are 1 and are settled in the first step; only the rare large ones loop on.
    (NumPy's Poisson costs ~45 ns a number here; this ~10.)
    """
    k = np.ones(len(mean), dtype=np.int64)
    large = mean > _ZTP_LARGE_MEAN
    # where P(0) < 1e-9 a plain Poisson is the truncated one
    k[large] = np.maximum(rng.poisson(mean[large]), 1)
    todo = np.flatnonzero(~large)
    m = mean[todo]
    p_zero = np.exp(-m)
    target = p_zero + rng.random(len(m)) * (1.0 - p_zero)
    term = p_zero * m  # P(1)
    cumulative = p_zero + term
    n = 1
    while len(todo):
        more = target > cumulative
        todo, m, target = todo[more], m[more], target[more]
        n += 1
        term = term[more] * m / n
        cumulative = cumulative[more] + term
        k[todo] = n
    return k


_ZTP_LARGE_MEAN = 20.0


def _first_times_and_charges(
    rng: np.random.Generator, k: np.ndarray, arrival: np.ndarray, dark_fraction: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First time, summed charge (PE) and signal PEs of hits with ``k`` counts each.

    Most hits have one count: they are done without expanding to one entry per count.
    """
    time, dark = _count_times(rng, arrival, dark_fraction)
    signal_pe = k - dark
    multi = np.flatnonzero(k > 1)
    if len(multi):
        extra = k[multi] - 1
        owner = np.repeat(multi, extra)
        more_time, more_dark = _count_times(rng, arrival[owner], dark_fraction[owner])
        starts = np.cumsum(extra) - extra
        time[multi] = np.minimum(time[multi], np.minimum.reduceat(more_time, starts))
        signal_pe[multi] -= np.add.reduceat(more_dark.view(np.uint8), starts, dtype=np.int64)
    # the sum of k Gaussian single-PE charges is itself Gaussian
    spread = np.sqrt(k, dtype=np.float32) * rng.standard_normal(len(k), dtype=np.float32)
    charge = k.astype(np.float32) + np.float32(SPE_RESOLUTION) * spread
    return time, np.maximum(charge, np.float32(SPE_FLOOR)), signal_pe


def _count_times(
    rng: np.random.Generator, arrival: np.ndarray, dark_fraction: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Times of one count per entry, and whether it was a dark count.

    One uniform number decides both whether a count is dark (below ``dark_fraction``)
    and, rescaled, its dark time or its scintillation component.
    """
    u = rng.random(len(arrival), dtype=np.float32)
    dark = u < dark_fraction
    light = np.divide(u - dark_fraction, 1 - dark_fraction, out=np.zeros_like(u), where=~dark)
    tau = np.where(light < detector.SCINTILLATION_WEIGHTS[0], *_TAU_NS)
    time = tau * rng.standard_exponential(len(u), dtype=np.float32)
    time += arrival
    time += np.float32(detector.TTS_SIGMA_NS) * rng.standard_normal(len(u), dtype=np.float32)
    dark_time = np.divide(u, dark_fraction, out=np.zeros_like(u), where=dark)
    dark_time *= np.float32(detector.READOUT_WINDOW_NS)
    return np.where(dark, dark_time, time), dark


_TAU_NS = tuple(np.float32(tau) for tau in detector.SCINTILLATION_TAU_NS)


def _digitise(
    rng: np.random.Generator,
    hits: _Hits,
    pmt_truth: PmtTruth,
    event_id: np.ndarray,
    timestamps_ns: np.ndarray,
    trigger_type: int,
    waves: bool,
) -> RawChunk:
    """Hits as the electronics record them: through each PMT's gain and time offset."""
    n_events = len(event_id)
    event = hits.key // pmt_truth.n_pmt
    pmt = (hits.key % pmt_truth.n_pmt).astype(np.int32)
    adc = (hits.charge_pe * pmt_truth.gain_adc_per_pe[pmt]).astype(np.float32)
    tdc = (hits.time_ns + pmt_truth.time_offset_ns[pmt]).astype(np.float32)
    return RawChunk(
        event_id=event_id,
        timestamp_ns=np.asarray(timestamps_ns, dtype=np.int64),
        trigger_type=np.full(n_events, trigger_type, dtype=np.int32),
        nhit=np.bincount(event, minlength=n_events).astype(np.int32),
        pmt_id=pmt,
        adc=adc,
        tdc=tdc,
        wave=waveforms(rng, adc) if waves else np.zeros(0, dtype=np.int16),
    )


def _pulse_template(samples: int) -> np.ndarray:
    """A PMT pulse sampled every ns from WAVE_PRE_SAMPLES before its start; sums to 1."""
    t = np.arange(samples, dtype=np.float64) - WAVE_PRE_SAMPLES + 0.5
    # rise ~2 ns, fall ~6 ns: close enough to a 20-inch PMT's pulse for a data volume
    shape = np.where(t > 0, np.exp(-t / 6.0) - np.exp(-t / 2.0), 0.0)
    template: np.ndarray = (shape / shape.sum()).astype(np.float32)
    return template


_TEMPLATE = _pulse_template(detector.WAVE_SAMPLES)
_MAX_ADC = np.float32(32767 / _TEMPLATE.max())  # beyond it the digitiser saturates
WAVE_BLOCK = 16_384
"""Hits whose waveforms are made at once: 1 MB of float32 samples stays in cache."""


def waveforms(rng: np.random.Generator, adc: np.ndarray) -> np.ndarray:
    """Flat int16 waveforms, ``detector.WAVE_SAMPLES`` per hit: pulse of integral ``adc``.

    The baseline noise is the number of set bits in a random byte minus 4: binomial,
    sigma sqrt(2) ADC counts, nearly Gaussian and 20x cheaper to draw than a Gaussian.
    """
    samples = detector.WAVE_SAMPLES
    size = len(adc) * samples
    raw = rng.bit_generator.random_raw(-(-size // 8)).view(np.uint8)[:size]
    noise = (np.bitwise_count(raw).view(np.int8) - np.int8(WAVE_NOISE_BITS // 2)).reshape(
        len(adc), samples
    )
    amplitude = np.minimum(adc, _MAX_ADC)
    wave = np.empty((len(adc), samples), dtype=np.int16)
    for start in range(0, len(adc), WAVE_BLOCK):
        block = slice(start, start + WAVE_BLOCK)
        pulse = np.multiply.outer(amplitude[block], _TEMPLATE)
        pulse += noise[block]
        np.rint(pulse, out=pulse)
        wave[block] = pulse
    return wave.ravel()
