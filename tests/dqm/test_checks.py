from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from runwatch.dqm.checks import (
    CheckError,
    evaluate_histogram,
    evaluate_status,
    rolling_reference,
)
from runwatch.dqm.checkspec import (
    CheckSpec,
    CheckSpecError,
    Limits,
    ReferenceRun,
    ReferenceWindow,
    load_checks,
    parse_checks,
)
from runwatch.dqm.comparisons import (
    ComparisonError,
    chi2_q,
    chi2_test,
    gamma_q,
    kolmogorov_q,
    ks_test,
)
from runwatch.dqm.histogram import Axis, Hist, IncompatibleHistograms, stats_from_bins
from runwatch.dqm.pmtstatus import DEFAULT_CUTS, pmt_status
from runwatch.dqm.verdict import CheckResult, Verdict, run_verdict

GOOD, WARNING, BAD = Verdict.GOOD, Verdict.WARNING, Verdict.BAD


def hist1d(values: list[float] | np.ndarray, edges: np.ndarray | None = None) -> Hist:
    """An unweighted TH1D with the given in-range contents and empty flow bins."""
    inner = np.asarray(values, dtype=np.float64)
    edges = np.arange(len(inner) + 1, dtype=np.float64) if edges is None else edges
    sumw = np.concatenate([[0.0], inner, [0.0]])
    hist = Hist("h", "", "TH1D", (Axis(edges),), sumw, sumw.copy(), float(inner.sum()))
    hist.stats = stats_from_bins(hist)
    return hist


def sampled(rng: np.random.Generator, n: int, shift: float = 0.0, width: float = 1.0) -> Hist:
    edges = np.linspace(-5, 5, 51)
    counts, _ = np.histogram(rng.normal(shift, width, n), edges)
    return hist1d(counts, edges)


def spec(kind: str, **values: object) -> CheckSpec:
    return CheckSpec(histogram="h", name=kind, kind=kind, **values)  # type: ignore[arg-type]


# -- the distributions ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 10, 40])
@pytest.mark.parametrize("x", [0.1, 2.0, 9.5, 60.0])
def test_gamma_q_matches_the_closed_form_for_whole_a(n: int, x: float) -> None:
    exact = math.exp(-x) * sum(x**k / math.factorial(k) for k in range(n))
    assert gamma_q(n, x) == pytest.approx(exact, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("x", [0.01, 0.7, 3.0, 30.0])
def test_gamma_q_of_one_half_is_erfc(x: float) -> None:
    assert gamma_q(0.5, x) == pytest.approx(math.erfc(math.sqrt(x)), rel=1e-12)


def test_chi2_tail_for_two_degrees_of_freedom_is_exponential_even_when_tiny() -> None:
    for chi2 in (0.5, 10.0, 400.0):
        assert chi2_q(chi2, 2) == pytest.approx(math.exp(-chi2 / 2), rel=1e-12)
    assert chi2_q(5.0, 0) == 1.0


@pytest.mark.parametrize("z", [0.3, 0.6, 0.99, 1.0, 1.2, 2.0, 4.0])
def test_kolmogorov_q_matches_its_series(z: float) -> None:
    series = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * z * z) for j in range(1, 2000))
    assert kolmogorov_q(z) == pytest.approx(series, rel=1e-10, abs=1e-15)


def test_kolmogorov_q_gives_the_textbook_critical_values() -> None:
    assert kolmogorov_q(1.3581) == pytest.approx(0.05, abs=1e-4)
    assert kolmogorov_q(1.6276) == pytest.approx(0.01, abs=1e-4)
    assert kolmogorov_q(0.0) == 1.0


# -- Kolmogorov-Smirnov -----------------------------------------------------------------


def test_ks_of_identical_histograms_is_one() -> None:
    values = np.array([3.0, 10.0, 7.0, 1.0])
    result = ks_test(values, values, values, values)
    assert result.distance == 0.0 and result.p_value == 1.0


