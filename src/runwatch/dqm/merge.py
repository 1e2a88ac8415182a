"""Incremental, exactly-once merging of one run's per-file histogram files.

The merged file says, inside itself, what it contains: its metadata (``META_KEY``) lists
every contribution -- the input's key (the producing task, or its absolute path), its
adler32 checksum, its event count and path, and the inventory of its histograms (path,
class, entries). The histograms and that list are written together, atomically
(``write_histograms``: temporary name, then rename), so whatever instant a merge is
killed at, the merged file on disk is complete and its list says exactly what it holds.
That is the whole of the exactly-once argument:

- an input whose key is listed with the same checksum is already in: skipped;
- an input with a new key is read and added to the merged histograms: only new files
  are read, so a live merge every minute costs one file's reading, not the run's;
- an input whose key is listed with a different checksum was re-produced (its task was
  re-run): its old content cannot be subtracted reliably, so the merge is rebuilt from
  scratch, from the inputs given plus earlier contributions re-read from their recorded
  paths (each checked against its recorded checksum);
- an unreadable input, or one whose binning does not match, is reported and left out
  whole (never half-added), and everything else is still merged. A later merge tries it
  again.

A merge may also *start* from another merged file (``start``): the previous live merge of
the run. The new file is then that file plus the contributions it does not list, by the
same rules, and the previous file is never written to, so a merge task killed at any
instant and re-run gives the same result as one uninterrupted run.

Nothing here touches the database: the engine's merge task calls ``merge_into`` and
stores the report.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runwatch.dqm.histogram import (
    Hist,
    HistogramFileError,
    IncompatibleHistograms,
    accumulate,
    check_compatible,
    read_file,
    write_histograms,
)
from runwatch.storage.atomic import written_atomically
from runwatch.storage.checksum import adler32_file, normalise_adler32

META_FORMAT = "runwatch.dqm.merge/1"


@dataclass(frozen=True)
class Contribution:
    """One input of a merge: a per-file histogram file and what identifies it.

    ``key`` names the producer (e.g. the task id): a new file under the same key replaces
    the old one. ``checksum`` is the file's adler32 as recorded when it was produced; when
    ``None`` it is computed from the file. ``events`` is how many of the run's events the
    file's histograms saw (for the merge's completeness).
    """

    key: str
    path: Path
    checksum: str | None = None
    events: int = 0


@dataclass(frozen=True)
class HistEntry:
    """One histogram of an input: its path in the file, its ROOT class, its entries."""

    path: str
    classname: str
    entries: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "classname": self.classname, "entries": self.entries}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistEntry:
        return cls(str(data["path"]), str(data["classname"]), float(data["entries"]))


@dataclass(frozen=True)
class Included:
    """A contribution as the merged file records it.

    ``inventory`` lists the input's histograms, so that what each merged histogram was made
    of is known without opening the inputs again; files merged before it was recorded
    have none (empty).
    """

    key: str
    checksum: str
    events: int
    path: str
    inventory: tuple[HistEntry, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "checksum": self.checksum,
            "events": self.events,
            "path": self.path,
            "inventory": [h.to_dict() for h in self.inventory],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Included:
        inventory = tuple(HistEntry.from_dict(h) for h in data.get("inventory", ()))
        return cls(
            str(data["key"]),
            str(data["checksum"]),
            int(data["events"]),
            str(data["path"]),
            inventory,
        )


@dataclass(frozen=True)
class InputError:
    """An input left out of the merge, and why."""

    key: str
    path: str
    reason: str


@dataclass
class MergeReport:
    """What one ``merge_into`` did.

    ``added``: keys added by this merge (all included keys after a rebuild);
    ``skipped``: keys already included with the same checksum; ``replaced``: keys whose
    checksum changed, which caused the rebuild; ``errors``: inputs left out;
    ``written``: whether the merged file was rewritten (not when nothing changed, unless
    the merge started from another file); ``started_from``: that file.
    ``files_included``/``events_included``: the merged file's contents after the merge.
    """

    merged_path: Path
    started_from: Path | None = None
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    rebuilt: bool = False
    written: bool = False
    files_included: int = 0
    events_included: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class MergedState:
    """The merged file's histograms and contribution list (empty when there is no file)."""

    hists: dict[str, Hist] = field(default_factory=dict)
    included: dict[str, Included] = field(default_factory=dict)

    def meta(self, errors: Sequence[InputError]) -> dict[str, Any]:
        """The metadata stored in the merged file: what it holds, and what was left out."""
        return {
            "format": META_FORMAT,
            "contributions": [c.to_dict() for c in self.included.values()],
            "files_included": len(self.included),
            "events_included": sum(c.events for c in self.included.values()),
            "excluded": [vars(e) for e in errors],
            "written_at": time.time(),
        }


