"""``runwatch dqm merge|pmt|check`` on small histogram files written with the library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from runwatch import cli
from runwatch.dqm.histogram import Axis, Hist, read_histograms, write_histograms
from runwatch.dqm.merge import read_merged
from tests.dqm.samples import sample_hists

N_PMT = 40
N_EVENTS = 1000
DEAD = [3, 17]
HOT = [5]

runner = CliRunner()
app = cli.build()


def invoke(*args: str | Path) -> tuple[int, str]:
    # Wide columns: rich would otherwise wrap table cells at 80 and split the reasons.
    result = runner.invoke(app, ["dqm", *map(str, args)], env={"COLUMNS": "250"})
    return result.exit_code, result.output


def pmt_file(
    path: Path,
    dead: list[int] = DEAD,
    hot: list[int] = HOT,
    events: int = N_EVENTS,
    energy_mean: float = 5.0,
) -> Path:
    """A hist step-like file: pmt_hits (10 % fired, dead 0, hot all), n_events, energy."""
    rng = np.random.default_rng(7)
    hists = sample_hists(rng, N_PMT)
    hits = np.zeros(N_PMT + 2)
    hits[1:-1] = events // 10
    hits[[i + 1 for i in dead]] = 0
    hits[[i + 1 for i in hot]] = events
    pmt_axis = Axis.regular_axis(N_PMT, -0.5, N_PMT - 0.5, "PMT id")
    hists["pmt_hits"] = Hist("pmt_hits", "hits", "TH1D", (pmt_axis,), hits, hits.copy(), 1.0)
    count = np.array([0.0, float(events), 0.0])
    one = Axis.regular_axis(1, 0.0, 1.0)
    hists["n_events"] = Hist("n_events", "events", "TH1D", (one,), count, count.copy(), 1.0)
    energy = np.zeros(32)
    energy[1:-1] = np.random.default_rng(1).poisson(
        2000 * np.exp(-0.5 * ((np.arange(30) + 0.5) * 0.5 - energy_mean) ** 2)
    )
    axis = Axis.regular_axis(30, 0.0, 15.0, "E [MeV]")
    hists["energy"] = Hist("energy", "E", "TH1D", (axis,), energy, energy.copy(), energy.sum())
    write_histograms(path, hists, {})
    return path


# -- merge ------------------------------------------------------------------------------


def test_merge_twice_includes_each_file_once(tmp_path: Path) -> None:
    inputs = [pmt_file(tmp_path / f"file{i}.root") for i in range(3)]
    merged = tmp_path / "merged.root"
    code, out = invoke("merge", merged, *inputs[:2])
    assert code == 0, out
    assert "added: 2 (file0.root, file1.root)" in out
    code, out = invoke("merge", merged, *inputs)
    assert code == 0, out
    assert "added: 1 (file2.root)" in out
    assert "skipped, already included: 2 (file0.root, file1.root)" in out
    assert f"included: 3 files, {3 * N_EVENTS} events" in out
    state = read_merged(merged)
    assert sorted(state.included) == [str(p) for p in inputs]  # keyed by absolute path
    assert state.hists["n_events"].sumw.sum() == 3 * N_EVENTS
    code, out = invoke("merge", merged, *inputs)
    assert code == 0 and "(merged file unchanged)" in out


def test_a_corrupt_input_is_reported_and_the_others_merged(tmp_path: Path) -> None:
    good = pmt_file(tmp_path / "good.root")
    corrupt = tmp_path / "corrupt.root"
    corrupt.write_bytes(good.read_bytes()[:300])
    merged = tmp_path / "merged.root"
    code, out = invoke("merge", merged, good, corrupt, tmp_path / "absent.root")
    assert code == 1
    assert "added: 1 (good.root)" in out
    assert "errors: 2" in out and "corrupt.root" in out and "absent.root" in out
    assert list(read_merged(merged).included) == [str(good)]


def test_merge_refuses_to_overwrite_a_file_that_is_not_a_merge(tmp_path: Path) -> None:
    first, second = pmt_file(tmp_path / "a.root"), pmt_file(tmp_path / "b.root")
    before = first.read_bytes()
    code, out = invoke("merge", first, second)
    assert code == 2 and "not a merged histogram file" in out
    assert first.read_bytes() == before


# -- pmt --------------------------------------------------------------------------------


def counts_in(out: str) -> dict[str, int]:
    rows = (line.strip("│ ").split("│") for line in out.splitlines() if line.count("│") == 3)
    return {cells[0].strip(): int(cells[1]) for cells in rows if cells[1].strip().isdigit()}


def test_pmt_counts_and_ids_of_the_known_dead_and_hot(tmp_path: Path) -> None:
    code, out = invoke("pmt", pmt_file(tmp_path / "run.root"), "--list", "dead,hot")
    assert code == 0, out
    assert counts_in(out) == {"normal": 37, "other": 0, "dead": 2, "hot": 1, "unknown": 0}
    assert "dead ids: 3, 17" in out and "hot ids: 5" in out
    assert "dead < 0.01, hot > 0.99, normal 0.05-0.15, min events 1000" in out


def test_pmt_cuts_from_the_command_line(tmp_path: Path) -> None:
    path = pmt_file(tmp_path / "run.root")
    code, out = invoke("pmt", path, "--normal-low", "0.11", "--normal-high", "0.2")
    assert code == 0 and counts_in(out)["other"] == 37
    code, out = invoke("pmt", path, "--cuts", "juno-test")
    assert code == 0 and counts_in(out)["unknown"] == N_PMT  # 1,000 events < 10⁶
    code, out = invoke("pmt", path, "--dead", "0.5")
    assert code == 2 and "dead (0.5) must be < normal_low" in out
    code, out = invoke("pmt", path, "--list", "dead,broken")
    assert code == 2 and "unknown class broken" in out


def test_pmt_changes_since_the_previous_run(tmp_path: Path) -> None:
    before = pmt_file(tmp_path / "before.root")
    now = pmt_file(tmp_path / "now.root", dead=[3, 20], hot=[])
    code, out = invoke("pmt", now, "--previous", before)
    assert code == 0, out
    assert "3 PMTs (1 new dead, 0 new hot)" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 4}
    assert set(rows) - {"pmt"} == {"5", "17", "20"}
    assert "hot" in rows["5"] and "dead" in rows["20"]


def test_pmt_of_a_file_without_pmt_counts(tmp_path: Path) -> None:
    path = tmp_path / "rec.root"
    write_histograms(path, {"energy": sample_hists(np.random.default_rng(3))["rec/energy"]}, {})
    code, out = invoke("pmt", path)
    assert code == 1 and "no pmt_hits or n_events histogram" in out
    code, out = invoke("pmt", tmp_path / "absent.root")
    assert code == 1 and "absent.root" in out


# -- check ------------------------------------------------------------------------------

CHECKS = """\
reference: {window: 5}
histograms:
  energy:
    shape:
      kind: chi2
      warning: {min: 0.05}
      bad: {min: 0.01}
    mean:
      kind: mean
      bad: {min: 4.0, max: 6.0}
  pmt_hits:
    dead:
      kind: dead
      warning: {max: 2}
      bad: {max: 5}
    new_dead:
      kind: new_dead
      bad: {max: 0}
      shadow: true
