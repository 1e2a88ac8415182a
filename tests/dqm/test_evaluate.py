"""Runs judged on their merges: PMT status, checks against references, verdicts, trends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.orm import Session

from runwatch.catalogue.models import Run
from runwatch.config import DqmSettings, Settings
from runwatch.db import Database
from runwatch.dqm.models import DqmCheckResult, DqmPmtStatus, DqmRunCuts, DqmRunQuality
from runwatch.dqm.pmtstatus import PmtClass
from runwatch.dqm.service import (
    changed_since_previous_good,
    pmt_history,
    reevaluate,
    register_merges,
    set_run_cuts,
    stored_status,
)
from runwatch.dqm.trends import trend
from runwatch.dqm.verdict import Verdict
from runwatch.experiments.juno import formats, hist, rootio
from runwatch.experiments.juno.geometry import load_geometry
from runwatch.experiments.juno.physics import make_pmt_truth, simulate_chunk
from runwatch.workflow.revisions import RevisionCache
from tests.dqm.dbruns import T0, detector_file, dqm_settings, hist_tasks, make_run, merge_task

G, W, B = Verdict.GOOD, Verdict.WARNING, Verdict.BAD
DEAD, HOT = [3, 17], [5]

CHECKS = """\
reference: {window: 2}
histograms:
  energy:
    shape: {kind: ks, warning: {min: 0.01}, bad: {min: 0.001}}
    shape_chi2: {kind: chi2, reference: run 1, bad: {min: 0.001}}
    events: {kind: entries, bad: {min: 1500}}
    mean: {kind: mean, warning: {min: 4.8, max: 5.2}, bad: {min: 4.5, max: 5.5}}
    width: {kind: rms, bad: {min: 0.8, max: 1.2}}
    high: {kind: bin_content, bins: [33, 41], bad: {max: 5}}
    watched: {kind: entries, bad: {min: 1000000}, shadow: true}
  pmt_hits:
    dead: {kind: dead, bad: {max: 2}}
    hot: {kind: hot, bad: {max: 1}}
    new_dead: {kind: new_dead, bad: {max: 0}}
    new_hot: {kind: new_hot, reference: run 2, bad: {max: 0}}
