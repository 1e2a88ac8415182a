"""Orchestration benchmark (issue 2): how much the engine itself costs per task.

Workload: 4 runs x 25 files x 3 file-scoped steps + 1 run-scoped merge = 304 tasks, no-op
commands, 2 slots, real processes: ``runwatch scheduler`` (local executor) and
``runwatch serve``; messages are POSTed over HTTP like a transfer system would.

The scheduler runs with its default settings (``[scheduler]`` only sets 2 slots).

Phase 1 (throughput): all messages at once; wall time from the first message to every run
All Completed; overhead per task = (wall - commands' own time / slots) / tasks. CPU per
task is reported for each process; "database" is the server's (PostgreSQL: its backends,
MariaDB: mysqld) when it runs on this machine, whatever else uses it meanwhile (this
benchmark's own polling for the runs' completion included).
Phase 2 (latency): 2 more runs whose files arrive one every 200 ms (slower than the engine
drains them); message-to-first-start = first attempt's start - message's receipt.
Both phases again with 100,000 finished tasks already in the database (--preload).

    python bench/orchestration.py --db sqlite
    python bench/orchestration.py --db postgres --url postgresql+psycopg://ci:ci@127.0.0.1/citest

The last line is RESULT {json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa
from benchdb import reset

from runwatch.catalogue.models import File, Run, RunStatus
from runwatch.db import Database, utcnow
from runwatch.ingest.models import MessageStatus, ReceivedMessage
from runwatch.jobs.worker import runtime_folder
from runwatch.workflow.models import Attempt, PipelineRevision, Task
from runwatch.workflow.states import TaskState

PIPELINE = """\
name: noop
streams: [Physics]
steps:
  calib: {command: "true"}
  rec: {command: "true", needs: [calib]}
  hist: {command: "true", needs: [rec]}
  merge: {command: "true", scope: run, needs: [hist]}
"""

CONFIG = """\
database_url = "{url}"
data_root = "{root}/data"
work_root = "{root}/work"
pipelines = "{root}/pipelines"

[scheduler]
slots = 2

[ingest]
api_tokens = ["bench-token"]
"""

TOKEN = {"Authorization": "Bearer bench-token"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def preload(db: Database, tasks: int) -> None:
    """History: finished runs with DONE tasks (what a year of keep-up leaves behind)."""
    per_run_files = 25
    runs = tasks // (per_run_files * 4)
    now = utcnow()
    with db.session() as s:
        rev = PipelineRevision(
            name="noop", digest="0" * 64, path="-", content=PIPELINE, loaded_at=now
        )
        s.add(rev)
        s.flush()
        rev_id = rev.id
    for first in range(0, runs, 100):
        with db.session() as s:
            batch = range(first, min(runs, first + 100))
            s.execute(
                sa.insert(Run),
                [
                    {
                        "id": 1 + r,
                        "number": 1 + r,
                        "stream": "Physics",
                        "status": RunStatus.ALL_COMPLETED,
                        "n_files": per_run_files,
                        "n_bytes": 0,
                        "updated_at": now,
                        "end_of_run_at": now,
                        "expected_files": per_run_files,
                    }
                    for r in batch
                ],
            )
            s.execute(
                sa.insert(File),
                [
                    {
                        "id": 1 + r * per_run_files + f,
                        "run_id": 1 + r,
                        "name": f"hist.{r}.{f}",
                        "url": f"file:///h/{r}/{f}",
                        "stream": "Physics",
                        "sequence": f + 1,
                        "registered_at": now,
                        "planned_at": now,
                        "meta": {},
                    }
                    for r in batch
                    for f in range(per_run_files)
                ],
            )
            rows = []
            for r in batch:
                for f in range(per_run_files):
                    fid = 1 + r * per_run_files + f
                    rows += [
                        _done_task(rev_id, step, 1 + r, fid, now)
                        for step in ("calib", "rec", "hist")
                    ]
                rows.append(_done_task(rev_id, "merge", 1 + r, None, now))
            s.execute(sa.insert(Task), rows)
    if db.engine.dialect.name == "postgresql":
        for table in ("runs", "files", "tasks"):
            with db.engine.begin() as conn:
                conn.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
                conn.execute(sa.text(f"ANALYZE {table}"))


def _done_task(
    rev_id: int, step: str, run_id: int, file_id: int | None, now: Any
) -> dict[str, Any]:
    key = f"noop/{step}/file:{file_id}" if file_id else f"noop/{step}/run:{run_id}"
    return {
        "key": key,
        "revision_id": rev_id,
        "pipeline": "noop",
        "step": step,
        "scope": "file" if file_id else "run",
        "run_id": run_id,
        "file_id": file_id,
        "final": True,
        "state": TaskState.DONE,
        "priority_at": now,
        "threads": 1,
        "memory_mb": 0,
        "timeout_s": 0.0,
        "retries": 0,
        "failures": 0,
        "inputs": [],
        "created_at": now,
        "updated_at": now,
        "finished_at": now,
    }


def analyse(db: Database) -> None:
    """Table statistics for the history just loaded, as a server's own daemon has long
    made them on a database a year old (PostgreSQL's autovacuum, InnoDB's automatic
    statistics): without them the planner sees empty tables for the first minutes."""
    dialect = db.engine.dialect.name
    if dialect not in ("postgresql", "mysql", "mariadb"):
        return  # SQLite: runwatch runs no ANALYZE there, and nothing else does
    with db.autocommit_engine.connect() as connection:
        if dialect == "postgresql":
            connection.execute(sa.text("ANALYZE"))
        else:
            connection.execute(sa.text("ANALYZE TABLE runs, files, tasks, attempts")).all()


def checkpoint(db: Database) -> None:
    """PostgreSQL: write out what the set-up (the schema, the history) left in memory and
    its log, so that a checkpoint it made due does not fall within the measurement (a
    database in service does not write a hundred megabytes of history at once)."""
    if db.engine.dialect.name == "postgresql":
        with db.autocommit_engine.connect() as connection:
            try:
                connection.execute(sa.text("CHECKPOINT"))
            except sa.exc.DBAPIError as exc:  # needs superuser or pg_checkpoint
                print(f"no CHECKPOINT before measuring: {exc.orig}", flush=True)


RAW = Path(tempfile.gettempdir()) / "rw-bench-raw"


def message(run: int, seq: int, files: int) -> dict[str, Any]:
    """A file-ready message for a real (one-byte) raw file, as a transfer system sends."""
    name = f"RUN.{run}.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.{seq:03d}_J25.rtraw"
    RAW.mkdir(exist_ok=True)
    (RAW / name).write_bytes(b"x")
    return {
        "name": name,
        "url": (RAW / name).as_uri(),
        "run": run,
        "stream": "Physics",
        "sequence": seq,
        "size": 1,
        "created": f"2025-08-26T12:00:{seq % 60:02d}Z",
        "end_of_run": seq == files,
        "metadata": {},
    }


def wait_runs(db: Database, runs: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as s:
            done = s.scalar(
                sa.select(sa.func.count()).where(
                    Run.number.in_(runs), Run.status == RunStatus.ALL_COMPLETED
                )
            )
        if done == len(runs):
            return
        time.sleep(0.1)  # the wall time comes from the runs' completed_at, not from here
    raise RuntimeError(f"runs {runs} not All Completed after {timeout} s")


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) of each process so far, its reaped children included; for
    "database" (a server on this machine) its live children too (PostgreSQL's backends)."""
    seconds = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            t = process.cpu_times()
            live = process.children(recursive=True) if name == "database" else []
            seconds[name] = t.user + t.system + t.children_user + t.children_system
            for child in live:
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    seconds[name] += c.user + c.system
        except psutil.Error:
            continue
    return seconds


