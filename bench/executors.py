"""Executor benchmark (issue 6): what handing many tasks to a batch system costs.

Workload: 1,000 short tasks (one file-scoped step, command ``true``), from 10 runs of 100
files. A real ``runwatch scheduler`` process with the chosen executor starts first and
settles (imports, lease); then all the files are announced while it is stopped
(SIGSTOP), and once it goes on it plans, submits and polls their tasks until every one is
done.

Figures:
- ``submit_tps``: tasks / (last submission - first task planned); planning is included,
  so this is a lower bound of the executor's own submit rate.
- ``ready_to_running_p50_s``/``p99``: a task becoming READY (planned) to its job's wrapper
  claiming it (the attempt's ``started_at``), which includes the batch system's queueing of
  1,000 jobs on this machine's few cores.
- ``sched_cpu_ms_per_task``: the issue's "scheduler CPU per task per tick": CPU (user +
  system) of the scheduler process alone while the tasks are handled, minus what it
  spends anyway while idle (its rate measured for a few seconds before the files arrive:
  it looks for new work every ``poll_seconds`` whether there is any or not), divided by
  the task-ticks (each task counted once per ``tick_seconds`` from its planning to its
  end, at least once).
  ``sched_cpu_ms_per_task_life`` divides the same CPU by the tasks only (a task's cost
  over all its ticks: large when a slow pool keeps tasks open for long);
  ``sched_cpu_ms_per_task_all`` keeps the idle part in too; ``idle_cpu_ms_per_s`` is
  the idle rate.

    python bench/executors.py --executor local
    python bench/executors.py --executor slurm --partition debug
    CONDOR_CONFIG=/etc/runwatch-condor/condor_config \\
        python bench/executors.py --executor htcondor --job-user rwcondor \\
        --url postgresql+psycopg://ci:ci@127.0.0.1/citest

The scheduler uses the database at ``--url`` (default: SQLite in the scratch folder; the
HTCondor pool's jobs run as another user in a chroot and need a server database). The
last line is RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from benchdb import reset

from runwatch.db import Database, utcnow
from runwatch.ingest.service import receive
from runwatch.workflow.models import Attempt, SchedulerLease, Task
from runwatch.workflow.states import TaskState

PIPELINE = """\
name: short
streams: [Physics]
steps:
  calib: {command: "true", retries: 0}
"""

CONFIG = """\
database_url = "{url}"
data_root = "{root}/data"
work_root = "{root}/work"
pipelines = "{root}/pipelines"

[scheduler]
executor = "{executor}"
slots = {slots}
tick_seconds = {tick}
heartbeat_timeout_seconds = 600
submit_grace_seconds = 3600

[dqm]
every_seconds = 3600

[slurm]
partition = "{partition}"
slots = {batch_slots}
queue_ahead = {batch_slots}

[htcondor]
slots = {batch_slots}
queue_ahead = {batch_slots}
job_user = "{job_user}"
"""

RUNS = 10
TICK_SECONDS = 1.0  # [scheduler] tick_seconds above


def announce(db: Database, raw: Path, tasks: int) -> None:
    """One message per file, like the transfer system's; the last file of a run ends it."""
    per_run = tasks // RUNS
    raw.mkdir(parents=True, exist_ok=True)
    for run in range(1, RUNS + 1):
        with db.session() as session:
            for seq in range(1, per_run + 1):
                name = f"RUN.{run}.JUNODAQ.Physics.ds-2.trigger.20251129120000.{seq:03d}_J25.rtraw"
                path = raw / name
                path.write_bytes(b"x")
                body = {
                    "name": name,
                    "url": path.as_uri(),
                    "run": run,
                    "stream": "Physics",
                    "sequence": seq,
                    "size": 1,
                    "adler32": "00620062",
                    "created": "2025-11-29T12:00:00Z",
                    "end_of_run": seq == per_run,
                }
                receive(session, json.dumps(body), "bench", None, utcnow())