def test_ks_small_case_by_hand() -> None:
    # CDFs 0.75 | 1 and 0.25 | 1: D = 0.5; 4 entries each, n_eff = 4·4/8 = 2.
    result = ks_test([3, 1], [3, 1], [1, 3], [1, 3])
    assert result.distance == pytest.approx(0.5)
    assert result.z == pytest.approx(0.5 * math.sqrt(2))
    z = 0.5 * math.sqrt(2)
    by_hand = 1 - math.sqrt(2 * math.pi) / z * sum(
        math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * z * z)) for k in range(1, 50)
    )
    assert result.p_value == pytest.approx(by_hand, rel=1e-12)


def test_ks_against_a_function_uses_the_other_sides_entries() -> None:
    # A reference with zero errors is a function: z = D·√n of the histogram alone.
    result = ks_test([3, 1], [3, 1], [1, 3], [0, 0])
    assert result.z == pytest.approx(0.5 * math.sqrt(4))
    with pytest.raises(ComparisonError, match="errors zero"):
        ks_test([3, 1], [0, 0], [1, 3], [0, 0])


def test_ks_of_2d_is_the_mean_of_both_bin_orders() -> None:
    a = np.array([[0.0, 0.0], [1.0, 1.0]])  # indexed [ix, iy]
    b = np.array([[0.0, 2.0], [0.0, 0.0]])
    # x outer, y inner: a 0 0 .5 .5, b 0 1 0 0 -> cumulative differences 0 -1 -.5 0: 1.
    # y outer, x inner: a 0 .5 0 .5, b 0 0 1 0 -> cumulative differences 0 .5 -.5 0: .5.
    assert ks_test(a, a, b, b).distance == pytest.approx(0.75)
    assert ks_test(b, b, a, a).distance == pytest.approx(0.75)


def test_ks_sees_a_shift_and_not_a_fluctuation() -> None:
    rng = np.random.default_rng(7)
    run, same, shifted = sampled(rng, 5000), sampled(rng, 5000), sampled(rng, 5000, 0.3)
    inner = slice(1, -1)
    p_same = ks_test(run.sumw[inner], run.sumw2[inner], same.sumw[inner], same.sumw2[inner])
    p_shift = ks_test(run.sumw[inner], run.sumw2[inner], shifted.sumw[inner], shifted.sumw2[inner])
    assert p_same.p_value > 0.05
    assert p_shift.p_value < 1e-10


def test_ks_does_not_depend_on_the_references_normalisation() -> None:
    values, ref = np.array([5.0, 9.0, 3.0]), np.array([4.0, 12.0, 2.0])
    plain = ks_test(values, values, ref, ref)
    scaled = ks_test(values, values, ref * 7, ref * 49)
    assert scaled.p_value == pytest.approx(plain.p_value, rel=1e-12)


# -- chi2 -------------------------------------------------------------------------------


