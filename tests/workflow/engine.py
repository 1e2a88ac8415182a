"""Helpers for engine tests: a small real pipeline, raw files, messages, and a driver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from runwatch.catalogue.models import Run, RunStatus
from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.executors.base import Executor, JobInfo, JobRequest, JobStatus
from runwatch.executors.local import LocalExecutor
from runwatch.ingest.service import receive
from runwatch.workflow.scheduler import Scheduler

CHAIN = """\
name: chain
streams: [Physics]
steps:
  calib:
    command: "cp {{ inputs[0] | quote }} {{ outputs.calib }}"
    outputs: {calib: "{{ file.stem }}.calib"}
    retries: 2
  rec:
    needs: [calib]
    command: "tr a-z A-Z < {{ inputs[0] | quote }} > {{ outputs.rec }}"
    outputs: {rec: "{{ file.stem }}.rec"}
  hist:
    needs: [rec]
    command: "wc -c < {{ inputs[0] | quote }} > {{ outputs.hist }}"
    outputs: {hist: "{{ file.stem }}.hist"}
  merge:
    scope: run
    needs: [hist]
    command: "cat {% for i in inputs %}{{ i | quote }} {% endfor %}> {{ outputs.merged }}"
    outputs: {merged: "run{{ run.number }}.merged"}
"""


def write_pipeline(settings: Settings, text: str = CHAIN, name: str = "chain.yaml") -> Path:
    path = Path(settings.pipelines) / name
    path.write_text(text)
    return path


def raw_file(folder: Path, run: int, seq: int, stream: str = "Physics") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"RUN.{run}.JUNODAQ.{stream}.ds-2.global_trigger.20250826120000.{seq:03d}_J25.5.0.rtraw"
    path = folder / name
    path.write_text(f"run {run} file {seq} payload\n" * (seq + 1))
    return path


def message(
    path: Path, run: int, seq: int, stream: str = "Physics", end_of_run: bool = False
) -> str:
    return json.dumps(
        {
            "name": path.name,
            "url": path.as_uri(),
            "run": run,
            "stream": stream,
            "sequence": seq,
            "size": path.stat().st_size,
            "created": f"2025-08-26T12:{seq // 60:02d}:{seq % 60:02d}Z",
            "end_of_run": end_of_run,
            "metadata": {},
        }
    )


def announce_run(
    db: Database, folder: Path, run: int, files: int, stream: str = "Physics"
) -> list[Path]:
    """Register ``files`` raw files of a run, the last one carrying the end-of-run flag."""
    paths = []
    for seq in range(1, files + 1):
        path = raw_file(folder, run, seq, stream)
        with db.session() as session:
            receipt = receive(
                session, message(path, run, seq, stream, seq == files), "test", None, utcnow()
            )
        assert receipt.status.value == "accepted", receipt.reason
        paths.append(path)
    return paths


def run_statuses(db: Database) -> dict[int, RunStatus]:
    with db.session() as session:
        return {n: s for n, s in session.execute(sa.select(Run.number, Run.status))}


class BatchSystem:
    """An executor that names its jobs itself, as HTCondor and Slurm do, and runs none:
    its jobs stay queued (a test moves their attempts on in the database)."""

    name = "batch"  # no ``job_id``: its ids are its own

    def __init__(self, slots: int = 2) -> None:
        self.slots = slots
        self.submitted: list[str] = []
        self.polled: list[str] = []
        self.cancelled: list[str] = []
        self.ended: dict[str, JobInfo] = {}  # what poll says of jobs that a test ended

    def capacity(self) -> int:
        return self.slots

    def queue_ahead(self) -> int:
        return 0

    def submit(self, jobs: Sequence[JobRequest]) -> list[str]:
        ids = [f"cluster.{len(self.submitted) + i}" for i in range(len(jobs))]
        self.submitted += ids
        return ids

    def poll(self, external_ids: Sequence[str]) -> dict[str, JobInfo]:
        self.polled += external_ids
        return {ext: self.ended.get(ext, JobInfo(JobStatus.QUEUED)) for ext in external_ids}

    def cancel(self, external_id: str) -> None:
        self.cancelled.append(external_id)


@contextmanager
def running_scheduler(
    settings: Settings, db: Database, executor: Executor | None = None
) -> Iterator[Scheduler]:
    """A scheduler serving in a thread, with the local executor unless one is given (which
    is closed afterwards if it has a ``close`` method)."""
    executor = executor or LocalExecutor(settings)
    scheduler = Scheduler(settings, db, executor)
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield scheduler
    finally:
        stop.set()
        thread.join(timeout=30)
        close = getattr(executor, "close", None)
        if close is not None:
            close()
        assert not thread.is_alive()
