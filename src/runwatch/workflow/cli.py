"""``runwatch scheduler``, ``runwatch status`` and ``runwatch tasks ...``."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from runwatch.catalogue.models import Run
from runwatch.context import Context
from runwatch.db import utcnow
from runwatch.ingest.models import ReceivedMessage
from runwatch.workflow import lease
from runwatch.workflow.models import Attempt, Task, TaskOutput
from runwatch.workflow.service import OperatorError, cancel_task, retry_task
from runwatch.workflow.states import TaskState

console = Console()
tasks_app = typer.Typer(help="List, inspect, retry and cancel tasks.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("scheduler")(scheduler)
    app.command("status")(status)
    app.add_typer(tasks_app, name="tasks")
    from runwatch.workflow.pipelines_cli import register as register_pipelines

    register_pipelines(app)


def scheduler(
    once: bool = typer.Option(False, "--once", help="Run one tick and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every decision."),
) -> None:
    """Run the scheduler daemon: ingest, plan, submit, supervise (one active at a time)."""
    from runwatch.dqm.loop import DqmLoop
    from runwatch.executors.base import load_executor
    from runwatch.ingest.sources import load_sources
    from runwatch.workflow.scheduler import Scheduler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx = Context.load()
    ctx.db.upgrade()
    executor = load_executor(ctx.settings)
    daemon = Scheduler(ctx.settings, ctx.db, executor)
    try:
        if once:
            _tick_once(ctx, daemon)
            return
        stop, wake = threading.Event(), threading.Event()
        _stop_on_signals(stop)
        sources = load_sources(ctx.settings, ctx.db)
        dqm = DqmLoop(ctx.settings, ctx.db)

        def start_sources() -> None:
            for source in sources:
                source.start(wake.set)
            dqm.start(stop)

        try:
            daemon.serve(stop, wake, on_lead=start_sources)
        finally:
            for source in sources:
                source.stop()
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()


def _tick_once(ctx: Context, daemon: object) -> None:
    from runwatch.dqm.loop import DqmLoop
    from runwatch.workflow.scheduler import Scheduler

    assert isinstance(daemon, Scheduler)
    holder = lease.new_holder_id()
    with ctx.db.session() as session:
        if not lease.acquire(session, holder, utcnow(), ctx.settings.scheduler.lease_seconds):
            other = lease.current_holder(session, utcnow())
            console.print(f"[red]another scheduler is active ({other}); not ticking[/red]")
            raise typer.Exit(1)
    try:
        report = daemon.run_once()
        dqm = DqmLoop(ctx.settings, ctx.db).run_once()
    finally:
        with ctx.db.session() as session:
            lease.release(session, holder)
    console.print(
        f"planned {report.planned}, submitted {report.submitted}, "
        f"ended {report.ended}, runs changed {report.runs_changed}; "
        f"dqm: merges registered {len(dqm.merges)}, alarms raised {len(dqm.raised)}, "
        f"cleared {len(dqm.cleared)}"
    )


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def status() -> None:
    """Summary: the active scheduler, runs by status, tasks by state, messages."""
    ctx = Context.load()
    with ctx.db.session() as session:
        holder = lease.current_holder(session, utcnow())
        console.print(f"scheduler: {holder or '[red]none active[/red]'}")
        for title, column, model in (
            ("runs", Run.status, Run),
            ("tasks", Task.state, Task),
            ("messages", ReceivedMessage.status, ReceivedMessage),
        ):
            rows = session.execute(
                sa.select(column, sa.func.count()).select_from(model).group_by(column)
            ).all()
            counts = ", ".join(f"{state.value}: {n}" for state, n in sorted(rows)) or "none"
            console.print(f"{title}: {counts}")


@tasks_app.command("list")
def tasks_list(
    state: list[TaskState] = typer.Option([], "--state", help="Only tasks in this state."),
    run: int | None = typer.Option(None, "--run", help="Only tasks of this run number."),
    step: str | None = typer.Option(None, "--step", help="Only tasks of this step."),
    limit: int = typer.Option(50, "--limit", help="At most this many (newest first)."),
) -> None:
    """List tasks, newest first."""
    ctx = Context.load()
    query = sa.select(Task, Run.number).join(Run, Run.id == Task.run_id)
    if state:
        query = query.where(Task.state.in_(state))
    if run is not None:
        query = query.where(Run.number == run)
    if step:
        query = query.where(Task.step == step)
    table = Table("id", "run", "task", "state", "failures", "updated", "reason")
    with ctx.db.session() as session:
        for task, number in session.execute(query.order_by(Task.id.desc()).limit(limit)):
            table.add_row(
                str(task.id),
                str(number),
                task.key,
                task.state.value,
                str(task.failures),
                f"{task.updated_at:%Y-%m-%d %H:%M:%S}",
                (task.reason or "")[:60],
            )
    console.print(table)


@tasks_app.command("show")
def tasks_show(task_id: int = typer.Argument(..., help="Task id.")) -> None:
    """A task with its attempts, outputs and the log tail of its last attempt."""
    ctx = Context.load()
    with ctx.db.session() as session:
        task = session.get(Task, task_id)
        if task is None:
            console.print(f"[red]no task {task_id}[/red]")
            raise typer.Exit(1)
        console.print(
            f"[bold]{task.key}[/bold]  state {task.state.value}  "
            f"failures {task.failures}/{task.retries}"
        )
        if task.reason:
            console.print(f"reason: {task.reason}")
        console.print(f"inputs: {', '.join(task.inputs) or '-'}")
        attempts = Table(
            "#",
            "state",
            "host",
            "started",
            "wall s",
            "cpu s",
            "rss MB",
            "exit",
            "reason",
            "batch",
            title="attempts",
        )
        rows = session.scalars(
            sa.select(Attempt).where(Attempt.task_id == task_id).order_by(Attempt.number)
        ).all()
        for a in rows:
            attempts.add_row(
                str(a.number),
                a.state.value,
                a.host or "",
                f"{a.started_at:%H:%M:%S}" if a.started_at else "",
                _num(a.wall_s),
                _num(a.cpu_s),
                _num(a.peak_rss_mb),
                "" if a.exit_code is None else str(a.exit_code),
                a.reason or "",
                a.batch_status or "",  # why the batch system keeps the job waiting
            )
        console.print(attempts)
        outputs = Table("name", "url", "size", "adler32", title="outputs")
        for out in session.scalars(sa.select(TaskOutput).where(TaskOutput.task_id == task_id)):
            outputs.add_row(out.name, out.url, str(out.size), out.adler32)
        console.print(outputs)
        if rows:
            last = rows[-1]
            console.print(f"command: {last.command or '-'}\nlog: {last.log_path or '-'}")
            if last.log_tail:
                console.print(last.log_tail, markup=False, highlight=False)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


@tasks_app.command("retry")
def tasks_retry(task_ids: list[int] = typer.Argument(..., help="Task ids.")) -> None:
    """Run failed, cancelled or done tasks again, with fresh retries."""
    _operate(task_ids, retry_task, "ready again")


@tasks_app.command("cancel")
def tasks_cancel(task_ids: list[int] = typer.Argument(..., help="Task ids.")) -> None:
    """Stop tasks; a running job is killed."""
    _operate(task_ids, cancel_task, "cancelled")


def _operate(
    task_ids: list[int], action: Callable[[Session, int, dt.datetime], Task], done: str
) -> None:
    ctx = Context.load()
    failed = False
    for task_id in task_ids:
        try:
            with ctx.db.session() as session:
                task = action(session, task_id, utcnow())
            console.print(f"task {task_id} ({task.key}): {done}")
        except OperatorError as exc:
            console.print(f"[red]{exc}[/red]")
            failed = True
    if failed:
        raise typer.Exit(1)
