"""GET /api/v1/runs/{number}/pmt on the seeded deployment, its PMT status made the size of
JUNO's detector (17,612 PMTs) so that the JUNO positions apply."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import Run
from runwatch.config import Settings
from runwatch.db import Database
from runwatch.dqm.models import DqmPmtStatus
from runwatch.dqm.pmtstatus import CLASSES, CODES, PmtClass
from runwatch.experiments.juno.geometry import load_geometry
from runwatch.web.app import create_app
from tests.web.authkit import TestClient
from tests.web.test_queries import seed

N = 17_612
DEAD = (3, 500, 17_000)
HOT = (42, 9_999)


def _juno_sized(db: Database) -> np.ndarray:
    """Runs 100 (good) and 101 get 17,612-PMT statuses; 101 with DEAD and HOT PMTs.
    Returns run 101's fractions."""
    rng = np.random.default_rng(5)
    fraction = rng.uniform(0.08, 0.12, N).astype(np.float32)
    fraction[list(DEAD)] = 0.0
    fraction[list(HOT)] = 1.0
    fraction[7] = 0.03  # between the dead cut and the normal band: other
    fraction[8] = np.nan  # never read out: unknown
    classes = np.full(N, CODES[PmtClass.NORMAL], np.int8)
    classes[list(DEAD)] = CODES[PmtClass.DEAD]
    classes[list(HOT)] = CODES[PmtClass.HOT]
    classes[7], classes[8] = CODES[PmtClass.OTHER], CODES[PmtClass.UNKNOWN]
    with db.session() as session:
        ids = {n: i for n, i in session.execute(sa.select(Run.number, Run.id))}
        good = session.get_one(DqmPmtStatus, ids[100])
        good.fractions = np.full(N, 0.1, np.float32).tobytes()
        good.classes = np.full(N, CODES[PmtClass.NORMAL], np.int8).tobytes()
        bad = session.get_one(DqmPmtStatus, ids[101])
        bad.fractions, bad.classes = fraction.tobytes(), classes.tobytes()
        bad.counts = {cls.value: int((classes == CODES[cls]).sum()) for cls in PmtClass}
    return fraction.astype(np.float64)


def test_the_map_on_each_database(any_db: Database, tmp_path: Path) -> None:
    """The arrays stored as blobs come back whole from all three databases."""
    settings = Settings.model_construct(
        data_root=str(tmp_path / "data"), work_root=str(tmp_path / "work")
    )
    seed(any_db, settings)
    fraction = _juno_sized(any_db)
    with TestClient(create_app(settings, any_db)) as client:
        body = client.get("/api/v1/runs/101/pmt").json()
    assert body["counts"]["dead"] == len(DEAD) and body["changed"]["previous_run"] == 100
    assert body["fraction"][42] == 1.0 and abs(body["fraction"][0] - fraction[0]) < 6e-6


@pytest.fixture
def api(db: Database, settings: Settings) -> Iterator[tuple[TestClient, np.ndarray]]:
    seed(db, settings)
    fraction = _juno_sized(db)
    with TestClient(create_app(settings, db)) as client:
        yield client, fraction


def test_the_map_data_of_a_run(api: tuple[TestClient, np.ndarray]) -> None:
    client, fraction = api
    response = client.get("/api/v1/runs/101/pmt")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["run"], body["n_pmt"], body["detector"], body["problem"]) == (101, N, "juno", None)
    assert body["classes"] == [cls.value for cls in CLASSES]
    codes = np.array(body["class"])
    names = np.array(body["classes"])[codes]
    assert sorted(np.flatnonzero(names == "dead")) == list(DEAD)
    assert sorted(np.flatnonzero(names == "hot")) == list(HOT)
    assert (names[7], names[8]) == ("other", "unknown")
    assert body["counts"] == {"normal": N - 7, "other": 1, "dead": 3, "hot": 2, "unknown": 1}
    # Fractions to 5 decimals, NaN as null; the JUNO angles to 0.01 degree, by PMT id.
    assert body["fraction"][8] is None
    sent = np.array([np.nan if f is None else f for f in body["fraction"]])
    assert np.allclose(sent, fraction, atol=6e-6, equal_nan=True)
    geometry = load_geometry()
    assert np.allclose(body["theta"], geometry.theta_deg, atol=0.006)
    assert np.allclose(body["phi"], geometry.phi_deg, atol=0.006)
    assert body["cuts"]["dead"] == 0.01 and body["cuts"]["normal_high"] == 0.15
    # Changes since the previous good run (100, all normal): the 7 non-normal PMTs.
    changed = body["changed"]
    assert changed["previous_run"] == 100
    assert changed["ids"] == sorted([*DEAD, *HOT, 7, 8])
    assert {body["classes"][c] for c in changed["old"]} == {"normal"}


