"""Web benchmark (issue 5): the shifters' pages under load on years of history.

Seeds (bench/web_seed.py) 100,000 runs, 2,000,000 files and 6,000,000 tasks, starts the
real `runwatch serve`, and drives it with 20 concurrent clients for 30 s per page kind:
the recent-runs page, its JSON API, a run page and the PMT map data. Each client asks,
waits for the answer and asks again (closed loop, no think time); it varies what it asks
for (pages of recent runs, filters, run numbers) the way shifters would.

    python bench/web_load.py --db sqlite
    python bench/web_load.py --db postgres --url postgresql+psycopg://ci:ci@127.0.0.1/citest

Targets: recent-runs page p99 <= 100 ms and >= 200 requests/s on both databases. The
last line is RESULT {json} with db, runs, recent_p50_ms, recent_p99_ms, recent_rps,
run_page_p99_ms, pmt_p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))
import web_seed

from runwatch.catalogue.models import Run
from runwatch.db import Database, utcnow
from runwatch.dqm.models import DqmMerge, DqmPmtStatus
from runwatch.dqm.pmtstatus import DEFAULT_CUTS, status_from_fraction
from runwatch.dqm.service import fill_pmt_status
from runwatch.workflow.models import Attempt, Task, TaskOutput

N_PMT = 17_612
STATUSES = ("Data Taking", "Rec Running", "Partly Completed", "All Completed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_pmt_status(db: Database, numbers: list[int], seed: int) -> None:
    """A PMT status for the runs the run-page and PMT-map clients ask for."""
    rng = np.random.default_rng(seed)
    now = utcnow()
    with db.session() as session:
        for number in numbers:
            run = session.scalars(sa.select(Run).where(Run.number == number)).one()
            task = session.scalars(
                sa.select(Task).where(Task.run_id == run.id).order_by(Task.id).limit(1)
            ).one()
            attempt = Attempt(task_id=task.id, number=1, executor="local", spec={})
            session.add(attempt)
            session.flush()
            url = f"file:///data/Physics/{number}/merge/RUN.{number}.merged.root"
            session.add(
                TaskOutput(
                    task_id=task.id,
                    attempt_id=attempt.id,
                    name="merged",
                    url=url,
                    size=1,
                    adler32="00000001",
                )
            )
            merge = DqmMerge(
                run_id=run.id,
                task_id=task.id,
                attempt_id=attempt.id,
                url=url,
                final=True,
                files_included=20,
                files_total=20,
                events_included=1_600_000,
                events_total=1_600_000,
                contributions=[],
                errors=[],
                merged_at=now,
            )
            session.add(merge)
            session.flush()
            fraction = rng.normal(0.1, 0.003, N_PMT).clip(0, 1).astype(np.float32)
            fraction[rng.choice(N_PMT, 30, replace=False)] = 0.0
            status = status_from_fraction(fraction, DEFAULT_CUTS, 1_600_000)
            row = DqmPmtStatus(run_id=run.id)
            fill_pmt_status(row, merge.id, status, DEFAULT_CUTS, now)
            session.add(row)


@contextlib.contextmanager
def serving(url: str, workers: int) -> Iterator[str]:
    """`runwatch serve` on the seeded database; its base URL."""
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="runwatch-webload-"))
    (folder / "runwatch.toml").write_text("[web]\npublic_read = true\ncookie_secure = false\n")
    env = {
        **os.environ,
        "RUNWATCH_DATABASE_URL": url,
        "RUNWATCH_CONFIG": str(folder / "runwatch.toml"),
    }
    argv = ["runwatch", "serve", "--port", str(port)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    with open(folder / "serve.log", "wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError((folder / "serve.log").read_text()[-2000:])
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _client(
    base: str, next_path: Callable[[random.Random], str], seconds: float, seed: int
) -> tuple[list[float], int]:
    rng = random.Random(seed)
    times: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            response = await client.get(next_path(rng))
            elapsed = time.perf_counter() - started
            if response.status_code == 200:
                times.append(elapsed)
            else:
                errors += 1
    return times, errors


def load(
    base: str, next_path: Callable[[random.Random], str], clients: int, seconds: float
) -> dict[str, Any]:
    async def everyone() -> list[tuple[list[float], int]]:
        return await asyncio.gather(
            *(_client(base, next_path, seconds, 1000 + i) for i in range(clients))
        )

    results = asyncio.run(everyone())
    times = sorted(t for ts, _ in results for t in ts)
    errors = sum(e for _, e in results)
    if not times:
        return {"requests": 0, "errors": errors}
    return {
        "requests": len(times),
        "errors": errors,
        "rps": round(len(times) / seconds, 1),
        "p50_ms": round(1000 * statistics.median(times), 1),
        "p99_ms": round(1000 * times[min(len(times) - 1, int(0.99 * len(times)))], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--url", help="Database URL (emptied and seeded unless --reuse).")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--reuse", action="store_true", help="The database is seeded already.")
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.gettempdir()) / 'runwatch-webload.db'}"
    if not args.reuse:
        started = time.monotonic()
        db = web_seed.reset(url)
        counts = web_seed.seed(db, args.runs)
        last = 100_000 + args.runs - 1
        seed_pmt_status(db, list(range(last - 49, last + 1)), web_seed.SEED)
        db.dispose()
        print(f"seeded {counts} in {time.monotonic() - started:.0f} s", flush=True)
    last = 100_000 + args.runs - 1
    recent_runs = list(range(last - 49, last + 1))

    def recent(rng: random.Random) -> str:
        page = rng.choice((1, 1, 1, 2, 3))
        query = [f"page={page}"]
        if rng.random() < 0.3:
            query.append(f"status={rng.choice(STATUSES)}")
        if rng.random() < 0.2:
            query.append(f"stream={rng.choice(('Physics', 'Calib'))}")
        return "/?" + "&".join(query).replace(" ", "+")

    figures: dict[str, dict[str, Any]] = {}
    with serving(url, args.workers) as base:
        kinds: dict[str, Callable[[random.Random], str]] = {
            "recent": recent,
            "recent_api": lambda rng: "/api/v1/runs" + recent(rng)[1:],
            "run_page": lambda rng: f"/runs/{rng.choice(recent_runs)}",
            "pmt": lambda rng: f"/api/v1/runs/{rng.choice(recent_runs)}/pmt",
        }
        for name, next_path in kinds.items():
            figures[name] = load(base, next_path, args.clients, args.seconds)
            print(f"{name}: {json.dumps(figures[name])}", flush=True)
    result = {
        "db": args.db,
        "runs": args.runs,
        "recent_p50_ms": figures["recent"].get("p50_ms"),
        "recent_p99_ms": figures["recent"].get("p99_ms"),
        "recent_rps": figures["recent"].get("rps"),
        "run_page_p99_ms": figures["run_page"].get("p99_ms"),
        "pmt_p99_ms": figures["pmt"].get("p99_ms"),
        "details": figures,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
