"""``runwatch juno rec``: the reconstruction step program.

Run by the pipeline as a job: a failure is a one-line message on stderr and exit status
1, with no output file left behind. Heavy imports happen inside the command (see ``cli``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from runwatch.experiments.juno.rec import RecResult


def register(app: typer.Typer) -> None:
    """Add ``rec`` to the ``runwatch juno`` app."""
    app.command("rec")(rec)


def _fraction(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"must be in (0, 1], got {value}")
    return value


def rec(
    input_path: Path = typer.Argument(
        ..., metavar="INPUT", help="Calibrated file (*.calib.root, tree 'calib')."
    ),
    output: Path = typer.Argument(
        ..., metavar="OUTPUT", help="Reconstructed file to write (*.rec.root, tree 'rec')."
    ),
    threads: int = typer.Option(
        1, "--threads", min=1, help="Chunks of events fitted in parallel (NumPy threads)."
    ),
    sample_fraction: float = typer.Option(
        1.0,
        "--sample-fraction",
        callback=_fraction,
        help="Reconstruct this fraction of the events, chosen by a hash of the event id "
        "(a rerun keeps the same ones); the others are skipped and not written.",
    ),
    geometry: Path | None = typer.Option(
        None,
        "--geometry",
        help="PMT position file (id x y z theta phi). Default: the built-in 17,612 PMTs.",
    ),
) -> None:
    """Reconstruct each event's vertex, time and energy from its calibrated hits."""
    from runwatch.experiments.juno.geometry import GeometryError
    from runwatch.experiments.juno.rootio import InputFileError

    try:
        result = _run(input_path, output, threads, sample_fraction, geometry)
    except (InputFileError, GeometryError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"rec: {result.events} events in, {result.selected} selected, {result.fitted} fitted, "
        f"{result.events_per_second:.0f} events/s ({result.events_per_cpu_second:.0f} per "
        f"CPU-second) on {threads} thread(s) "
        f"(+{result.setup_seconds:.1f} s setup) -> {output}"
    )


def _run(
    input_path: Path, output: Path, threads: int, fraction: float, geometry: Path | None
) -> RecResult:
    """``rec.run_rec`` with a progress bar on stderr when it is a terminal."""
    from rich.console import Console
    from rich.progress import Progress

    from runwatch.experiments.juno import formats, rootio
    from runwatch.experiments.juno.rec import run_rec

    console = Console(stderr=True)
    total = rootio.count_events(input_path, formats.CALIB_TREE)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("rec", total=total)
        return run_rec(
            input_path,
            output,
            geometry=geometry,
            threads=threads,
            fraction=fraction,
            progress=lambda events: bar.advance(task, events),
        )
