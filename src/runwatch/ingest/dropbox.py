"""The dropbox: a directory where the transfer system leaves raw files and semaphores.

A raw file ``<name>`` is announced by a semaphore ``<name>.done`` written after it. An empty
semaphore means "make the message from the file": fields from the name (``names.py``), the
size and Adler-32 from the bytes, and the ``file://`` URL of the file itself. A non-empty
semaphore is the JSON message; its ``url`` and ``size`` default to the data file's.

After the message's receipt is committed, the semaphore moves to ``.runwatch/accepted/`` or
``.runwatch/rejected/`` (with ``<name>.reason`` beside it); the data file stays, since the
catalogue's URL points at it. A crash between the commit and the move only means that the
semaphore is read again, which is a DUPLICATE no-op.

Two ways of noticing semaphores, because either alone misses some: a watchdog observer
reacts at once to semaphores closed after writing or moved in, and a rescan every
``ingest.dropbox_rescan_seconds`` (and one at start) finds those written while the
scheduler was down or whose events were lost. One worker thread does all the reading, so
a semaphore is never read twice at the same time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session
from watchdog.events import (
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.ingest.models import MessageStatus
from runwatch.ingest.names import FileNameError, message_for_file
from runwatch.ingest.schema import MAX_NAME
from runwatch.ingest.service import Receipt, body_text, receive, store_rejected

log = logging.getLogger(__name__)

SOURCE = "dropbox"
SEMAPHORE_SUFFIX = ".done"
STATE_DIR = ".runwatch"
# A rescan leaves alone a semaphore modified this recently: it may still be being written
# (its close event, which the observer acts on, has not come yet).
SETTLE_SECONDS = 0.5


def semaphores(folder: Path) -> list[Path]:
    """The semaphores waiting in the dropbox, oldest first."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(SEMAPHORE_SUFFIX) and entry.is_file():
                found.append((entry.stat().st_mtime, Path(entry.path)))
    return [path for _, path in sorted(found)]


def data_file(semaphore: Path) -> Path:
    return semaphore.with_name(semaphore.name.removesuffix(SEMAPHORE_SUFFIX))


def read_semaphore(settings: Settings, db: Database, semaphore: Path) -> Receipt | None:
    """Receive the message a semaphore stands for and file the semaphore away.

    None if the semaphore is gone already (another scan got to it first).
    """
    try:
        content = semaphore.read_bytes()
    except FileNotFoundError:
        return None
    with db.session() as session:
        receipt = _receive(session, semaphore, content, settings.ingest.name_pattern)
    file_away(Path(settings.ingest.dropbox), semaphore, receipt)
    return receipt


def _receive(session: Session, semaphore: Path, content: bytes, pattern: str) -> Receipt:
    data, origin, now = data_file(semaphore), str(semaphore), utcnow()
    name = data.name if len(data.name) <= MAX_NAME else None
    if not data.is_file():
        reason = f"data file {data.name} is missing"
        return store_rejected(session, body_text(content), SOURCE, origin, now, reason, name)
    if not content.strip():
        try:
            fields = message_for_file(data, pattern)
        except FileNameError as exc:
            return store_rejected(session, "", SOURCE, origin, now, str(exc), name)
        return receive(session, json.dumps(fields), SOURCE, origin, now)
    return receive(session, _completed(content, data), SOURCE, origin, now)


def _completed(content: bytes, data: Path) -> bytes | str:
    """The JSON message with ``url`` and ``size`` taken from the data file if left out."""
    try:
        message = json.loads(content)
    except (ValueError, RecursionError):
        return content  # receive() rejects it and says where it is broken
    if not isinstance(message, dict):
        return content
    defaults = {"url": data.resolve().as_uri(), "size": data.stat().st_size}
    missing = {key: value for key, value in defaults.items() if key not in message}
    if not missing:
        return content  # stored exactly as written
    return json.dumps({**message, **missing})


