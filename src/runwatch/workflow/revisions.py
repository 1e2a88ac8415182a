"""Pipeline revisions: the pipelines in force, and every version ever planned with.

The scheduler reads the pipeline folder when a file in it changes, stores each new text as a
revision, and plans new tasks with the current revisions. A task keeps its revision, so its
job is always rendered from the text it was planned with, whatever happened to the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.db import Transaction, connection_of, utcnow
from runwatch.workflow.models import PipelineRevision
from runwatch.workflow.pipeline_file import (
    LoadedPipeline,
    PipelineError,
    load_pipeline_folder,
    parse_pipeline,
)
from runwatch.workflow.spec import Pipeline

log = logging.getLogger(__name__)


@dataclass
class PipelineBook:
    """The pipelines in force: name → (revision id, pipeline)."""

    current: dict[str, tuple[int, Pipeline]] = field(default_factory=dict)

    def for_stream(self, stream: str) -> list[tuple[int, Pipeline]]:
        return [(rev, p) for rev, p in self.current.values() if stream in p.streams]


def record_revisions(session: Session, loaded: Sequence[LoadedPipeline]) -> PipelineBook:
    """Store any new pipeline text as a revision; return the book of current revisions."""
    book = PipelineBook()
    for item in loaded:
        name = item.pipeline.name
        rev_id = session.scalar(
            sa.select(PipelineRevision.id).where(
                PipelineRevision.name == name, PipelineRevision.digest == item.digest
            )
        )
        if rev_id is None:
            revision = PipelineRevision(
                name=name,
                digest=item.digest,
                path=str(item.path),
                content=item.text,
                loaded_at=utcnow(),
            )
            session.add(revision)
            session.flush()
            rev_id = revision.id
            log.info("pipeline %s: new revision %d from %s", name, rev_id, item.path)
        book.current[name] = (rev_id, item.pipeline)
    return book


class PipelineFolder:
    """Reads the pipeline folder again only when one of its files changed."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self.loaded: list[LoadedPipeline] = []
        self.errors: list[PipelineError] = []

    def _current_stamp(self) -> tuple[tuple[str, int, int], ...]:
        if not self.folder.is_dir():
            return ()
        stamp = []
        for entry in os.scandir(self.folder):
            if entry.name.endswith((".yaml", ".yml")):
                st = entry.stat()
                stamp.append((entry.name, st.st_mtime_ns, st.st_size))
        return tuple(sorted(stamp))

    def refresh(self) -> bool:
        """Re-read if anything changed; True if it did. Broken files are logged and skipped,
        so one bad edit never stops the scheduler (the last good revision stays planned)."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        loaded, errors = load_pipeline_folder(self.folder)
        for error in errors:
            log.error("pipeline file rejected: %s", error)
        keep = {item.pipeline.name for item in loaded}
        # A file that became invalid keeps its previous good version in force.
        self.loaded = loaded + [
            old
            for old in self.loaded
            if old.pipeline.name not in keep and Path(old.path).exists() and _is_broken(old, errors)
        ]
        self.errors = errors
        return True


def _is_broken(old: LoadedPipeline, errors: Sequence[PipelineError]) -> bool:
    return any(str(old.path) in str(err) for err in errors)


class RevisionCache:
    """Parsed pipelines by revision id (the stored text is immutable, so caching is safe)."""

    def __init__(self) -> None:
        self._parsed: dict[int, Pipeline] = {}

    def get(self, tx: Transaction, revision_id: int) -> Pipeline:
        pipeline = self._parsed.get(revision_id)
        if pipeline is None:
            revision = (
                connection_of(tx)
                .execute(
                    sa.select(PipelineRevision.content, PipelineRevision.path).where(
                        PipelineRevision.id == revision_id
                    )
                )
                .first()
            )
            if revision is None:
                raise LookupError(f"no pipeline revision {revision_id}")
            pipeline = parse_pipeline(revision[0], revision[1])
            self._parsed[revision_id] = pipeline
        return pipeline
