"""``runwatch demo``: the whole keep-up chain on simulated JUNO data, on one machine.

The demo is a real deployment, set up in a fresh folder the way ``runwatch init`` sets
one up (SQLite, the local executor, a dropbox directory; no server to install), with the
JUNO pipeline (``pipelines/juno.yaml``) instead of the generic example. It starts the
scheduler as its own process, as an operator would, and plays the detector's DAQ with the
simulator (``daqsim``), which writes each raw file into the dropbox and announces it with a
semaphore. Nothing in the engine knows it is a demo.

The runs: Physics runs, one of them with dead and hot PMTs, and a Calib (source) run.
The PMT constants the calib step applies are the simulated detector's true ones (the
detector is the same in every run of one seed); deriving them from the Calib run is the
calibration issue's business.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from runwatch.catalogue.models import Run, RunStatus
from runwatch.config import CONFIG_ENV, DEFAULT_CONFIG_NAME
from runwatch.db import Database
from runwatch.dqm.models import DqmPmtStatus, DqmRunQuality
from runwatch.dqm.verdict import Verdict
from runwatch.experiments.juno import daqsim
from runwatch.experiments.juno.geometry import load_geometry
from runwatch.setup_cli import DEPLOYMENT_FOLDERS, DEPLOYMENT_VALUES, config_text, fresh_secrets
from runwatch.workflow.models import Task
from runwatch.workflow.states import TaskState

MARK = ".runwatch-demo"
"""A file that says a folder was made by the demo, so a rerun may wipe it."""
SEED = 2025
CONSTANTS_PLACEHOLDER = "/path/to/pmt-constants.csv"
FINISHED = (RunStatus.ALL_COMPLETED, RunStatus.PARTLY_COMPLETED)
CHECKS_FOLDER = "checks"
LIVE_MERGE_EVERY = "60s"  # as in juno.yaml


@dataclass(frozen=True)
class DemoRun:
    number: int
    stream: str
    dead: int = 0
    hot: int = 0

    @property
    def note(self) -> str:
        if self.dead or self.hot:
            return f"{self.dead} dead, {self.hot} hot PMTs"
        return "Co-60 source" if self.stream == "Calib" else ""


RUNS = (
    DemoRun(1001, "Physics"),
    DemoRun(1002, "Calib"),
    DemoRun(1003, "Physics", dead=40, hot=12),
    DemoRun(1004, "Physics"),
)


class DemoError(RuntimeError):
    """The demo cannot be set up; the message says why."""


@dataclass(frozen=True)
class DemoOptions:
    folder: Path
    files: int = 3
    events_per_file: int = 1_000
    timeout_s: float = 300.0
    keep_running: bool = False
    rate_hz: float | None = None  # write the runs in real time at this trigger rate
    merge_every: str = LIVE_MERGE_EVERY  # the pipeline's live merge interval
    serve_port: int | None = None  # serve the web site on this port, until interrupted


def prepare(folder: Path, merge_every: str = LIVE_MERGE_EVERY) -> Path:
    """A fresh deployment in ``folder`` with the JUNO pipeline; the PMT constants' path.

    A folder left by an earlier demo is wiped; any other non-empty folder is refused.
    """
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARK).exists():
            raise DemoError(f"{folder} exists and was not made by the demo; choose another")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARK).write_text("made by runwatch demo; rerunning the demo wipes it\n")
    overrides = {
        **DEPLOYMENT_VALUES,
        **fresh_secrets(),
        "ingest.dropbox_rescan_seconds": 5.0,
        "scheduler.backoff_seconds": 2.0,
        # The DQM judges each run with the JUNO check file, as soon as a merge is done.
        "dqm.checks": f"{CHECKS_FOLDER}/juno.yaml",
        "dqm.every_seconds": 1.0,
        # The demo's runs are small: classify PMTs from 100 events on (a normal PMT fires
        # in ~10 % of the events; 100 events without one firing happen once in 10^4.6).
        "dqm.cuts": {"min_events": 100},
    }
    (folder / DEFAULT_CONFIG_NAME).write_text(config_text(overrides), encoding="utf-8")
    for name in DEPLOYMENT_FOLDERS:
        (folder / name).mkdir(exist_ok=True)
    database = Database(f"sqlite:///{(folder / 'runwatch.db').resolve()}")
    try:
        database.upgrade()
    finally:
        database.dispose()
    constants = (folder / "conditions" / "pmt-constants.csv").resolve()
    constants.parent.mkdir()
    truth = daqsim.detector_truth(
        daqsim.DaqConfig(run=1, out_dir=folder, seed=SEED), load_geometry(None).n_pmt
    )
    truth.constants().write(constants)
    (folder / CHECKS_FOLDER).mkdir()
    checks = (files(__package__) / "checks" / "juno.yaml").read_text(encoding="utf-8")
    (folder / CHECKS_FOLDER / "juno.yaml").write_text(checks, encoding="utf-8")
    pipeline = (files(__package__) / "pipelines" / "juno.yaml").read_text(encoding="utf-8")
    pipeline = pipeline.replace(CONSTANTS_PLACEHOLDER, str(constants))
    pipeline = pipeline.replace(f"every: {LIVE_MERGE_EVERY}", f"every: {merge_every}")
    (folder / "pipelines" / "juno.yaml").write_text(pipeline, encoding="utf-8")
    return constants


def start_scheduler(folder: Path) -> subprocess.Popen[bytes]:
    """``runwatch scheduler`` for the deployment, logging to ``scheduler.log``."""
    env = {**os.environ, CONFIG_ENV: str((folder / DEFAULT_CONFIG_NAME).resolve())}
    # The jobs run `runwatch juno ...`: find it beside this Python even if the
    # environment it is installed in was not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with open(folder / "scheduler.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "runwatch", "scheduler"],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def start_web(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """``runwatch serve`` for the deployment on ``port``, logging to ``web.log``."""
    env = {**os.environ, CONFIG_ENV: str((folder / DEFAULT_CONFIG_NAME).resolve())}
    with open(folder / "web.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "runwatch", "serve", "--port", str(port)],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def web_address(port: int) -> str:
    # localhost rather than 127.0.0.1: browsers keep secure login cookies on it over http.
    return f"http://localhost:{port}/"


def wait_for_web(web: subprocess.Popen[bytes], port: int, timeout_s: float = 30.0) -> bool:
    """Whether the web server answers /healthz within ``timeout_s`` (False if it died)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and web.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def open_web_site(folder: Path, port: int, console: Console) -> subprocess.Popen[bytes]:
    """Start the web server and print its address once it answers."""
    web = start_web(folder, port)
    if wait_for_web(web, port):
        console.print(f"web site: {web_address(port)}  (watch the runs there)", highlight=False)
    else:
        console.print(f"[red]the web server did not start; see {folder / 'web.log'}[/red]")
    return web


