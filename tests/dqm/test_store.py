"""The histogram store: merge tasks registered with their completeness and histograms."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import Run, RunStatus
from runwatch.config import Settings
from runwatch.db import Database
from runwatch.dqm import service
from runwatch.dqm.merge import Contribution, merge_into
from runwatch.dqm.models import (
    DqmCheckResult,
    DqmHistogram,
    DqmMerge,
    DqmPmtStatus,
    DqmRunQuality,
)
from runwatch.dqm.service import register_merges
from runwatch.dqm.store import LOOKBACK, MERGED_FILE, recent_tasks_floor
from runwatch.dqm.verdict import Verdict
from runwatch.storage.checksum import adler32_file
from runwatch.workflow.models import Attempt, Task, TaskOutput
from runwatch.workflow.revisions import RevisionCache
from runwatch.workflow.states import AttemptState
from tests.conftest import shared_path
from tests.dqm.dbruns import T0, detector_file, dqm_settings, hist_tasks, make_run, merge_task


def _histograms(session: sa.orm.Session, merge_id: int | None) -> list[tuple[int, str, str]]:
    query = sa.select(DqmHistogram.task_id, DqmHistogram.path, DqmHistogram.classname)
    if merge_id is None:
        query = query.where(DqmHistogram.merge_id.is_(None))
    else:
        query = query.where(DqmHistogram.merge_id == merge_id)
    return sorted(tuple(row) for row in session.execute(query))


def test_merges_registered_once_with_completeness_and_histograms(
    any_db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    revisions = RevisionCache()
    (tmp_path / "checks.yaml").write_text(
        "histograms:\n  energy:\n    events: {kind: entries, bad: {min: 1}}\n"
        "    shape: {kind: ks, reference: {window: 3}, bad: {min: 0.01}}\n"
    )
    settings = dqm_settings(settings, checks=str(tmp_path / "checks.yaml"))
    with any_db.session() as session:
        run = make_run(session, 7, files=3)
        made = hist_tasks(session, run, tmp_path, [detector_file(rng, 1000) for _ in range(3)])
        live = merge_task(session, made, tmp_path, batch=1, final=False, paths=made.paths[:2])
        assert register_merges(session, settings, revisions, T0) != []
    with any_db.session() as session:
        merge = session.scalars(sa.select(DqmMerge)).one()
        assert (merge.task_id, merge.final, merge.errors) == (live.id, False, [])
        assert (merge.files_included, merge.files_total) == (2, 3)
        assert (merge.events_included, merge.events_total) == (2000, 3000)
        assert [c["path"] for c in merge.contributions] == [str(p) for p in made.paths[:2]]
        assert _histograms(session, merge.id) == [
            (live.id, name, "TH1D") for name in ("energy", "n_events", "pmt_hits")
        ]
        per_file = _histograms(session, None)
        assert len(per_file) == 6 and {t for t, _, _ in per_file} == {live.id - 3, live.id - 2}
        assert session.get_one(DqmRunQuality, run.id).final is False
        # Every tick asks again: nothing new, nothing twice.
        assert register_merges(session, settings, revisions, T0) == []
        final = merge_task(session, made, tmp_path, batch=2)
        (new,) = register_merges(session, settings, revisions, T0)
    with any_db.session() as session:
        merge = session.get_one(DqmMerge, new)
        assert (merge.task_id, merge.final, merge.files_included, merge.events_included) == (
            final.id,
            True,
            3,
            3000,
        )
        # The live merge's list is superseded (not stored again every minute); its counts stay.
        superseded = session.scalars(sa.select(DqmMerge).where(DqmMerge.task_id == live.id)).one()
        assert (superseded.contributions, superseded.files_included) == ([], 2)
        assert set(merge.contributions[0]) == {"key", "checksum", "events", "path"}
        # The third file's histograms join the store; the first two are not registered again.
        assert len(_histograms(session, None)) == 9
        quality = session.get_one(DqmRunQuality, run.id)
        assert (quality.final, quality.merge_id, quality.verdict) == (True, new, Verdict.WARNING)
        assert quality.reason.startswith("energy/shape: no reference: no final GOOD Physics")
        results = session.scalars(sa.select(DqmCheckResult).order_by(DqmCheckResult.key)).all()
        assert [(r.check, r.verdict, r.values) for r in results] == [
            ("events", Verdict.GOOD, {"entries": 3000.0}),
            ("shape", Verdict.WARNING, {}),
        ]
        assert session.get_one(DqmPmtStatus, run.id).counts["normal"] == 50


def test_events_total_unknown_unless_every_file_says(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(2)
    with db.session() as session:
        run = make_run(session, 8, files=2, events_per_file=None)
        made = hist_tasks(session, run, tmp_path, [detector_file(rng, 500) for _ in range(2)])
        merge_task(session, made, tmp_path)
        (merge_id,) = register_merges(session, settings, RevisionCache(), T0)
        merge = session.get_one(DqmMerge, merge_id)
        assert (merge.events_included, merge.events_total) == (1000, None)


def test_an_unreadable_merged_file_is_recorded_and_spoils_nothing_else(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    with db.session() as session:
        bad_run, good_run = make_run(session, 9, files=1), make_run(session, 10, files=1)
        bad = hist_tasks(session, bad_run, tmp_path, [detector_file(rng, 500)])
        good = hist_tasks(session, good_run, tmp_path, [detector_file(rng, 500)])
        broken = merge_task(session, bad, tmp_path)
        merge_task(session, good, tmp_path)
        # The merge task wrote (and checksummed) a file that is not ROOT.
        corrupt = tmp_path / "run9-merged-0.root"
        corrupt.write_bytes(b"root\0 but not really" * 10)
        output = session.scalars(sa.select(TaskOutput).where(TaskOutput.task_id == broken.id))
        output.one().adler32 = adler32_file(corrupt)
        ids = register_merges(session, settings, RevisionCache(), T0)
        assert len(ids) == 2
        merges = {m.task_id: m for m in session.scalars(sa.select(DqmMerge))}
        (error,) = merges[broken.id].errors
        assert error["key"] == MERGED_FILE and error["path"].endswith("run9-merged-0.root")
        assert error["reason"].startswith("not a readable ROOT file")
        assert merges[broken.id].files_included == 0
        assert session.get(DqmRunQuality, bad_run.id) is None
        assert session.get_one(DqmRunQuality, good_run.id).verdict is Verdict.GOOD
        assert register_merges(session, settings, RevisionCache(), T0) == []


def test_a_corrupt_or_incompatible_contribution_is_recorded_and_left_out(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(4)
    with db.session() as session:
        run = make_run(session, 11, files=3)
        other_binning = detector_file(rng, 500)
        other_binning["energy"] = other_binning["energy"].copy()
        other_binning["energy"].axes[0].edges[1] += 0.01
        files = [detector_file(rng, 500), detector_file(rng, 500), other_binning]
        made = hist_tasks(session, run, tmp_path, files)
        made.paths[1].write_bytes(made.paths[1].read_bytes()[:300])  # truncated
        merge_task(session, made, tmp_path)
        (merge_id,) = register_merges(session, settings, RevisionCache(), T0)
        merge = session.get_one(DqmMerge, merge_id)
        assert merge.files_included == 1 and merge.events_included == 500
        reasons = {e["path"]: e["reason"] for e in merge.errors}
        assert set(reasons) == {str(made.paths[1]), str(made.paths[2])}
        assert "incompatible" in reasons[str(made.paths[2])]
        assert {t for t, _, _ in _histograms(session, None)} == {merge.task_id - 3}


def test_histograms_written_by_root_are_merged_and_registered(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    source = shared_path("data", "root", "Detsim_PDFs_FV14.root")
    with db.session() as session:
        run = make_run(session, 12, files=2)
        made = hist_tasks(session, run, tmp_path, [{}, {}])
        for path in made.paths:
            shutil.copyfile(source, path)
        merge_task(session, made, tmp_path)
        settings = dqm_settings(settings, trends={"scint_entries": "Scint_Times:entries"})
        (merge_id,) = register_merges(session, settings, RevisionCache(), T0)
        merge = session.get_one(DqmMerge, merge_id)
        assert merge.errors == [] and merge.files_included == 2
        per_file = session.scalars(
            sa.select(DqmHistogram).where(DqmHistogram.merge_id.is_(None))
        ).all()
        assert {(h.path, h.classname) for h in per_file} == {
            (name, "TH1F")
            for name in ("Scint_Times", "Cherenkov_Times", "ChScRatio", "ToFcorrection")
        }
        merged = session.scalars(
            sa.select(DqmHistogram).where(DqmHistogram.merge_id == merge_id)
        ).all()
        scint = {h.path: h.entries for h in per_file}["Scint_Times"]
        assert {h.path: h.entries for h in merged}["Scint_Times"] == 2 * scint


def test_a_rerun_merge_task_is_registered_again_in_place(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    revisions = RevisionCache()
    with db.session() as session:
        run = make_run(session, 13, files=2)
        made = hist_tasks(session, run, tmp_path, [detector_file(rng, 500) for _ in range(2)])
        task = merge_task(session, made, tmp_path, paths=made.paths[:1])
        (first,) = register_merges(session, settings, revisions, T0)
        # An operator re-runs it: a second attempt, whose output now holds both files.
        merge_into(
            tmp_path / "again.root", [Contribution(str(p), p, events=500) for p in made.paths]
        )
        attempt = Attempt(task_id=task.id, number=2, state=AttemptState.SUCCEEDED, executor="local")
        session.add(attempt)
        session.flush()
        output = session.scalars(sa.select(TaskOutput).where(TaskOutput.task_id == task.id)).one()
        output.attempt_id, output.url = attempt.id, (tmp_path / "again.root").as_uri()
        output.adler32 = adler32_file(tmp_path / "again.root")
        assert register_merges(session, settings, revisions, T0) == [first]
        merge = session.get_one(DqmMerge, first)
        assert (merge.attempt_id, merge.files_included, merge.events_included) == (
            attempt.id,
            2,
            1000,
        )
        merged_rows = _histograms(session, first)
        assert len(merged_rows) == 3 and len(_histograms(session, None)) == 6
        assert register_merges(session, settings, revisions, T0) == []


def test_only_runs_in_play_are_searched_for_merges(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(6)
    with db.session() as session:
        old = make_run(session, 14, files=1)
        made = hist_tasks(session, old, tmp_path, [detector_file(rng, 500)])
        merge_task(session, made, tmp_path)
        old.status, old.updated_at = RunStatus.ALL_COMPLETED, T0 - LOOKBACK * 2
        session.flush()
        assert recent_tasks_floor(session, T0) is None
        assert register_merges(session, settings, RevisionCache(), T0) == []
        # Changed within a day (e.g. reopened for a re-run): searched again.
        old.updated_at = T0 - LOOKBACK / 2
        session.flush()
        assert recent_tasks_floor(session, T0) == made_first_task(session, old)
        assert len(register_merges(session, settings, RevisionCache(), T0)) == 1


def made_first_task(session: sa.orm.Session, run: Run) -> int:
    return session.scalars(sa.select(sa.func.min(Task.id)).where(Task.run_id == run.id)).one()


def test_a_fault_judging_one_run_leaves_the_others_registered_and_judged(
    db: Database, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    real = service.evaluate_run

    def faulty(session: sa.orm.Session, settings: Settings, run: Run, *a: Any, **k: Any) -> Any:
        if run.number == 15:
            raise RuntimeError("a bug")
        return real(session, settings, run, *a, **k)

    monkeypatch.setattr(service, "evaluate_run", faulty)
    with db.session() as session:
        for number in (15, 16):
            run = make_run(session, number, files=1)
            made = hist_tasks(session, run, tmp_path, [detector_file(rng, 500)])
            merge_task(session, made, tmp_path)
        assert len(register_merges(session, settings, RevisionCache(), T0)) == 2
    with db.session() as session:
        judged = session.scalars(sa.select(DqmRunQuality.run_id)).all()
        assert judged == [session.scalars(sa.select(Run.id).where(Run.number == 16)).one()]
        assert len(session.scalars(sa.select(DqmMerge)).all()) == 2
        assert register_merges(session, settings, RevisionCache(), T0) == []


def test_a_merge_whose_file_a_later_merge_replaced_is_recorded_as_such(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(8)
    with db.session() as session:
        run = make_run(session, 17, files=2)
        made = hist_tasks(session, run, tmp_path, [detector_file(rng, 500) for _ in range(2)])
        first = merge_task(session, made, tmp_path, 1, final=False, paths=made.paths[:1])
        merge_task(session, made, tmp_path, 2, after=dt.timedelta(minutes=3))
        # One merged file per run: the final merge replaced the live one's.
        shutil.copyfile(tmp_path / "run17-merged-2.root", tmp_path / "run17-merged-1.root")
        assert len(register_merges(session, settings, RevisionCache(), T0)) == 2
        replaced = session.scalars(sa.select(DqmMerge).where(DqmMerge.task_id == first.id)).one()
        assert replaced.errors == [
            {
                "key": MERGED_FILE,
                "path": (tmp_path / "run17-merged-1.root").as_uri(),
                "reason": "replaced by a later merge since (another checksum)",
            }
        ]
        assert session.get_one(DqmRunQuality, run.id).merge_id != replaced.id
