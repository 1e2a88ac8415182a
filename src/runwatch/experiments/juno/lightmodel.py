"""How much light the PMTs see from a point in the detector, tabulated against radius.

The same model as the simulation: a PMT's share of an event's photo-electrons is its
solid angle seen from the vertex (area x incidence cosine / distance squared) times the
attenuation ``exp(-distance / attenuation length)``, normalised so that an event at the
centre gives ``detector.PE_PER_MEV`` per MeV. Two things follow for the reconstruction,
both computed once per geometry on a radial grid (averaged over directions, so a real
geometry's uneven coverage is smoothed out):

- ``yield_ratio(r)``: light collected at radius ``r`` over light at the centre. Without
  attenuation it would be exactly 1 (an enclosing sphere subtends 4 pi from any inside
  point); attenuation makes it grow towards the edge, where half the PMTs are close.
- ``vertex_radius(c)``: the inverse of the charge centroid's radius ``c(r)``. Light
  spread evenly in solid angle lands, on average, at ``2r/3`` (the far side is further
  away, so it gets more of the sphere's area per unit solid angle), while attenuation
  favours the near side by ``R r / 3L``: with R = 19.4 m and L = 20 m the two nearly
  cancel near the centre (c ~ 0.99 r), but towards the edge the near PMTs' cosine and the
  far side's area win and the centroid falls behind (c ~ 0.9 r at 16 m). The fit's start
  undoes this by inverting the tabulated curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runwatch.experiments.juno import detector

GRID_MM = 250.0
"""Radial step of the tables: the curves are smooth on metre scales."""
N_DIRECTIONS = 6
"""Directions averaged per radius: the six axes, enough for an even (or JUNO's) coverage."""


def pmt_light_share(vertices: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Expected fraction of photons reaching each PMT, per vertex (vertices x PMTs).

    Up to a constant (the photocathode area over 4 pi), as only ratios are used.
    """
    # Written with matrix products (no vertices x PMTs x 3 array): |p - v|^2 expanded,
    # and the incidence cosine (p - v).n / d with n = p / |p| is (|p| - v.n) / d.
    pmt_radius = np.linalg.norm(positions, axis=1)
    along = vertices @ positions.T
    distance = np.sqrt(
        np.maximum((pmt_radius**2)[None, :] + (vertices**2).sum(axis=1)[:, None] - 2 * along, 1.0)
    )
    cosine = (pmt_radius[None, :] - along / pmt_radius[None, :]) / distance
    attenuation = np.exp(-distance / detector.ATTENUATION_LENGTH_MM)
    share: np.ndarray = np.clip(cosine, 0.0, None) / distance**2 * attenuation
    return share


@dataclass(frozen=True)
class LightModel:
    """Light yield and charge-centroid shrinkage against radius, for one geometry."""

    radius_mm: np.ndarray
    yield_ratio_table: np.ndarray
    centroid_radius_table: np.ndarray
    centre_share: float  # sum of pmt_light_share over the PMTs, for the centre

    @classmethod
    def build(cls, positions: np.ndarray, max_radius_mm: float) -> LightModel:
        radius = np.arange(0.0, max_radius_mm + GRID_MM, GRID_MM)
        axes = np.vstack([np.eye(3), -np.eye(3)])[:N_DIRECTIONS]
        centre = pmt_light_share(np.zeros((1, 3)), positions).sum()
        yields = np.zeros_like(radius)
        centroid = np.zeros_like(radius)
        for axis in axes:
            share = pmt_light_share(radius[:, None] * axis[None, :], positions)
            yields += share.sum(axis=1) / centre
            mean_position = share @ positions / share.sum(axis=1, keepdims=True)
            centroid += mean_position @ axis
        # A real geometry's gaps can make the curve wobble at the very edge: keep it
        # increasing so that it can be inverted.
        centroid = np.maximum.accumulate(centroid / len(axes))
        return cls(radius, yields / len(axes), centroid, float(centre))

    def yield_ratio(self, radius_mm: np.ndarray) -> np.ndarray:
        """Light collected at each radius over that at the centre (clamped to the table)."""
        return np.asarray(np.interp(radius_mm, self.radius_mm, self.yield_ratio_table))

    def vertex_radius(self, centroid_radius_mm: np.ndarray) -> np.ndarray:
        """The vertex radius whose expected charge centroid has this radius.

        Centroids beyond the table's last one map to its last radius: a start, not a fit.
        """
        return np.asarray(np.interp(centroid_radius_mm, self.centroid_radius_table, self.radius_mm))

    @property
    def centre_shrinkage(self) -> float:
        """Centroid radius over vertex radius for small radii (for the docs)."""
        return float(self.centroid_radius_table[5] / self.radius_mm[5])
