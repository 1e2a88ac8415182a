"""A job's log file: its end, as recorded with the attempt and shown to operators."""

from __future__ import annotations

from pathlib import Path

LOG_TAIL_BYTES = 4096  # what an attempt records of its log


def read_tail(path: Path, size: int) -> tuple[str, bool]:
    """The last ``size`` bytes of ``path`` as text, and whether that cut the file."""
    with path.open("rb") as stream:
        end = stream.seek(0, 2)
        stream.seek(max(0, end - size))
        return stream.read().decode("utf-8", errors="replace"), end > size


def log_tail(path: Path | str | None, size: int = LOG_TAIL_BYTES) -> str | None:
    """The end of a job's log to record with its attempt; None if there is none (yet)."""
    if not path:
        return None
    try:
        return read_tail(Path(path), size)[0]
    except OSError:
        return None
