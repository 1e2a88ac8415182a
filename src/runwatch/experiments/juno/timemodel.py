"""The hit-time model of the vertex fit: the slope of a hit's log-likelihood, tabulated.

A PMT's recorded time is the first of its ``n`` photo-electrons. Each photo-electron
arrives at ``t0 + d/c + s + j``: ``s`` from the two-component scintillation decay, ``j``
the transit-time spread (Gaussian). The sum ``s + j`` has an exponentially modified
Gaussian density ``f`` with distribution function ``F``; the first of ``n`` has density
``n f (1 - F)^(n - 1)``, narrower and earlier, so hits of many photo-electrons (PMTs
close to an event near the edge) weigh more and are not read as late light. Dark counts
are flat in time: a fraction ``eta`` of a hit's density is the constant ``1 / window``,
which makes the slope vanish far from the prompt light (a dark hit cannot pull the fit).

The fit needs, per hit, only the slope ``d log p / d tau`` of its residual ``tau`` and the
expected curvature (Fisher information) of its row, so both are tabulated once: one row
per photo-electron count (``1..N_MAX``; single photo-electron hits get one row per dark
fraction bin, because that is where the dark counts are) on a 0.2 ns grid. A lookup
(``densefit``) is an index computation and one ``take`` -- about 1 ns a hit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runwatch.experiments.juno import detector

LO_NS = -40.0
"""Residuals below this are on the flat (dark-count) plateau: the slope is zero there."""
HI_NS = 200.0
"""The slow scintillation component is 1e-5 of its start 200 ns later: flat again."""
STEP_NS = 0.2
"""Grid step: small beside the 3 ns transit-time spread, coarse enough to stay in cache."""
N_MAX = 64
"""Photo-electron counts above this use the row of N_MAX (sharp enough already)."""
ETA_BINS = 24
"""Dark-fraction bins of the single photo-electron rows, from 0 to ETA_MAX."""
ETA_MAX = 0.96
MULTI_PE_ETA = 0.02
"""Dark fraction assumed for hits of two or more photo-electrons: a dark count whose
charge fluctuated up is rare, but a small flat term keeps one from pulling the fit."""


def _emg(tau_ns: np.ndarray, decay_ns: float, sigma_ns: float) -> tuple[np.ndarray, np.ndarray]:
    """Density and distribution function of exponential(decay) + Gaussian(sigma)."""
    erfc = np.vectorize(math.erfc)
    lam = 1.0 / decay_ns
    arg = (sigma_ns * lam - tau_ns / sigma_ns) / math.sqrt(2.0)
    tail = np.exp(0.5 * (sigma_ns * lam) ** 2 - lam * tau_ns) * 0.5 * erfc(arg)
    gauss_cdf = 0.5 * erfc(-tau_ns / (sigma_ns * math.sqrt(2.0)))
    return lam * tail, gauss_cdf - tail


def single_pe_profile(tau_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Density and distribution function of one photo-electron's residual (float64)."""
    density = np.zeros_like(tau_ns)
    cdf = np.zeros_like(tau_ns)
    for decay, weight in zip(
        detector.SCINTILLATION_TAU_NS, detector.SCINTILLATION_WEIGHTS, strict=True
    ):
        f, big_f = _emg(tau_ns, decay, detector.TTS_SIGMA_NS)
        density += weight * f
        cdf += weight * big_f
    return density, np.clip(cdf, 0.0, 1.0)


def first_hit_density(tau_ns: np.ndarray, n_pe: int) -> np.ndarray:
    """Density of the first of ``n_pe`` photo-electrons' residuals."""
    return _first_of(*single_pe_profile(tau_ns), n_pe)


def _first_of(density: np.ndarray, cdf: np.ndarray, n_pe: int) -> np.ndarray:
    return n_pe * density * (1.0 - cdf) ** (n_pe - 1)


