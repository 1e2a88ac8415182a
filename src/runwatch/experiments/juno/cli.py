"""``runwatch juno ...``: the JUNO plugin's commands (simulator and step programs).

Each command lives beside the code it drives; this module only gathers them. Heavy
imports (NumPy, uproot) happen inside the commands, so ``runwatch --help`` stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

juno_app = typer.Typer(
    help="JUNO: the DAQ simulator and the calib, rec and hist step programs.",
    no_args_is_help=True,
)

COMMAND_MODULES = (
    "runwatch.experiments.juno.daqsim_cli",
    "runwatch.experiments.juno.steps_cli",
    "runwatch.experiments.juno.rec_cli",
)


def register(app: typer.Typer) -> None:
    """Add ``runwatch juno`` and its commands, and ``runwatch demo``, to ``app``."""
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(juno_app)
    app.add_typer(juno_app, name="juno")
    app.command("demo")(demo)


def histogram_tabs() -> dict[str, list[str]]:
    """The run page's tabs of the hist step's histograms: Calib those filled from the
    calib file, Rec those from the rec file (read by ``runwatch.web.pages``)."""
    from runwatch.experiments.juno.hist import specs

    tabs: dict[str, list[str]] = {"calib": [], "rec": []}
    for spec in specs():
        tabs[spec.source].append(spec.name)
    return tabs


def demo(
    folder: Path = typer.Argument(
        Path("runwatch-demo"), help="Folder for the demo's deployment (wiped on a rerun)."
    ),
    files: int = typer.Option(3, "--files", min=1, help="Raw files per run."),
    events: int = typer.Option(1_000, "--events", min=1, help="Events per raw file."),
    timeout: float = typer.Option(300.0, "--timeout", min=1, help="Give up after this (s)."),
    keep_running: bool = typer.Option(
        False, "--keep-running", help="Leave the scheduler running at the end."
    ),
    serve: bool = typer.Option(
        False,
        "--serve",
        help="Serve the web site while the runs are taken (its address is printed), and "
        "keep serving it afterwards until Ctrl-C.",
    ),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="The web site's port."),
) -> None:
    """Run the keep-up chain on simulated JUNO runs in a fresh local deployment.

    Sets up FOLDER (SQLite, local executor, dropbox), starts the scheduler, simulates
    three Physics runs (one with dead and hot PMTs) and a Calib run, and shows the runs go
    from Data Taking to All Completed. Exit code 1 if they do not all complete.
    """
    from rich.console import Console

    from runwatch.experiments.juno.demo import DemoError, DemoOptions, run_demo

    console = Console()
    options = DemoOptions(
        folder.resolve(), files, events, timeout, keep_running, serve_port=port if serve else None
    )
    try:
        completed = run_demo(options, console)
    except DemoError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if not completed:
        raise typer.Exit(1)