def contingency_chi2(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's χ² of the 2 x k table (a, b): Σ (observed - expected)² / expected."""
    table = np.vstack([a, b])
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def test_chi2_unweighted_is_the_homogeneity_test_of_the_two_histograms() -> None:
    a, b = np.array([10.0, 9.0, 8.0]), np.array([5.0, 6.0, 19.0])
    result = chi2_test(a, a, b, b)
    assert result.mode == "UU" and result.ndf == 2
    assert result.chi2 == pytest.approx(contingency_chi2(a, b), rel=1e-12)
    # R's chisq.test(matrix(c(10, 9, 8, 5, 6, 19), nrow = 3)): X² = 6.60856, p = 0.03672565.
    assert result.chi2 == pytest.approx(6.60856, abs=1e-5)
    assert result.p_value == pytest.approx(0.03672565, abs=1e-8)


def test_chi2_skips_bins_empty_in_both_and_takes_a_degree_of_freedom() -> None:
    a, b = np.array([10.0, 0.0, 9.0, 8.0]), np.array([5.0, 0.0, 6.0, 19.0])
    result = chi2_test(a, a, b, b)
    assert result.ndf == 2
    assert result.chi2 == pytest.approx(6.60856, abs=1e-5)


def test_chi2_with_a_scaled_reference_is_weighted() -> None:
    a = np.array([10.0, 9.0, 8.0])
    m = np.array([5.0, 6.0, 19.0])
    k = 0.25
    result = chi2_test(a, a, m * k, m * k * k)
    assert result.mode == "WW" and result.ndf == 2
    s1, s2 = a.sum(), (m * k).sum()
    by_hand = sum(
        (s2 * n - s1 * mk) ** 2 / (s1 * s1 * e2 + s2 * s2 * n)
        for n, mk, e2 in zip(a, m * k, m * k * k, strict=True)
    )
    assert result.chi2 == pytest.approx(by_hand, rel=1e-12)


def test_chi2_of_identical_is_one_and_of_a_shift_is_tiny() -> None:
    rng = np.random.default_rng(3)
    run, shifted = sampled(rng, 20_000), sampled(rng, 20_000, 0.1)
    inner = slice(1, -1)
    same = chi2_test(run.sumw[inner], run.sumw2[inner], run.sumw[inner], run.sumw2[inner])
    assert same.chi2 == 0.0 and same.p_value == 1.0
    moved = chi2_test(run.sumw[inner], run.sumw2[inner], shifted.sumw[inner], shifted.sumw2[inner])
    assert moved.p_value < 1e-10


def test_comparisons_refuse_empty_and_differently_shaped_inputs() -> None:
    full, empty = np.array([1.0, 2.0]), np.zeros(2)
    for test in (ks_test, chi2_test):
        with pytest.raises(ComparisonError) as exc:
            test(empty, empty, full, full)
        assert exc.value.problem == "empty"
        with pytest.raises(ComparisonError) as exc:
            test(full, full, empty, empty)
        assert exc.value.problem == "reference empty"
        with pytest.raises(ComparisonError) as exc:
            test(full, full, np.ones(3), np.ones(3))
        assert exc.value.problem == "binning"


# -- the check file ---------------------------------------------------------------------

CHECK_FILE = """\
reference: {window: 5}
histograms:
  energy:
    shape:
      kind: ks
      warning: {min: 0.05}
      bad: {min: 0.01}
    shape_chi2:
      kind: chi2
      reference: run 1234
      bad: {min: 0.001}
      shadow: true
    mean:
      kind: mean
      warning: {min: 1.5, max: 2.5}
      bad: {min: 1.0, max: 3.0}
  hit_time:
    early:
      kind: bin_content
      bins: [0, 20]
      bad: {max: 100}
      on_empty: good
  pmt_hits:
    new_dead:
      kind: new_dead
      reference: {run: 1200}
      warning: {max: 0}
      bad: {max: 5}
    hot:
      kind: hot
      bad: {max: 20}
"""


def test_a_check_file_is_parsed_with_defaults_and_references() -> None:
    specs = {s.key: s for s in parse_checks(CHECK_FILE, "checks.yaml")}
    assert list(specs) == [
        "energy/shape",
        "energy/shape_chi2",
        "energy/mean",
        "hit_time/early",
        "pmt_hits/new_dead",
        "pmt_hits/hot",
    ]
    assert specs["energy/shape"].reference == ReferenceWindow(5)
    assert specs["energy/shape"].warning == Limits(min=0.05)
    assert specs["energy/shape_chi2"].reference == ReferenceRun(1234)
    assert specs["energy/shape_chi2"].shadow and specs["energy/shape_chi2"].warning is None
    assert specs["energy/mean"].bad == Limits(1.0, 3.0)
    assert specs["energy/mean"].reference is None
    assert specs["hit_time/early"].bins == (0, 20)
    assert specs["hit_time/early"].on_empty is GOOD
    assert specs["pmt_hits/new_dead"].reference == ReferenceRun(1200)
    assert specs["pmt_hits/hot"].source == "checks.yaml:29"


def replace_line(line: int, text: str) -> str:
    lines = CHECK_FILE.splitlines()
    lines[line - 1] = text
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("line", "text", "where", "message"),
    [
        (5, "      kind: kss", "5: histograms.energy.shape.kind", "expected one of ks, chi2"),
        (6, "      warning: {max: 0.05}", "6: histograms.energy.shape.warning", "only a min"),
        (7, "      bad: {min: 1.5}", "7: histograms.energy.shape.bad.min", "between 0 and 1"),
        (
            7,
            "      bad: {min: 0.1}",
            "7: histograms.energy.shape.bad",
            "looser than the warning limits",
        ),
        (10, "      reference: run twelve", "10: histograms.energy.shape_chi2.reference", "run N"),
        (
            12,
            "      shadow: yes please",
            "12: histograms.energy.shape_chi2.shadow",
            "true or false",
        ),
        (16, "      bad: {min: 3.0, max: 1.0}", "16: histograms.energy.mean.bad", "is above max"),
        (16, "      bins: [1, 2]", "16: histograms.energy.mean.bins", "only for kind bin_content"),
        (20, "      bins: [5, 2]", "20: histograms.hit_time.early.bins", "first ≤ last"),
        (22, "      on_empty: maybe", "22: histograms.hit_time.early.on_empty", "good, warning"),
        (30, "      refrence: run 3", "30: histograms.pmt_hits.hot", "did you mean 'reference'"),
        (
            30,
            "      kind: hot\n      reference: run 3",
            "31: histograms.pmt_hits.hot.reference",
            "only for chi2",
        ),
        (28, "      bad: {max: five}", "28: histograms.pmt_hits.new_dead.bad.max", "a number"),
        (
            29,
            "    new_dead:",
            "29: histograms.pmt_hits.new_dead",
            "duplicate key (first given on line 24)",
        ),
    ],
)
def test_check_file_errors_name_file_line_and_field(
    line: int, text: str, where: str, message: str
) -> None:
    with pytest.raises(CheckSpecError) as exc:
        parse_checks(replace_line(line, text), "checks.yaml")
    assert str(exc.value).startswith(f"checks.yaml:{where}: "), str(exc.value)
    assert message in str(exc.value)