def progress(db: Database) -> tuple[int, int]:
    """(tasks done or failed, attempts submitted)."""
    with db.session() as s:
        finished = s.scalar(
            sa.select(sa.func.count()).where(Task.state.in_([TaskState.DONE, TaskState.FAILED]))
        )
        submitted = s.scalar(sa.select(sa.func.count()).select_from(Attempt))
    return int(finished or 0), int(submitted or 0)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def settled_cpu(db: Database, proc: psutil.Process, timeout: float = 120.0) -> float:
    """The scheduler's CPU once it holds the lease and has gone quiet (imports done)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(proc)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        with db.session() as s:
            leading = s.scalar(sa.select(sa.func.count()).select_from(SchedulerLease))
        now = cpu_seconds(proc)
        if leading and now - last < 0.02:
            return now
        last = now
    raise SystemExit("the scheduler did not settle")


def wait_until_done(
    db: Database,
    proc: psutil.Process,
    scheduler: subprocess.Popen[bytes],
    tasks: int,
    timeout: float,
    root: Path,
) -> float:
    """Wait until every task is done (or failed); the scheduler's CPU by then."""
    deadline = time.monotonic() + timeout
    while True:
        cpu = cpu_seconds(proc)
        finished, submitted = progress(db)
        if finished >= tasks:
            return cpu
        if scheduler.poll() is not None:
            raise SystemExit(f"the scheduler exited; see {root}/scheduler.log")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {finished}/{tasks} done, {submitted} submitted")
        time.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", default="local", help="local, slurm or htcondor")
    parser.add_argument("--url", default="", help="database URL (default: SQLite)")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=2, help="the local executor's slots")
    parser.add_argument("--batch-slots", type=int, default=1000, help="a batch system's slots")
    parser.add_argument("--partition", default="", help="Slurm partition")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--job-user",
        default="",
        help="HTCondor: the user the jobs run as when this runs as root with another "
        "user's token (the test pool's: rwcondor)",
    )
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="rw-bench-exec-"))
    os.chmod(root, 0o755)  # an HTCondor job runs as another user and must reach its folders
    for sub in ("data", "work", "pipelines"):
        (root / sub).mkdir()
        os.chmod(root / sub, 0o777)
    (root / "pipelines" / "short.yaml").write_text(PIPELINE)
    url = args.url or f"sqlite:///{root}/runwatch.db"
    config = CONFIG.format(
        url=url,
        root=root,
        executor=args.executor,
        slots=args.slots,
        partition=args.partition,
        batch_slots=args.batch_slots,
        job_user=args.job_user,
        tick=TICK_SECONDS,
    )
    (root / "runwatch.toml").write_text(config)
    db = reset(url)
    tasks = (args.tasks // RUNS) * RUNS

    env = {**os.environ, "RUNWATCH_CONFIG": str(root / "runwatch.toml")}
    with open(root / "scheduler.log", "ab") as log:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "runwatch", "scheduler"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        proc = psutil.Process(scheduler.pid)
        settled = settled_cpu(db, proc)
        time.sleep(args.idle_seconds)
        baseline = cpu_seconds(proc)
        idle_rate = (baseline - settled) / args.idle_seconds
        # The files arrive while the scheduler is stopped (SIGSTOP), so that it plans all
        # their tasks in one tick and the submission rate is the scheduler's and the
        # executor's, not the rate at which this script announces files.
        scheduler.send_signal(signal.SIGSTOP)
        announce(db, root / "raw", args.tasks)
        started = time.time()
        scheduler.send_signal(signal.SIGCONT)
        cpu = wait_until_done(db, proc, scheduler, tasks, args.timeout, root) - baseline
    finally:
        scheduler.terminate()
        scheduler.wait(30)
    wall = time.time() - started

    with db.session() as s:
        rows = s.execute(
            sa.select(
                Task.created_at,
                Attempt.submitted_at,
                Attempt.started_at,
                Task.state,
                Task.finished_at,
            )
            .join(Attempt, Attempt.task_id == Task.id)
            .where(Attempt.number == 1)
        ).all()
    done = sum(1 for row in rows if row[3] is TaskState.DONE)
    last_submit = max(row[1] for row in rows).timestamp()
    first_ready = min(row[0] for row in rows).timestamp()
    waits = [(row[2] - row[0]).total_seconds() for row in rows if row[2] is not None]
    busy_cpu = max(0.0, cpu - idle_rate * wall)
    # Each task is open from its planning to its end, and looked at in every tick meanwhile
    # (at least one).
    task_ticks = sum(
        max(1.0, (row[4] - row[0]).total_seconds() / TICK_SECONDS) for row in rows if row[4]
    )
    result: dict[str, Any] = {
        "executor": args.executor,
        "tasks": tasks,
        "done": done,
        "db": db.engine.dialect.name,
        "wall_s": round(wall, 1),
        "submit_tps": round(tasks / max(last_submit - first_ready, 1e-3), 1),
        "ready_to_running_p50_s": round(statistics.median(waits), 2),
        "ready_to_running_p99_s": round(percentile(waits, 0.99), 2),
        "sched_cpu_ms_per_task": round(1000 * busy_cpu / max(task_ticks, 1.0), 3),
        "sched_cpu_ms_per_task_life": round(1000 * busy_cpu / tasks, 2),
        "sched_cpu_ms_per_task_all": round(1000 * cpu / tasks, 2),
        "idle_cpu_ms_per_s": round(1000 * idle_rate, 2),
        "sched_cpu_s": round(cpu, 2),
    }
    print(f"scratch folder: {root}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
