"""``runwatch juno daqsim``: simulate a run of the JUNO DAQ into the engine's intake."""

from __future__ import annotations

import ctypes
import datetime as dt
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``runwatch juno`` app."""
    app.command("daqsim")(daqsim)


def daqsim(
    run: int = typer.Option(..., "--run", min=1, help="Run number."),
    stream: str = typer.Option("Physics", "--stream", help="Data stream: Physics, Calib, ..."),
    files: int = typer.Option(1, "--files", min=1, help="Raw files in the run."),
    events: int = typer.Option(
        1_000, "--events", min=1, help="Events per file (JUNO writes ~80,000)."
    ),
    rate: float | None = typer.Option(
        None,
        "--rate",
        min=0.001,
        help="Trigger rate in Hz, kept to in real time. Default: time stamps at 1 kHz, "
        "written as fast as possible.",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (the detector's PMTs and events)."),
    dead: int = typer.Option(0, "--dead", min=0, help="Dead PMTs, chosen with the seed."),
    dead_ids: str = typer.Option("", "--dead-ids", help="Dead PMTs by id, e.g. 12,345."),
    hot: int = typer.Option(0, "--hot", min=0, help="Hot PMTs, chosen with the seed."),
    hot_ids: str = typer.Option("", "--hot-ids", help="Hot PMTs by id, e.g. 7,8."),
    geometry: Path | None = typer.Option(
        None, "--geometry", help="PMT position file (id x y z theta phi); default: built-in."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Where raw files go: the engine's dropbox unless --post. Default: ingest.dropbox.",
    ),
    truth: Path | None = typer.Option(
        None, "--truth", help="Where truth and true constants go. Default: OUT/truth."
    ),
    release: str = typer.Option("J25.5.0", "--release", help="Software release in the names."),
    start: str | None = typer.Option(
        None, "--start", help="Run start, ISO-8601 with a zone (e.g. 2025-08-26T12:00:00Z)."
    ),
    post: str | None = typer.Option(
        None, "--post", help="Announce by POST to this runwatch server instead of the dropbox."
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="RUNWATCH_TOKEN", help="Bearer token for --post."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar, only the file names."),
) -> None:
    """Simulate a run of the JUNO DAQ: write raw files and announce each one."""
    from rich.console import Console
    from rich.progress import Progress

    from runwatch.experiments.juno.daqsim import DaqConfig, DaqSimError, simulate_run

    console = Console(stderr=True)
    _keep_freed_memory()
    try:
        config = DaqConfig(
            run=run,
            out_dir=out if out is not None else _configured_dropbox(),
            stream=stream,
            files=files,
            events_per_file=events,
            rate_hz=rate if rate is not None else 1_000.0,
            real_time=rate is not None,
            seed=seed,
            dead=_choice(dead, dead_ids),
            hot=_choice(hot, hot_ids),
            geometry_file=geometry,
            release=release,
            truth_dir=truth,
            start=_start(start),
            post_url=post,
            token=token,
        )
        with Progress(console=console, disable=quiet, transient=True) as progress:
            task = progress.add_task(f"run {run}", total=files * events)
            written = simulate_run(config, lambda n: progress.advance(task, n))
    except (DaqSimError, ValueError, OSError) as exc:  # GeometryError is a ValueError
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    for file in written:
        typer.echo(str(file.path))


M_TOP_PAD = -2  # glibc's mallopt parameter
FREED_MEMORY_KEPT = 256 << 20


def _keep_freed_memory() -> None:
    """Let glibc keep up to 256 MB of freed heap for the next chunk.

    Each chunk allocates and frees ~100 MB of arrays; by default glibc gives the top of the
    heap back to the system and the next chunk faults it in again, which cost ~20 % of
    the simulator's time (system time 0.6 s instead of 0.15 s per 4,000 events). The
    command is a process of its own, so the setting touches nothing else.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc: nothing to tune
    mallopt(M_TOP_PAD, FREED_MEMORY_KEPT)


def _choice(count: int, ids: str) -> int | tuple[int, ...]:
    from runwatch.experiments.juno.daqsim import parse_ids, pmt_choice

    return pmt_choice(count, parse_ids(ids) if ids else None)


def _configured_dropbox() -> Path:
    from runwatch.config import load_settings
    from runwatch.experiments.juno.daqsim import DaqSimError

    dropbox = load_settings().ingest.dropbox
    if not dropbox:
        raise DaqSimError("no --out given and no ingest.dropbox configured")
    return Path(dropbox)


def _start(text: str | None) -> dt.datetime | None:
    from runwatch.experiments.juno.daqsim import DaqSimError

    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise DaqSimError(f"--start {text!r} is not an ISO-8601 time") from None
    if when.tzinfo is None:
        raise DaqSimError(f"--start {text!r} has no time zone (add Z for UTC)")
    return when
