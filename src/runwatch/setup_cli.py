"""``runwatch init`` and ``runwatch db``: setting a deployment up.

``init`` writes a commented ``runwatch.toml`` generated from the ``Settings`` model itself,
so the file a newcomer edits always lists every setting with its meaning and default.
"""

from __future__ import annotations

import enum
import json
import secrets
import textwrap
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from runwatch.config import DEFAULT_CONFIG_NAME, Settings
from runwatch.context import Context
from runwatch.db import Database, alembic_config
from runwatch.examples import example_pipelines

db_app = typer.Typer(help="Create, migrate and inspect the database schema.", no_args_is_help=True)

# What a fresh deployment folder holds; paths are relative to runwatch.toml's folder.
DEPLOYMENT_VALUES: dict[str, Any] = {
    "database_url": "sqlite:///runwatch.db",
    "data_root": "data",
    "work_root": "work",
    "pipelines": "pipelines",
    "ingest.dropbox": "dropbox",
}
DEPLOYMENT_FOLDERS = ("data", "work", "dropbox", "pipelines")


def fresh_secrets() -> dict[str, Any]:
    """A new deployment's own secrets: the message API token and the login cookies' key."""
    return {
        "ingest.api_tokens": [secrets.token_urlsafe(32)],
        "web.session_secret": secrets.token_urlsafe(32),
    }


def register(app: typer.Typer) -> None:
    """Add ``init`` and the ``db`` group to ``app``."""
    app.command("init")(init)
    app.add_typer(db_app, name="db")


# -- the configuration file ---------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A TOML literal for a setting's value: str, number, bool, enum, path, or a list or
    table (inline) of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, enum.Enum):
        return toml_value(value.value)
    if isinstance(value, Path):
        return toml_value(str(value))
    if isinstance(value, str):
        if "'" in value or any(ord(c) < 32 for c in value):
            return json.dumps(value)  # a JSON string is a valid TOML basic string
        return f"'{value}'"  # literal string: regexes keep their backslashes as written
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, width=98, initial_indent="# ", subsequent_indent="# ")


def _field_lines(model: type[BaseModel], values: dict[str, Any], env_prefix: str) -> list[str]:
    lines: list[str] = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            continue  # a table of its own
        lines += _comment(field.description or name)
        lines.append(f"# Environment: {env_prefix}{name.upper()}")
        default = field.get_default(call_default_factory=True)
        value = values.get(name, default)
        if value != default:
            lines.append(f"# Default: {toml_value(default)}")  # init chose another value
        lines.append(f"{name} = {toml_value(value)}")
        lines.append("")
    return lines


def config_text(overrides: dict[str, Any]) -> str:
    """The commented ``runwatch.toml``: every setting with its description and default.

    ``overrides`` maps dotted keys ("ingest.dropbox") to the values to write instead.
    """
    top = {k: v for k, v in overrides.items() if "." not in k}
    lines = [
        "# runwatch settings, written by `runwatch init`.",
        "#",
        "# Relative paths are taken relative to this file's folder. Every setting can also be",
        "# set with the environment variable named next to it, which wins over this file.",
        "# The full reference is docs/configuration.md.",
        "",
        *_field_lines(Settings, top, "RUNWATCH_"),
    ]
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            continue
        values = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith(name + ".")}
        lines += [f"[{name}]", *_comment(textwrap.dedent(section.__doc__ or name).strip()), ""]
        lines += _field_lines(section, values, f"RUNWATCH_{name.upper()}__")
    return "\n".join(lines).rstrip("\n") + "\n"


# -- runwatch init ------------------------------------------------------------------------


def init(
    folder: Path = typer.Argument(..., help="Deployment folder (made if missing)."),
    force: bool = typer.Option(
        False, "--force", help="Overwrite an existing runwatch.toml (pipeline files are kept)."
    ),
) -> None:
    """Set up a deployment: runwatch.toml, example pipelines, folders and the database."""
    console = Console()
    config = folder / DEFAULT_CONFIG_NAME
    if config.exists() and not force:
        console.print(
            f"[red]{escape(str(config))} already exists[/red]; nothing was changed. "
            "Use --force to overwrite it (pipeline files, data and database are kept).",
            highlight=False,
        )
        raise typer.Exit(1)
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(config_text({**DEPLOYMENT_VALUES, **fresh_secrets()}), encoding="utf-8")
    console.print(f"wrote {escape(str(config))}", highlight=False)
    for name in DEPLOYMENT_FOLDERS:
        (folder / name).mkdir(exist_ok=True)
    for example in example_pipelines():
        target = folder / "pipelines" / example.name
        if target.exists():
            console.print(f"kept {escape(str(target))}", highlight=False)
            continue
        target.write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
        console.print(f"wrote {escape(str(target))}", highlight=False)
    database = Database(f"sqlite:///{(folder / 'runwatch.db').resolve()}")
    try:
        database.upgrade()
    finally:
        database.dispose()
    console.print(f"database {escape(str(folder / 'runwatch.db'))} at {head_revision()}")
    console.print(
        "\nNext:\n"
        f"  cd {escape(str(folder))}\n"
        "  runwatch pipelines check     # the example pipeline (pipelines/keepup.yaml)\n"
        "  runwatch scheduler           # then drop raw files and NAME.done into dropbox/\n"
        f"The message API token is in {DEFAULT_CONFIG_NAME} (ingest.api_tokens).",
        highlight=False,
    )


# -- runwatch db ----------------------------------------------------------------------------


def head_revision() -> str:
    """The newest schema revision this version of runwatch knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(database: Database) -> str | None:
    """The database's schema revision; None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _url(database: Database) -> str:
    return sa.make_url(database.url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the configured database to the newest schema (safe to repeat)."""
    console = Console()
    ctx = Context.load()
    try:
        before = current_revision(ctx.db)
        ctx.db.upgrade()
        after = current_revision(ctx.db)
    finally:
        ctx.db.dispose()
    if before == after:
        console.print(f"{_url(ctx.db)}: already at {after} (newest)", highlight=False)
    else:
        console.print(f"{_url(ctx.db)}: upgraded from {before or 'empty'} to {after}")


@db_app.command("current")
def db_current() -> None:
    """Print the configured database's schema revision, and whether it is the newest."""
    console = Console()
    ctx = Context.load()
    try:
        current = current_revision(ctx.db)
    finally:
        ctx.db.dispose()
    head = head_revision()
    note = "(newest)" if current == head else f"(newest is {head}: run `runwatch db upgrade`)"
    console.print(f"{_url(ctx.db)}: {current or 'empty'} {note}", highlight=False)
