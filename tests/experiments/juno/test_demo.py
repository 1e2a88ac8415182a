"""`runwatch demo`: a real deployment, scheduler and simulator, end to end (small runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import uproot
from rich.console import Console

from runwatch.catalogue.models import File, Run
from runwatch.db import Database
from runwatch.dqm.models import Alarm, DqmMerge, DqmPmtStatus, DqmRunQuality
from runwatch.dqm.pmtstatus import PmtClass
from runwatch.dqm.service import stored_status
from runwatch.dqm.store import latest_merge
from runwatch.dqm.verdict import Verdict
from runwatch.experiments.juno import daqsim
from runwatch.experiments.juno.demo import (
    SEED,
    DemoError,
    DemoOptions,
    DemoRun,
    prepare,
    run_demo,
)
from runwatch.experiments.juno.physics import PmtTruth

pytestmark = pytest.mark.slow


def _summed(paths: list[Path], name: str) -> np.ndarray:
    total = None
    for path in paths:
        with uproot.open(path) as f:
            values = f[name].values()
        total = values if total is None else total + values
    assert total is not None
    return total


def test_the_demo_takes_runs_from_data_taking_to_all_completed(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    runs = (DemoRun(11, "Physics"), DemoRun(12, "Physics", dead=25, hot=6), DemoRun(13, "Calib"))
    options = DemoOptions(folder, files=2, events_per_file=150, timeout_s=240)
    console = Console(record=True, width=100)

    assert run_demo(options, console, runs)

    text = console.export_text()
    assert "all runs All Completed" in text and "runwatch runs show" in text
    for run in runs:
        hists = sorted((folder / "data" / run.stream / str(run.number) / "hist").glob("*.root"))
        assert len(hists) == 2, f"run {run.number}: {hists}"
    # The chain found the simulator's dead and hot PMTs in the per-PMT histograms.
    truth = daqsim.detector_truth(
        daqsim.DaqConfig(run=12, out_dir=folder, seed=SEED, dead=25, hot=6), 17_612
    )
    hists = sorted((folder / "data" / "Physics" / "12" / "hist").glob("*.root"))
    hits = _summed(hists, "pmt_hits")
    events = _summed(hists, "n_events").sum()
    assert events == 300
    assert np.all(hits[truth.dead] == 0)
    assert np.all(hits[truth.hot] >= 0.99 * events)
    normal = ~(truth.dead | truth.hot)
    assert 0.05 < hits[normal].mean() / events < 0.15
    _the_dqm_judged_the_runs(folder, truth)


def _the_dqm_judged_the_runs(folder: Path, truth: PmtTruth) -> None:
    """Every run judged on its final merge of all its files; run 12's dead and hot PMTs
    are exactly the simulator's, its verdict BAD, and an alarm says so."""
    db = Database(f"sqlite:///{folder / 'runwatch.db'}")
    try:
        with db.read_session() as session:
            runs = {r.number: r for r in session.scalars(sa.select(Run))}
            for number in (11, 12, 13):
                merge = latest_merge(session, runs[number].id)
                assert merge is not None and merge.final, number
                assert (merge.files_included, merge.files_total) == (2, 2)
                assert merge.events_included == merge.events_total == 300
            quality = {q.run_id: q.verdict for q in session.scalars(sa.select(DqmRunQuality))}
            assert quality[runs[11].id] is Verdict.GOOD
            assert quality[runs[12].id] is Verdict.BAD
            status = stored_status(session.get_one(DqmPmtStatus, runs[12].id))
            assert set(status.ids(PmtClass.DEAD)) == set(np.flatnonzero(truth.dead))
            assert set(status.ids(PmtClass.HOT)) == set(np.flatnonzero(truth.hot))
            alarms = {a.key for a in session.scalars(sa.select(Alarm))}
            assert f"verdict:run:{runs[12].id}" in alarms
            assert f"verdict:run:{runs[11].id}" not in alarms
    finally:
        db.dispose()


def test_the_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not made by the demo"):
        prepare(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_rerun_wipes_the_earlier_demo(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    prepare(folder)
    (folder / "dropbox" / "old.rtraw").write_text("old")
    constants = prepare(folder)
    assert not (folder / "dropbox" / "old.rtraw").exists()
    assert (
        constants.is_file() and str(constants) in (folder / "pipelines" / "juno.yaml").read_text()
    )


def test_live_merges_follow_a_run_while_the_simulator_still_writes_it(tmp_path: Path) -> None:
    """The DAQ writes a run in real time (a file every ~3.75 s); the merge runs every
    second meanwhile: the shifter sees merged histograms of the run before it ends, and
    the final merge counts each file once."""
    folder = tmp_path / "demo"
    runs = (DemoRun(21, "Physics"),)
    options = DemoOptions(
        folder, files=4, events_per_file=150, rate_hz=40.0, merge_every="1s", timeout_s=240
    )
    assert run_demo(options, Console(record=True, width=100), runs)

    db = Database(f"sqlite:///{folder / 'runwatch.db'}")
    try:
        with db.read_session() as session:
            run = session.scalars(sa.select(Run)).one()
            last_file_in = session.scalar(sa.select(sa.func.max(File.registered_at)))
            merges = list(
                session.scalars(
                    sa.select(DqmMerge).where(DqmMerge.run_id == run.id).order_by(DqmMerge.id)
                )
            )
            session.expunge_all()
    finally:
        db.dispose()
    live = [m for m in merges if not m.final]
    assert live, "no live merge"
    early = [m for m in live if m.merged_at < last_file_in]
    assert early, f"no merge before the last file came in at {last_file_in}: {merges}"
    assert all(m.files_included < 4 for m in early)
    (final,) = [m for m in merges if m.final]
    assert (final.files_included, final.events_included) == (4, 600)
    hists = sorted((folder / "data" / "Physics" / "21" / "hist").glob("*.root"))
    merged = sorted((folder / "data" / "Physics" / "21" / "merge").glob("*.root"))
    assert len(hists) == 4 and len(merged) == 1
    assert _summed(merged, "pmt_hits").tolist() == _summed(hists, "pmt_hits").tolist()
