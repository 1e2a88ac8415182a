"""``runwatch juno calib|hist``: the calibration and histogram step programs.

The pipeline runs them as jobs: a failure is a one-line message on stderr and exit
status 1, with no output file left behind, so the engine records a failed attempt and
a retry starts clean. Heavy imports happen inside the commands (see ``cli``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

GEOMETRY_HELP = (
    "PMT position file (id x y z theta phi); it sets the number of PMTs. Default: JUNO's 17,612."
)


def register(app: typer.Typer) -> None:
    """Add ``calib`` and ``hist`` to the ``runwatch juno`` app."""
    app.command("calib")(calib)
    app.command("hist")(hist)


def calib(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="Raw file (*.rtraw)."),
    output: Path = typer.Argument(
        ..., metavar="OUTPUT", help="Calibrated file to write (*.calib.root)."
    ),
    constants: Path = typer.Option(
        ..., "--constants", help="Per-PMT constants: CSV pmt_id,gain_adc_per_pe,time_offset_ns."
    ),
    geometry: Path | None = typer.Option(None, "--geometry", help=GEOMETRY_HELP),
) -> None:
    """Apply each PMT's gain and time offset to a raw file's hits."""
    from runwatch.experiments.juno import calib as step
    from runwatch.experiments.juno import formats, rootio

    with _failures_exit():
        n_pmt = _n_pmt(geometry)
        with _progress(rootio.count_events(input_path, formats.RAW_TREE)) as advance:
            result = step.run_calib(input_path, output, constants, n_pmt, progress=advance)
    typer.echo(f"calib: {result.events} events, {result.hits} hits -> {output}")


def hist(
    output: Path = typer.Argument(
        ..., metavar="OUTPUT", help="Histogram file to write (ROOT, TH1D/TH2D)."
    ),
    calib_path: Path = typer.Option(
        ..., "--calib", help="Calibrated file: hit, PMT and trigger histograms."
    ),
    rec_path: Path | None = typer.Option(
        None, "--rec", help="Reconstructed file: vertex and energy histograms (may be sampled)."
    ),
    geometry: Path | None = typer.Option(None, "--geometry", help=GEOMETRY_HELP),
) -> None:
    """Fill one file's data-quality histograms and write them to ROOT."""
    from runwatch.experiments.juno import formats, rootio
    from runwatch.experiments.juno import hist as step

    with _failures_exit():
        n_pmt = _n_pmt(geometry)
        total = rootio.count_events(calib_path, formats.CALIB_TREE)
        if rec_path is not None:
            total += rootio.count_events(rec_path, formats.REC_TREE)
        with _progress(total) as advance:
            result = step.run_hist(calib_path, rec_path, output, n_pmt, progress=advance)
    typer.echo(f"hist: {result.events} events, {result.rec_events} reconstructed -> {output}")


def _n_pmt(geometry: Path | None) -> int:
    from runwatch.experiments.juno import detector
    from runwatch.experiments.juno.geometry import load_geometry

    return detector.N_PMT if geometry is None else load_geometry(geometry).n_pmt


@contextmanager
def _failures_exit() -> Iterator[None]:
    """Turn an unusable input, constants or geometry file into a message and exit 1."""
    from runwatch.experiments.juno.constants import ConstantsError
    from runwatch.experiments.juno.geometry import GeometryError
    from runwatch.experiments.juno.rootio import InputFileError

    try:
        yield
    except (InputFileError, ConstantsError, GeometryError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; in a batch job's log, nothing."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("events", total=total)
        yield lambda events: bar.advance(task, events)
