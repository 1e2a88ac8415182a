"""``runwatch ingest`` and ``runwatch messages list|show`` on a real deployment folder."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from runwatch.catalogue.models import File, Run
from runwatch.db import Database
from runwatch.ingest.models import MessageStatus, ReceivedMessage


def raw(folder: Path, seq: int) -> Path:
    path = folder / f"RUN.31.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.{seq:03d}_J25.rtraw"
    path.write_bytes(b"x" * seq)
    return path


def test_ingest_registers_files_and_marks_the_end_of_run(
    app: typer.Typer, deployment: Path, db: Database
) -> None:
    paths = [raw(deployment, 1), raw(deployment, 2)]
    result = CliRunner().invoke(app, ["ingest", *map(str, paths), "--end-of-run"])
    assert result.exit_code == 0, result.output
    assert result.output.count("accepted") == 2
    with db.session() as session:
        run = session.scalar(sa.select(Run))
        assert run is not None
        assert (run.number, run.n_files, run.n_bytes, run.expected_files) == (31, 2, 3, 2)
        assert run.end_of_run_at is not None
        urls = session.scalars(sa.select(File.url).order_by(File.sequence)).all()
        assert urls == [p.as_uri() for p in paths]
        sources = session.scalars(sa.select(ReceivedMessage.source)).all()
        assert sources == ["cli", "cli"]


def test_ingest_keeps_what_it_cannot_register_and_exits_1(
    app: typer.Typer, deployment: Path, db: Database
) -> None:
    odd = deployment / "notes.txt"
    odd.write_text("x")
    result = CliRunner().invoke(app, ["ingest", str(odd), str(deployment / "gone.rtraw")])
    assert result.exit_code == 1
    assert "does not match the name pattern" in result.output
    assert "no such file" in result.output
    with db.session() as session:
        rows = session.scalars(sa.select(ReceivedMessage).order_by(ReceivedMessage.id)).all()
        assert [(r.status, r.file_name) for r in rows] == [
            (MessageStatus.REJECTED, "notes.txt"),
            (MessageStatus.REJECTED, "gone.rtraw"),
        ]


def test_messages_list_and_show(app: typer.Typer, deployment: Path) -> None:
    runner = CliRunner()
    runner.invoke(app, ["ingest", str(raw(deployment, 1))])
    runner.invoke(app, ["ingest", str(deployment / "gone.rtraw")])
    listed = runner.invoke(app, ["messages", "list"])
    assert listed.exit_code == 0, listed.output
    assert "accepted" in listed.output and "rejected" in listed.output
    only = runner.invoke(app, ["messages", "list", "--rejected"])
    assert "gone.rtraw" in only.output and "accepted" not in only.output
    by_status = runner.invoke(app, ["messages", "list", "--status", "accepted", "--limit", "1"])
    assert "RUN.31" in by_status.output and "gone.rtraw" not in by_status.output
    shown = runner.invoke(app, ["messages", "show", "1"])
    assert shown.exit_code == 0, shown.output
    assert '"run": 31' in shown.output and "source: cli" in shown.output
    reason = runner.invoke(app, ["messages", "show", "2"])
    assert "reason: no such file:" in reason.output
    missing = runner.invoke(app, ["messages", "show", "99"])
    assert missing.exit_code == 1
    assert "no message 99" in missing.output
