"""Streaming reading and atomic writing of the JUNO steps' ROOT trees.

A step reads its input in chunks of events so that its memory stays bounded whatever the
file's size (a JUNO raw file is 5 GB), and writes its output under a temporary name that
is renamed only when the tree is complete, so a killed step never leaves a file that
looks whole. Anything wrong with an input -- not ROOT, truncated, a missing tree or
branch -- is an ``InputFileError`` that names the file and says what is wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import awkward as ak
import numpy as np
import uproot

from runwatch.storage.atomic import written_atomically

COMPRESSION = uproot.LZ4(1)
"""LZ4 writes faster than no compression at all (less to write) and reads 3x faster than
ZLIB; measured in bench/juno_chain.py."""

DEFAULT_STEP_EVENTS = 2_000
"""Events per chunk: ~120 MB of raw hits in memory at JUNO's 60 kB/event."""


class InputFileError(Exception):
    """An input file that cannot be read as the expected tree; the message says why."""


def _open_tree(path: Path, tree: str, branches: Mapping[str, str] | list[str]) -> Any:
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    try:
        file = uproot.open(path)
    except Exception as exc:  # uproot raises many kinds for a file that is not ROOT
        raise InputFileError(f"{path}: not a readable ROOT file ({exc})") from exc
    try:
        found = file[tree]
    except Exception as exc:
        file.close()
        raise InputFileError(f"{path}: has no tree {tree!r} ({exc})") from exc
    missing = [name for name in branches if name not in found]
    if missing:
        file.close()
        raise InputFileError(f"{path}: tree {tree!r} lacks branches {', '.join(missing)}")
    return found


def count_events(path: Path, tree: str) -> int:
    """The number of events in ``tree`` of ``path``."""
    found = _open_tree(path, tree, [])
    try:
        return int(found.num_entries)
    finally:
        found.file.close()


def iterate(
    path: Path,
    tree: str,
    branches: Mapping[str, str] | list[str],
    step_events: int = DEFAULT_STEP_EVENTS,
) -> Iterator[ak.Array]:
    """Chunks of ``step_events`` events of ``branches`` of ``tree`` in ``path``.

    A truncated or damaged file fails at the first chunk it spoils, with the file named.
    """
    found = _open_tree(path, tree, branches)
    try:
        for start in range(0, found.num_entries, step_events):
            stop = min(start + step_events, found.num_entries)
            try:
                yield found.arrays(list(branches), entry_start=start, entry_stop=stop)
            except Exception as exc:
                raise InputFileError(
                    f"{path}: events {start}-{stop - 1} of tree {tree!r} cannot be read "
                    f"(truncated or damaged file?): {exc}"
                ) from exc
    finally:
        found.file.close()


class TreeWriter:
    """Write one tree chunk by chunk; the file appears under its name only when closed.

    Use as a context manager: on an exception the partial file is removed.
    """

    def __init__(self, path: Path, tree: str, branches: Mapping[str, str]) -> None:
        self.path = path
        self.tree = tree
        self.branches = dict(branches)
        self.events = 0
        self._file: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> TreeWriter:
        part = self._stack.enter_context(written_atomically(self.path))
        self._file = self._stack.enter_context(uproot.recreate(part, compression=COMPRESSION))
        self._file.mktree(self.tree, self.branches)
        return self

    def extend(self, chunk: Mapping[str, Any]) -> None:
        """Append a chunk: a mapping of every branch to a NumPy or awkward array."""
        lengths = {len(chunk[name]) for name in self.branches}
        if len(lengths) != 1:
            raise ValueError(f"branches of one chunk differ in length: {sorted(lengths)}")
        length = lengths.pop()
        if length:
            self._file[self.tree].extend({name: chunk[name] for name in self.branches})
            self.events += length

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Closes the file, then renames it into place (or removes it after an error).
        self._stack.__exit__(kind, exc, tb)


def jagged(content: np.ndarray, counts: np.ndarray) -> ak.Array:
    """A jagged array of ``counts[i]`` values per event from their flat ``content``."""
    return ak.unflatten(content, counts)
