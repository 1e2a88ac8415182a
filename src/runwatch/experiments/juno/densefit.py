"""The time-of-flight likelihood fit of a batch of events, on dense events x hits matrices.

The batch's hits are padded into matrices (the events are sorted by hit count before
batching, so there is little padding; padded hits have zero charge and point at the time
model's all-zero row, so they add nothing). A per-event sum is then a row sum or a
batched BLAS dot product, and every step is a handful of whole-matrix NumPy operations.

The fit maximises ``sum log p(t_i - |p_i - v| / c - t0)`` over the vertex ``v`` and
``t0`` by Fisher scoring: ``delta = I^-1 grad``, with ``I`` the expected information
``sum info_i J_i J_i^T`` (``J_i`` = d residual / d(v, t0) = ((p_i - v) / (d_i c), -1)).
``I`` is positive definite whatever the residuals, so every step goes uphill, unlike
Newton's method on a likelihood with a flat (dark-count) plateau. It is computed once at
the start and reused: the vertex then moves by centimetres, the matrix hardly changes.

The hot loop writes into preallocated work matrices: allocating fresh ones each step
costs more than the arithmetic (the allocator maps new pages for large arrays). Distances
come from ``|p|^2 - 2 p.v + |v|^2``, which needs no ``p - v`` matrices (float32 loses
0.01 mm in that form at JUNO's scale), and the score's ``sum w (p - v)`` is
``sum w p - v sum w``; ``p.v`` and ``sum w p`` are batched BLAS products on the
events x hits x 3 positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from runwatch.experiments.juno import detector
from runwatch.experiments.juno.lightmodel import LightModel
from runwatch.experiments.juno.physics import SPE_RESOLUTION
from runwatch.experiments.juno.timemodel import (
    LO_NS,
    STEP_NS,
    TimeModel,
    likeliest_photo_electrons,
)

if TYPE_CHECKING:  # vertexfit imports this module
    from runwatch.experiments.juno.vertexfit import Hits

INV_C = 1.0 / detector.LIGHT_SPEED_MM_PER_NS
RESIDUAL_BIN_NS = 2.0
"""Bin of the residual histogram that starts t0 (boxed over 5 bins)."""
PAD_TIME_NS = -1e4
"""Time of a padding hit: out of every window and histogram."""
ENERGY_WINDOW_NS = (-30.0, 150.0)
"""Residuals whose charge counts as the event's light: all but 1e-4 of it, and 3/8 of the
prompt window's dark counts."""


@dataclass(frozen=True)
class FitSettings:
    """What the fit needs besides the hits: the time model and the dark-count level."""

    time_model: TimeModel
    n_pmt: int
    pmt_dark_per_ns: float  # one PMT's dark-count rate
    max_radius_mm: float  # the PMT sphere: a fit ending outside it is not ok
    iterations: int = 5
    converged: float = 0.25  # a converged fit's last step, in units of its resolution
    max_step_mm: float = 3000.0
    max_step_ns: float = 30.0
    spe_resolution: float = SPE_RESOLUTION  # relative width of one photo-electron's charge


