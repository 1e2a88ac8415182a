"""End to end: the engine's live and final merges of a run registered and judged, with
the merge step writing one merged file per run (each merge replacing the last)."""

from __future__ import annotations

import sys
from pathlib import Path

import sqlalchemy as sa

from runwatch.catalogue.models import RunStatus
from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.dqm.models import DqmHistogram, DqmMerge, DqmRunQuality
from runwatch.dqm.service import register_merges
from runwatch.dqm.store import MERGED_FILE
from runwatch.dqm.verdict import Verdict
from runwatch.workflow.models import Task, TaskOutput
from runwatch.workflow.revisions import RevisionCache
from tests.dqm.dbruns import dqm_settings
from tests.waiting import wait_for
from tests.workflow.engine import run_statuses, running_scheduler, write_pipeline
from tests.workflow.test_live_merge import LIVE_MERGE, RUN, ArrivingRun


def test_engine_merges_registered_and_the_run_judged_on_its_final_merge(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    write_pipeline(settings, LIVE_MERGE.replace("PYTHON", sys.executable), "live.yaml")
    (tmp_path / "checks.yaml").write_text(
        "histograms:\n  trigger:\n    seen: {kind: entries, bad: {min: 1}}\n"
    )
    settings = dqm_settings(settings, checks=str(tmp_path / "checks.yaml"))
    revisions = RevisionCache()
    run = ArrivingRun(db, tmp_path / "raw")

    def register() -> list[int]:
        with db.session() as session:
            return register_merges(session, settings, revisions, utcnow())

    with running_scheduler(settings, db):
        run.send(2)
        wait_for(lambda: run.live_merges_done() >= 1, 60, "a first live merge")
        assert register() != []
        with db.session() as session:
            (live,) = session.scalars(sa.select(DqmMerge)).all()
            assert (live.final, live.errors, live.files_total) == (False, [], 2)
            assert live.files_included in (1, 2)
            quality = session.get_one(DqmRunQuality, live.run_id)
            assert (quality.final, quality.verdict) == (False, Verdict.GOOD)
        run.send(2, end_of_run=True)
        wait_for(lambda: run_statuses(db).get(RUN) is RunStatus.ALL_COMPLETED, 60, "the run")
    assert register() != []
    with db.session() as session:
        merges = session.scalars(sa.select(DqmMerge).order_by(DqmMerge.task_id)).all()
        final = merges[-1]
        assert (final.final, final.errors, final.files_included, final.files_total) == (
            True,
            [],
            4,
            4,
        )
        # Live merges registered after the next merge replaced their file say so.
        for merge in merges[1:-1]:
            assert merge.errors == [] or merge.errors[0]["key"] == MERGED_FILE
            assert merge.errors == [] or "replaced by a later merge" in merge.errors[0]["reason"]
        quality = session.get_one(DqmRunQuality, final.run_id)
        assert (quality.final, quality.merge_id, quality.verdict) == (True, final.id, Verdict.GOOD)
        # Every hist task's five histograms are in the store, with its task and attempt.
        hist_outputs = {
            (o.task_id, o.attempt_id)
            for o in session.scalars(sa.select(TaskOutput).join(Task).where(Task.step == "hist"))
        }
        rows = session.scalars(sa.select(DqmHistogram).where(DqmHistogram.merge_id.is_(None)))
        per_task: dict[tuple[int, int], int] = {}
        for row in rows:
            per_task[(row.task_id, row.attempt_id)] = (
                per_task.get((row.task_id, row.attempt_id), 0) + 1
            )
        assert per_task == {key: 5 for key in hist_outputs}
    assert register() == []
