"""End to end: the scheduler merges a run's histograms live while its files keep arriving,
then once more at the end of the run, each file counted once."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from runwatch.catalogue.models import RunStatus
from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.dqm.merge import Contribution, read_merged
from runwatch.ingest.service import receive
from runwatch.workflow.models import Task, TaskDependency, TaskOutput
from runwatch.workflow.service import retry_task
from runwatch.workflow.states import TaskState
from tests.dqm.samples import write_sample
from tests.dqm.test_merge import assert_merged
from tests.waiting import wait_for
from tests.workflow.engine import message, run_statuses, running_scheduler, write_pipeline

# The "raw" files are small histogram files already, so that the per-file step is a copy
# and the test's time goes to the merges.
LIVE_MERGE = """\
name: live
streams: [Physics]
params: {python: PYTHON}
steps:
  hist:
    command: "cp {{ inputs[0] | quote }} {{ outputs.hist | quote }}"
    outputs: {hist: "{{ file.stem }}.hist.root"}
  merge:
    scope: run
    needs: [hist]
    every: 1s
    dqm: merge
    retries: 1
    outputs: {merged: "run{{ run.number }}.merged.root"}
    command: >-
      {{ params.python | quote }} -m runwatch dqm merge {{ outputs.merged | quote }}
      {%- for i in inputs %} {{ i | quote }}{% endfor %}
"""
RUN = 42


class ArrivingRun:
    """A run whose files arrive while the scheduler works."""

    def __init__(self, db: Database, folder: Path) -> None:
        self.db = db
        self.folder = folder
        self.rng = np.random.default_rng(3)
        self.sent = 0

    def send(self, files: int, end_of_run: bool = False) -> None:
        for i in range(files):
            self.sent += 1
            path = self.folder / f"RUN.{RUN}.Physics.{self.sent:03d}.root"
            self.folder.mkdir(exist_ok=True)
            write_sample(path, self.rng)
            last = end_of_run and i == files - 1
            with self.db.session() as s:
                receipt = receive(
                    s, message(path, RUN, self.sent, end_of_run=last), "t", None, utcnow()
                )
            assert receipt.status.value == "accepted", receipt.reason

    def merges(self) -> list[Task]:
        with self.db.session() as s:
            return list(s.scalars(sa.select(Task).where(Task.step == "merge").order_by(Task.id)))

    def live_merges_done(self) -> int:
        return sum(1 for t in self.merges() if not t.final and t.state is TaskState.DONE)


def test_live_merges_follow_a_run_and_the_final_merge_counts_each_file_once(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    write_pipeline(settings, LIVE_MERGE.replace("PYTHON", sys.executable), "live.yaml")
    run = ArrivingRun(db, tmp_path / "raw")
    with running_scheduler(settings, db):
        run.send(2)
        wait_for(lambda: run.live_merges_done() >= 1, 60, "a first live merge")
        run.send(2)
        wait_for(lambda: run.live_merges_done() >= 2, 60, "a second live merge")
        run.send(2, end_of_run=True)
        wait_for(lambda: run_statuses(db).get(RUN) is RunStatus.ALL_COMPLETED, 60, "the run")
    merges = run.merges()
    live, final = [t for t in merges if not t.final], [t for t in merges if t.final]
    assert len(live) >= 2 and len(final) == 1
    assert [t.batch for t in live] == list(range(1, len(live) + 1))
    assert all(t.state is TaskState.DONE for t in merges)
    with db.session() as s:
        hists = {
            o.task_id: o.url.removeprefix("file://")
            for o in s.scalars(sa.select(TaskOutput).where(TaskOutput.name == "hist"))
        }
        needs = {
            t.id: set(
                s.scalars(sa.select(TaskDependency.needs_id).where(TaskDependency.task_id == t.id))
            )
            for t in merges
        }
        merged_url = s.scalar(sa.select(TaskOutput.url).where(TaskOutput.task_id == final[0].id))
    assert merged_url is not None
    # Each live merge starts from the one before; the final from the last live one.
    assert merges[-1].final, "the final merge comes after the live ones"
    for previous, task in itertools.pairwise(merges):
        assert previous.id in needs[task.id]
    assert set(hists) <= needs[final[0].id]
    merged = Path(merged_url.removeprefix("file://"))
    inputs = [Contribution(path, Path(path)) for path in sorted(hists.values())]
    assert len(inputs) == 6
    assert_merged(merged, inputs)  # the sum of the six files, each once
    state = read_merged(merged)
    assert len(state.included) == 6 and all(len(c.inventory) == 5 for c in state.included.values())

    # An operator re-runs the final merge: it starts from its own output and adds nothing.
    with db.session() as s:
        retry_task(s, final[0].id, utcnow())
    with running_scheduler(settings, db):
        wait_for(lambda: run_statuses(db).get(RUN) is RunStatus.ALL_COMPLETED, 60, "the re-run")
    assert_merged(merged, inputs)
