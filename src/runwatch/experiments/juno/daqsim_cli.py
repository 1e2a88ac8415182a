"""Commands of the JUNO plugin (filled in by the work on issue 3)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``runwatch juno`` app."""
