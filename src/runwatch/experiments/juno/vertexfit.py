"""Vertex, time and energy of a batch of events from their calibrated hits (no I/O).

Per event (docs/juno.md, "Reconstruction", says why each step is what it is): (1) the
prompt window -- the peak of the raw hit times, from which a window of
``PROMPT_WINDOW_NS`` keeps all the event's light and cuts half of the dark counts; (2) a
start vertex, the charge centroid of the window's PMTs (expected dark charge removed)
pushed out to the vertex radius whose expected centroid it is (``LightModel``); then, in
``densefit``, (3) each hit's likeliest photo-electron count, (4) a start time from the
densest residuals ``t - d/c``, (5) a maximum-likelihood fit of x, y, z, t0 to the hit
times (``TimeModel``) by a fixed number of Fisher-scoring steps and (6) the energy, the
in-time charge less the expected dark charge over the light the fitted radius yields.
PMTs the caller marks unusable (``unusable``) are left out first.

Steps (1)-(2) work on the flat hits of all the events with per-event sums
(``np.add.reduceat``); the fit works on batches of events padded into dense matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from runwatch.experiments.juno import detector
from runwatch.experiments.juno.densefit import DenseBatch, FitSettings, boxed_argmax
from runwatch.experiments.juno.lightmodel import LightModel
from runwatch.experiments.juno.timemodel import TimeModel

PEAK_BIN_NS = 8.0
"""Bin of the raw-time histogram that finds the prompt light (boxed over 3 bins)."""
PROMPT_BEFORE_NS = 200.0
"""The earliest light can precede the raw-time peak by the largest difference of times
of flight (37 m - 1.7 m at 0.2 m/ns: 180 ns) plus the profile's rise."""
PROMPT_AFTER_NS = 280.0
"""The latest light follows the peak by the time-of-flight spread plus five slow decays."""
PROMPT_WINDOW_NS = PROMPT_BEFORE_NS + PROMPT_AFTER_NS
BATCH_HITS = 131_072
"""Hits fitted together (padded): big enough that NumPy's per-call overhead is small
beside the work, small enough that a work matrix (512 kB) stays in the core's cache.
Measured on 5,000-hit events: 25 % faster than 32k or 256k."""
GROUP_HITS = 262_144
"""Hits whose flat steps (window, start vertex) run at once: their temporaries (1-2 MB)
stay in cache and are reused, where a whole 2,000-event chunk's (80 MB each) cost page
faults -- a third of the time went to the kernel."""
MIN_HITS = 20
"""Fewer hits in the prompt window is no event (a random trigger, say): fit_ok false."""


@dataclass(frozen=True)
class Hits:
    """Calibrated hits of a batch of events, flattened: ``counts[i]`` hits of event i."""

    counts: np.ndarray
    pmt_id: np.ndarray
    npe: np.ndarray
    time_ns: np.ndarray

    def without(self, dropped: np.ndarray) -> Hits:
        """These hits less those where ``dropped`` (one flag per hit) is set."""
        kept = ~dropped
        event = np.repeat(np.arange(len(self.counts)), self.counts)
        counts = np.bincount(event[kept], minlength=len(self.counts))
        return Hits(counts, self.pmt_id[kept], self.npe[kept], self.time_ns[kept])

    def events(self, selected: np.ndarray) -> Hits:
        """The hits of the events where ``selected`` (one flag per event) is set."""
        kept = np.repeat(selected, self.counts)
        return Hits(self.counts[selected], self.pmt_id[kept], self.npe[kept], self.time_ns[kept])


@dataclass(frozen=True)
class Fit:
    """Per-event results, in the events' order (float32 unless said)."""

    x_mm: np.ndarray
    y_mm: np.ndarray
    z_mm: np.ndarray
    t0_ns: np.ndarray
    energy_mev: np.ndarray
    total_pe: np.ndarray  # all hits' charge, dark counts included
    nhit: np.ndarray  # int32: fired PMTs, dark counts included
    fit_ok: np.ndarray  # bool

    @classmethod
    def concatenate(cls, parts: Sequence[Fit]) -> Fit:
        """The events of ``parts``, one after the other (at least one part)."""
        names = [field.name for field in fields(cls)]
        return cls(*(np.concatenate([getattr(part, name) for part in parts]) for name in names))


