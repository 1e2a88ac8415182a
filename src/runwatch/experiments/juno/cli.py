"""``runwatch juno ...``: the JUNO plugin's commands (simulator and step programs).

Each command lives beside the code it drives; this module only gathers them. Heavy
imports (NumPy, uproot) happen inside the commands, so ``runwatch --help`` stays fast.
"""

from __future__ import annotations

import importlib

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
    """Add ``runwatch juno`` and its commands to ``app``."""
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(juno_app)
    app.add_typer(juno_app, name="juno")