def database_server_pid(db: Database) -> int | None:
    """The database server's main process when it runs on this machine (its CPU counts in
    the engine's cost too); None for SQLite or a server elsewhere."""
    with db.session() as s:
        if db.engine.dialect.name == "postgresql":
            backend = psutil.Process(s.scalar(sa.text("SELECT pg_backend_pid()")))
            return None if backend.parent() is None else backend.parent().pid
        if db.engine.dialect.name in ("mysql", "mariadb"):
            pid_file = s.scalar(sa.text("SELECT @@pid_file"))
            with contextlib.suppress(OSError, ValueError):
                return int(Path(pid_file).read_text().strip())
    return None


def daemon_pids(procs: list[subprocess.Popen[bytes]], root: Path, db: Database) -> dict[str, int]:
    """The scheduler, the web server and the local workers (from their lock files)."""
    pids = {"scheduler": procs[0].pid, "server": procs[1].pid}
    database = database_server_pid(db)
    if database is not None:
        pids["database"] = database
    for lock in sorted(runtime_folder(root / "work").glob("worker-*.lock")):
        if lock.read_text().isdigit():
            pids[lock.stem] = int(lock.read_text())
    return pids


def throughput(
    db: Database, client: httpx.Client, base_run: int, pids: dict[str, int]
) -> dict[str, Any]:
    runs = [base_run + i for i in range(4)]
    body = [message(run, seq, 25) for seq in range(1, 26) for run in runs]
    cpu_before = cpu_seconds(pids)
    start = utcnow()
    client.post("/api/v1/messages", json=body, headers=TOKEN).raise_for_status()
    wait_runs(db, runs, 300)
    with db.session() as s:
        last = s.scalar(sa.select(sa.func.max(Run.completed_at)).where(Run.number.in_(runs)))
        assert last is not None
        wall = (last - start).total_seconds()
        n_tasks, cmd = s.execute(
            sa.select(sa.func.count(Attempt.id), sa.func.coalesce(sa.func.sum(Attempt.wall_s), 0))
            .join(Task, Task.id == Attempt.task_id)
            .join(Run, Run.id == Task.run_id)
            .where(Run.number.in_(runs))
        ).one()
    overhead = (wall - float(cmd) / 2) / n_tasks
    cpu_after = cpu_seconds(pids)
    cpu_ms = {
        name: round(1000 * (cpu_after[name] - cpu_before.get(name, 0.0)) / n_tasks, 2)
        for name in cpu_after
    }
    return {
        "tasks": n_tasks,
        "wall_s": round(wall, 3),
        "overhead_ms_per_task": round(1000 * overhead, 2),
        "cpu_ms_per_task": cpu_ms,
    }


