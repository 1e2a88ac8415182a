"""DQM with the merged and per-file histogram files on a real XRootD server (``[storage]
output_root``): live merges count each file once (inputs keyed by URL), the merges are
registered and the run judged from local copies in the cache, and a merged file replaced
on the server is seen as replaced."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import RunStatus
from runwatch.config import Settings, StorageSettings
from runwatch.db import Database, utcnow
from runwatch.dqm.merge import META_FORMAT
from runwatch.dqm.models import DqmHistogram, DqmMerge, DqmRunQuality
from runwatch.dqm.service import register_merges
from runwatch.dqm.store import read_merged_file
from runwatch.dqm.verdict import Verdict
from runwatch.storage.cache import output_cache
from runwatch.storage.checksum import adler32_file
from runwatch.storage.stage import stage_out
from runwatch.storage.urls import join_url, split_root_url
from runwatch.web.pages import merged_meta
from runwatch.workflow.models import Task, TaskOutput
from runwatch.workflow.revisions import RevisionCache
from tests.conftest import server_url
from tests.dqm.dbruns import dqm_settings
from tests.waiting import wait_for
from tests.workflow.engine import run_statuses, running_scheduler, write_pipeline
from tests.workflow.test_live_merge import LIVE_MERGE, RUN, ArrivingRun


def registered(db: Database, settings: Settings, revisions: RevisionCache) -> list[int]:
    with db.session() as session:
        return register_merges(session, settings, revisions, utcnow())


def live_merges_past(run: ArrivingRun, count: int) -> bool:
    return run.live_merges_done() >= count


@pytest.fixture
def output_root() -> Iterator[str]:
    url = join_url(server_url("xrootd"), f"h1-dqm-{uuid.uuid4().hex[:12]}") + "/"
    yield url
    shutil.rmtree(split_root_url(url)[1], ignore_errors=True)


def test_merges_on_root_are_registered_and_judged_each_file_once(
    db: Database, settings: Settings, tmp_path: Path, output_root: str
) -> None:
    write_pipeline(settings, LIVE_MERGE.replace("PYTHON", sys.executable), "live.yaml")
    checks = tmp_path / "checks.yaml"
    checks.write_text("histograms:\n  trigger:\n    seen: {kind: entries, bad: {min: 1}}\n")
    storage = StorageSettings(output_root=output_root, backoff_seconds=0.05)
    settings = dqm_settings(settings, checks=str(checks)).model_copy(update={"storage": storage})
    register = partial(registered, db, settings, RevisionCache())
    run = ArrivingRun(db, tmp_path / "raw")
    with running_scheduler(settings, db):
        for batch, end_of_run in ((1, False), (2, False), (3, True)):
            run.send(2, end_of_run=end_of_run)
            if not end_of_run:
                wait_for(partial(live_merges_past, run, batch), 60, f"live merge {batch}")
            if batch == 1:
                assert register() != [], "the first live merge, read from root://"
        wait_for(lambda: run_statuses(db).get(RUN) is RunStatus.ALL_COMPLETED, 90, "the run")
    assert register() != []
    with db.session() as session:
        final = session.scalars(sa.select(DqmMerge).order_by(DqmMerge.task_id)).all()[-1]
        assert final.url.startswith(output_root)
        # Six files, each once, though every merge staged its inputs into its own folder.
        assert (final.final, final.errors, final.files_included, final.files_total) == (
            True,
            [],
            6,
            6,
        )
        hist_urls = set(
            session.scalars(sa.select(TaskOutput.url).join(Task).where(Task.step == "hist")).all()
        )
        assert {c["key"] for c in final.contributions} == hist_urls
        quality = session.get_one(DqmRunQuality, final.run_id)
        assert (quality.final, quality.merge_id, quality.verdict) == (True, final.id, Verdict.GOOD)
        # Every hist task's five histograms are in the store (contributions found by URL).
        rows = session.scalars(sa.select(DqmHistogram).where(DqmHistogram.merge_id.is_(None)))
        per_url: dict[str, int] = {}
        for row in rows:
            per_url[row.url] = per_url.get(row.url, 0) + 1
        assert per_url == {url: 5 for url in hist_urls}
        merged_output = session.scalars(
            sa.select(TaskOutput).where(TaskOutput.task_id == final.task_id)
        ).one()
        session.expunge_all()

    # Read through the cache: a copy named by the adler32, read again from it.
    cache = output_cache(settings)
    merged = read_merged_file(merged_output.url, merged_output.adler32, cache)
    assert merged.readable and len(merged.contributions) == 6
    # (the first live merge, registered while the run went on, has its copy too)
    copies = [p for p in cache.folder.iterdir() if p.name.startswith(merged_output.adler32)]
    assert len(copies) == 1 and adler32_file(copies[0]) == merged_output.adler32
    # The run page places histograms by the merged file's own metadata, read the same way.
    meta = merged_meta(merged_output.url, cache)
    assert meta is not None and meta["format"] == META_FORMAT

    # Replaced on the server (the next merge of a pipeline keeping one file per run):
    # the recorded merge is no longer there.
    # Stored through the server, as a merge stores it: its checksum cache follows.
    on_server = Path(split_root_url(merged_output.url)[1])
    again = tmp_path / "again.root"
    again.write_bytes(on_server.read_bytes() + b"\0")
    folder, name = merged_output.url.rsplit("/", 1)
    stage_out(again, folder + "/", name, settings.storage)
    replaced = read_merged_file(merged_output.url, merged_output.adler32, cache)
    assert not replaced.readable
    assert "replaced by a later merge" in replaced.errors[0]["reason"]
    # A merged file that is gone is unreadable, with the server's reason.
    on_server.unlink()
    gone = read_merged_file(merged_output.url, None, cache)
    assert not gone.readable and "no such file" in gone.errors[0]["reason"]


def test_the_cache_keeps_within_its_size_oldest_out_first(tmp_path: Path, output_root: str) -> None:
    from runwatch.storage.cache import OutputCache

    policy = StorageSettings(backoff_seconds=0.01)
    urls = []
    for i in range(4):
        source = tmp_path / f"f{i}.root"
        source.write_bytes(bytes([i]) * 400_000)
        urls.append(stage_out(source, output_root, source.name, policy)[0])
    cache = OutputCache(tmp_path / "cache", 1_000_000, policy)
    for url in urls:
        cache.local_path(url)
    names = sorted(p.name.rsplit("-", 1)[-1] for p in cache.folder.iterdir())
    assert names == ["f2.root", "f3.root"], "two of 400 kB fit in 1 MB; the oldest went"
    # A hit is a use: f2 read again, then f0 fetched: f3 is now the oldest and goes.
    cache.local_path(urls[2])
    cache.local_path(urls[0])
    names = sorted(p.name.rsplit("-", 1)[-1] for p in cache.folder.iterdir())
    assert names == ["f0.root", "f2.root"]
    # A file:// output is read in place, never copied.
    local = tmp_path / "local.root"
    local.write_bytes(b"x")
    assert cache.local_path(local.as_uri()) == local
