"""Kolmogorov-Smirnov and χ² comparisons of two binned histograms, as ROOT defines them.

Pure numpy and ``math`` (no SciPy): the arrays are the in-range bin sums of weights and of
squared weights (no under- or overflow), 1D or 2D, of the same shape.

- ``ks_test`` is ``TH1::KolmogorovTest`` without options: the largest distance between the
  two cumulative distributions, each normalised to its own integral, scaled by the
  effective entries ``n = (Σw)² / Σw²`` (``z = D·√(n₁n₂/(n₁+n₂))``; when one histogram has
  no errors at all it is a function, and ``z = D·√n`` of the other). For 2D, as
  ``TH2::KolmogorovTest``, D is the mean of the distances with x then y, and y then x, as
  the outer loop. Binning makes the test conservative: p-values come out larger than an
  unbinned test would give, so compare them with a cut, not with a uniform distribution.
- ``chi2_test`` is ``TH1::Chi2Test`` (Gagunashvili): "UU" when both histograms are
  unweighted (ROOT's automatic choice: Σw and the effective entries differ by less than
  1), else "WW", which is valid for any pair since an unweighted histogram's variance is
  its content. ROOT's "UW" variant is not implemented. Bins empty in both histograms are
  skipped and take one degree of freedom away; ``ndf = bins used - 1``.

Both are shape comparisons: each histogram is compared with its own normalisation, so a
reference summed over several runs, or scaled (its variances scaled by the square), can
be used as it is. Inputs the tests cannot compare raise ``ComparisonError`` with a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ComparisonProblem = Literal["empty", "reference empty", "binning", "no errors"]


class ComparisonError(ValueError):
    """Two histograms cannot be compared; ``problem`` says why in one word for callers."""

    def __init__(self, problem: ComparisonProblem, message: str) -> None:
        super().__init__(message)
        self.problem: ComparisonProblem = problem


@dataclass(frozen=True)
class KsResult:
    distance: float  # the largest distance D between the normalised cumulative sums
    z: float  # D scaled by the effective entries; p = Q_KS(z)
    p_value: float


@dataclass(frozen=True)
class Chi2Result:
    chi2: float
    ndf: int
    p_value: float
    mode: Literal["UU", "WW"]


# -- the distributions ------------------------------------------------------------------


def kolmogorov_q(z: float) -> float:
    """P(K > z) for the Kolmogorov distribution (ROOT's ``TMath::KolmogorovProb``).

    Two series of the same function, each used where it converges in a few terms:
    ``2 Σ (-1)^(j-1) exp(-2j²z²)`` for large z, and the Jacobi-transformed
    ``1 - √(2π)/z Σ exp(-(2j-1)²π²/(8z²))`` for small z. Both are exact to ~1e-15 here.
    """
    if z <= 0.0:
        return 1.0
    if z < 1.0:
        s = sum(math.exp(-((2 * j - 1) ** 2) * math.pi**2 / (8 * z * z)) for j in range(1, 6))
        return max(0.0, min(1.0, 1.0 - math.sqrt(2 * math.pi) / z * s))
    terms = (2 * (-1) ** (j - 1) * math.exp(-2 * j * j * z * z) for j in range(1, 101))
    return max(0.0, min(1.0, math.fsum(terms)))


def gamma_q(a: float, x: float) -> float:
    """The regularised upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a).

    The power series of P = 1 - Q below ``x < a + 1`` and Lentz's continued fraction for
    Q above it (Numerical Recipes §6.2): each converges fast on its side, and taking Q
    from the fraction keeps tiny p-values accurate instead of rounding them to 0.
    """
    if a <= 0:
        raise ValueError(f"gamma_q needs a > 0, got {a}")
    if x <= 0:
        return 1.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-16:
            n += 1
            term *= x / n
            total += term
        return max(0.0, 1.0 - total * math.exp(log_prefactor))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return min(1.0, math.exp(log_prefactor) * h)


def chi2_q(chi2: float, ndf: int) -> float:
    """P(χ²_ndf > chi2) (ROOT's ``TMath::Prob``); 1 for ndf ≤ 0, as there is nothing to test."""
    if ndf <= 0:
        return 1.0
    return gamma_q(ndf / 2, max(chi2, 0.0) / 2)


# -- the tests --------------------------------------------------------------------------


Arrays4 = tuple[FloatArray, FloatArray, FloatArray, FloatArray]


def _checked(*arrays: npt.ArrayLike) -> Arrays4:
    """The four arrays as float64, or an error saying why they cannot be compared."""
    values, variances, ref, ref_variances = (np.asarray(a, dtype=np.float64) for a in arrays)
    if values.shape != ref.shape:
        raise ComparisonError(
            "binning", f"{_shape(values)} bins against the reference's {_shape(ref)}"
        )
    if values.shape != variances.shape or ref.shape != ref_variances.shape:
        raise ValueError("each histogram needs one variance per bin")
    if values.ndim not in (1, 2):
        raise ValueError(f"only 1D and 2D histograms can be compared, got {values.ndim}D")
    if not values.sum() > 0:
        raise ComparisonError("empty", "the histogram is empty")
    if not ref.sum() > 0:
        raise ComparisonError("reference empty", "the reference histogram is empty")
    return values, variances, ref, ref_variances


def _shape(a: FloatArray) -> str:
    return " x ".join(str(n) for n in a.shape)


def ks_test(
    values: npt.ArrayLike,
    variances: npt.ArrayLike,
    ref: npt.ArrayLike,
    ref_variances: npt.ArrayLike,
) -> KsResult:
    """Kolmogorov-Smirnov test of a histogram against a reference (see the module doc)."""
    values, variances, ref, ref_variances = _checked(values, variances, ref, ref_variances)
    w1, w2 = float(variances.sum()), float(ref_variances.sum())
    if w1 <= 0 and w2 <= 0:
        raise ComparisonError("no errors", "both histograms have all bin errors zero")
    cdf1 = values / values.sum()
    cdf2 = ref / ref.sum()
    distance = _max_cdf_distance(cdf1 - cdf2)
    if values.ndim == 2:
        distance = 0.5 * (distance + _max_cdf_distance((cdf1 - cdf2).T))
    n1 = values.sum() ** 2 / w1 if w1 > 0 else math.inf
    n2 = ref.sum() ** 2 / w2 if w2 > 0 else math.inf
    # With one side exact (a function), n1·n2/(n1+n2) tends to the other side's n.
    n_eff = n2 if math.isinf(n1) else n1 if math.isinf(n2) else n1 * n2 / (n1 + n2)
    z = distance * math.sqrt(n_eff)
    return KsResult(distance=distance, z=z, p_value=kolmogorov_q(z))


def _max_cdf_distance(diff: FloatArray) -> float:
    """Largest |cumulative sum| of per-bin differences, in C (row-major) order like ROOT."""
    return float(np.abs(np.cumsum(diff.ravel())).max())


def chi2_test(
    values: npt.ArrayLike,
    variances: npt.ArrayLike,
    ref: npt.ArrayLike,
    ref_variances: npt.ArrayLike,
) -> Chi2Result:
    """χ² test of a histogram against a reference (see the module doc)."""
    checked = _checked(values, variances, ref, ref_variances)
    values, variances, ref, ref_variances = (a.ravel() for a in checked)
    sum1, sum2 = float(values.sum()), float(ref.sum())
    used = (values != 0) | (ref != 0)
    ndf = int(used.sum()) - 1
    n, m, e1, e2 = values[used], ref[used], variances[used], ref_variances[used]
    if _unweighted(sum1, float(variances.sum())) and _unweighted(sum2, float(ref_variances.sum())):
        chi2 = float(np.sum((sum2 * n - sum1 * m) ** 2 / (n + m)) / (sum1 * sum2))
        return Chi2Result(chi2, ndf, chi2_q(chi2, ndf), "UU")
    sigma = sum1**2 * e2 + sum2**2 * e1
    if np.any(sigma <= 0):
        raise ComparisonError("no errors", "a bin with content has zero errors in both")
    chi2 = float(np.sum((sum2 * n - sum1 * m) ** 2 / sigma))
    return Chi2Result(chi2, ndf, chi2_q(chi2, ndf), "WW")


def _unweighted(sumw: float, sumw2: float) -> bool:
    """ROOT's test: the sum of weights and the effective entries differ by less than 1."""
    return sumw2 > 0 and abs(sumw - sumw * sumw / sumw2) < 1
