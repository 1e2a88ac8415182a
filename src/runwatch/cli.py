"""The ``runwatch`` command. Each feature adds its sub-commands in its own ``cli.py``."""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

import typer

from runwatch import __version__

app = typer.Typer(
    name="runwatch",
    help="Keep-up production and data quality monitoring for physics experiments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module has register(app); listed here so that `runwatch --help` is complete.
FEATURE_CLIS = (
    "runwatch.setup_cli",
    "runwatch.catalogue.cli",
    "runwatch.ingest.cli",
    "runwatch.workflow.cli",
    "runwatch.jobs.cli",
    "runwatch.web.cli",
    "runwatch.dqm.cli",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"runwatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Keep-up production and data quality monitoring for physics experiments."""


def build() -> typer.Typer:
    for module in FEATURE_CLIS:
        importlib.import_module(module).register(app)
    # Experiments are plugins: the built-in ones register through the same entry point
    # an outside package would use.
    for entry in entry_points(group="runwatch.experiments"):
        entry.load().register(app)
    return app


def experiment_app(name: str) -> typer.Typer | None:
    """The commands of experiment plugin ``name`` alone, or None if there is none.

    An experiment's step programs start once per task; loading only their commands, not
    the engine's (SQLAlchemy, pydantic, the web app), spares each task about half a
    second of CPU.
    """
    for entry in entry_points(group="runwatch.experiments"):
        if entry.name == name:
            single = typer.Typer(
                name="runwatch", pretty_exceptions_enable=False, add_completion=False
            )
            entry.load().register(single)
            return single
    return None


def main() -> None:
    if len(sys.argv) > 1 and (single := experiment_app(sys.argv[1])) is not None:
        single()
        return
    build()()
