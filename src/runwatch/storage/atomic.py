"""Writing a file so that it appears under its name only when complete.

A step program or a merge that is killed mid-write must not leave a file that looks
whole: the file is written as ``<name>.part`` and renamed at the end. A ``.part`` left by
a writer that was killed is overwritten by the next one (one writer per file at a time).
Staging files out (``stage.py``) uses random temporary names instead, because attempts
of the same task may race there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def written_atomically(final: Path, durable: bool = False) -> Iterator[Path]:
    """The temporary path to write ``final`` to inside the block; renamed to ``final`` when
    the block ends without error (flushed to disk first if ``durable``), else removed."""
    part = final.with_name(final.name + ".part")
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield part
        if durable:
            fd = os.open(part, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, final)
