"""``runwatch messages list|show`` and ``runwatch ingest PATH...``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from runwatch.context import Context
from runwatch.db import utcnow
from runwatch.ingest.models import MessageStatus, ReceivedMessage
from runwatch.ingest.names import FileNameError, message_for_file
from runwatch.ingest.schema import MAX_NAME
from runwatch.ingest.service import Receipt, receive, store_rejected
from runwatch.workflow.nudge import nudge, socket_path

SOURCE = "cli"

console = Console()
messages_app = typer.Typer(
    help="List and inspect received file-ready messages, accepted or not.", no_args_is_help=True
)

STATUS_STYLE = {
    MessageStatus.ACCEPTED: "green",
    MessageStatus.DUPLICATE: "yellow",
    MessageStatus.REJECTED: "red",
}


def register(app: typer.Typer) -> None:
    """Add this feature's commands to ``app``."""
    app.add_typer(messages_app, name="messages")
    app.command("ingest")(ingest)


@messages_app.command("list")
def messages_list(
    rejected: bool = typer.Option(
        False, "--rejected", help="Only rejected messages (same as --status rejected)."
    ),
    status: MessageStatus | None = typer.Option(
        None, "--status", help="Only messages with this status."
    ),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many (newest first)."),
) -> None:
    """List received messages, newest first."""
    if rejected:
        status = MessageStatus.REJECTED
    query = sa.select(ReceivedMessage).order_by(ReceivedMessage.id.desc()).limit(limit)
    if status is not None:
        query = query.where(ReceivedMessage.status == status)
    table = Table("id", "received", "source", "status", "run", "file", "reason")
    ctx = Context.load()
    with ctx.db.read_session() as session:
        for m in session.scalars(query):
            table.add_row(
                str(m.id),
                f"{m.received_at:%Y-%m-%d %H:%M:%S}",
                m.source,
                _status(m.status),
                "" if m.run_number is None else str(m.run_number),
                m.file_name or "",
                (m.reason or "")[:80],
            )
    console.print(table)


@messages_app.command("show")
def messages_show(message_id: int = typer.Argument(..., help="Message id.")) -> None:
    """One message: where it came from, its verdict and reason, and its body as received."""
    ctx = Context.load()
    with ctx.db.read_session() as session:
        m = session.get(ReceivedMessage, message_id)
        if m is None:
            console.print(f"[red]no message {message_id}[/red]")
            raise typer.Exit(1)
        fields = {
            "id": str(m.id),
            "received": m.received_at.isoformat(),
            "source": m.source,
            "origin": m.origin or "-",
            "status": _status(m.status),
            "file": m.file_name or "-",
            "run": "-" if m.run_number is None else str(m.run_number),
            "file id": "-" if m.file_id is None else str(m.file_id),
        }
        for key, value in fields.items():
            console.print(f"[bold]{key}:[/bold] {value}")
        if m.reason:
            console.print("[bold]reason:[/bold] ", end="")
            console.print(m.reason, markup=False, highlight=False)
        console.print("[bold]body:[/bold]")
        console.print(m.body, markup=False, highlight=False)


def ingest(
    paths: list[Path] = typer.Argument(..., help="Raw files to register, in order."),
    end_of_run: bool = typer.Option(
        False, "--end-of-run", help="The last PATH is its run's last file."
    ),
) -> None:
    """Register raw files by hand: a message from each name, with size, Adler-32 and file:// URL.

    Every file gets a stored message, accepted or not; exits with 1 if any was rejected.
    """
    ctx = Context.load()
    pattern = ctx.settings.ingest.name_pattern
    table = Table("file", "status", "message", "file id", "reason")
    rejected = False
    for index, path in enumerate(paths):
        last = end_of_run and index == len(paths) - 1
        with ctx.db.session() as session:
            receipt = ingest_path(session, path, pattern, last, utcnow())
        nudge(socket_path(ctx.settings.work_root))
        rejected |= receipt.status is MessageStatus.REJECTED
        table.add_row(
            path.name,
            _status(receipt.status),
            str(receipt.message_id),
            "" if receipt.file_id is None else str(receipt.file_id),
            receipt.reason or "",
        )
    console.print(table)
    if rejected:
        raise typer.Exit(1)


def ingest_path(
    session: Session, path: Path, pattern: str, end_of_run: bool, now: dt.datetime
) -> Receipt:
    """Receive the message for one local raw file (rejected and kept if it cannot be made)."""
    origin = str(path.absolute())
    name = path.name if len(path.name) <= MAX_NAME else None
    if not path.is_file():
        return store_rejected(session, "", SOURCE, origin, now, f"no such file: {path}", name)
    try:
        fields = message_for_file(path, pattern)
    except FileNameError as exc:
        return store_rejected(session, "", SOURCE, origin, now, str(exc), name)
    fields["end_of_run"] = end_of_run
    return receive(session, json.dumps(fields), SOURCE, origin, now)


def _status(status: MessageStatus) -> str:
    return f"[{STATUS_STYLE[status]}]{status.value}[/]"