def latency(db: Database, client: httpx.Client, base_run: int) -> dict[str, float]:
    runs = [base_run, base_run + 1]
    for seq in range(1, 26):
        for run in runs:
            client.post(
                "/api/v1/messages", json=message(run, seq, 25), headers=TOKEN
            ).raise_for_status()
            time.sleep(0.1)
    wait_runs(db, runs, 300)
    with db.session() as s:
        rows = s.execute(
            sa.select(ReceivedMessage.received_at, sa.func.min(Attempt.started_at))
            .join(Task, Task.file_id == ReceivedMessage.file_id)
            .join(Attempt, Attempt.task_id == Task.id)
            .join(Run, Run.id == Task.run_id)
            .where(Run.number.in_(runs), ReceivedMessage.status == MessageStatus.ACCEPTED)
            .group_by(ReceivedMessage.id, ReceivedMessage.received_at)
        ).all()
    lat = sorted((started - received).total_seconds() * 1000 for received, started in rows)
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    return {
        "msg_to_start_p50_ms": round(statistics.median(lat), 1),
        "msg_to_start_p99_ms": round(p99, 1),
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def measure(
    url: str, root: Path, preload_tasks: int, throughput_only: bool = False
) -> dict[str, Any]:
    db = reset(url)
    if preload_tasks:
        preload(db, preload_tasks)
        analyse(db)
    checkpoint(db)
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "pipelines" / "noop.yaml").write_text(PIPELINE)
    (root / "runwatch.toml").write_text(CONFIG.format(url=url, root=root))
    env = {**os.environ, "RUNWATCH_CONFIG": str(root / "runwatch.toml")}
    port = free_port()
    logs = open(root / "daemons.log", "ab")  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "runwatch", *args],
            env=env,
            stdout=logs,
            stderr=subprocess.STDOUT,
        )
        for args in (["scheduler"], ["serve", "--port", str(port)])
    ]
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        _wait_up(client, db, root)
        figures: dict[str, Any] = throughput(db, client, 900_001, daemon_pids(procs, root, db))
        if not throughput_only:
            figures.update(latency(db, client, 900_101))
        figures["peak_rss_mb"] = peak_rss_mb(procs[0].pid)
        return figures
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        db.dispose()
        # The local executor's locks and sockets, in memory (the work root goes with tmp).
        shutil.rmtree(runtime_folder(root / "work"), ignore_errors=True)


def _wait_up(client: httpx.Client, db: Database, root: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                with db.session() as s:
                    lease = s.execute(sa.text("SELECT holder FROM scheduler_lease")).first()
                workers = [
                    lock
                    for lock in runtime_folder(root / "work").glob("worker-*.lock")
                    if lock.read_text().isdigit()
                ]
                if lease and len(workers) == 2:  # their CPU time is measured too
                    return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("scheduler, workers or server did not come up")


def machine_speed_s() -> float:
    """Seconds for a fixed pure-Python loop, best of five, after the measurements: a
    check of the machine's speed when they were taken (a virtual machine's varies with
    the other guests on its host; 0.37 s on the benchmark machine at rest)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        sum(range(30_000_000))
        best = min(best, time.perf_counter() - start)
    return round(best, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "mariadb"], default="sqlite")
    parser.add_argument("--url", help="database URL for postgres/mariadb")
    parser.add_argument(
        "--throughput-only", action="store_true", help="skip the latency phase (profiling)"
    )
    parser.add_argument(
        "--preload",
        type=int,
        default=100_000,
        help="finished tasks already in the database for the second pass",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (daemons' logs) afterwards"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="rw-bench-")
            print(f"work folder (kept): {tmp}", flush=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="rw-bench-"))
        root = Path(tmp)
        url = args.url or f"sqlite:///{root}/runwatch.db"
        empty = measure(url, root / "empty", 0, args.throughput_only)
        print(f"empty database: {json.dumps(empty)}", flush=True)
        url2 = args.url or f"sqlite:///{root}/runwatch-preloaded.db"
        loaded = measure(url2, root / "preloaded", args.preload, args.throughput_only)
        print(f"with {args.preload} tasks already: {json.dumps(loaded)}", flush=True)
    result = {
        "db": args.db,
        **empty,
        "with_preloaded_tasks": args.preload,
        "preloaded": loaded,
        "machine_speed_s": machine_speed_s(),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
