"""Seed a database with years of keep-up history for the web benchmark (issue 5).

100,000 runs, 20 files each (2,000,000 files), 3 file-scoped tasks per file (6,000,000
tasks), a DQM verdict per run: what a few years of JUNO keep-up leave behind. Most runs
are All Completed, some Partly Completed with a failed task, the newest still taking data
or being reconstructed. Rows are written with the database's bulk path (COPY on
PostgreSQL, executemany on SQLite) so that seeding takes minutes, not hours.

    python bench/web_seed.py --url sqlite:////tmp/web.db [--runs 100000]
    python bench/web_seed.py --url postgresql+psycopg://ci:ci@127.0.0.1/citest

It empties the database it is given. The random generator is seeded: the same arguments
give the same database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from benchdb import reset

from runwatch.catalogue.models import RunStatus
from runwatch.db import Database
from runwatch.dqm.verdict import Verdict
from runwatch.workflow.states import TaskState

FILES_PER_RUN = 20
STEPS = ("calib", "rec", "hist")
RUN_SECONDS = 20 * 80  # 20 files of ~80 s
START = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
CHUNK_RUNS = 2_000
SEED = 20261129
FILE_METADATA = json.dumps({"events": 80_000})


def _stamp(moment: dt.datetime, sqlite: bool) -> Any:
    # runwatch stores UTC instants; on SQLite its column type writes this ISO text form.
    return _sqlite_text(moment) if sqlite else moment


@functools.lru_cache(maxsize=1 << 16)
def _sqlite_text(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")  # each instant recurs: a file's, its tasks'


def run_rows(
    runs: int, rng: random.Random, now: dt.datetime
) -> Iterator[tuple[dict[str, Any], list[TaskState], Verdict]]:
    """Each run's row, its tasks' states (3 per file, in file order) and its verdict."""
    for index in range(runs):
        number = 100_000 + index
        started = START + dt.timedelta(seconds=index * (RUN_SECONDS + 60))
        ended = started + dt.timedelta(seconds=RUN_SECONDS)
        newest = runs - index
        stream = "Calib" if rng.random() < 0.15 else "Physics"
        states = [TaskState.DONE] * (FILES_PER_RUN * len(STEPS))
        if newest <= 2:
            status = RunStatus.DATA_TAKING
            states = [TaskState.DONE] * 30 + [TaskState.WAITING] * (len(states) - 30)
        elif newest <= 6:
            status = RunStatus.REC_RUNNING
            states[-5:] = [TaskState.RUNNING] * 2 + [TaskState.READY] * 3
        elif rng.random() < 0.03:
            status = RunStatus.PARTLY_COMPLETED
            states[rng.randrange(len(states))] = TaskState.FAILED
        else:
            status = RunStatus.ALL_COMPLETED
        done = status in (RunStatus.ALL_COMPLETED, RunStatus.PARTLY_COMPLETED)
        row = {
            "id": index + 1,
            "number": number,
            "stream": stream,
            "status": status.value,
            "started_at": started,
            "ended_at": ended if status is not RunStatus.DATA_TAKING else None,
            "end_of_run_at": ended if status is not RunStatus.DATA_TAKING else None,
            "expected_files": FILES_PER_RUN,
            "n_files": FILES_PER_RUN,
            "n_bytes": FILES_PER_RUN * 5_000_000_000,
            "completed_at": ended + dt.timedelta(minutes=5) if done else None,
            "updated_at": min(now, ended + dt.timedelta(minutes=5)),
        }
        verdict = rng.choices(list(Verdict), weights=(90, 7, 3))[0]
        yield row, states, verdict


def seed(db: Database, runs: int) -> dict[str, int]:
    rng = random.Random(SEED)
    now = START + dt.timedelta(seconds=runs * (RUN_SECONDS + 60))
    sqlite = db.engine.dialect.name == "sqlite"
    with db.engine.begin() as conn:
        revision = conn.execute(
            sa.text(
                "INSERT INTO pipeline_revisions (name, digest, path, content, loaded_at) "
                "VALUES ('juno', :d, 'juno.yaml', 'name: juno', :t)"
            ),
            {"d": "0" * 64, "t": _stamp(now, sqlite)},
        )
        revision_id = int(revision.lastrowid) if sqlite else 1
    counts = {"runs": 0, "files": 0, "tasks": 0}
    batch: list[tuple[dict[str, Any], list[TaskState], Verdict]] = []
    for item in run_rows(runs, rng, now):
        batch.append(item)
        if len(batch) == CHUNK_RUNS:
            _write(db, batch, revision_id, sqlite, counts)
            batch = []
    if batch:
        _write(db, batch, revision_id, sqlite, counts)
    if not sqlite:
        with db.engine.begin() as conn:
            for table in ("runs", "files", "tasks", "dqm_run_quality"):
                conn.execute(sa.text(f"ANALYZE {table}"))
            for table in ("runs", "files", "tasks"):
                conn.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
    else:
        with db.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    return counts


def _write(
    db: Database,
    batch: Sequence[tuple[dict[str, Any], list[TaskState], Verdict]],
    revision_id: int,
    sqlite: bool,
    counts: dict[str, int],
) -> None:
    runs, files, tasks, quality = [], [], [], []
    for run, states, verdict in batch:
        runs.append(run)
        started = run["started_at"]
        for seq in range(FILES_PER_RUN):
            file_id = (run["id"] - 1) * FILES_PER_RUN + seq + 1
            created = started + dt.timedelta(seconds=80 * (seq + 1))
            name = f"RUN.{run['number']}.JUNODAQ.{run['stream']}.ds-2.{seq + 1:03d}.rtraw"
            files.append(
                (
                    file_id,
                    run["id"],
                    name,
                    f"file:///eos/juno/raw/{run['number']}/{name}",
                    run["stream"],
                    seq + 1,
                    5_000_000_000,
                    created,
                    created,
                    FILE_METADATA,
                )
            )
            for step_index, step in enumerate(STEPS):
                state = states[seq * len(STEPS) + step_index]
                task_id = (file_id - 1) * len(STEPS) + step_index + 1
                finished = created + dt.timedelta(seconds=60 * (step_index + 1))
                settled = state in (TaskState.DONE, TaskState.FAILED)
                tasks.append(
                    (
                        task_id,
                        f"juno/{step}/file:{file_id}",
                        revision_id,
                        "juno",
                        step,
                        "file",
                        run["id"],
                        file_id,
                        True,
                        state.value,
                        created,
                        "[]",
                        created,
                        finished if settled else created,
                        finished if settled else None,
                    )
                )
        quality.append((run["id"], verdict.value, "", True, run["updated_at"]))
    _copy(db, sqlite, "runs", runs)
    _copy(db, sqlite, "files", files)
    _copy(db, sqlite, "tasks", tasks)
    _copy(db, sqlite, "dqm_run_quality", quality)
    counts["runs"] += len(runs)
    counts["files"] += len(files)
    counts["tasks"] += len(tasks)


FILE_COLUMNS = "id, run_id, name, url, stream, sequence, size, created_at, registered_at, metadata"
TASK_COLUMNS = (
    "id, key, revision_id, pipeline, step, scope, run_id, file_id, final, state, "
    "priority_at, inputs, created_at, updated_at, finished_at"
)
TASK_DEFAULTS = {"threads": 1, "memory_mb": 0, "timeout_s": 0.0, "retries": 2, "failures": 0}
RUN_COLUMNS = (
    "id, number, stream, status, started_at, ended_at, end_of_run_at, expected_files, "
    "n_files, n_bytes, completed_at, updated_at"
)
QUALITY_COLUMNS = "run_id, verdict, reason, final, evaluated_at"


def _copy(db: Database, sqlite: bool, table: str, rows: Sequence[Any]) -> None:
    if table == "runs":
        columns = RUN_COLUMNS
        rows = [tuple(r[c.strip()] for c in RUN_COLUMNS.split(",")) for r in rows]
    else:
        columns = {"files": FILE_COLUMNS, "tasks": TASK_COLUMNS}.get(table, QUALITY_COLUMNS)
    extra = TASK_DEFAULTS if table == "tasks" else {}
    names = columns + "".join(f", {k}" for k in extra)
    rows = [(*row, *extra.values()) for row in rows]
    if sqlite:
        path = db.engine.url.database
        assert path
        conn = sqlite3.connect(path)
        try:
            stamp = [
                tuple(_stamp(v, True) if isinstance(v, dt.datetime) else v for v in row)
                for row in rows
            ]
            marks = ", ".join("?" * len(stamp[0]))
            with conn:
                conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", stamp)
        finally:
            conn.close()
        return
    raw = db.engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        assert dbapi is not None
        with dbapi.cursor() as cursor, cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        dbapi.commit()
    finally:
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="Database URL (it is emptied).")
    parser.add_argument("--runs", type=int, default=100_000)
    args = parser.parse_args()
    started = time.monotonic()
    db = reset(args.url)
    try:
        counts = seed(db, args.runs)
    finally:
        db.dispose()
    seconds = round(time.monotonic() - started, 1)
    print(f"seeded {counts} in {seconds} s")
    print("RESULT " + json.dumps({**counts, "seed_s": seconds}))


if __name__ == "__main__":
    main()