@dataclass
class DenseBatch:
    """One batch's hits as events x hits float32 matrices (see the module docstring)."""

    position: np.ndarray  # events x hits x 3: the hit PMTs' positions
    r2: np.ndarray  # |p|^2
    time: np.ndarray
    npe: np.ndarray
    valid: np.ndarray  # bool: a real hit, not padding

    @classmethod
    def gather(
        cls, pmt_xyz: np.ndarray, hits: Hits, starts: np.ndarray, counts: np.ndarray
    ) -> DenseBatch:
        """The hits ``starts[i]:starts[i] + counts[i]`` of ``hits`` (flat), padded.

        ``pmt_xyz`` is the PMTs' positions, PMTs x 3 (float32).
        """
        width = max(int(counts.max(initial=0)), 1)
        column = np.arange(width)
        valid = column[None, :] < counts[:, None]
        # Padding takes a sentinel appended to each array (no charge, a time far before
        # any light): index arithmetic and plain takes, as np.where costs 5x more here.
        index = (starts[:, None] + column[None, :]) * valid
        index += len(hits.npe) * ~valid
        pmt = np.append(hits.pmt_id, np.int32(0)).take(index)
        position = pmt_xyz.take(pmt, axis=0)
        return cls(
            position=position,
            r2=np.einsum("ehk,ehk->eh", position, position),
            time=np.append(hits.time_ns, np.float32(PAD_TIME_NS)).take(index),
            npe=np.append(hits.npe, np.float32(0.0)).take(index),
            valid=valid,
        )

    def fit(self, start: np.ndarray, settings: FitSettings, light: LightModel) -> np.ndarray:
        """x, y, z, t0, energy and the last step over the resolution (6 x events).

        The resolution is the expected vertex error from the information matrix: when
        the last step is a fraction of it, more steps would not change the result.
        """
        vertex = start.astype(np.float32).copy()
        t0 = self.start_time(vertex, settings.time_model)
        row_start, info = self.rows(settings, vertex, light)
        inverse = _inverse(self.fisher(vertex, info))
        work = _Work.like(self.r2)
        step = np.full(len(t0), np.inf, dtype=np.float32)
        table = settings.time_model
        # Table index = (time - d/c - t0 - LO) / STEP + 1/2: the per-hit part time / STEP
        # is fixed, the per-event part changes with t0 only.
        time_steps = self.time * np.float32(1.0 / STEP_NS)
        for _ in range(settings.iterations):
            distance = self.distance(vertex, work.distance)
            index = np.multiply(distance, np.float32(-INV_C / STEP_NS), out=work.index)
            index += time_steps
            index += ((0.5 - LO_NS / STEP_NS) - t0 / STEP_NS)[:, None].astype(np.float32)
            np.clip(index, 0.0, table.n_bins - 0.5, out=index)
            np.copyto(work.row, index, casting="unsafe")  # truncation: the nearest bin
            work.row += row_start
            slope = table.slope.take(work.row, out=work.slope)
            delta = _step(inverse, self.score(vertex, slope, distance, work.weight), settings)
            vertex += delta[:3]
            t0 += delta[3]
            step = np.sqrt((delta[:3] ** 2).sum(axis=0))
        resolution = np.sqrt(np.maximum(np.trace(inverse[:, :3, :3], axis1=1, axis2=2), 1e-6))
        energy = self.energy(vertex, t0, settings, light)
        return np.vstack([vertex, t0, energy, step / resolution])

    def distance(self, vertex: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """PMT-vertex distances (events x hits), written into ``out`` if given."""
        out = np.empty_like(self.r2) if out is None else out
        # |p - v|^2 = |p|^2 - 2 p.v + |v|^2, p.v as one batched matrix-vector product
        np.matmul(self.position, (vertex.T * np.float32(-2.0))[:, :, None], out=out[:, :, None])
        out += self.r2
        out += (vertex.astype(np.float32) ** 2).sum(axis=0)[:, None]
        np.maximum(out, np.float32(1.0), out=out)
        np.sqrt(out, out=out)
        return out

    def score(
        self, vertex: np.ndarray, slope: np.ndarray, distance: np.ndarray, weight: np.ndarray
    ) -> np.ndarray:
        """Gradient of the log-likelihood in x, y, z, t0 (4 x events)."""
        np.divide(slope, distance, out=weight)
        total = weight.sum(axis=1, dtype=np.float64)
        # sum w (p - v) = sum w p - v sum w, sum w p as one batched product
        along = (weight[:, None, :] @ self.position)[:, 0, :].T - vertex * total
        return np.vstack([along * INV_C, -slope.sum(axis=1, dtype=np.float64)])

    def fisher(self, vertex: np.ndarray, info: np.ndarray) -> np.ndarray:
        """Expected information matrix ``sum info J J^T`` (events x 4 x 4, float64)."""
        scale = np.float32(INV_C) / self.distance(vertex)
        jacobian = [(self.position[:, :, k] - vertex[k][:, None]) * scale for k in range(3)]
        jacobian.append(np.full_like(scale, -1.0))
        weighted = [info * j for j in jacobian]
        matrix = np.empty((len(info), 4, 4))
        for a in range(4):
            for b in range(a, 4):
                matrix[:, a, b] = matrix[:, b, a] = _row_dot(weighted[a], jacobian[b])
        return matrix

    def start_time(self, vertex: np.ndarray, model: TimeModel) -> np.ndarray:
        """The peak of each event's residuals ``t - d/c`` less the profile's mode."""
        n_events = len(vertex[0])
        n_bins = int(detector.READOUT_WINDOW_NS // RESIDUAL_BIN_NS) + 5
        residual = self.time - self.distance(vertex) * np.float32(INV_C)
        bins = np.clip(residual * np.float32(1.0 / RESIDUAL_BIN_NS), 0, n_bins - 1)
        flat = np.arange(n_events)[:, None] * n_bins + bins.astype(np.int64)
        histogram = np.bincount(flat[self.valid], minlength=n_events * n_bins)
        peak = boxed_argmax(histogram.reshape(n_events, n_bins), 5)
        # The densest 10 ns of the residuals are the densest 10 ns of the profile.
        peak_ns = (peak + 2.5) * RESIDUAL_BIN_NS
        return (peak_ns - model.box_centre_ns).astype(np.float32)

    def rows(
        self, settings: FitSettings, vertex: np.ndarray, light: LightModel
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each hit's table row offset and Fisher information (padding: the zero row)."""
        model = settings.time_model
        single = (self.valid & (self.npe < 1.5)).sum(axis=1)
        # Dark counts are single photo-electrons spread over the whole window, so the
        # chance that a single photo-electron hit is dark is their share of those.
        dark_hits = settings.n_pmt * settings.pmt_dark_per_ns * settings.time_model.window_ns
        eta = dark_hits / np.maximum(single, 1.0)
        signal = np.maximum(self.npe.sum(axis=1, dtype=np.float64) - dark_hits, 1.0)
        n_pe = self.photo_electrons(vertex, signal, settings, light)
        rows = model.rows(n_pe, eta[:, None])
        rows = rows * self.valid + np.int32(model.pad_row) * ~self.valid
        return rows * np.int32(model.n_bins), model.info.take(rows)

    def photo_electrons(
        self, vertex: np.ndarray, signal_pe: np.ndarray, settings: FitSettings, light: LightModel
    ) -> np.ndarray:
        """Each hit's likeliest photo-electron count (``timemodel``), given the mean count
        its PMT expects from ``signal_pe`` at ``vertex`` under the light model.

        Only hits of at least one photo-electron of charge are worked out: below that a
        single photo-electron is the likeliest whatever the PMT expects (two would need a
        2.4 sigma downward fluctuation).
        """
        n_pe = np.ones(self.npe.shape, dtype=np.int32)
        index = np.flatnonzero(self.npe >= 1.0)  # padding has no charge
        if len(index) == 0:
            return n_pe
        event = index // self.npe.shape[1]
        distance = self.distance(vertex).ravel()[index]
        r2 = self.r2.ravel()[index]
        v2 = (vertex.astype(np.float32) ** 2).sum(axis=0)[event]
        # p.v from |p - v|^2 = |p|^2 - 2 p.v + |v|^2; incidence cosine (|p|^2 - p.v) / |p| d
        along = (r2 + v2 - distance * distance) * np.float32(0.5)
        cosine = (r2 - along) / (np.sqrt(r2) * distance)
        share = np.maximum(cosine, 0.0) / (distance * distance)
        share *= np.exp(distance * np.float32(-1.0 / detector.ATTENUATION_LENGTH_MM))
        radius = np.sqrt((vertex.astype(np.float64) ** 2).sum(axis=0))
        per_share = signal_pe / (light.centre_share * light.yield_ratio(radius))
        expected = share * per_share.astype(np.float32)[event]
        charge = self.npe.ravel()[index]
        n_pe.ravel()[index] = likeliest_photo_electrons(charge, expected, settings.spe_resolution)
        return n_pe

    def energy(
        self, vertex: np.ndarray, t0: np.ndarray, settings: FitSettings, light: LightModel
    ) -> np.ndarray:
        """Visible energy: in-time charge less the dark share, over the light yield at r.

        A PMT records its first count's time and all its counts' charge, so dark counts
        reach the in-time charge two ways: as hits of their own on PMTs without light
        (rate x window on each), and piled on a fired PMT after its first count (rate x
        the rest of the readout on each in-time hit). A dark count before the light takes
        the hit out of time with its light: a loss of rate x (hit time + window start).
        Left uncorrected these are +2 % and -1 % of the charge at 1 MeV.
        """
        low, high = ENERGY_WINDOW_NS
        residual = self.distance(vertex)
        residual *= np.float32(-INV_C)
        residual += self.time
        residual -= t0[:, None]
        in_time = (residual >= low) & (residual < high)
        hits = in_time.sum(axis=1)
        charge = (self.npe * in_time).sum(axis=1, dtype=np.float64)
        time = (self.time * in_time).sum(axis=1, dtype=np.float64)
        rate = settings.pmt_dark_per_ns
        dark = rate * (
            (settings.n_pmt - hits) * (high - low) + hits * detector.READOUT_WINDOW_NS - time
        )
        lost = rate * (time / np.maximum(hits, 1) + low)
        signal = (charge - dark) / (1.0 - np.clip(lost, 0.0, 0.5))
        radius = np.sqrt((vertex.astype(np.float64) ** 2).sum(axis=0))
        energy: np.ndarray = signal / (detector.PE_PER_MEV * light.yield_ratio(radius))
        return energy


@dataclass
class _Work:
    """Work matrices of the fit loop, reused at every step."""

    distance: np.ndarray
    index: np.ndarray
    row: np.ndarray
    slope: np.ndarray
    weight: np.ndarray

    @classmethod
    def like(cls, matrix: np.ndarray) -> _Work:
        def new(dtype: type[np.generic] = np.float32) -> np.ndarray:
            return np.empty(matrix.shape, dtype=dtype)

        return cls(new(), new(), new(np.int32), new(), new())


def _inverse(fisher: np.ndarray) -> np.ndarray:
    """Inverses of the events' information matrices (events x 4 x 4)."""
    # A whisker on the diagonal makes an empty event's zero matrix invertible (its steps
    # are then zero, its score being zero) without a per-event test; it is 1e-12 of any
    # real event's information.
    ridge = 1e-12 * np.trace(fisher, axis1=1, axis2=2).max(initial=0.0) + 1e-30
    return np.linalg.inv(fisher + ridge * np.eye(4))


def _step(inverse: np.ndarray, score: np.ndarray, settings: FitSettings) -> np.ndarray:
    """Scoring steps ``I^-1 score`` (4 x events), bounded in length and time."""
    delta = np.einsum("eij,je->ie", inverse, score)
    length = np.sqrt((delta[:3] ** 2).sum(axis=0))
    delta[:3] *= np.minimum(1.0, settings.max_step_mm / np.maximum(length, 1e-9))
    delta[3] = np.clip(delta[3], -settings.max_step_ns, settings.max_step_ns)
    step: np.ndarray = delta.astype(np.float32)
    return step


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two events x hits matrices (a batched BLAS product)."""
    dots: np.ndarray = (a[:, None, :] @ b[:, :, None])[:, 0, 0].astype(np.float64)
    return dots


def boxed_argmax(histogram: np.ndarray, width: int) -> np.ndarray:
    """Per row, the first bin of the ``width`` consecutive bins holding the most entries."""
    cumulative = np.cumsum(histogram, axis=1)
    boxed = cumulative[:, width - 1 :].copy()
    boxed[:, 1:] -= cumulative[:, :-width]
    return np.asarray(np.argmax(boxed, axis=1))