def test_other_cuts_reclassify_on_the_server(api: tuple[TestClient, np.ndarray]) -> None:
    client, fraction = api
    body = client.get("/api/v1/runs/101/pmt", params={"dead": 0.09, "normal_low": 0.1}).json()
    codes = np.array(body["class"])
    with np.errstate(invalid="ignore"):
        expected_dead = np.flatnonzero(fraction < 0.09)
    assert np.array_equal(np.flatnonzero(codes == CODES[PmtClass.DEAD]), expected_dead)
    assert body["counts"]["dead"] == len(expected_dead) > 1000
    assert body["cuts"]["dead"] == 0.09 and body["cuts"]["hot"] == 0.99  # the rest: the run's
    assert body["run_cuts"]["dead"] == 0.01
    refused = client.get("/api/v1/runs/101/pmt", params={"dead": 0.5, "normal_low": 0.4})
    assert refused.status_code == 422
    assert "dead (0.5) must be < normal_low (0.4)" in refused.json()["detail"]
    assert client.get("/api/v1/runs/101/pmt", params={"hot": 2}).status_code == 422


def test_etag_gzip_and_missing_runs(api: tuple[TestClient, np.ndarray]) -> None:
    client, _ = api
    first = client.get("/api/v1/runs/101/pmt", headers={"Accept-Encoding": "identity"})
    etag = first.headers["etag"]
    again = client.get("/api/v1/runs/101/pmt", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = client.get("/api/v1/runs/101/pmt", params={"dead": 0.02})
    assert other.headers["etag"] != etag
    assert client.get("/api/v1/runs/100/pmt").headers["etag"] != etag
    raw = client.get("/api/v1/runs/101/pmt", headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.json() == first.json()  # httpx decodes it
    assert len(gzip.compress(first.content)) < len(first.content) / 2
    assert client.get("/api/v1/runs/999/pmt").status_code == 404
    no_status = client.get("/api/v1/runs/104/pmt")
    assert no_status.status_code == 404 and "no PMT status" in no_status.json()["detail"]


@pytest.mark.parametrize(
    ("detector", "problem"),
    [("", "no detector configured"), ("atlantis", "unknown detector 'atlantis'")],
)
def test_without_positions_the_map_says_why(
    db: Database, settings: Settings, detector: str, problem: str
) -> None:
    seed(db, settings)
    settings.web = settings.web.model_copy(update={"detector": detector})
    with TestClient(create_app(settings, db)) as client:
        body = client.get("/api/v1/runs/101/pmt").json()
    assert body["theta"] is None and body["phi"] is None and problem in body["problem"]
    assert len(body["class"]) == 50  # the seeded statuses are not JUNO-sized


def test_the_juno_positions_do_not_fit_another_detector_size(
    db: Database, settings: Settings
) -> None:
    seed(db, settings)  # 50 PMTs
    with TestClient(create_app(settings, db)) as client:
        body = client.get("/api/v1/runs/101/pmt").json()
    assert body["theta"] is None and "17612 PMTs, the run's status 50" in body["problem"]


def test_login_only_sites_refuse_anonymous_readers(db: Database, settings: Settings) -> None:
    seed(db, settings)
    settings.web = settings.web.model_copy(update={"public_read": False})
    with TestClient(create_app(settings, db)) as client:
        assert client.get("/api/v1/runs/101/pmt").status_code == 401
