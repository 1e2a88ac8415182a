"""Shared fixtures: a real database per test, on SQLite and, where configured, on the real
PostgreSQL and MariaDB servers that .ci/run starts.

``RUNWATCH_TEST_POSTGRES_URL`` / ``RUNWATCH_TEST_MARIADB_URL`` / ``RUNWATCH_TEST_AMQP_URL``
name the servers (``SERVER_ENV`` also names the batch systems and XRootD). Without them
those tests skip, unless ``RUNWATCH_TEST_REQUIRE_SERVICES=1`` (as .ci/run sets) makes a
missing server a failure, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import typer

from runwatch import cli
from runwatch.config import CONFIG_ENV, IngestSettings, SchedulerSettings, Settings
from runwatch.db import Base, Database, import_all_models

SERVER_ENV = {
    "postgres": "RUNWATCH_TEST_POSTGRES_URL",
    "mariadb": "RUNWATCH_TEST_MARIADB_URL",
    "amqp": "RUNWATCH_TEST_AMQP_URL",
    # The batch systems and storage of issue 6 (scripts/services/*.sh print these):
    "htcondor": "RUNWATCH_TEST_CONDOR_CONFIG",  # the pool's client condor_config file
    "slurm": "RUNWATCH_TEST_SLURM_PARTITION",  # a partition of the single-node Slurm
    "xrootd": "RUNWATCH_TEST_XROOTD_URL",  # root://host:port//writable/folder/
    "xrootd_http": "RUNWATCH_TEST_XROOTD_HTTP_URL",  # https:// of the same folder (XrdHttp)
}

SHARED = Path(__file__).resolve().parents[2] / "shared"


def server_url(kind: str) -> str:
    """The URL of a test server, or skip (fail when services are required)."""
    url = os.environ.get(SERVER_ENV[kind], "")
    if not url:
        if os.environ.get("RUNWATCH_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{SERVER_ENV[kind]} is not set but services are required")
        pytest.skip(f"{SERVER_ENV[kind]} not set")
    return url


def shared_path(*parts: str) -> Path:
    """A file from ../shared (reference data written by others), or skip if absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture(autouse=True, scope="session")
def _local_runtime_folders_removed() -> Iterator[None]:
    """The local executor's runtime folders (in /dev/shm, one per work root) that the
    tests made are removed at the end: each test has a work root of its own."""
    shm = Path("/dev/shm")
    pattern = f"runwatch-{os.getuid()}-*"
    before = set(shm.glob(pattern)) if shm.is_dir() else set()
    yield
    for folder in set(shm.glob(pattern)) - before if shm.is_dir() else ():
        shutil.rmtree(folder, ignore_errors=True)


def _reset_server_schema(url: str) -> None:
    """Drop every table (ours and Alembic's) so each test starts from an empty database."""
    import_all_models()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


def _open(url: str) -> Iterator[Database]:
    if not url.startswith("sqlite"):
        _reset_server_schema(url)
    db = Database(url)
    db.upgrade()
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runwatch.db'}"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated SQLite database in the test's own folder."""
    yield from _open(db_url)


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of each of the three databases in turn (servers reset before use)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runwatch.db'}"
    url = server_url(request.param)
    return url


@pytest.fixture
def any_db(any_db_url: str) -> Iterator[Database]:
    """A migrated, empty database: SQLite, PostgreSQL and MariaDB in turn."""
    yield from _open(any_db_url)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    """Settings for a deployment inside the test's folder (fast retries for tests)."""
    for sub in ("data", "work", "pipelines", "dropbox"):
        (tmp_path / sub).mkdir(exist_ok=True)
    return Settings.model_construct(
        database_url=db_url,
        data_root=str(tmp_path / "data"),
        work_root=str(tmp_path / "work"),
        pipelines=str(tmp_path / "pipelines"),
        scheduler=SchedulerSettings(
            slots=2,
            backoff_seconds=0.05,
            backoff_max_seconds=0.2,
            tick_seconds=0.2,
            heartbeat_timeout_seconds=10,
            submit_grace_seconds=10,
            lease_seconds=3,
        ),
        ingest=IngestSettings(dropbox=str(tmp_path / "dropbox"), api_tokens=["test-token"]),
    )


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The ``runwatch`` command line, for CliRunner."""
    return cli.build()


@pytest.fixture
def deployment(tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch) -> Path:
    """runwatch.toml in tmp_path naming the (migrated) database of the ``db`` fixture."""
    (tmp_path / "runwatch.toml").write_text('database_url = "sqlite:///runwatch.db"\n')
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "runwatch.toml"))
    monkeypatch.setenv("COLUMNS", "250")
    return tmp_path