def test_check_file_structural_errors() -> None:
    cases = {
        "": "checks.yaml:1: the file is empty",
        "histograms: {h: {c: {kind: entries}}}\n": "checks.yaml:1: histograms.h.c.bad: missing",
        "histograms:\n  h:\n    c: {kind: ks, bad: {min: 0.1}}\n": (
            "checks.yaml:3: histograms.h.c.reference: missing"
        ),
        "histograms:\n  h: [1]\n": "checks.yaml:2: histograms.h: expected a mapping",
        "histograms:\n  h: {c: {kind: entries, bad: {min: 1}}\n": "checks.yaml:3: YAML syntax",
        "reference: {window: 0}\nhistograms: {}\n": "checks.yaml:1: reference.window: expected",
        "histograms: {}\n": "checks.yaml:1: histograms: expected at least one histogram",
        "histograms: {h: {}}\n": "checks.yaml:1: histograms.h: expected at least one check",
        "checks: {}\n": "checks.yaml:1: unknown key 'checks'",
    }
    for text, start in cases.items():
        with pytest.raises(CheckSpecError) as exc:
            parse_checks(text, "checks.yaml")
        assert str(exc.value).startswith(start), (text, str(exc.value))


def test_load_checks_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "juno.yaml"
    path.write_text(CHECK_FILE, encoding="utf-8")
    assert len(load_checks(path)) == 6
    with pytest.raises(CheckSpecError, match="cannot read the file"):
        load_checks(tmp_path / "missing.yaml")
    path.write_text(replace_line(5, "      kind: 3"), encoding="utf-8")
    with pytest.raises(CheckSpecError, match=f"^{path}:5: histograms.energy.shape.kind"):
        load_checks(path)