"""


def _judge(
    session: Session,
    settings: Settings,
    folder: Path,
    number: int,
    files: Sequence[dict[str, object]],
) -> Run:
    """A run of these files, merged (final) and registered."""
    run = make_run(session, number, files=len(files))
    made = hist_tasks(session, run, folder / str(number), files)  # type: ignore[arg-type]
    merge_task(session, made, folder / str(number))
    assert len(register_merges(session, settings, RevisionCache(), T0)) == 1
    return run


def _results(session: Session, run: Run) -> dict[str, DqmCheckResult]:
    rows = session.scalars(sa.select(DqmCheckResult).where(DqmCheckResult.run_id == run.id))
    return {row.key: row for row in rows}


@pytest.fixture
def checked(settings: Settings, tmp_path: Path) -> Settings:
    """Settings with the check file above and default cuts for 1,000 events."""
    (tmp_path / "checks.yaml").write_text(CHECKS)
    return dqm_settings(settings, checks=str(tmp_path / "checks.yaml"))


def _good(rng: np.random.Generator) -> list[dict[str, object]]:
    return [detector_file(rng, 1000, DEAD, HOT) for _ in range(2)]


def test_each_check_kind_on_a_good_and_a_broken_run(
    db: Database, settings: Settings, checked: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(20)
    with db.session() as session:
        # The first good runs are judged before the checks exist (nothing to compare with).
        for number in (1, 2):
            _judge(session, settings, tmp_path, number, _good(rng))
        good = _judge(session, checked, tmp_path, 3, _good(rng))
        broken_files = [
            detector_file(rng, 600, [*DEAD, 30, 31, 32], [*HOT, 40], 7.0, energy_width=1.5)
            for _ in range(2)
        ]
        broken = _judge(session, checked, tmp_path, 4, broken_files)
        ok, bad = _results(session, good), _results(session, broken)
        assert {k: r.verdict for k, r in ok.items()} == {
            k: (B if k == "energy/watched" else G) for k in ok
        }, {k: r.reason for k, r in ok.items()}
        assert len(ok) == 11
        assert {k: r.verdict for k, r in bad.items()} == {k: B for k in ok}, {
            k: r.reason for k, r in bad.items()
        }
        assert (ok["energy/shape"].reference, bad["energy/shape"].reference) == ("1-2", "2-3")
        assert bad["energy/shape_chi2"].reference == "1"
        assert bad["pmt_hits/new_dead"].reason.startswith("3 new dead PMTs since the reference")
        assert bad["pmt_hits/new_dead"].reason.endswith(": 30, 31, 32")
        assert "40" in bad["pmt_hits/new_hot"].reason
        assert ok["energy/watched"].shadow
        # The shadow check is stored BAD and leaves the good run GOOD.
        assert session.get_one(DqmRunQuality, good.id).verdict is G
        quality = session.get_one(DqmRunQuality, broken.id)
        assert (quality.verdict, quality.final) == (B, True)
        assert quality.reason.startswith("energy/shape: KS p=")
        assert quality.reason.endswith("(bad); and 7 more")


def test_missing_histograms_and_missing_references(
    db: Database, settings: Settings, checked: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(21)
    with db.session() as session:
        no_energy = [{k: v for k, v in f.items() if k != "energy"} for f in _good(rng)]
        run = _judge(session, checked, tmp_path, 1, no_energy)
        results = _results(session, run)
        assert results["energy/mean"].verdict is B
        assert "energy not in the run's merged histograms" in results["energy/mean"].reason
        # No good run before this one: the comparison's on_empty verdict (WARNING).
        assert results["pmt_hits/new_dead"].verdict is W
        assert results["pmt_hits/new_dead"].reason.startswith("no reference: no final GOOD")
        assert results["pmt_hits/new_hot"].reason.startswith("no reference: reference run 2")


def test_reevaluation_replaces_results_after_a_check_file_change(
    db: Database, settings: Settings, checked: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(22)
    with db.session() as session:
        for number in (1, 2):
            _judge(session, settings, tmp_path, number, _good(rng))
        run = _judge(session, checked, tmp_path, 3, _good(rng))
        assert session.get_one(DqmRunQuality, run.id).verdict is G
        Path(checked.dqm.checks).write_text(CHECKS.replace("max: 2}}", "max: 1}}"))
        (quality,) = reevaluate(session, checked, [3, 99])
        assert quality.verdict is B and "pmt_hits/dead: 2 dead PMTs" in quality.reason
        results = _results(session, run)
        assert len(results) == 11 and results["pmt_hits/dead"].verdict is B
        # The earlier runs, judged without checks, are judged by them now.
        assert [q.verdict for q in reevaluate(session, checked, [1, 2])] == [B, B]
        assert len(_results(session, session.get_one(Run, run.id - 2))) == 11


def test_pmt_classes_of_a_simulated_run_all_found_none_invented(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(23)
    geometry = load_geometry()
    truth = make_pmt_truth(rng, geometry.n_pmt, dead=40, hot=12)
    with db.session() as session:
        run = make_run(session, 5, files=2)
        made = hist_tasks(session, run, tmp_path, [{}, {}])
        for path in made.paths:
            # Through the chain's own files: a calib file (ADC counts stand in for charges,
            # which the per-PMT counts ignore) and the hist step.
            raw, _ = simulate_chunk(rng, geometry, truth, 150, waves=False)
            branches = {k: v for k, v in raw.branches().items() if k in formats.CALIB_BRANCHES}
            branches |= {"npe": raw.branches()["adc"], "time_ns": raw.branches()["tdc"]}
            calib = path.with_suffix(".calib.root")
            with rootio.TreeWriter(calib, formats.CALIB_TREE, formats.CALIB_BRANCHES) as w:
                w.extend(branches)
            hist.run_hist(calib, None, path, n_pmt=geometry.n_pmt)
        merge_task(session, made, tmp_path)
        judged = dqm_settings(settings, cuts={"min_events": 300})
        register_merges(session, judged, RevisionCache(), T0)
        row = session.get_one(DqmPmtStatus, run.id)
        status = stored_status(row)
        assert row.n_events == 300 and len(status) == geometry.n_pmt
        assert status.ids(PmtClass.DEAD).tolist() == np.flatnonzero(truth.dead).tolist()
        assert status.ids(PmtClass.HOT).tolist() == np.flatnonzero(truth.hot).tolist()
        assert (row.counts["dead"], row.counts["hot"], row.counts["unknown"]) == (40, 12, 0)
        assert row.cuts["min_events"] == 300


def test_a_runs_own_cuts_override_the_detectors_and_rejudge_it(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(24)
    with db.session() as session:
        run = _judge(session, settings, tmp_path, 1, _good(rng))
        assert session.get_one(DqmPmtStatus, run.id).counts["normal"] == 47
        # Normal band 9.32-9.42 % (JUNO's test band): most PMTs at ~10 % become "other".
        cuts = set_run_cuts(
            session, settings, run, {"normal_low": 0.0932, "normal_high": 0.0942}, by="expert"
        )
        assert (cuts.normal_low, cuts.dead) == (0.0932, 0.01)
        set_run_cuts(session, settings, run, {"hot": 0.5}, by="expert", comment="hot test")
        stored = session.get_one(DqmRunCuts, run.id)
        assert stored.cuts == {"normal_low": 0.0932, "normal_high": 0.0942, "hot": 0.5}
        assert (stored.set_by, stored.comment) == ("expert", "hot test")
        row = session.get_one(DqmPmtStatus, run.id)
        assert row.counts["normal"] < 20 and row.counts["other"] > 27
        assert (row.counts["dead"], row.counts["hot"]) == (2, 1)
        assert (row.cuts["normal_low"], row.cuts["hot"]) == (0.0932, 0.5)


def test_pmt_history_and_changes_since_the_previous_good_run(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(25)
    with db.session() as session:
        first = _judge(session, settings, tmp_path, 1, _good(rng))
        assert changed_since_previous_good(session, first) is None
        files = [detector_file(rng, 1000, [*DEAD, 30], []) for _ in range(2)]
        second = _judge(session, settings, tmp_path, 2, files)
        found = changed_since_previous_good(session, second)
        assert found is not None and found.previous_run == 1
        assert sorted((p, str(a), str(b)) for p, a, b in found.changes) == [
            (5, "hot", "normal"),
            (30, "normal", "dead"),
        ]
        history = pmt_history(session, 30)
        assert [(p.run, p.pmt_class) for p in history] == [(1, "normal"), (2, "dead")]
        assert history[1].fraction == 0.0 and 0.05 < history[0].fraction < 0.15


def test_trend_points_of_judged_runs(db: Database, settings: Settings, tmp_path: Path) -> None:
    rng = np.random.default_rng(26)
    with db.session() as session:
        for number in (1, 2):
            _judge(session, settings, tmp_path, number, _good(rng))
        points = {q: trend(session, q) for q in ("events", "pmt_dead", "latency_s")}
        assert points == {
            "events": [(1, 2000.0), (2, 2000.0)],
            "pmt_dead": [(1, 2.0), (2, 2.0)],
            "latency_s": [(1, 120.0), (2, 120.0)],  # merged two minutes after the run ended
        }
        # 2000 events in a 10-minute run; the energy's mean from its histogram.
        assert trend(session, "event_rate_hz", last=1) == [(2, pytest.approx(2000 / 600))]
        ((_, energy),) = trend(session, "energy_mean", last=1)
        assert energy == pytest.approx(5.0, abs=0.1)
        assert trend(session, "checks_bad") == [(1, 0.0), (2, 0.0)]
        assert trend(session, "no_such_quantity") == []


def test_a_broken_check_file_or_cuts_make_the_run_warning_with_the_reason(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(27)
    (tmp_path / "checks.yaml").write_text("histograms:\n  energy:\n    mean: {kind: mean}\n")
    broken = dqm_settings(settings, checks=str(tmp_path / "checks.yaml"), cuts={"dead": 0.5})
    with db.session() as session:
        run = _judge(session, broken, tmp_path, 1, _good(rng))
        quality = session.get_one(DqmRunQuality, run.id)
        assert quality.verdict is W
        problems = quality.reason.split("; ")
        assert problems[0].startswith("PMT cuts: dead (0.5) must be < normal_low")
        assert problems[0].endswith("(the default cuts are used)")
        assert problems[1].startswith("check file: ") and "checks.yaml:3" in problems[1]
        assert session.get_one(DqmPmtStatus, run.id).cuts["dead"] == 0.01


@pytest.mark.parametrize("source", ["energy:median", "energy", ":mean"])
def test_a_trend_from_an_unknown_statistic_is_refused_in_the_settings(source: str) -> None:
    with pytest.raises(ValidationError, match="expected 'histogram:statistic'"):
        DqmSettings(trends={"energy_median": source})
