"""End to end with ``[storage] output_root`` on a real XRootD server, over root:// and over
HTTPS (its WebDAV interface): every step's outputs go there, the runs complete, the
server has each output with its recorded adler32, and the web server's file view serves
them (and nothing it does not know)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import sqlalchemy as sa

from runwatch.config import Settings, StorageSettings
from runwatch.db import Database
from runwatch.storage.checksum import adler32_file
from runwatch.storage.stage import stage_out
from runwatch.storage.urls import is_root_url, split_root_url
from runwatch.web.app import create_app
from runwatch.web.files import file_link
from runwatch.workflow.models import TaskOutput
from tests.conftest import server_url
from tests.waiting import wait_for
from tests.web.test_queries import TestClient
from tests.workflow.engine import announce_run, running_scheduler, write_pipeline
from tests.workflow.test_engine import all_completed


@pytest.fixture(params=["xrootd", "xrootd_http"])
def storage(request: pytest.FixtureRequest) -> Iterator[StorageSettings]:
    """``[storage]`` with ``output_root`` a fresh folder on the test XRootD server, over
    root:// and over HTTPS (WebDAV); removed afterwards (the server exports a local
    folder)."""
    base = server_url(request.param)
    url = f"{base.rstrip('/')}/h1-engine-{uuid.uuid4().hex[:12]}/"
    ca_file = os.environ.get("RUNWATCH_TEST_XROOTD_CA_FILE", "")
    if request.param == "xrootd_http" and not ca_file:
        pytest.fail("RUNWATCH_TEST_XROOTD_CA_FILE is not set (services-up.sh --print-env)")
    yield StorageSettings(output_root=url, ca_file=ca_file, backoff_seconds=0.05)
    shutil.rmtree(on_server(url), ignore_errors=True)


def on_server(url: str) -> Path:
    """Where the test server keeps the file at ``url``."""
    if is_root_url(url):
        return Path(split_root_url(url)[1])
    return Path(unquote(urlsplit(url).path))


def test_outputs_go_to_the_output_root_by_configuration(
    db: Database, settings: Settings, tmp_path: Path, storage: StorageSettings
) -> None:
    output_root = storage.output_root
    settings = settings.model_copy(update={"storage": storage})
    write_pipeline(settings)
    announce_run(db, tmp_path / "raw", 100, 3)
    announce_run(db, tmp_path / "raw", 101, 2)
    with running_scheduler(settings, db):
        wait_for(lambda: all_completed(db, [100, 101]), 90, "both runs All Completed")
    with db.session() as s:
        outputs = s.scalars(sa.select(TaskOutput)).all()
        s.expunge_all()
    assert len(outputs) == 5 * 3 + 2
    for out in outputs:
        assert out.url.startswith(output_root), out.url
        path = on_server(out.url)
        assert adler32_file(path) == out.adler32 and path.stat().st_size == out.size
    assert not any(Path(settings.data_root).iterdir()), "nothing under data_root"
    merged = on_server(f"{output_root}Physics/100/merge/run100.merged")
    sizes = [int(x) for x in merged.read_text().split()]
    assert sizes == [len(f"run 100 file {s} payload\n") * (s + 1) for s in (1, 2, 3)]

    # The web server's file view: the output is linked, fetched into the cache, served.
    rec = next(o for o in outputs if o.name == "rec")
    link = file_link(settings)(rec.url)
    assert link is not None and link.startswith("/files/Physics/")
    with TestClient(create_app(settings, db)) as web:
        whole = web.get(link)
        assert whole.status_code == 200
        assert whole.content == on_server(rec.url).read_bytes()
        part = web.get(link, headers={"Range": "bytes=0-2"})
        assert (part.status_code, part.content) == (206, whole.content[:3])
        cached = list((Path(settings.work_root) / "cache").iterdir())
        assert [p.name.split("-")[0] for p in cached] == [rec.adler32]
        # A file on the server that no task recorded, and paths out of the root: 404.
        stray = on_server(output_root) / "Physics" / "100" / "rec" / "stray.rec"
        stray.write_text("not an output")
        for path in (
            "/files/Physics/100/rec/stray.rec",
            "/files/Physics/100/rec/%2e%2e/%2e%2e/%2e%2e/secret",
            "/files/Physics/100/rec",
            "/files/etc/passwd",
        ):
            assert web.get(path).status_code == 404, path
        # Re-produced on the server (a re-run not yet recorded): served again, current.
        again = tmp_path / "again.rec"
        again.write_text("PRODUCED AGAIN\n")
        folder, name = rec.url.rsplit("/", 1)
        stage_out(again, folder + "/", name, storage)
        again = web.get(link)
        assert (again.status_code, again.content) == (200, b"PRODUCED AGAIN\n")