def read_merged(path: str | Path) -> MergedState:
    """The merged file's state; an empty state when ``path`` does not exist.

    Raises ``HistogramFileError`` when the file exists but is unreadable or is not a
    merged file (no contribution list).
    """
    if not Path(path).exists():
        return MergedState()
    found = read_file(path)
    meta = found.meta
    if meta is None or meta.get("format") != META_FORMAT:
        raise HistogramFileError(path, "not a merged histogram file (no contribution list)")
    included = (Included.from_dict(c) for c in meta["contributions"])
    return MergedState(found.hists, {c.key: c for c in included})


def merge_into(
    merged_path: str | Path,
    inputs: Sequence[Contribution],
    *,
    rebuild: bool = False,
    start: str | Path | None = None,
) -> MergeReport:
    """Merge ``inputs`` into the merged file at ``merged_path``, each exactly once.

    ``inputs`` are the run's current histogram files; those already included may be left
    out. ``rebuild=True`` starts from scratch from exactly ``inputs`` (dropping earlier
    contributions not listed). ``start``, another merged file, is the starting point
    instead of what ``merged_path`` holds: ``merged_path`` becomes a copy of it plus the
    inputs it does not include. See the module docstring for the rules.
    """
    merged_path = Path(merged_path)
    source = merged_path if start is None else Path(start)
    report = MergeReport(merged_path, None if source == merged_path else source)
    try:
        state = read_merged(source)
    except HistogramFileError as error:
        report.notes.append(f"{source} unreadable, rebuilt from the inputs given: {error}")
        state, rebuild = MergedState(), True
    current = _identify(inputs, report)
    report.replaced = [
        key
        for key, item in current.items()
        if key in state.included and state.included[key].checksum != item.checksum
    ]
    if rebuild or report.replaced:
        carried = [] if rebuild else [c for k, c in state.included.items() if k not in current]
        todo = [*carried, *current.values()]
        state, report.rebuilt = MergedState(), True
    else:
        report.skipped = [key for key in current if key in state.included]
        todo = [item for key, item in current.items() if key not in state.included]
    for item in todo:
        reason = _add_file(state, item)
        if reason is None:
            report.added.append(item.key)
        else:
            report.errors.append(InputError(item.key, item.path, reason))
    copied = report.started_from is not None
    if report.added or report.rebuilt or (copied and report.errors):
        write_histograms(merged_path, state.hists, state.meta(report.errors))
        report.written = True
    elif copied:
        _copy(source, merged_path)  # the same content, and cheaper than writing it anew
        report.written = True
    report.files_included = len(state.included)
    report.events_included = sum(c.events for c in state.included.values())
    return report


def _identify(inputs: Iterable[Contribution], report: MergeReport) -> dict[str, Included]:
    """Each input's checksum (recorded, or computed now), by key; errors into ``report``."""
    found: dict[str, Included] = {}
    for item in inputs:
        path = str(item.path)
        if item.key in found:
            report.errors.append(InputError(item.key, path, "key given twice in one merge"))
            continue
        try:
            checksum = (
                adler32_file(path) if item.checksum is None else normalise_adler32(item.checksum)
            )
        except (OSError, ValueError) as error:
            report.errors.append(InputError(item.key, path, f"cannot checksum: {error}"))
            continue
        found[item.key] = Included(item.key, checksum, item.events, path)
    return found


def _add_file(state: MergedState, item: Included) -> str | None:
    """Add one input's histograms to ``state``, all or none; the reason when none."""
    try:
        actual = adler32_file(item.path)
    except OSError as error:
        return f"cannot read: {error}"
    if actual != item.checksum:
        return f"checksum mismatch: the file has {actual}, expected {item.checksum}"
    try:
        hists = read_file(item.path).hists
    except HistogramFileError as error:
        return error.reason
    try:
        for name, hist in hists.items():
            if name in state.hists:
                check_compatible(state.hists[name], hist)
    except IncompatibleHistograms as error:
        return f"incompatible with the merge: {error}"
    for name, hist in hists.items():
        if name in state.hists:
            accumulate(state.hists[name], hist)
        else:
            state.hists[name] = hist
    inventory = tuple(HistEntry(n, h.classname, h.entries) for n, h in hists.items())
    state.included[item.key] = replace(item, inventory=inventory)
    return None


def _copy(source: Path, target: Path) -> None:
    with written_atomically(target, durable=True) as part:
        shutil.copyfile(source, part)
