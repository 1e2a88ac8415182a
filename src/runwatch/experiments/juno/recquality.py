"""Reconstruction quality against the simulation's truth: vertex and energy resolution.

    python -m runwatch.experiments.juno.recquality [--events N] [--seed S]

simulates events of fixed energies (``physics.simulate_chunk``), calibrates them with the
true constants (what a perfect calib step gives), reconstructs them
(``vertexfit.Reconstructor``) and prints a Markdown table: per energy and position
(uniform in the scintillator, or at the centre), the vertex bias and resolution per
coordinate and in radius, and the energy bias and resolution beside the photo-statistics
limit. docs/juno.md holds its output; tests/experiments/juno/test_rec.py checks bounds on
smaller samples.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runwatch.experiments.juno import detector
from runwatch.experiments.juno.geometry import Geometry, load_geometry
from runwatch.experiments.juno.physics import PmtTruth, RawChunk, make_pmt_truth, simulate_chunk
from runwatch.experiments.juno.vertexfit import Fit, Hits, Reconstructor

ENERGIES_MEV = (1.0, 2.0, 4.0, 8.0)
SIMULATION_CHUNK = 250
"""Events simulated at once (the simulator's memory grows with the chunk)."""


@dataclass(frozen=True)
class Quality:
    """Resolutions (standard deviations) and biases (means) of rec - true, one sample."""

    energy_mev: float
    centre: bool
    events: int
    fit_ok: float  # fraction of events
    vertex_bias_mm: tuple[float, float, float]
    vertex_sigma_mm: tuple[float, float, float]
    radial_bias_mm: float
    radial_sigma_mm: float
    energy_bias: float  # mean of E_rec / E_true - 1
    energy_sigma: float  # standard deviation of E_rec / E_true

    @property
    def photo_statistics(self) -> float:
        """sigma_E / E from photo-electron counting alone, single-PE charge spread
        included: sqrt((1 + 0.3^2) / (1600 E)). Events off-centre see more light, so
        this is the limit at the centre and a looser one elsewhere."""
        return photo_statistics_limit(self.energy_mev)


def photo_statistics_limit(energy_mev: float) -> float:
    """Relative energy resolution from the photo-electron count at the centre."""
    from runwatch.experiments.juno.physics import SPE_RESOLUTION

    return math.sqrt((1.0 + SPE_RESOLUTION**2) / (detector.PE_PER_MEV * energy_mev))


def calibrated_hits(raw: RawChunk, pmts: PmtTruth) -> Hits:
    """The raw hits calibrated with the true constants (a perfect calib step)."""
    return Hits(
        counts=raw.nhit.astype(np.int64),
        pmt_id=raw.pmt_id,
        npe=(raw.adc / pmts.gain_adc_per_pe[raw.pmt_id]).astype(np.float32),
        time_ns=(raw.tdc - pmts.time_offset_ns[raw.pmt_id]).astype(np.float32),
    )


def measure(
    reconstructor: Reconstructor,
    geometry: Geometry,
    energy_mev: float,
    n_events: int,
    seed: int,
    centre: bool = False,
) -> Quality:
    """Simulate ``n_events`` of ``energy_mev`` and compare their reconstruction to truth."""
    rng = np.random.default_rng(seed)
    pmts = make_pmt_truth(rng, geometry.n_pmt)
    fits, truths = [], []
    for first in range(0, n_events, SIMULATION_CHUNK):
        size = min(SIMULATION_CHUNK, n_events - first)
        raw, truth = simulate_chunk(
            rng, geometry, pmts, size, first,
            energy_mev=energy_mev, position_mm=(0.0, 0.0, 0.0) if centre else None,
            waves=False,
        )  # fmt: skip
        fits.append(reconstructor.fit(calibrated_hits(raw, pmts)))
        truths.append(np.column_stack([truth.x_mm, truth.y_mm, truth.z_mm, truth.energy_mev]))
    return _compare(Fit.concatenate(fits), np.vstack(truths), energy_mev, centre)


def _compare(fit: Fit, truth: np.ndarray, energy_mev: float, centre: bool) -> Quality:
    rec = np.column_stack([fit.x_mm, fit.y_mm, fit.z_mm]).astype(np.float64)
    error = rec - truth[:, :3]
    radial = np.linalg.norm(rec, axis=1) - np.linalg.norm(truth[:, :3], axis=1)
    ratio = fit.energy_mev.astype(np.float64) / truth[:, 3]
    return Quality(
        energy_mev=energy_mev,
        centre=centre,
        events=len(ratio),
        fit_ok=float(fit.fit_ok.mean()),
        vertex_bias_mm=tuple(float(v) for v in error.mean(axis=0)),  # type: ignore[arg-type]
        vertex_sigma_mm=tuple(float(v) for v in error.std(axis=0)),  # type: ignore[arg-type]
        radial_bias_mm=float(radial.mean()),
        radial_sigma_mm=float(radial.std()),
        energy_bias=float(ratio.mean() - 1.0),
        energy_sigma=float(ratio.std()),
    )


def table(rows: Sequence[Quality]) -> str:
    """The rows as the Markdown table of docs/juno.md."""
    lines = [
        "| E (MeV) | where | events | fit ok | sigma x, y, z (mm) | bias x, y, z (mm) "
        "| sigma r (mm) | bias r (mm) | E bias | sigma E / E | photo-stat. | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for q in rows:
        sigma = ", ".join(f"{v:.0f}" for v in q.vertex_sigma_mm)
        bias = ", ".join(f"{v:+.0f}" for v in q.vertex_bias_mm)
        # At the centre the radius error is the error vector's length: nothing to show.
        radial = "n/a | n/a" if q.centre else f"{q.radial_sigma_mm:.0f} | {q.radial_bias_mm:+.0f}"
        lines.append(
            f"| {q.energy_mev:g} | {'centre' if q.centre else 'uniform'} | {q.events} "
            f"| {q.fit_ok:.1%} | {sigma} | {bias} | {radial} "
            f"| {q.energy_bias:+.2%} | {q.energy_sigma:.2%} "
            f"| {q.photo_statistics:.2%} | {q.energy_sigma / q.photo_statistics:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events per row")
    parser.add_argument("--seed", type=int, default=2024, help="first seed (one per row)")
    args = parser.parse_args(argv)
    geometry = load_geometry()
    reconstructor = Reconstructor(geometry.positions)
    rows = []
    for index, (energy, centre) in enumerate((e, c) for e in ENERGIES_MEV for c in (False, True)):
        rows.append(
            measure(reconstructor, geometry, energy, args.events, args.seed + index, centre)
        )
    print(table(rows))


if __name__ == "__main__":
    main()
