"""Ingest sources: where the scheduler's file-ready messages come from besides HTTP.

A source is a plugin found through the ``runwatch.ingest_sources`` entry point group; the
built-in ``dropbox`` and ``amqp`` register the same way an outside package would::

    [project.entry-points."runwatch.ingest_sources"]
    mysource = "mypackage.ingest:MySource"

To write one, implement a class with:

- ``enabled(settings) -> bool`` (classmethod): whether the settings ask for this source;
- ``__init__(settings, db)``: no I/O yet;
- ``name``: a short name, also used as ``ReceivedMessage.source``;
- ``start(wake)``: start background threads. For each message, open ``db.session()``,
  call ``runwatch.ingest.service.receive``, let the session commit, and only then
  acknowledge the message to its origin and call ``wake()`` (the scheduler ticks at once).
  A database error must leave the message at its origin to be retried: ``receive`` is
  idempotent, so a message received twice is a harmless DUPLICATE.
- ``stop()``: stop promptly and join the threads.

Only the active scheduler runs sources, so a source never races with another copy of itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Protocol

from runwatch.config import Settings
from runwatch.db import Database

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "runwatch.ingest_sources"


class IngestSource(Protocol):
    """A running source of file-ready messages (see the module docstring)."""

    name: str

    def start(self, wake: Callable[[], None]) -> None:
        """Start the background threads; call ``wake()`` after each committed message."""

    def stop(self) -> None:
        """Stop and join the background threads."""


class IngestSourceClass(Protocol):
    """What the entry point names: a class that says whether it is configured."""

    def enabled(self, settings: Settings) -> bool: ...

    def __call__(self, settings: Settings, db: Database) -> IngestSource: ...


def load_sources(settings: Settings, db: Database) -> list[IngestSource]:
    """The sources that the settings enable, built but not started, in name order."""
    sources: list[IngestSource] = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        cls: IngestSourceClass = entry.load()
        if cls.enabled(settings):
            log.info("ingest source %s enabled", entry.name)
            sources.append(cls(settings, db))
    return sources
