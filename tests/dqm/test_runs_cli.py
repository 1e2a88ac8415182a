"""``runwatch dqm status|checks|trend|pmt RUN`` on a deployment's database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from runwatch.config import Settings
from runwatch.db import Database
from runwatch.dqm.models import DqmRunCuts
from runwatch.dqm.service import register_merges
from runwatch.workflow.revisions import RevisionCache
from tests.dqm.dbruns import T0, detector_file, hist_tasks, make_run, merge_task

runner = CliRunner()


@pytest.fixture
def judged(deployment: Path, db: Database, settings: Settings) -> Path:
    """Runs 1 (good) and 2 (a PMT more dead, PMT 5 no longer hot), merged and judged."""
    rng = np.random.default_rng(30)
    with db.session() as session:
        for number, dead in ((1, [3]), (2, [3, 30])):
            run = make_run(session, number, files=2)
            files = [detector_file(rng, 1000, dead, [5] if number == 1 else []) for _ in "ab"]
            made = hist_tasks(session, run, deployment / "hist" / str(number), files)
            merge_task(session, made, deployment / "hist" / str(number))
            register_merges(session, settings, RevisionCache(), T0)
    return deployment


def invoke(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["dqm", *args])
    return result.exit_code, result.output


def test_status_of_recent_runs_and_of_one_run(app: typer.Typer, judged: Path) -> None:
    code, out = invoke(app, "status")
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("│ ")]
    assert [line.split("│")[1].strip() for line in lines] == ["2", "1"]
    assert "2/2" in lines[0] and "2000/2000" in lines[0] and "no checks declared" in lines[0]
    code, out = invoke(app, "status", "1")
    assert code == 0, out
    assert "verdict: good (final): no checks declared" in out
    assert "files 2/2, events 2000/2000" in out and "dead 1, hot 1" in out
    code, out = invoke(app, "status", "9")
    assert code == 1 and "no run 9" in out


def test_pmt_of_a_run_and_its_own_cuts(app: typer.Typer, judged: Path, db: Database) -> None:
    code, out = invoke(app, "pmt", "2", "--list", "dead")
    assert code == 0, out
    assert "cuts (detector): dead < 0.01, hot > 0.99" in out
    assert "dead ids: 3, 30" in out
    assert "changed since run 1 (previous good): 2 PMTs (1 new dead, 0 new hot)" in out
    code, out = invoke(app, "pmt", "2", "--set-cut", "hot=0.5")
    assert code == 2 and "--by" in out
    code, out = invoke(app, "pmt", "2", "--set-cut", "hot=0.01", "--by", "expert")
    assert code == 2 and "hot" in out
    code, out = invoke(app, "pmt", "2", "--set-cut", "dead=0.04", "--by", "expert")
    assert code == 0, out
    assert "cuts (run's own {'dead': 0.04} set by expert)" in out
    with db.session() as session:
        (row,) = session.query(DqmRunCuts).all()
        assert (row.cuts, row.set_by) == ({"dead": 0.04}, "expert")
    code, out = invoke(app, "pmt", "7")
    assert code == 1 and "no run 7" in out


def test_pmt_history_up_to_a_run(app: typer.Typer, judged: Path) -> None:
    code, out = invoke(app, "pmt", "2", "--history", "30")
    assert code == 0, out
    rows = [line.split("│")[1:4] for line in out.splitlines() if line.startswith("│ ")]
    history = [(r.strip(), c.strip()) for r, f, c in rows if f.strip().endswith("%")]
    assert history == [("1", "normal"), ("2", "dead")]
    assert "0.0000%" in out
    code, out = invoke(app, "pmt", "1", "--history", "30")
    assert "│ 2 " not in out
    code, out = invoke(app, "pmt", str(judged / "runwatch.toml"), "--history", "30")
    assert code == 2 and "for a run, not a file" in out


def test_checks_rerun_over_a_range_after_the_check_file_changed(
    app: typer.Typer, judged: Path
) -> None:
    code, out = invoke(app, "checks", "2")
    assert code == 0 and "no check results" in out
    (judged / "checks.yaml").write_text(
        "histograms:\n  pmt_hits:\n    dead: {kind: dead, bad: {max: 1}}\n"
    )
    with (judged / "runwatch.toml").open("a") as toml:
        toml.write('[dqm]\nchecks = "checks.yaml"\n')
    code, out = invoke(app, "checks", "1-2", "--rerun")
    assert code == 0, out
    assert "re-evaluated 2 of 2 runs" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    assert "good" in rows["1"] and "bad" in rows["2"] and "2 dead PMTs > 1" in rows["2"]
    code, out = invoke(app, "checks", "2")
    (row,) = [line.split("│") for line in out.splitlines() if line.startswith("│ pmt_hits")]
    assert [cell.strip() for cell in row[1:5]] == ["pmt_hits", "dead", "dead", "bad"]
    code, out = invoke(app, "checks", "2-1")
    assert code == 2 and "before" in out


def test_trend_of_a_quantity(app: typer.Typer, judged: Path) -> None:
    code, out = invoke(app, "trend", "pmt_dead", "--last", "5")
    assert code == 0, out
    rows = [line.split("│")[1:3] for line in out.splitlines() if line.startswith("│ ")]
    assert [(r.strip(), v.strip()) for r, v in rows] == [("1", "1"), ("2", "2")]
    code, out = invoke(app, "trend", "nonsense")
    assert code == 1 and "stored quantities: checks_bad" in out
