"""``runwatch runs list|show`` on a real SQLite catalogue with files and tasks."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import typer
from typer.testing import CliRunner

from runwatch.catalogue.cli import human_bytes
from runwatch.catalogue.models import Run, RunStatus
from runwatch.db import Database
from runwatch.ingest.service import receive
from runwatch.workflow.models import PipelineRevision, Task
from runwatch.workflow.states import TaskState

NOW = dt.datetime(2025, 8, 26, 13, tzinfo=dt.UTC)


def announce(db: Database, run: int, seq: int, stream: str = "Physics", eor: bool = False) -> int:
    body = {
        "name": f"RUN.{run}.{stream}.{seq:03d}.rtraw",
        "url": f"root://eos//raw/{run}/{seq}",
        "run": run,
        "stream": stream,
        "sequence": seq,
        "size": 1536,
        "created": f"2025-08-26T12:00:0{seq}Z",
        "end_of_run": eor,
    }
    with db.session() as session:
        receipt = receive(session, json.dumps(body), "test", None, NOW)
    assert receipt.file_id is not None
    return receipt.file_id


def add_tasks(db: Database, run_number: int, states: dict[tuple[str, int], TaskState]) -> None:
    with db.session() as session:
        run = session.query(Run).filter_by(number=run_number).one()
        rev = PipelineRevision(name="chain", digest="0" * 64, path="-", content="", loaded_at=NOW)
        session.add(rev)
        session.flush()
        for (step, file_id), state in states.items():
            session.add(
                Task(
                    key=f"chain/{step}/file:{file_id}",
                    revision_id=rev.id,
                    pipeline="chain",
                    step=step,
                    scope="file",
                    run_id=run.id,
                    file_id=file_id,
                    state=state,
                    priority_at=NOW,
                    inputs=[],
                )
            )


def test_runs_list_shows_files_size_and_task_progress(
    app: typer.Typer, deployment: Path, db: Database
) -> None:
    first = [announce(db, 101, s) for s in (1, 2)]
    announce(db, 102, 1, stream="Calib", eor=True)
    add_tasks(
        db,
        101,
        {
            ("calib", first[0]): TaskState.DONE,
            ("calib", first[1]): TaskState.DONE,
            ("rec", first[0]): TaskState.RUNNING,
        },
    )
    runner = CliRunner()
    result = runner.invoke(app, ["runs", "list"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "101" in line or "102" in line]
    assert lines[0].index("102") < lines[0].index("Calib")  # newest run first
    assert "1/1" in lines[0]  # files / expected
    assert all(cell in lines[1] for cell in ("Physics", "Data Taking", "3.0 KB", "2/3"))
    only = runner.invoke(app, ["runs", "list", "--stream", "Calib"])
    assert "102" in only.output and "101" not in only.output
    taking = runner.invoke(app, ["runs", "list", "--status", "data taking", "--limit", "1"])
    assert taking.exit_code == 0, taking.output
    assert "Data Taking" in taking.output and "Calib" in taking.output


def test_runs_show_lists_files_and_tasks_by_step_and_state(
    app: typer.Typer, deployment: Path, db: Database
) -> None:
    ids = [announce(db, 7, s, eor=s == 3) for s in (1, 2, 3)]
    add_tasks(
        db,
        7,
        {
            ("calib", ids[0]): TaskState.DONE,
            ("calib", ids[1]): TaskState.DONE,
            ("calib", ids[2]): TaskState.FAILED,
            ("rec", ids[0]): TaskState.READY,
        },
    )
    result = CliRunner().invoke(app, ["runs", "show", "7"])
    assert result.exit_code == 0, result.output
    assert "files: 3 (expected 3)" in result.output
    assert result.output.count("RUN.7.Physics.") == 3
    table = result.output[result.output.index("tasks") :]
    lines = table.splitlines()
    rows = [[cell.strip() for cell in re.split("[│┃]", line)[1:-1]] for line in lines]
    header, *body = [row for row in rows if row]
    counts = {row[1]: dict(zip(header[2:], row[2:], strict=True)) for row in body}
    assert counts == {
        "calib": {"ready": "", "failed": "1", "done": "2", "total": "3"},
        "rec": {"ready": "1", "failed": "", "done": "", "total": "1"},
    }
    missing = CliRunner().invoke(app, ["runs", "show", "8"])
    assert missing.exit_code == 1
    assert "no run 8" in missing.output


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * 1024**3, 3 * 1024**5)] == [
        "0 B",
        "1023 B",
        "1.5 KB",
        "5.0 GB",
        "3072.0 TB",
    ]
    assert RunStatus.DATA_TAKING.value == "Data Taking"
