"""The generated references (docs/cli.md, docs/configuration.md) match the code, and every
command, option and setting is documented."""

from __future__ import annotations

import enum
import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import typer
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from runwatch import cli, config

ROOT = Path(__file__).resolve().parents[1]


def _load_gen_docs() -> ModuleType:
    # scripts/ is not a package: load the generator from its file.
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()


def test_generated_docs_are_up_to_date() -> None:
    files = gen_docs.generated()
    stale = [str(path.relative_to(ROOT)) for path in gen_docs.stale(files)]
    assert not stale, f"{', '.join(stale)} out of date: run `python scripts/gen_docs.py`"


def test_every_setting_has_a_description() -> None:
    sections = gen_docs.settings_sections(config.Settings)
    assert gen_docs.missing_setting_descriptions(sections) == [], (
        "add Field(description=...) to these settings in runwatch/config.py"
    )


def test_every_command_option_and_argument_has_help() -> None:
    commands = gen_docs.cli_commands(cli.build())
    assert gen_docs.missing_command_help(commands) == [], (
        "add a docstring (commands) or help= (options, arguments) to these"
    )


def test_example_file_in_configuration_doc_gives_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = gen_docs.render_configuration(gen_docs.settings_sections(config.Settings), "")
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert example is not None
    (tmp_path / "runwatch.toml").write_text(example.group(1), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    from_file = config.Settings()  # reads ./runwatch.toml; extra="forbid" rejects bad keys
    (tmp_path / "runwatch.toml").unlink()
    assert from_file.model_dump() == config.Settings().model_dump()
    keys = tomllib.loads(example.group(1))
    assert set(keys) == set(config.Settings.model_fields)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


def _small_app() -> typer.Typer:
    app = typer.Typer(help="Top.", add_completion=False)
    jobs = typer.Typer(help="Job commands.")
    app.add_typer(jobs, name="jobs")

    @app.command("serve")
    def serve(
        port: int = typer.Option(8000, "--port", "-p", help="Port to listen on."),
        colour: list[Colour] = typer.Option([], "--colour", help="Colours."),
        reload: bool = typer.Option(False, "--reload/--no-reload", help="Reload."),
        once: bool = typer.Option(False, "--once", help="Once."),
        name: str = typer.Option(..., "--name", help="Name."),
    ) -> None:
        """Serve the thing.

        A second paragraph.
        """

    @jobs.command("kill")
    def kill(job_ids: list[int] = typer.Argument(..., help="Job ids.")) -> None:
        """Kill jobs."""

    @jobs.command("undocumented")
    def undocumented(path: str = typer.Argument("x")) -> None:
        pass

    return app


def test_cli_reference_lists_every_command_with_its_parameters() -> None:
    commands = gen_docs.cli_commands(_small_app(), "tool")
    assert [c.path for c in commands] == [
        "tool",
        "tool jobs",
        "tool jobs kill",
        "tool jobs undocumented",
        "tool serve",
    ]
    serve = commands[-1]
    assert serve.help == "Serve the thing.\n\nA second paragraph."
    usages = {p.usage: p for p in serve.params}
    assert set(usages) == {
        "--port, -p INTEGER",
        "--colour [red|blue]",
        "--reload / --no-reload",
        "--once",
        "--name TEXT",
    }
    assert usages["--port, -p INTEGER"].default == "8000"
    assert usages["--colour [red|blue]"].repeatable
    assert usages["--reload / --no-reload"].default == "--no-reload"
    assert usages["--once"].default is None
    assert usages["--name TEXT"].required
    kill = commands[2]
    assert [(p.usage, p.required, p.help) for p in kill.params] == [
        ("JOB_IDS...", True, "Job ids.")
    ]

    text = gen_docs.render_cli(commands)
    assert "## `tool jobs kill`\n\nKill jobs.\n\n```\ntool jobs kill JOB_IDS...\n```" in text
    assert "- [`tool serve`](#tool-serve): Serve the thing.\n" in text
    assert "- `--port, -p INTEGER`: Port to listen on. (default: `8000`)" in text
    assert "- `--name TEXT`: Name. (required)" in text
    assert gen_docs.missing_command_help(commands) == [
        "tool jobs undocumented",
        "tool jobs undocumented PATH",
    ]


class _Inner(BaseModel):
    """Inner table."""

    limit: int = Field(3, ge=1, description="A limit.")
    names: list[str] = Field(default_factory=lambda: ["a'b"], description="Names.")


class _Outer(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APP_", env_nested_delimiter="__")

    url: str = Field("sqlite:///x.db", description="A URL.")
    bare: float = 1.5
    inner: _Inner = Field(default_factory=_Inner)


def test_settings_reference_names_keys_and_environment_variables() -> None:
    sections = gen_docs.settings_sections(_Outer)
    assert [s.table for s in sections] == ["", "inner"]
    assert sections[1].description == "Inner table."
    limit = sections[1].settings[0]
    assert (limit.key, limit.env, limit.type, limit.default, limit.constraints) == (
        "inner.limit",
        "APP_INNER__LIMIT",
        "int",
        3,
        "≥ 1",
    )
    assert sections[1].settings[1].type == "list[str]"
    assert gen_docs.missing_setting_descriptions(sections) == ["bare"]
    text = gen_docs.render_configuration(sections, "Intro with ``code``.")
    assert "Intro with `code`." in text
    assert '[inner]\nlimit = 3\nnames = ["a\'b"]\n' in text
    assert "- Environment: `APP_INNER__NAMES` (JSON)" in text


@pytest.mark.parametrize(
    "value",
    [True, 0, 2.5, "plain", "it's", r"^RUN\.(\d+)$", "two\nlines", [], ["a", "b'c"]],
)
def test_toml_values_read_back_unchanged(value: object) -> None:
    assert tomllib.loads(f"key = {gen_docs.toml_value(value)}") == {"key": value}


def test_stale_names_only_the_files_that_differ(tmp_path: Path) -> None:
    same, different, absent = tmp_path / "same.md", tmp_path / "different.md", tmp_path / "no.md"
    same.write_text("a\n", encoding="utf-8")
    different.write_text("old\n", encoding="utf-8")
    files = {same: "a\n", different: "new\n", absent: "x\n"}
    assert gen_docs.stale(files) == [different, absent]
