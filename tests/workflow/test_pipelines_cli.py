"""``runwatch pipelines check | list | show`` on real files and a real SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from runwatch import cli
from runwatch.config import CONFIG_ENV
from runwatch.db import Database
from runwatch.examples import example_pipelines
from runwatch.workflow.pipeline_file import load_pipeline_folder
from runwatch.workflow.revisions import record_revisions

GOOD = """\
name: quick
streams: [Physics]
steps:
  hist:
    command: "wc -c < {{ inputs[0] | quote }} > {{ outputs.h }}"
    outputs: {h: "{{ file.stem }}.h"}
    memory: 2GB
    timeout: 1h30m
  merge:
    scope: run
    needs: [hist]
    batch: 5
    command: "cat {% for i in inputs %}{{ i | quote }} {% endfor %}> {{ outputs.m }}"
    outputs: {m: "run{{ run.number }}.m"}
"""
BROKEN = GOOD.replace("name: quick", "name: broken").replace("    memory: 2GB\n", "    memry: 2\n")


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return cli.build()


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runwatch.toml in tmp_path with the example pipeline and a file of our own."""
    (tmp_path / "runwatch.toml").write_text(
        'database_url = "sqlite:///runwatch.db"\npipelines = "pipelines"\n', encoding="utf-8"
    )
    folder = tmp_path / "pipelines"
    folder.mkdir()
    for example in example_pipelines():
        (folder / example.name).write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "quick.yaml").write_text(GOOD, encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "runwatch.toml"))
    monkeypatch.setenv("COLUMNS", "200")  # rich tables unwrapped, whatever the terminal
    return tmp_path


def test_check_passes_the_configured_folder(app: typer.Typer, deployment: Path) -> None:
    result = CliRunner().invoke(app, ["pipelines", "check"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines == [
        f"OK    {deployment / 'pipelines' / 'keepup.yaml'}: pipeline keepup, 4 steps, "
        "streams Physics, Calib",
        f"OK    {deployment / 'pipelines' / 'quick.yaml'}: pipeline quick, 2 steps, "
        "streams Physics",
    ]


def test_check_reports_each_broken_file_and_exits_1(app: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    (tmp_path / "quick.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "again.yml").write_text(GOOD, encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [
            "pipelines",
            "check",
            str(tmp_path / "broken.yaml"),
            str(tmp_path / "quick.yaml"),
            str(tmp_path / "again.yml"),
            str(tmp_path / "absent.yaml"),
        ],
    )
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == f"OK    {tmp_path / 'quick.yaml'}: pipeline quick, 2 steps, streams Physics"
    assert lines[1] == f"ERROR {tmp_path / 'absent.yaml'}: no such file or folder"
    assert lines[2].startswith(
        f"ERROR {tmp_path / 'broken.yaml'}:7: steps.hist: unknown key 'memry' "
        "(did you mean 'memory'?)"
    )
    assert lines[3] == (
        f"ERROR {tmp_path / 'again.yml'}:1: name: pipeline 'quick' is already defined in "
        f"{tmp_path / 'quick.yaml'}"
    )
    assert len(lines) == 4


def test_check_of_an_empty_folder_fails(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pipelines", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert "no *.yaml or *.yml files" in result.output


def test_list_shows_pipelines_with_their_stored_revisions(
    app: typer.Typer, deployment: Path, db: Database
) -> None:
    (deployment / "pipelines" / "zz-broken.yaml").write_text(BROKEN, encoding="utf-8")
    loaded, _ = load_pipeline_folder(deployment / "pipelines")
    with db.session() as session:
        record_revisions(session, loaded)
    edited = GOOD.replace("batch: 5", "batch: 6")
    (deployment / "pipelines" / "quick.yaml").write_text(edited, encoding="utf-8")
    loaded, _ = load_pipeline_folder(deployment / "pipelines")
    with db.session() as session:
        record_revisions(session, loaded)

    result = CliRunner().invoke(app, ["pipelines", "list"])
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1:-1] for line in result.output.splitlines() if line.count("│") == 6]
    cells = [[c.strip() for c in row] for row in rows]
    assert cells == [
        ["keepup", "keepup.yaml", "Physics, Calib", "calib → rec → hist → merge", "1"],
        ["quick", "quick.yaml", "Physics", "hist → merge", "2"],
    ]
    assert "ERROR" in result.output and "zz-broken.yaml:7: steps.hist" in result.output


def test_list_without_a_database_says_how_to_make_one(app: typer.Typer, deployment: Path) -> None:
    result = CliRunner().invoke(app, ["pipelines", "list"])
    assert result.exit_code == 0, result.output
    assert "runwatch db upgrade" in result.output
    assert "│ quick " in result.output and "│ ?" in result.output


def test_show_gives_the_steps_table(app: typer.Typer, deployment: Path) -> None:
    live = GOOD.replace("batch: 5", "every: 90s\n    dqm: merge")
    (deployment / "pipelines" / "live.yaml").write_text(live.replace("quick", "live"), "utf-8")
    for name, merge_row in (
        ("quick", ["merge", "run", "hist", "1", "-", "2", "-", "m", "every 5 files", "-"]),
        ("live", ["merge", "run", "hist", "1", "-", "2", "-", "m", "every 1m30s", "merge"]),
    ):
        result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["pipelines", "show", name])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if "│" in line]
        assert cells == [
            ["hist", "file", "-", "1", "2048 MB", "2", "1h30m", "h", "-", "-"],
            merge_row,
        ], name
    assert "streams: Physics" in result.output


def test_show_of_an_unknown_pipeline_fails(app: typer.Typer, deployment: Path) -> None:
    result = CliRunner().invoke(app, ["pipelines", "show", "nope"])
    assert result.exit_code == 1
    assert "no valid pipeline named 'nope'" in result.output
    assert "keepup, quick" in result.output


@pytest.mark.parametrize("args", [[], ["check"], ["list"], ["show"]])
def test_every_pipelines_command_has_help(app: typer.Typer, args: list[str]) -> None:
    result = CliRunner().invoke(app, ["pipelines", *args, "--help"])
    assert result.exit_code == 0
    assert "Usage: runwatch pipelines" in result.output or "Usage: root pipelines" in result.output