def file_away(dropbox: Path, semaphore: Path, receipt: Receipt) -> None:
    """Move a read semaphore out of the way, with the reason beside a rejected one."""
    rejected = receipt.status is MessageStatus.REJECTED
    target = dropbox / STATE_DIR / ("rejected" if rejected else "accepted")
    target.mkdir(parents=True, exist_ok=True)
    if rejected:
        reason = target / f"{data_file(semaphore).name}.reason"
        reason.write_text(f"{receipt.reason}\n", encoding="utf-8")
    with contextlib.suppress(FileNotFoundError):
        os.replace(semaphore, target / semaphore.name)


def scan_once(settings: Settings, db: Database) -> list[Receipt]:
    """Read every semaphore in the dropbox now; the receipts, oldest semaphore first."""
    if not settings.ingest.dropbox:
        raise ValueError("no dropbox configured (ingest.dropbox)")
    folder = Path(settings.ingest.dropbox)
    receipts = []
    for semaphore in semaphores(folder):
        receipt = read_semaphore(settings, db, semaphore)
        if receipt is not None:
            receipts.append(receipt)
    return receipts


class _SemaphoreEvents(FileSystemEventHandler):
    """Passes semaphores that were closed after writing, or moved in, to the worker."""

    def __init__(self, folder: Path, offer: Callable[[Path], None]) -> None:
        self.folder = folder
        self.offer = offer

    def on_closed(self, event: FileSystemEvent) -> None:
        self._consider(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._consider(event.dest_path)

    # on_created is not used: a created semaphore may still be empty while the writer is
    # filling it; the close event that follows is the one to act on.

    def _consider(self, raw: str | bytes) -> None:
        path = Path(os.fsdecode(raw))
        if path.parent == self.folder and path.name.endswith(SEMAPHORE_SUFFIX):
            self.offer(path)


class DropboxSource:
    """Watches ``ingest.dropbox`` (see the module docstring)."""

    name = SOURCE

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return bool(settings.ingest.dropbox)

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.folder = Path(settings.ingest.dropbox)
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._stop = threading.Event()
        self._observer: BaseObserver | None = None
        self._worker: threading.Thread | None = None
        self._wake: Callable[[], None] = lambda: None

    def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._stop.clear()
        self.folder.mkdir(parents=True, exist_ok=True)
        # The observer starts before the first scan, so that a semaphore arriving during
        # the scan is not missed (at worst it is offered twice; the second finds it gone).
        observer = Observer()
        observer.schedule(
            _SemaphoreEvents(self.folder, self._queue.put),
            str(self.folder),
            recursive=False,
            event_filter=[FileClosedEvent, FileMovedEvent],
        )
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._worker = threading.Thread(target=self._work, name="dropbox", daemon=True)
        self._worker.start()
        log.info("watching dropbox %s", self.folder)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _work(self) -> None:
        rescan = self.settings.ingest.dropbox_rescan_seconds
        next_scan = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_scan:
                self._scan()
                next_scan = time.monotonic() + rescan
                continue
            try:
                path = self._queue.get(timeout=max(0.0, next_scan - time.monotonic()))
            except queue.Empty:
                continue
            if path is not None:
                self._read(path)

    def _scan(self) -> None:
        try:
            found = semaphores(self.folder)
        except OSError:
            log.exception("cannot list dropbox %s", self.folder)
            return
        for semaphore in found:
            if self._stop.is_set():
                return
            with contextlib.suppress(FileNotFoundError):
                if time.time() - semaphore.stat().st_mtime >= SETTLE_SECONDS:
                    self._read(semaphore)

    def _read(self, semaphore: Path) -> None:
        try:
            receipt = read_semaphore(self.settings, self.db, semaphore)
        except Exception:
            # The database or the disk failed: the semaphore stays for the next rescan.
            log.exception("dropbox: %s not read; will retry", semaphore.name)
            return
        if receipt is not None:
            log.info("dropbox: %s %s", semaphore.name, receipt.status.value)
            self._wake()