class Reconstructor:
    """Fits events for one geometry; the tables are built once and ``fit`` is
    thread-safe (it only reads them), so one reconstructor serves a thread pool."""

    def __init__(self, positions: np.ndarray) -> None:
        self.n_pmt = len(positions)
        self.pmt_xyz = np.ascontiguousarray(positions, dtype=np.float32)  # PMTs x 3
        pmt_radius = float(np.median(np.linalg.norm(positions, axis=1)))
        self.light = LightModel.build(positions, pmt_radius - 200.0)
        self.settings = FitSettings(
            time_model=TimeModel.build(PROMPT_WINDOW_NS),
            n_pmt=self.n_pmt,
            pmt_dark_per_ns=detector.DARK_RATE_HZ * 1e-9,
            max_radius_mm=pmt_radius,
        )

    def fit(self, hits: Hits, unusable: np.ndarray | None = None) -> Fit:
        """Vertex, time and energy of every event of ``hits``.

        The PMTs in the ``unusable`` mask (by id: dead or hot, see ``unusable``) are left
        out; the energy is scaled up by the share of the light they would have seen
        (taken as their share of the PMTs), and their dark counts are not expected.
        """
        settings, scale = self.settings, 1.0
        used = hits
        if unusable is not None and unusable.any():
            n_live = self.n_pmt - int(unusable.sum())
            settings, scale = replace(self.settings, n_pmt=n_live), self.n_pmt / n_live
            used = hits.without(unusable[hits.pmt_id])
        offsets = np.concatenate([[0], np.cumsum(used.counts, dtype=np.int64)])
        parts = []
        for first, last in _groups(offsets):
            lo, hi = offsets[first], offsets[last]
            group = Hits(
                used.counts[first:last], used.pmt_id[lo:hi], used.npe[lo:hi], used.time_ns[lo:hi]
            )
            parts.append(self._fit_group(group, settings))
        fit = Fit.concatenate(parts)
        # Event sums describe what was recorded, usable PMTs or not.
        total_pe = _per_event_sum(hits.npe, hits.counts).astype(np.float32)
        energy = (fit.energy_mev * scale).astype(np.float32)
        return replace(fit, energy_mev=energy, total_pe=total_pe, nhit=hits.counts.astype(np.int32))

    def _fit_group(self, hits: Hits, settings: FitSettings) -> Fit:
        n_events = len(hits.counts)
        in_window = self._prompt_window(hits)
        window = Hits(
            counts=_per_event_sum(in_window.astype(np.int64), hits.counts).astype(np.int64),
            pmt_id=hits.pmt_id[in_window],
            npe=hits.npe[in_window],
            time_ns=hits.time_ns[in_window],
        )
        start = self._start_vertex(window, settings)
        out = np.zeros(
            (6, n_events), dtype=np.float32
        )  # x, y, z, t0, energy, last step / resolution
        order = np.argsort(window.counts, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(window.counts)])
        for batch in _batches(window.counts[order]):
            events = order[batch]
            dense = DenseBatch.gather(self.pmt_xyz, window, offsets[events], window.counts[events])
            out[:, events] = dense.fit(start[:, events], settings, self.light)
        ok = (window.counts >= MIN_HITS) & (out[5] < settings.converged)
        radius = np.sqrt(out[0] ** 2 + out[1] ** 2 + out[2] ** 2)
        ok &= (radius < settings.max_radius_mm) & np.isfinite(out).all(axis=0)
        x, y, z, t0, energy = out[:5]
        total_pe = _per_event_sum(hits.npe, hits.counts).astype(np.float32)
        return Fit(x, y, z, t0, energy, total_pe, hits.counts.astype(np.int32), ok)

    def _prompt_window(self, hits: Hits) -> np.ndarray:
        """Mask of the hits within the prompt window of their event."""
        n_events = len(hits.counts)
        n_bins = int(detector.READOUT_WINDOW_NS // PEAK_BIN_NS) + 3
        bins = np.clip(hits.time_ns * np.float32(1.0 / PEAK_BIN_NS), 0, n_bins - 1)
        event_base = np.repeat(np.arange(n_events) * n_bins, hits.counts)
        histogram = np.bincount(event_base + bins.astype(np.int64), minlength=n_events * n_bins)
        peak = boxed_argmax(histogram.reshape(n_events, n_bins), 3)
        peak_ns = np.repeat(((peak + 1.5) * PEAK_BIN_NS).astype(np.float32), hits.counts)
        relative = hits.time_ns - peak_ns
        return (relative >= -PROMPT_BEFORE_NS) & (relative < PROMPT_AFTER_NS)

    def _start_vertex(self, window: Hits, settings: FitSettings) -> np.ndarray:
        """Charge centroid of each event, scaled out to the vertex radius (3 x events)."""
        charge = _per_event_sum(window.npe, window.counts)
        moments = [
            _per_event_sum(axis.take(window.pmt_id) * window.npe, window.counts)
            for axis in self.pmt_xyz.T
        ]
        # Dark counts are spread evenly over the PMTs: they add to the charge but, on
        # average, not to the moments, so only the charge needs their share removed.
        dark = settings.n_pmt * settings.pmt_dark_per_ns * PROMPT_WINDOW_NS
        signal = np.maximum(charge - dark, 1.0)
        centroid = np.vstack(moments) / signal
        radius = np.sqrt((centroid**2).sum(axis=0))
        scale = self.light.vertex_radius(radius) / np.maximum(radius, 1.0)
        start: np.ndarray = (centroid * np.minimum(scale, 3.0)).astype(np.float32)
        return start


def _groups(offsets: np.ndarray) -> list[tuple[int, int]]:
    """First and last (excluded) event of consecutive groups of about ``GROUP_HITS`` hits."""
    n_events = len(offsets) - 1
    groups = []
    first = 0
    while first < n_events:
        last = int(np.searchsorted(offsets, offsets[first] + GROUP_HITS, side="right")) - 1
        last = min(max(last, first + 1), n_events)
        groups.append((first, last))
        first = last
    return groups or [(0, 0)]


def _batches(sorted_counts: np.ndarray) -> list[slice]:
    """Slices of events (sorted by hit count) of about ``BATCH_HITS`` padded hits each."""
    batches = []
    first = 0
    while first < len(sorted_counts):
        # Padded to the batch's largest event, which is its last (the counts are sorted).
        size = 1
        while (
            first + size * 2 <= len(sorted_counts)
            and sorted_counts[first + size * 2 - 1] * size * 2 <= BATCH_HITS
        ):
            size *= 2
        batches.append(slice(first, first + size))
        first += size
    return batches


def _per_event_sum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum of each event's values (float64); zero for events without hits."""
    if len(values) == 0:
        return np.zeros(len(counts))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    sums = np.add.reduceat(values, np.minimum(starts, len(values) - 1), dtype=np.float64)
    return np.where(counts > 0, sums, 0.0)
