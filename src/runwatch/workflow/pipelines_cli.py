"""``runwatch pipelines check | list | show``: the pipeline files, as the scheduler sees them."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runwatch.context import Context
from runwatch.workflow.models import PipelineRevision
from runwatch.workflow.pipeline_file import (
    LoadedPipeline,
    PipelineError,
    load_pipeline_folder,
    load_pipelines,
    pipeline_files,
)
from runwatch.workflow.spec import Step

pipelines_app = typer.Typer(help="Check, list and show the pipeline files.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``pipelines`` group to ``app``."""
    app.add_typer(pipelines_app, name="pipelines")


@pipelines_app.command("check")
def check(
    paths: list[Path] = typer.Argument(
        None,
        help="Pipeline files or folders to check (default: the configured pipelines folder).",
        show_default=False,
    ),
) -> None:
    """Check pipeline files; exit 1 if any has an error (nothing is stored or planned)."""
    console = Console()
    if not paths:
        paths = [Path(Context.load().settings.pipelines)]
    files: list[Path] = []
    errors: list[PipelineError] = []
    for path in paths:
        if path.is_dir():
            found = pipeline_files(path)
            if not found:
                errors.append(PipelineError(path, None, "", "no *.yaml or *.yml files in it"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            errors.append(PipelineError(path, None, "", "no such file or folder"))
    loaded, file_errors = load_pipelines(files)
    errors.extend(file_errors)
    for item in loaded:
        p = item.pipeline
        console.print(
            f"[green]OK[/green]    {escape(str(item.path))}: pipeline {p.name}, "
            f"{len(p.steps)} steps, streams {', '.join(p.streams)}",
            highlight=False,
            soft_wrap=True,
        )
    for error in errors:
        console.print(f"[red]ERROR[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    if errors:
        raise typer.Exit(1)


def _revision_counts(ctx: Context) -> dict[str, int] | None:
    """Stored revisions by pipeline name, or None if the database has no such table yet."""
    try:
        with ctx.db.read_session() as session:
            rows = session.execute(
                sa.select(PipelineRevision.name, sa.func.count()).group_by(PipelineRevision.name)
            ).all()
    except sa.exc.DBAPIError:
        return None
    return {name: count for name, count in rows}


@pipelines_app.command("list")
def list_pipelines() -> None:
    """List the pipelines in the configured folder with their streams, steps and revisions."""
    console = Console()
    ctx = Context.load()
    loaded, errors = load_pipeline_folder(ctx.settings.pipelines)
    counts = _revision_counts(ctx)
    table = Table("name", "file", "streams", "steps", "revisions", title="pipelines")
    for item in loaded:
        p = item.pipeline
        table.add_row(
            p.name,
            item.path.name,
            ", ".join(p.streams),
            " → ".join(p.steps),
            "?" if counts is None else str(counts.get(p.name, 0)),
        )
    console.print(table)
    if not loaded:
        console.print(f"no valid pipeline files in {ctx.settings.pipelines}", highlight=False)
    if counts is None:
        console.print("[yellow]the database is not set up: run `runwatch db upgrade`[/yellow]")
    for error in errors:
        console.print(f"[red]ERROR[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    ctx.db.dispose()


def _find(loaded: list[LoadedPipeline], name: str) -> LoadedPipeline | None:
    return next((item for item in loaded if item.pipeline.name == name), None)


@pipelines_app.command("show")
def show(name: str = typer.Argument(..., help="Pipeline name.")) -> None:
    """Show one pipeline: its streams, parameters and a table of its steps."""
    console = Console()
    ctx = Context.load()
    loaded, errors = load_pipeline_folder(ctx.settings.pipelines)
    item = _find(loaded, name)
    if item is None:
        known = ", ".join(i.pipeline.name for i in loaded) or "none"
        console.print(f"[red]no valid pipeline named {name!r}[/red] (pipelines: {known})")
        for error in errors:
            console.print(f"[red]ERROR[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    p = item.pipeline
    console.print(f"[bold]{p.name}[/bold]  ({escape(str(item.path))})", highlight=False)
    if p.description:
        console.print(p.description, markup=False, highlight=False)
    console.print(f"streams: {', '.join(p.streams)}", highlight=False)
    params = ", ".join(f"{k}={v!r}" for k, v in p.params.items()) or "-"
    console.print(f"params: {params}", markup=False, highlight=False)
    table = Table(
        "step",
        "scope",
        "needs",
        "threads",
        "memory",
        "retries",
        "timeout",
        "outputs",
        "runs also",
        "dqm",
    )
    for step in p.steps.values():
        table.add_row(*_step_row(step))
    console.print(table)


def _step_row(step: Step) -> tuple[str, ...]:
    return (
        step.name,
        step.scope,
        ", ".join(step.needs) or "-",
        str(step.threads),
        f"{step.memory_mb} MB" if step.memory_mb else "-",
        str(step.retries),
        format_duration(step.timeout_s) if step.timeout_s else "-",
        ", ".join(step.outputs) or "-",
        _runs_also(step),
        step.dqm or "-",
    )


def _runs_also(step: Step) -> str:
    """When a run-scoped step also runs before its run ends: its batch or live rule."""
    if step.batch is not None:
        return f"every {step.batch} files"
    if step.every_s is not None:
        return f"every {format_duration(step.every_s)}"
    return "-"


def format_duration(seconds: float) -> str:
    """1h30m, 90s → 1m30s: the form a pipeline file would use."""
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts) or "0s"