def serve_until_interrupted(
    web: subprocess.Popen[bytes], port: int | None, console: Console
) -> None:
    """Leave the web site up until Ctrl-C (or until the server stops by itself)."""
    if port is not None:
        console.print(f"web site: {web_address(port)}", highlight=False)
    console.print("The web site stays up; Ctrl-C stops it.", highlight=False)
    try:
        web.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(web)


class Detector(threading.Thread):
    """The simulated DAQ taking the demo's runs one after the other."""

    def __init__(self, options: DemoOptions, runs: Sequence[DemoRun]) -> None:
        super().__init__(name="daqsim", daemon=True)
        self.options = options
        self.runs = runs
        self.error: BaseException | None = None
        self.taking: int | None = None

    def run(self) -> None:
        folder = self.options.folder
        try:
            for demo_run in self.runs:
                self.taking = demo_run.number
                daqsim.simulate_run(
                    daqsim.DaqConfig(
                        run=demo_run.number,
                        out_dir=folder / "dropbox",
                        stream=demo_run.stream,
                        files=self.options.files,
                        events_per_file=self.options.events_per_file,
                        rate_hz=self.options.rate_hz or daqsim.DaqConfig.rate_hz,
                        real_time=self.options.rate_hz is not None,
                        seed=SEED,
                        dead=demo_run.dead,
                        hot=demo_run.hot,
                        truth_dir=folder / "truth",
                    )
                )
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.taking = None


