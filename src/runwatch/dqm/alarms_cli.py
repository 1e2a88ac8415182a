"""``runwatch dqm alarms``: list, acknowledge and test-notify alarms."""

from __future__ import annotations

import typer

alarms_app = typer.Typer(help="Alarms: list them, acknowledge them.", no_args_is_help=True)


@alarms_app.command("list")
def list_alarms() -> None:
    """List alarms (placeholder until the alarm service lands)."""
    typer.echo("no alarm service yet")