# -- evaluating histogram checks --------------------------------------------------------


def test_ks_check_verdicts_and_reason() -> None:
    rng = np.random.default_rng(21)
    ref, same, shifted = sampled(rng, 5000), sampled(rng, 5000), sampled(rng, 5000, 0.3)
    check = spec("ks", warning=Limits(min=0.05), bad=Limits(min=0.01))
    good = evaluate_histogram(check, same, ref)
    assert good.verdict is GOOD and good.values["p_value"] > 0.05
    bad = evaluate_histogram(check, shifted, ref)
    assert bad.verdict is BAD
    assert bad.reason.startswith("KS p=") and bad.reason.endswith("< 0.01 (bad)")
    assert bad.values["p_value"] < 0.01


def test_chi2_check_warns_between_its_levels() -> None:
    a, b = hist1d([10.0, 9.0, 8.0]), hist1d([5.0, 6.0, 19.0])  # p = 0.0367
    check = spec("chi2", warning=Limits(min=0.05), bad=Limits(min=0.01))
    result = evaluate_histogram(check, a, b)
    assert result.verdict is WARNING
    assert result.reason == "χ²/ndf=6.609/2 (UU) p=0.03673 < 0.05 (warning)"
    assert result.values["ndf"] == 2


def test_entries_check() -> None:
    check = spec("entries", warning=Limits(min=100), bad=Limits(min=10))
    assert evaluate_histogram(check, hist1d([50.0, 60.0])).verdict is GOOD
    assert evaluate_histogram(check, hist1d([50.0, 40.0])).verdict is WARNING
    empty = evaluate_histogram(check, hist1d([0.0, 0.0]))
    assert empty.verdict is BAD and empty.reason == "entries=0 < 10 (bad)"


def test_mean_and_rms_checks_on_good_and_broken_runs() -> None:
    rng = np.random.default_rng(5)
    mean = spec("mean", warning=Limits(-0.1, 0.1), bad=Limits(-0.3, 0.3))
    rms = spec("rms", warning=Limits(0.9, 1.1), bad=Limits(0.8, 1.2))
    good = sampled(rng, 10_000)
    assert evaluate_histogram(mean, good).verdict is GOOD
    assert evaluate_histogram(rms, good).verdict is GOOD
    assert evaluate_histogram(mean, sampled(rng, 10_000, shift=0.2)).verdict is WARNING
    assert evaluate_histogram(mean, sampled(rng, 10_000, shift=-0.5)).verdict is BAD
    wide = evaluate_histogram(rms, sampled(rng, 10_000, width=1.5))
    assert wide.verdict is BAD and wide.values["rms"] == pytest.approx(1.5, rel=0.03)


def test_mean_of_the_y_axis_of_a_2d_histogram() -> None:
    edges = np.array([0.0, 1.0, 2.0])
    sumw = np.zeros((4, 4))
    sumw[1, 2] = 10.0  # x in [0, 1), y in [1, 2): mean y = 1.5
    hist = Hist("h2", "", "TH2D", (Axis(edges), Axis(edges)), sumw, sumw.copy(), 10.0)
    hist.stats = stats_from_bins(hist)
    check = spec("mean", axis="y", bad=Limits(1.4, 1.6))
    result = evaluate_histogram(check, hist)
    assert result.verdict is GOOD and result.values["mean"] == pytest.approx(1.5)
    with pytest.raises(CheckError, match="no y axis"):
        evaluate_histogram(check, hist1d([1.0]))


