"""Example pipeline files that ``runwatch init`` copies into a new deployment.

They are package data (``pipelines/*.yaml``), found with ``importlib.resources`` so that they
work from a wheel as well as from a source checkout.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable


def example_pipelines() -> list[Traversable]:
    """The example pipeline files, by name."""
    folder = files(__name__) / "pipelines"
    return sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith((".yaml", ".yml"))),
        key=lambda entry: entry.name,
    )