@dataclass(frozen=True)
class TimeModel:
    """Tabulated log-likelihood slope and Fisher information of hit-time residuals.

    ``slope`` is flat (rows x bins, float32) with a last all-zero row for padding;
    ``info`` holds one expected curvature per row. ``window_ns`` is the length of the
    time window the hits were selected in, which sets the dark counts' flat density.
    """

    slope: np.ndarray
    info: np.ndarray
    n_bins: int
    window_ns: float
    box_centre_ns: float  # centre of the 10 ns holding most of a photo-electron's profile

    @property
    def pad_row(self) -> int:
        """The all-zero row that padding hits point at."""
        return len(self.info) - 1

    @classmethod
    def build(cls, window_ns: float) -> TimeModel:
        tau = np.arange(LO_NS, HI_NS + STEP_NS / 2, STEP_NS)
        etas = np.linspace(0.0, ETA_MAX, ETA_BINS)
        rows = [(1, float(eta)) for eta in etas]
        rows += [(n, MULTI_PE_ETA) for n in range(2, N_MAX + 1)]
        slopes, infos = [], []
        profile = single_pe_profile(tau)
        for n_pe, eta in rows:
            density = (1.0 - eta) * _first_of(*profile, n_pe) + eta / window_ns
            slope = np.gradient(density, STEP_NS) / density
            slopes.append(slope)
            # Expected curvature over the whole window: the plateau adds no information.
            infos.append(float(np.sum(density * slope**2) * STEP_NS))
        slopes.append(np.zeros_like(tau))
        infos.append(0.0)
        return cls(
            slope=np.ascontiguousarray(np.concatenate(slopes), dtype=np.float32),
            info=np.asarray(infos, dtype=np.float32),
            n_bins=len(tau),
            window_ns=window_ns,
            box_centre_ns=_densest_box_centre(tau, profile[0], 10.0),
        )

    def rows(self, n_pe: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """Row of each hit from its photo-electron count and its event's dark fraction."""
        n_pe = np.clip(n_pe, 1, N_MAX).astype(np.int32)
        eta_bin = np.rint(np.clip(eta, 0.0, ETA_MAX) * ((ETA_BINS - 1) / ETA_MAX))
        single = n_pe == 1
        rows: np.ndarray = eta_bin.astype(np.int32) * single + (ETA_BINS + n_pe - 2) * ~single
        return rows


def _densest_box_centre(tau: np.ndarray, density: np.ndarray, width_ns: float) -> float:
    """Centre of the ``width_ns`` interval holding the most of ``density``."""
    steps = round(width_ns / STEP_NS)
    cumulative = np.cumsum(density)
    held = cumulative[steps:] - cumulative[:-steps]
    return float(tau[int(np.argmax(held))] + width_ns / 2)


_LOG_N = np.log(np.maximum(np.arange(N_MAX + 2), 1)).astype(np.float32)
_LOG_FACTORIAL = np.cumsum(_LOG_N).astype(np.float32)


def likeliest_photo_electrons(
    charge: np.ndarray, expected: np.ndarray, spe_resolution: float
) -> np.ndarray:
    """The most probable photo-electron count of each hit, from its charge and the mean
    count its PMT expects: Poisson(n; expected) x Gaussian(charge; n, spe_resolution
    x sqrt(n)), over n >= 1 within one of the rounded charge (1-D arrays).

    Rounding the charge alone mistakes a far PMT's single photo-electron with a high
    charge (5 % of them are above 1.5) for two, whose first time is earlier: the far
    side then looks late and the vertex is pulled outwards (13 mm measured at 4 MeV).
    """
    log_mean = np.log(np.maximum(expected, np.float32(1e-6)))
    centre = np.clip(np.rint(charge), 2, N_MAX - 1).astype(np.int32)
    inv_two_var = np.float32(0.5 / spe_resolution**2)

    def log_posterior(n: np.ndarray) -> np.ndarray:
        n_float = n.astype(np.float32)
        score: np.ndarray = n_float * log_mean
        score -= _LOG_FACTORIAL.take(n) + np.float32(0.5) * _LOG_N.take(n)
        score -= (charge - n_float) ** 2 * inv_two_var / n_float
        return score

    below, at, above = (log_posterior(centre + np.int32(s)) for s in (-1, 0, 1))
    # Arithmetic on the comparisons rather than np.where or masked assignment, which
    # measured several times slower per hit.
    up_from_below = at > below
    up_again = above > np.maximum(below, at)
    step = up_from_below.astype(np.int32) * (~up_again) + up_again.astype(np.int32) * 2
    best: np.ndarray = centre - 1 + step
    return best