def test_bin_content_check_names_the_first_bin_outside() -> None:
    hist = hist1d([5.0, 7.0, 500.0, 6.0])
    check = spec("bin_content", warning=Limits(max=50), bad=Limits(max=200))
    result = evaluate_histogram(check, hist)
    assert result.verdict is BAD
    assert "1 of 4 bins 1..4" in result.reason and "bin 3 = 500 > 200 (bad)" in result.reason
    ranged = spec("bin_content", bins=(0, 2), bad=Limits(min=1, max=200))
    low = evaluate_histogram(ranged, hist)  # the underflow bin is empty: below min 1
    assert low.verdict is BAD and "bin 0 = 0 < 1" in low.reason
    assert (
        evaluate_histogram(spec("bin_content", bins=(1, 2), bad=Limits(max=200)), hist).verdict
        is GOOD
    )
    with pytest.raises(CheckError, match="beyond the overflow bin 5"):
        evaluate_histogram(spec("bin_content", bins=(1, 6), bad=Limits(max=1)), hist)


def test_bin_content_of_a_2d_histogram_looks_at_x_bins_and_every_y_bin() -> None:
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    sumw = np.ones((5, 5))
    sumw[2, 3] = 80.0  # x bin 2, y bin 3
    sumw[4, 4] = 1000.0  # overflow in x and y: outside the checked bins
    hist = Hist("h2", "", "TH2D", (Axis(edges), Axis(edges)), sumw, sumw.copy(), 1000.0)
    result = evaluate_histogram(spec("bin_content", bad=Limits(max=50)), hist)
    assert result.verdict is BAD
    assert result.reason.startswith("1 of 9 bins 1..3 outside the bad limits; first: bin 2 = 80")
    only_x1 = spec("bin_content", bins=(1, 1), bad=Limits(max=50))
    assert evaluate_histogram(only_x1, hist).verdict is GOOD


def test_empty_histogram_or_reference_gives_the_on_empty_verdict() -> None:
    full, empty = hist1d([3.0, 4.0]), hist1d([0.0, 0.0])
    check = spec("ks", bad=Limits(min=0.01))
    result = evaluate_histogram(check, empty, full)
    assert result.verdict is WARNING and result.reason == "the histogram is empty (warning)"
    ref_empty = evaluate_histogram(spec("chi2", bad=Limits(min=0.01), on_empty=BAD), full, empty)
    assert ref_empty.verdict is BAD and "reference histogram is empty" in ref_empty.reason
    mean = evaluate_histogram(spec("mean", bad=Limits(0, 1)), empty)
    assert mean.verdict is WARNING and "no entries" in mean.reason


def test_incompatible_binning_is_bad_with_the_reason() -> None:
    run = hist1d([3.0, 4.0, 5.0])
    ref = hist1d([3.0, 4.0, 5.0], edges=np.array([0.0, 1.0, 2.0, 4.0]))
    result = evaluate_histogram(spec("ks", bad=Limits(min=0.01)), run, ref)
    assert result.verdict is BAD
    assert result.reason.startswith("binning differs from the reference: ")
    assert "edges differ" in result.reason


def test_a_check_needs_its_reference_and_the_right_kind() -> None:
    with pytest.raises(CheckError, match="needs a reference"):
        evaluate_histogram(spec("ks", bad=Limits(min=0.01)), hist1d([1.0]))
    with pytest.raises(CheckError, match="evaluated on a PMT status"):
        evaluate_histogram(spec("dead", bad=Limits(max=1)), hist1d([1.0]))


# -- channel-status checks --------------------------------------------------------------

CUTS = DEFAULT_CUTS.override(min_events=100)


def test_dead_and_hot_counts() -> None:
    status = pmt_status([0, 0, 10, 100, 10], 100, CUTS)
    result = evaluate_status(spec("dead", warning=Limits(max=0), bad=Limits(max=5)), status)
    assert result.verdict is WARNING
    assert result.reason == "2 dead PMTs > 0 (warning): 0, 1"
    hot = evaluate_status(spec("hot", bad=Limits(max=0)), status)
    assert hot.verdict is BAD and hot.values["count"] == 1


