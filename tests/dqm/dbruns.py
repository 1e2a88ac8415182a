"""Runs, histogram tasks and merge tasks made directly in the database, for the DQM
service's tests: what the engine leaves behind when a pipeline's hist and merge steps
are done, without running jobs."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.catalogue.models import File, Run
from runwatch.config import DqmSettings, Settings
from runwatch.dqm.histogram import Axis, Hist, stats_from_bins, write_histograms
from runwatch.dqm.merge import Contribution, merge_into
from runwatch.storage.checksum import adler32_file
from runwatch.storage.urls import path_to_url
from runwatch.workflow.models import Attempt, PipelineRevision, Task, TaskOutput
from runwatch.workflow.states import AttemptState, TaskState

PIPELINE = """\
name: dq
streams: [Physics]
steps:
  hist:
    command: "true"
    outputs: {hist: "{{ file.stem }}.root"}
  merge:
    scope: run
    needs: [hist]
    dqm: merge
    command: "true"
    outputs: {merged: "run{{ run.number }}.root"}
"""
T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
N_PMT = 50


def dqm_settings(settings: Settings, **values: object) -> Settings:
    """``settings`` with ``[dqm]`` set to ``values`` (over the defaults)."""
    return settings.model_copy(update={"dqm": DqmSettings(**values)})  # type: ignore[arg-type]


def revision(session: Session, text: str = PIPELINE) -> int:
    digest = hashlib.sha256(text.encode()).hexdigest()
    found = session.scalar(sa.select(PipelineRevision.id).where(PipelineRevision.digest == digest))
    if found is not None:
        return found
    row = PipelineRevision(name="dq", digest=digest, path="dq.yaml", content=text)
    session.add(row)
    session.flush()
    return row.id


def make_run(
    session: Session,
    number: int,
    files: int,
    events_per_file: int | None = 1000,
    minutes: float = 10.0,
) -> Run:
    """A run of ``files`` files, taken from T0 + number hours for ``minutes``."""
    start = T0 + dt.timedelta(hours=number)
    run = Run(
        number=number,
        stream="Physics",
        started_at=start,
        ended_at=start + dt.timedelta(minutes=minutes),
        n_files=files,
    )
    session.add(run)
    session.flush()
    for seq in range(1, files + 1):
        meta = {} if events_per_file is None else {"events": events_per_file}
        session.add(
            File(
                run_id=run.id,
                name=f"RUN.{number}.{seq:03d}.rtraw",
                url=f"file:///raw/RUN.{number}.{seq:03d}.rtraw",
                stream="Physics",
                sequence=seq,
                meta=meta,
            )
        )
    session.flush()
    return run


def done_task(
    session: Session,
    run: Run,
    key: str,
    step: str,
    output: Path,
    finished: dt.datetime,
    final: bool = True,
) -> Task:
    """A DONE task with one succeeded attempt whose output is ``output``."""
    task = Task(
        key=key,
        revision_id=revision(session),
        pipeline="dq",
        step=step,
        scope="run" if step == "merge" else "file",
        run_id=run.id,
        final=final,
        state=TaskState.DONE,
        priority_at=finished,
        finished_at=finished,
        updated_at=finished,
    )
    session.add(task)
    session.flush()
    attempt = Attempt(
        task_id=task.id, number=1, state=AttemptState.SUCCEEDED, executor="local", ended_at=finished
    )
    session.add(attempt)
    session.flush()
    name = "merged" if step == "merge" else "hist"
    session.add(
        TaskOutput(
            task_id=task.id,
            attempt_id=attempt.id,
            name=name,
            url=path_to_url(output),
            size=output.stat().st_size if output.exists() else 0,
            adler32=adler32_file(output) if output.exists() else "00000001",
        )
    )
    session.flush()
    return task


@dataclass
class RunFiles:
    """A run's per-file histogram files, as its hist tasks left them."""

    run: Run
    paths: list[Path]


def hist_tasks(
    session: Session, run: Run, folder: Path, files: Sequence[Mapping[str, Hist]]
) -> RunFiles:
    """One DONE hist task per histogram set, its output written under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seq, hists in enumerate(files, start=1):
        path = folder / f"run{run.number}-{seq:03d}.root"
        write_histograms(path, dict(hists), {})
        finished = (run.started_at or T0) + dt.timedelta(minutes=seq)
        done_task(session, run, f"dq/hist/run:{run.number}/{seq}", "hist", path, finished)
        paths.append(path)
    return RunFiles(run, paths)


def merge_task(
    session: Session,
    made: RunFiles,
    folder: Path,
    batch: int = 0,
    final: bool = True,
    paths: Sequence[Path] | None = None,
    after: dt.timedelta = dt.timedelta(minutes=2),
) -> Task:
    """Merge the run's files (or ``paths``) with ``merge_into``; a DONE merge task."""
    run = made.run
    merged = folder / f"run{run.number}-merged-{batch}.root"
    inputs = made.paths if paths is None else paths
    merge_into(merged, [Contribution(str(p), p, events=_events(p)) for p in inputs])
    finished = (run.ended_at or T0) + after
    key = f"dq/merge/run:{run.number}/{batch}"
    return done_task(session, run, key, "merge", merged, finished, final=final)


def _events(path: Path) -> int:
    from runwatch.dqm.histogram import HistogramFileError, read_histograms

    try:
        hist = read_histograms(path, ["n_events"]).get("n_events")
    except HistogramFileError:
        return 0
    return 0 if hist is None else round(float(hist.sumw.sum()))


def finish(hist: Hist) -> Hist:
    hist.stats = stats_from_bins(hist)
    return hist


def pmt_hists(hits: np.ndarray, events: int) -> dict[str, Hist]:
    """``pmt_hits`` (one bin per PMT) and ``n_events`` as the JUNO hist step writes them."""
    n = len(hits)
    sumw = np.concatenate([[0.0], hits.astype(np.float64), [0.0]])
    pmt = Hist("pmt_hits", "", "TH1D", (Axis.regular_axis(n, -0.5, n - 0.5),), sumw, sumw.copy())
    count = np.array([0.0, float(events), 0.0])
    n_events = Hist("n_events", "", "TH1D", (Axis.regular_axis(1, 0, 1),), count, count.copy())
    return {"pmt_hits": finish(pmt), "n_events": n_events}


def energy_hist(rng: np.random.Generator, n: int, mean: float = 5.0, width: float = 1.0) -> Hist:
    """A TH1D of ``n`` normally distributed energies, 40 bins over 0-10."""
    values = rng.normal(mean, width, n)
    counts, _ = np.histogram(values, bins=40, range=(0.0, 10.0))
    under, over = float((values < 0).sum()), float((values >= 10).sum())
    sumw = np.concatenate([[under], counts.astype(np.float64), [over]])
    hist = Hist(
        "energy", "E", "TH1D", (Axis.regular_axis(40, 0.0, 10.0),), sumw, sumw.copy(), float(n)
    )
    return finish(hist)


def detector_file(
    rng: np.random.Generator,
    events: int,
    dead: Sequence[int] = (),
    hot: Sequence[int] = (),
    energy_mean: float = 5.0,
    energy_width: float = 1.0,
) -> dict[str, Hist]:
    """One file's histograms: PMTs firing in ~10 % of events (dead never, hot always)."""
    hits = rng.binomial(events, 0.1, N_PMT).astype(np.float64)
    hits[list(dead)] = 0.0
    hits[list(hot)] = float(events)
    return pmt_hists(hits, events) | {"energy": energy_hist(rng, events, energy_mean, energy_width)}