"""


@pytest.fixture
def checks(tmp_path: Path) -> Path:
    path = tmp_path / "checks.yaml"
    path.write_text(CHECKS)
    return path


def test_check_good_run_against_its_reference(tmp_path: Path, checks: Path) -> None:
    run, reference = pmt_file(tmp_path / "run.root"), pmt_file(tmp_path / "ref.root")
    code, out = invoke("check", checks, run, "--reference", reference)
    assert code == 0, out
    assert "run verdict: GOOD" in out
    assert "2 dead PMTs" in out and "mean=" in out


def test_check_broken_run_is_bad(tmp_path: Path, checks: Path) -> None:
    reference = pmt_file(tmp_path / "ref.root")
    broken = pmt_file(tmp_path / "run.root", dead=[1, 2, 3, 4, 6, 7, 8], energy_mean=8.0)
    code, out = invoke("check", checks, broken, "--reference", reference)
    assert code == 2, out
    assert "run verdict: BAD" in out
    assert "7 dead PMTs > 5 (bad)" in out and "mean=8.0" in out
    assert "6 new dead PMTs since the reference > 0 (bad)" in out  # shadow: shown


def test_check_without_the_reference_it_needs(tmp_path: Path, checks: Path) -> None:
    code, out = invoke("check", checks, pmt_file(tmp_path / "run.root"))
    assert code == 3
    assert "needs a reference: give --reference" in out
    assert "2 of 4 checks not evaluated" in out


def test_check_of_a_histogram_missing_from_the_file_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text(
        "histograms:\n  vertex_r3:\n    filled:\n      kind: entries\n      bad: {min: 1}\n"
    )
    code, out = invoke("check", path, pmt_file(tmp_path / "run.root"))
    assert code == 2 and "vertex_r3 not in run.root" in out


def test_check_file_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text(CHECKS.replace("bad: {max: 5}", "bad: {max: five}"))
    code, out = invoke("check", path, pmt_file(tmp_path / "run.root"))
    assert code == 3
    assert f"{path}:15: histograms.pmt_hits.dead.bad.max" in out


def test_merged_file_is_checked_like_a_per_file_one(tmp_path: Path, checks: Path) -> None:
    merged = tmp_path / "merged.root"
    inputs = [pmt_file(tmp_path / f"file{i}.root") for i in range(2)]
    assert invoke("merge", merged, *inputs)[0] == 0
    assert read_histograms(merged, names=("n_events",))["n_events"].sumw.sum() == 2 * N_EVENTS
    code, out = invoke("check", checks, merged, "--reference", inputs[0])
    assert code == 0, out


def test_a_shadow_check_never_makes_the_run_worse(tmp_path: Path) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text(
        "histograms:\n  pmt_hits:\n    dead:\n      kind: dead\n"
        "      bad: {max: 0}\n      shadow: true\n"
    )
    code, out = invoke("check", path, pmt_file(tmp_path / "run.root"))
    assert code == 0, out
    assert "2 dead PMTs > 0 (bad)" in out and "run verdict: GOOD" in out
