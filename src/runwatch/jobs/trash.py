"""Deleting finished attempts' work directories off the worker's critical path.

Removing a directory can cost milliseconds of waiting for the disk (measured here: 3 ms
per ``rmdir`` on ext4 mounted with online discard, against 0.05 ms for a ``rename``). A
long-lived worker therefore renames a finished work directory into its trash folder and
goes on with the next attempt, while a background thread empties the trash. A worker
killed meanwhile leaves the trash to the next one, which empties it at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class Trash:
    """A folder whose content is deleted in the background; ``discard`` moves into it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="trash", daemon=True)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._wake.set()  # leftovers of a worker that was killed
        self._thread.start()

    def discard(self, path: Path) -> None:
        """Make ``path`` vanish now; its deletion happens later. Where it cannot be moved
        into the trash (another file system), it is deleted here and now."""
        target = self.folder / f"{time.time_ns()}-{path.name}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
            return
        self._wake.set()

    def stop(self, wait_s: float = 10.0) -> None:
        """Empty what is left (up to ``wait_s``) and end the thread."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(wait_s)

    def empty(self) -> int:
        """Delete everything in the trash now; the number of entries deleted."""
        deleted = 0
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            deleted += 1
        return deleted

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.empty()
            except Exception:  # never let the janitor take the worker down
                log.exception("cannot empty the trash %s", self.folder)
            if self._stop:
                return
