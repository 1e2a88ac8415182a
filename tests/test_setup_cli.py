"""``runwatch init`` makes a working deployment; ``runwatch db`` migrates and reports."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import typer
from alembic.script import ScriptDirectory
from pydantic import BaseModel
from typer.testing import CliRunner

from runwatch import cli
from runwatch.config import (
    CONFIG_ENV,
    AlarmSettings,
    DqmSettings,
    IngestSettings,
    SchedulerSettings,
    Settings,
    WebSettings,
    load_settings,
)
from runwatch.db import alembic_config
from runwatch.setup_cli import config_text, toml_value

# The newest migration: these tests hold for whichever it is.
SECTIONS = (SchedulerSettings, IngestSettings, DqmSettings, AlarmSettings, WebSettings)
NEWEST = ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return cli.build()


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def _init(app: typer.Typer, folder: Path, *extra: str) -> str:
    result = CliRunner().invoke(app, ["init", str(folder), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_init_makes_a_deployment_whose_settings_load(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "keepup"
    output = _init(app, folder)
    assert f"cd {folder}" in output and "runwatch scheduler" in output
    for name in ("data", "work", "dropbox", "pipelines"):
        assert (folder / name).is_dir()
    assert (folder / "pipelines" / "keepup.yaml").is_file()
    assert (folder / "runwatch.db").is_file()

    monkeypatch.setenv(CONFIG_ENV, str(folder / "runwatch.toml"))
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    root = folder.resolve()
    assert settings.database_url == f"sqlite:///{root / 'runwatch.db'}"
    assert (settings.data_root, settings.work_root, settings.pipelines) == (
        str(root / "data"),
        str(root / "work"),
        str(root / "pipelines"),
    )
    assert settings.ingest.dropbox == str(root / "dropbox")
    (token,) = settings.ingest.api_tokens
    assert len(token) >= 40
    assert settings.scheduler == SchedulerSettings()
    defaults = IngestSettings().model_dump(exclude={"dropbox", "api_tokens"})
    assert settings.ingest.model_dump(exclude={"dropbox", "api_tokens"}) == defaults

    check = CliRunner().invoke(app, ["pipelines", "check"])
    assert check.exit_code == 0, check.output
    assert check.output.startswith(f"OK    {root / 'pipelines' / 'keepup.yaml'}: pipeline keepup")

    current = CliRunner().invoke(app, ["db", "current"])
    assert current.exit_code == 0, current.output
    assert current.output.strip() == f"sqlite:///{root / 'runwatch.db'}: {NEWEST} (newest)"


def test_config_file_comments_every_setting(tmp_path: Path) -> None:
    text = config_text({})
    for model in (Settings, *SECTIONS):
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                continue  # a table: its settings are checked one by one
            assert field.description, name
            assert f"# {field.description.split()[0]}" in text, name
    assert "# Environment: RUNWATCH_SCHEDULER__SLOTS\nslots = 0\n" in text
    assert set(tomllib.loads(text)) == set(Settings.model_fields)
    (tmp_path / "runwatch.toml").write_text(text, encoding="utf-8")
    assert tomllib.loads(text)["ingest"]["name_pattern"] == IngestSettings().name_pattern


@pytest.mark.parametrize(
    "value",
    ["it's", "back\\slash", "two\nlines", 0.05, True, ["a", "b'"], {"kind": "smtp", "to": ["a@b"]}],
)
def test_toml_values_read_back(value: object) -> None:
    assert tomllib.loads(f"key = {toml_value(value)}") == {"key": value}


def test_init_refuses_to_overwrite_without_force(app: typer.Typer, tmp_path: Path) -> None:
    _init(app, tmp_path)
    config = tmp_path / "runwatch.toml"
    first = config.read_text()
    pipeline = tmp_path / "pipelines" / "keepup.yaml"
    pipeline.write_text(pipeline.read_text().replace("batch: 2", "batch: 3"))

    result = CliRunner().invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 1
    assert "already exists" in result.output and "--force" in result.output
    assert config.read_text() == first

    output = _init(app, tmp_path, "--force")
    assert config.read_text() != first  # a fresh API token
    assert f"kept {pipeline}" in output
    assert "batch: 3" in pipeline.read_text()  # the operator's edit survives


def test_db_upgrade_is_idempotent(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runwatch.toml").write_text('database_url = "sqlite:///rw.db"\n')
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "runwatch.toml"))
    url = f"sqlite:///{(tmp_path / 'rw.db').resolve()}"

    current = CliRunner().invoke(app, ["db", "current"])
    assert current.exit_code == 0, current.output
    assert current.output.strip() == f"{url}: empty (newest is {NEWEST}: run `runwatch db upgrade`)"

    first = CliRunner().invoke(app, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert first.output.strip() == f"{url}: upgraded from empty to {NEWEST}"
    again = CliRunner().invoke(app, ["db", "upgrade"])
    assert again.exit_code == 0, again.output
    assert again.output.strip() == f"{url}: already at {NEWEST} (newest)"

    current = CliRunner().invoke(app, ["db", "current"])
    assert current.output.strip() == f"{url}: {NEWEST} (newest)"


@pytest.mark.parametrize("args", [["init"], ["db"], ["db", "upgrade"], ["db", "current"]])
def test_setup_commands_have_help(app: typer.Typer, args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0
    assert f"{' '.join(args)}" in result.output