@dataclass(frozen=True)
class RunState:
    """What the demo shows of a run: its status, its tasks, and the DQM's verdict."""

    run: Run
    done: int  # tasks done
    tasks: int
    quality: DqmRunQuality | None = None
    pmt_counts: dict[str, int] | None = None

    @property
    def settled(self) -> bool:
        """Finished, and judged on its final merge."""
        return self.run.status in FINISHED and self.quality is not None and self.quality.final


def run_states(db: Database, numbers: Sequence[int]) -> dict[int, RunState]:
    """Each run seen so far, with its tasks done and in all, and its DQM verdict."""
    done = sa.func.sum(sa.case((Task.state == TaskState.DONE, 1), else_=0))
    with db.read_session() as session:
        runs = {r.id: r for r in session.scalars(sa.select(Run).where(Run.number.in_(numbers)))}
        counts = {
            run_id: (int(d or 0), int(n))
            for run_id, d, n in session.execute(
                sa.select(Task.run_id, done, sa.func.count())
                .where(Task.run_id.in_(list(runs)))
                .group_by(Task.run_id)
            )
        }
        quality = {
            q.run_id: q
            for q in session.scalars(sa.select(DqmRunQuality).where(DqmRunQuality.run_id.in_(runs)))
        }
        pmts = dict(
            session.execute(
                sa.select(DqmPmtStatus.run_id, DqmPmtStatus.counts).where(
                    DqmPmtStatus.run_id.in_(runs)
                )
            ).all()
        )
        session.expunge_all()  # read-only snapshots, shown after the session ends
    return {
        r.number: RunState(r, *counts.get(r.id, (0, 0)), quality.get(r.id), pmts.get(r.id))
        for r in runs.values()
    }


VERDICT_COLOUR = {Verdict.GOOD: "green", Verdict.WARNING: "yellow", Verdict.BAD: "red"}


def status_table(states: dict[int, RunState], runs: Sequence[DemoRun]) -> Table:
    table = Table("run", "stream", "status", "files", "tasks done", "DQM", "note", title="runs")
    for demo_run in runs:
        if demo_run.number not in states:
            table.add_row(str(demo_run.number), demo_run.stream, "(not started)", "", "", "", "")
            continue
        state = states[demo_run.number]
        run = state.run
        colour = {RunStatus.ALL_COMPLETED: "green", RunStatus.PARTLY_COMPLETED: "red"}.get(
            run.status, "yellow"
        )
        table.add_row(
            str(run.number),
            run.stream,
            f"[{colour}]{run.status.value}[/{colour}]",
            str(run.n_files),
            f"{state.done}/{state.tasks}",
            _dqm_cell(state),
            demo_run.note,
        )
    return table


def _dqm_cell(state: RunState) -> str:
    """``bad (final), 40 dead, 12 hot``: the verdict, and the PMTs found wanting."""
    if state.quality is None:
        return ""
    verdict = state.quality.verdict
    colour = VERDICT_COLOUR[verdict]
    cell = f"[{colour}]{verdict.value}[/{colour}] ({'final' if state.quality.final else 'live'})"
    counts = state.pmt_counts or {}
    return cell + "".join(f", {counts[c]} {c}" for c in ("dead", "hot") if counts.get(c))


