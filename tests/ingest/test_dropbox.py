"""The dropbox source on a real folder, a real watchdog observer and a real SQLite database."""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from pathlib import Path

import sqlalchemy as sa

from runwatch.catalogue.models import File
from runwatch.config import Settings
from runwatch.db import Database
from runwatch.ingest.dropbox import DropboxSource, scan_once
from runwatch.ingest.models import MessageStatus, ReceivedMessage
from runwatch.ingest.sources import load_sources
from tests.waiting import wait_for


def raw(dropbox: Path, seq: int, run: int = 1234, semaphore: str | None = "") -> Path:
    name = f"RUN.{run}.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.{seq:03d}_J25.rtraw"
    path = dropbox / name
    path.write_bytes(f"run {run} file {seq}\n".encode() * seq)
    if semaphore is not None:
        Path(f"{path}.done").write_text(semaphore)
    return path


def files(db: Database) -> dict[str, File]:
    with db.session() as session:
        return {f.name: f for f in session.scalars(sa.select(File))}


def messages(db: Database) -> list[ReceivedMessage]:
    with db.session() as session:
        return list(session.scalars(sa.select(ReceivedMessage).order_by(ReceivedMessage.id)))


def test_an_empty_semaphore_makes_the_message_from_the_file(
    settings: Settings, db: Database
) -> None:
    dropbox = Path(settings.ingest.dropbox)
    path = raw(dropbox, 2)
    (receipt,) = scan_once(settings, db)
    assert receipt.status is MessageStatus.ACCEPTED
    file = files(db)[path.name]
    assert file.url == path.as_uri()
    assert file.size == path.stat().st_size
    assert file.adler32 == f"{zlib.adler32(path.read_bytes()):08x}"
    assert (file.sequence, file.meta["trigger"]) == (2, "global_trigger")
    assert path.exists()  # the catalogue's URL points at it
    assert not Path(f"{path}.done").exists()
    assert (dropbox / ".runwatch" / "accepted" / f"{path.name}.done").exists()
    (message,) = messages(db)
    assert (message.source, message.origin) == ("dropbox", f"{path}.done")


def test_a_json_semaphore_gets_url_and_size_from_the_data_file(
    settings: Settings, db: Database
) -> None:
    dropbox = Path(settings.ingest.dropbox)
    path = raw(dropbox, 1, semaphore=None)
    body = {"name": path.name, "run": 1234, "stream": "Physics", "adler32": "0000abcd"}
    Path(f"{path}.done").write_text(json.dumps(body))
    (receipt,) = scan_once(settings, db)
    assert receipt.status is MessageStatus.ACCEPTED
    file = files(db)[path.name]
    assert (file.url, file.size, file.adler32) == (path.as_uri(), path.stat().st_size, "0000abcd")


def test_a_semaphore_without_its_data_file_is_rejected_and_kept(
    settings: Settings, db: Database
) -> None:
    dropbox = Path(settings.ingest.dropbox)
    (dropbox / "RUN.5.lost.rtraw.done").write_text('{"note": "lost"}')
    (receipt,) = scan_once(settings, db)
    assert receipt.status is MessageStatus.REJECTED
    assert receipt.reason == "data file RUN.5.lost.rtraw is missing"
    (message,) = messages(db)
    assert (message.body, message.file_name) == ('{"note": "lost"}', "RUN.5.lost.rtraw")
    rejected = dropbox / ".runwatch" / "rejected"
    assert (rejected / "RUN.5.lost.rtraw.done").read_text() == '{"note": "lost"}'
    assert (rejected / "RUN.5.lost.rtraw.reason").read_text() == f"{receipt.reason}\n"


def test_a_name_the_pattern_does_not_describe_is_rejected(settings: Settings, db: Database) -> None:
    dropbox = Path(settings.ingest.dropbox)
    (dropbox / "notes.txt").write_text("x")
    (dropbox / "notes.txt.done").write_text("")
    (receipt,) = scan_once(settings, db)
    assert receipt.status is MessageStatus.REJECTED
    assert (receipt.reason or "").startswith("file name 'notes.txt' does not match")
    assert files(db) == {}


def test_a_semaphore_read_again_after_a_crash_is_a_duplicate(
    settings: Settings, db: Database
) -> None:
    dropbox = Path(settings.ingest.dropbox)
    path = raw(dropbox, 3)
    scan_once(settings, db)
    Path(f"{path}.done").write_text("")  # as if the move had not happened
    (again,) = scan_once(settings, db)
    assert again.status is MessageStatus.DUPLICATE
    assert len(files(db)) == 1
    assert not Path(f"{path}.done").exists()


def test_the_watcher_picks_up_a_new_semaphore_and_wakes_the_scheduler(
    settings: Settings, db: Database
) -> None:
    settings.ingest.dropbox_rescan_seconds = 600  # only the observer can find it in time
    (source,) = [s for s in load_sources(settings, db) if s.name == "dropbox"]
    woken = threading.Event()
    source.start(woken.set)
    try:
        time.sleep(0.2)  # the first scan, of an empty dropbox
        assert not woken.is_set()
        path = raw(Path(settings.ingest.dropbox), 1, semaphore=None)
        tmp = Path(settings.ingest.dropbox) / "incoming.tmp"
        tmp.write_text("")
        tmp.rename(f"{path}.done")  # the atomic way a transfer system drops a semaphore
        wait_for(lambda: path.name in files(db))
        assert woken.wait(2)
        path2 = raw(Path(settings.ingest.dropbox), 2)  # written in place, then closed
        wait_for(lambda: path2.name in files(db))
    finally:
        source.stop()
    assert [m.status for m in messages(db)] == [MessageStatus.ACCEPTED] * 2


def test_semaphores_written_while_stopped_are_found_at_start_and_by_rescans(
    settings: Settings, db: Database
) -> None:
    settings.ingest.dropbox_rescan_seconds = 0.2
    dropbox = Path(settings.ingest.dropbox)
    first = DropboxSource(settings, db)
    first.start(lambda: None)
    first.stop()
    old = raw(dropbox, 1)
    past = time.time() - 60
    os.utime(f"{old}.done", (past, past))
    fresh = raw(dropbox, 2)
    woken: list[int] = []
    second = DropboxSource(settings, db)
    second.start(lambda: woken.append(1))
    try:
        wait_for(lambda: {old.name, fresh.name} <= set(files(db)))
    finally:
        second.stop()
    assert len(woken) == 2
    assert sorted(p.name for p in (dropbox / ".runwatch" / "accepted").iterdir()) == [
        f"{old.name}.done",
        f"{fresh.name}.done",
    ]


def test_the_dropbox_source_is_enabled_only_with_a_folder(settings: Settings, db: Database) -> None:
    assert DropboxSource.enabled(settings)
    settings.ingest.dropbox = ""
    assert [s.name for s in load_sources(settings, db)] == []
