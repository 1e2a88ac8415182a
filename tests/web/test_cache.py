"""The short cache of recent-runs pages: reused for its seconds, computed once by one
request while others wait, bounded, and off at 0."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import Run
from runwatch.config import Settings
from runwatch.db import Database
from runwatch.web.app import create_app
from runwatch.web.cache import ShortCache
from tests.waiting import wait_for
from tests.web.authkit import build_site, login
from tests.web.test_queries import TestClient, seed


def test_an_answer_is_reused_until_it_expires() -> None:
    cache = ShortCache(0.3)
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert [cache.get("page 1", compute) for _ in range(5)] == [1] * 5
    assert cache.get("page 2", compute) == 2  # another question, another answer
    time.sleep(0.35)
    assert cache.get("page 1", compute) == 3


def test_zero_seconds_computes_every_time() -> None:
    cache = ShortCache(0)
    calls: list[int] = []
    for _ in range(3):
        cache.get("k", lambda: calls.append(1))
    assert len(calls) == 3


def test_concurrent_askers_wait_for_one_computation() -> None:
    cache = ShortCache(10)
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        started.set()
        release.wait(5)
        return "answer"

    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda: answers.append(cache.get("k", slow))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    assert started.wait(5)
    time.sleep(0.1)  # the others are waiting on the key now
    release.set()
    for thread in threads:
        thread.join(5)
    assert answers == ["answer"] * 8 and len(calls) == 1


def test_a_failed_computation_is_not_kept() -> None:
    cache = ShortCache(10)

    def broken() -> int:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        cache.get("k", broken)
    assert cache.get("k", lambda: 7) == 7


def test_many_distinct_questions_stay_bounded() -> None:
    cache = ShortCache(60, max_entries=10)
    for n in range(100):
        cache.get(n, lambda n=n: n)
    assert len(cache._entries) <= 10
    assert cache.get(99, lambda: -1) == 99  # the newest answers are kept


@pytest.fixture
def api(db: Database, settings: Settings) -> Iterator[TestClient]:
    seed(db, settings)
    settings.web.cache_seconds = 0.5
    with TestClient(create_app(settings, db)) as client:
        yield client


def test_the_recent_runs_page_and_api_show_a_change_within_the_cache_seconds(
    api: TestClient, db: Database
) -> None:
    def numbers() -> list[int]:
        return [r["number"] for r in api.get("/api/v1/runs").json()["runs"]]

    before = numbers()
    with db.session() as session:
        session.execute(sa.update(Run).where(Run.number == before[0]).values(number=999))
    assert numbers() == before  # the same answer, from the cache
    wait_for(lambda: 999 in numbers(), 5, "the renumbered run on the API")
    wait_for(lambda: ">999<" in api.get("/").text, 5, "the renumbered run on the page")


def test_the_shared_page_is_for_anonymous_visitors_only(tmp_path: Path, db: Database) -> None:
    """A logged-in shifter's page names them and carries their CSRF token: it is rendered
    for them, never taken from (or put into) the anonymous visitors' shared page."""
    site = build_site(tmp_path, db, cache_seconds=60)
    with site.client() as client:
        anonymous = client.get("/").text
        assert login(client, "shifter").status_code == 303
        mine = client.get("/").text
        assert "shifter (shifter)" in mine and "shifter (shifter)" not in anonymous
        csrf = mine.split('name="csrf_token" value="')[1].split('"')[0]
        assert csrf
    with site.client() as stranger:
        again = stranger.get("/").text
    assert again == anonymous and csrf not in again