def test_new_dead_since_the_reference() -> None:
    reference = pmt_status([0, 10, 10, 10, 10] * 3, 100, CUTS)
    now = pmt_status([0, 0, 0, 10, 10] * 3, 100, CUTS)
    check = spec("new_dead", warning=Limits(max=0), bad=Limits(max=5))
    result = evaluate_status(check, now, reference)
    assert result.verdict is BAD
    assert result.reason == ("6 new dead PMTs since the reference > 5 (bad): 1, 2, 6, 7, 11, 12")
    assert evaluate_status(check, reference, reference).verdict is GOOD
    unknown = pmt_status([0] * 15, 10, CUTS)
    unsure = evaluate_status(check, now, unknown)
    assert unsure.verdict is WARNING
    assert unsure.reason == "reference PMT status unknown: 10 events < 100 needed (warning)"
    with pytest.raises(CheckError, match="needs the reference's status"):
        evaluate_status(check, now)


def test_long_pmt_lists_are_cut_in_the_reason() -> None:
    status = pmt_status([0] * 30 + [10] * 10, 100, CUTS)
    result = evaluate_status(spec("dead", bad=Limits(max=0)), status)
    assert result.reason.endswith("8, 9, … (20 more)")


# -- the run's verdict ------------------------------------------------------------------


def result(verdict: Verdict, shadow: bool = False) -> CheckResult:
    return CheckResult("h", f"c{verdict}{shadow}", "ks", verdict, "", shadow=shadow)


def test_run_verdict_is_the_worst_non_shadow_result() -> None:
    assert run_verdict([]) is GOOD
    assert run_verdict([result(GOOD), result(WARNING), result(GOOD)]) is WARNING
    assert run_verdict([result(WARNING), result(BAD)]) is BAD
    assert run_verdict([result(GOOD), result(BAD, shadow=True)]) is GOOD
    assert run_verdict([result(WARNING), result(BAD, shadow=True)]) is WARNING


def test_shadow_flag_is_carried_into_the_result() -> None:
    check = spec("entries", bad=Limits(min=100), shadow=True)
    outcome = evaluate_histogram(check, hist1d([1.0]))
    assert outcome.verdict is BAD and outcome.shadow
    assert run_verdict([outcome]) is GOOD


# -- rolling references -----------------------------------------------------------------


def test_rolling_reference_sums_runs_and_can_be_scaled() -> None:
    runs = [hist1d([1.0, 2.0, 3.0]), hist1d([2.0, 2.0, 2.0]), hist1d([0.0, 5.0, 1.0])]
    reference = rolling_reference(runs)
    assert reference.sumw[1:-1].tolist() == [3.0, 9.0, 6.0]
    assert reference.entries == 18.0 and reference.stats["fTsumw"] == 18.0
    assert runs[0].sumw[1:-1].tolist() == [1.0, 2.0, 3.0]  # inputs unchanged
    scaled = rolling_reference(runs, scale_to=6.0)
    assert scaled.sumw[1:-1].tolist() == pytest.approx([1.0, 3.0, 2.0])
    assert scaled.sumw2[1:-1].tolist() == pytest.approx([3 / 9, 1.0, 6 / 9])
    run = hist1d([2.0, 3.0, 2.0])
    check = spec("chi2", bad=Limits(min=0.01))
    assert evaluate_histogram(check, run, reference).reason.startswith("χ²/ndf=")
    assert "(WW)" in evaluate_histogram(check, run, scaled).reason
    ks = spec("ks", bad=Limits(min=0.01))
    p_sum = evaluate_histogram(ks, run, reference).values["p_value"]
    assert evaluate_histogram(ks, run, scaled).values["p_value"] == pytest.approx(p_sum)


def test_rolling_reference_refuses_mixed_binning_and_no_runs() -> None:
    with pytest.raises(IncompatibleHistograms):
        rolling_reference([hist1d([1.0, 2.0]), hist1d([1.0, 2.0, 3.0])])
    with pytest.raises(ValueError, match="at least one"):
        rolling_reference([])
