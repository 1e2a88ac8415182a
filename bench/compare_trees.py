"""Compare the orchestration overhead of two source trees, run alternately (issue 2).

On a virtual machine the same code's figure varies by a quarter from one run to the next,
and runs in a row get slower; only runs made alternately, with rest in between, compare
two versions fairly. Each pass runs ``bench/orchestration.py --throughput-only`` once with
each tree's ``src`` first on ``PYTHONPATH`` (its daemons inherit it), e.g. a
``git worktree`` of an older commit against this one:

    git worktree add /tmp/before 5ffb97d
    python bench/compare_trees.py /tmp/before . --passes 5 --rest 20 \\
        --db postgres --url postgresql+psycopg://ci:ci@127.0.0.1/benchexec

Each reading is the overhead per task on an empty database / with the preloaded history.
The last line is RESULT {json}: per tree, its readings, their median and the CPU per task
of all processes together.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).with_name("orchestration.py")


def one_run(tree: Path, db: str, url: str | None, preload: int) -> dict[str, Any]:
    """One throughput run with ``tree``'s code; its RESULT."""
    env = {**os.environ, "PYTHONPATH": str((tree / "src").resolve())}
    argv = [sys.executable, str(BENCH), "--db", db, "--throughput-only", "--preload", str(preload)]
    if url:
        argv += ["--url", url]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=True)
    last = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")][-1]
    result: dict[str, Any] = json.loads(last.removeprefix("RESULT "))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, type=Path, help="two source trees (each with src/)")
    parser.add_argument("--passes", type=int, default=5, help="runs of each tree")
    parser.add_argument("--rest", type=float, default=20.0, help="seconds idle before a run")
    parser.add_argument("--db", choices=["sqlite", "postgres", "mariadb"], default="sqlite")
    parser.add_argument("--url", help="database URL for postgres/mariadb")
    parser.add_argument("--preload", type=int, default=100_000, help="history for pass 2")
    args = parser.parse_args()
    readings: dict[str, list[tuple[float, float]]] = {str(t): [] for t in args.trees}
    cpu: dict[str, list[float]] = {str(t): [] for t in args.trees}
    for _ in range(args.passes):
        for tree in args.trees:
            time.sleep(args.rest)
            result = one_run(tree, args.db, args.url, args.preload)
            pair = (result["overhead_ms_per_task"], result["preloaded"]["overhead_ms_per_task"])
            readings[str(tree)].append(pair)
            cpu[str(tree)] += [
                round(sum(result["cpu_ms_per_task"].values()), 2),
                round(sum(result["preloaded"]["cpu_ms_per_task"].values()), 2),
            ]
            print(f"{tree}: {pair[0]} / {pair[1]} ms/task", flush=True)
    summary = {
        tree: {
            "readings": pairs,
            "median_ms_per_task": round(statistics.median([x for pair in pairs for x in pair]), 2),
            "cpu_ms_per_task": [min(cpu[tree]), max(cpu[tree])],
        }
        for tree, pairs in readings.items()
    }
    for tree, figures in summary.items():
        print(f"{tree}: median {figures['median_ms_per_task']} ms/task")
    print("RESULT " + json.dumps({"db": args.db, "passes": args.passes, "trees": summary}))


if __name__ == "__main__":
    main()
