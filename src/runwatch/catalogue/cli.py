"""``runwatch runs list|show``: runs as shifters see them, with their files and tasks."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from runwatch.catalogue.models import File, Run, RunStatus
from runwatch.context import Context
from runwatch.workflow.models import Task
from runwatch.workflow.states import TaskState

console = Console()
runs_app = typer.Typer(help="List runs and show a run's files and tasks.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this feature's commands to ``app``."""
    app.add_typer(runs_app, name="runs")


@runs_app.command("list")
def runs_list(
    status: RunStatus | None = typer.Option(
        None, "--status", case_sensitive=False, help="Only runs with this status."
    ),
    stream: str | None = typer.Option(None, "--stream", help="Only runs of this stream."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many (newest first)."),
) -> None:
    """List runs, newest first, with their files and how many of their tasks are done."""
    query = sa.select(Run).order_by(Run.number.desc()).limit(limit)
    if status is not None:
        query = query.where(Run.status == status)
    if stream:
        query = query.where(Run.stream == stream)
    table = Table("run", "stream", "status", "files", "size", "start", "end", "tasks done")
    ctx = Context.load()
    with ctx.db.read_session() as session:
        runs = list(session.scalars(query))
        progress = _task_progress(session, [run.id for run in runs])
        for run in runs:
            done, total = progress.get(run.id, (0, 0))
            table.add_row(
                str(run.number),
                run.stream,
                run.status.value,
                _files(run),
                human_bytes(run.n_bytes),
                _time(run.started_at),
                _time(run.ended_at),
                f"{done}/{total}",
            )
    console.print(table)


@runs_app.command("show")
def runs_show(number: int = typer.Argument(..., help="Run number.")) -> None:
    """A run: its fields, its files, and its tasks counted by step and state."""
    ctx = Context.load()
    with ctx.db.read_session() as session:
        run = session.scalar(sa.select(Run).where(Run.number == number))
        if run is None:
            console.print(f"[red]no run {number}[/red]")
            raise typer.Exit(1)
        _print_run(run)
        _print_files(session, run)
        _print_tasks(session, run)


def _print_run(run: Run) -> None:
    expected = "unknown" if run.expected_files is None else str(run.expected_files)
    fields = {
        "run": str(run.number),
        "stream": run.stream,
        "status": run.status.value,
        "files": f"{run.n_files} (expected {expected})",
        "size": human_bytes(run.n_bytes),
        "data taken": f"{_time(run.started_at)} to {_time(run.ended_at)}",
        "end of run received": _time(run.end_of_run_at),
        "completed": _time(run.completed_at),
        "updated": _time(run.updated_at),
    }
    for key, value in fields.items():
        console.print(f"[bold]{key}:[/bold] {value}")


def _print_files(session: Session, run: Run) -> None:
    table = Table("seq", "name", "size", "adler32", "created", "planned", title="files")
    rows = session.scalars(
        sa.select(File).where(File.run_id == run.id).order_by(File.sequence, File.id)
    )
    for f in rows:
        table.add_row(
            "" if f.sequence is None else str(f.sequence),
            f.name,
            "" if f.size is None else human_bytes(f.size),
            f.adler32 or "",
            _time(f.created_at),
            _time(f.planned_at),
        )
    console.print(table)


def _print_tasks(session: Session, run: Run) -> None:
    rows = session.execute(
        sa.select(Task.pipeline, Task.step, Task.state, sa.func.count())
        .where(Task.run_id == run.id)
        .group_by(Task.pipeline, Task.step, Task.state)
    ).all()
    counts: dict[tuple[str, str], dict[TaskState, int]] = defaultdict(dict)
    for pipeline, step, state, n in rows:
        counts[(pipeline, step)][state] = n
    states = [s for s in TaskState if any(s in by_state for by_state in counts.values())]
    table = Table("pipeline", "step", *(s.value for s in states), "total", title="tasks")
    for (pipeline, step), by_state in sorted(counts.items()):
        cells = [str(by_state.get(s, "")) for s in states]
        table.add_row(pipeline, step, *cells, str(sum(by_state.values())))
    console.print(table)


def _task_progress(session: Session, run_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Done and total tasks of each run, in one query."""
    if not run_ids:
        return {}
    done = sa.func.sum(sa.case((Task.state == TaskState.DONE, 1), else_=0))
    rows = session.execute(
        sa.select(Task.run_id, done, sa.func.count())
        .where(Task.run_id.in_(run_ids))
        .group_by(Task.run_id)
    ).all()
    return {run_id: (int(d or 0), int(n)) for run_id, d, n in rows}


def _files(run: Run) -> str:
    return str(run.n_files) if run.expected_files is None else f"{run.n_files}/{run.expected_files}"


def _time(when: dt.datetime | None) -> str:
    return "" if when is None else f"{when:%Y-%m-%d %H:%M:%S}"


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KB' (powers of 1024, as storage quotas are given)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