def watch(
    db: Database,
    runs: Sequence[DemoRun],
    detector: Detector,
    scheduler: subprocess.Popen[bytes],
    timeout_s: float,
    console: Console,
) -> dict[int, RunState]:
    """Show the runs live until all are finished and judged, the time is up, or something
    died."""
    numbers = [r.number for r in runs]
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    states: dict[int, RunState] = {}

    def view() -> Group:
        elapsed = time.monotonic() - started
        taking = f"DAQ taking run {detector.taking}" if detector.taking else "DAQ idle"
        return Group(status_table(states, runs), f"{elapsed:5.1f} s   {taking}")

    with Live(view(), console=console, refresh_per_second=4, transient=False) as live:
        while time.monotonic() < deadline:
            states = run_states(db, numbers)
            live.update(view())
            if detector.error is not None or scheduler.poll() is not None:
                break
            if len(states) == len(runs) and all(s.settled for s in states.values()):
                break
            time.sleep(0.5)
    return states


def stop(scheduler: subprocess.Popen[bytes], wait_s: float = 30.0) -> None:
    if scheduler.poll() is None:
        scheduler.send_signal(signal.SIGTERM)
        try:
            scheduler.wait(wait_s)
        except subprocess.TimeoutExpired:
            scheduler.kill()
            scheduler.wait()


def run_demo(options: DemoOptions, console: Console, runs: Sequence[DemoRun] = RUNS) -> bool:
    """Set up, run and watch the demo; True if every run ended All Completed."""
    folder = options.folder
    prepare(folder, options.merge_every)
    console.print(f"deployment in {folder} (SQLite, local executor, dropbox)", highlight=False)
    scheduler = start_scheduler(folder)
    web = None if options.serve_port is None else open_web_site(folder, options.serve_port, console)
    detector = Detector(options, runs)
    detector.start()
    completed = False
    try:
        db = Database(f"sqlite:///{(folder / 'runwatch.db').resolve()}")
        try:
            states = watch(db, runs, detector, scheduler, options.timeout_s, console)
        finally:
            db.dispose()
        completed = len(states) == len(runs) and all(
            s.run.status is RunStatus.ALL_COMPLETED and s.settled for s in states.values()
        )
        if detector.error is not None:
            console.print(f"[red]the simulator failed: {detector.error}[/red]")
        if scheduler.poll() is not None:
            console.print(f"[red]the scheduler stopped; see {folder / 'scheduler.log'}[/red]")
    except BaseException:
        if web is not None:
            stop(web)
        raise
    finally:
        if not options.keep_running:
            stop(scheduler)
    _where_to_look(console, folder, completed, scheduler if options.keep_running else None)
    if web is not None:
        serve_until_interrupted(web, options.serve_port, console)
    return completed


def _where_to_look(
    console: Console, folder: Path, completed: bool, scheduler: subprocess.Popen[bytes] | None
) -> None:
    verdict = (
        "[green]all runs All Completed[/green]"
        if completed
        else "[red]not all runs completed[/red]"
    )
    lines = [
        "",
        verdict,
        "",
        "Look around:",
        f"  cd {folder}",
        "  runwatch runs list        # the runs and their status",
        "  runwatch runs show 1003   # a run's files and tasks",
        "  runwatch tasks list       # every task (runwatch tasks show ID: one)",
        "  runwatch dqm status       # each run's DQM verdict, merge completeness, PMTs",
        "  runwatch dqm checks 1003  # a run's check results, with their reasons",
        "  runwatch dqm pmt 1003     # its PMT classes, and what changed since a good run",
        "  runwatch dqm alarms list  # what the shifter is asked to look at",
        "  runwatch serve            # the web site, at http://127.0.0.1:8080/",
        "In that folder:",
        "  dropbox/        raw files (.rtraw) and their messages",
        "  data/           step outputs: calib, rec, hist and merged ROOT files",
        "  checks/         the DQM's check file",
        "  work/logs/      job logs",
        "  truth/          what the simulator generated",
        "  scheduler.log   the scheduler's log",
    ]
    if scheduler is not None:
        lines.append(
            f"The scheduler still runs (pid {scheduler.pid}); stop it with kill {scheduler.pid}."
        )
    for line in lines:
        console.print(line, highlight=False)
