"""JUNO chain benchmark (issue 3): what each step program costs per event, and its memory.

Each step runs as its own ``runwatch juno ...`` process, one after the other, on the same
file of JUNO-like events (the simulator's default Physics mix, waveforms included):

    daqsim -> raw -> calib -> calib file -> rec (all events; and --sample-fraction 0.2)
                                         -> hist (calib + full rec) -> histograms

A step's CPU time is its process's user + system time from the kernel (``os.wait4``), so
other programs on this shared machine slow the wall clock more than the figures; wall time
is reported too. A process's start-up (interpreter, imports, geometry, constants) is a
fixed cost per file: it is measured on a small file of ``SMALL_EVENTS`` events and taken
out, giving the cost per event; ``cores_for_1khz`` adds it back spread over a JUNO file of
80,000 events. Peak memory is the process's ``ru_maxrss``. One core per step: ``rec`` runs
with ``--threads 1``.

    python bench/juno_chain.py                 # 20,000 events, 3 repeats: ~5 minutes
    python bench/juno_chain.py --big           # 80,000 events (a ~5 GB raw file), once

The last line is RESULT {json}: events per CPU second for each step (``*_evps``), the
largest peak RSS of any step on the big file, and the cores needed at 1 kHz.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uproot

SMALL_EVENTS = 20
JUNO_FILE_EVENTS = 80_000
RATE_HZ = 1_000
STEPS = ("daqsim", "calib", "rec", "rec_sampled", "hist")
CHAIN = ("calib", "rec", "hist")  # what keep-up runs on every file
SAMPLED = ("--sample-fraction", "0.2")


@dataclass(frozen=True)
class Usage:
    """One step process: wall and CPU seconds, peak resident memory."""

    wall_s: float
    cpu_s: float
    rss_mb: float


def run_step(args: list[str], log: Path) -> Usage:
    """Run ``runwatch ARGS`` to completion; its own CPU time and peak RSS from the kernel."""
    with log.open("ab") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "runwatch", *args], stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage, not all children's
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"runwatch {' '.join(args)} failed ({proc.returncode}); see {log}")
    return Usage(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def simulate(folder: Path, events: int, log: Path) -> tuple[Usage, Path, Path]:
    """Write one raw file of ``events`` events; its usage, path and true constants."""
    args = ["juno", "daqsim", "--run", "1", "--events", str(events), "--seed", "1"]
    args += ["--out", str(folder), "--truth", str(folder / "truth"), "--quiet"]
    usage = run_step(args, log)
    (raw,) = folder.glob("*.rtraw")
    return usage, raw, folder / "truth" / "RUN.1.constants.csv"


def outputs(raw: Path) -> dict[str, Path]:
    """The files the steps write beside ``raw``."""
    base = str(raw)[: -len(raw.suffix)]
    return {s: Path(f"{base}.{s}.root") for s in ("calib", "rec", "rec20", "hist")}


def chain(raw: Path, constants: Path, log: Path) -> dict[str, Usage]:
    """calib, rec (full and sampled) and hist on ``raw``, each in its own process."""
    out = {name: str(path) for name, path in outputs(raw).items()}
    commands = {
        "calib": ["calib", str(raw), out["calib"], "--constants", str(constants)],
        "rec": ["rec", out["calib"], out["rec"], "--threads", "1"],
        "rec_sampled": [*("rec", out["calib"], out["rec20"], "--threads", "1"), *SAMPLED],
        "hist": ["hist", "--calib", out["calib"], "--rec", out["rec"], out["hist"]],
    }
    return {step: run_step(["juno", *args], log) for step, args in commands.items()}


def measure(folder: Path, events: int, log: Path) -> tuple[dict[str, Usage], dict[str, float]]:
    """Every step once on a fresh file of ``events`` events; the files are removed after."""
    folder.mkdir(parents=True)
    usage, raw, constants = simulate(folder, events, log)
    figures = {"daqsim": usage, **chain(raw, constants, log)}
    facts = file_facts(raw, outputs(raw)["hist"])
    for path in [raw, *outputs(raw).values()]:
        path.unlink()
    return figures, facts


def file_facts(raw: Path, hist: Path) -> dict[str, float]:
    """Size of the raw file and fired PMTs per event (from the hist output)."""
    with uproot.open(hist) as file:
        events = float(file["n_events"].values()[0])
        hits = float(file["pmt_hits"].values().sum())
    return {
        "raw_mb": round(raw.stat().st_size / 1e6, 1),
        "raw_kb_per_event": round(raw.stat().st_size / 1e3 / events, 1),
        "hits_per_event": round(hits / events, 1),
    }


def median_usage(runs: list[dict[str, Usage]], step: str) -> Usage:
    return Usage(
        statistics.median(r[step].wall_s for r in runs),
        statistics.median(r[step].cpu_s for r in runs),
        max(r[step].rss_mb for r in runs),
    )


def summarise(
    big: list[dict[str, Usage]], small: list[dict[str, Usage]], events: int
) -> dict[str, Any]:
    """Per-step figures: fixed start-up CPU, CPU and wall per event, events per CPU s."""
    steps = {}
    for step in STEPS:
        large, fixed = median_usage(big, step), median_usage(small, step)
        per_event = (large.cpu_s - fixed.cpu_s) / (events - SMALL_EVENTS)
        if per_event <= 0:
            raise RuntimeError(f"{step}: no CPU beyond start-up; use more --events")
        steps[step] = {
            "startup_cpu_s": round(fixed.cpu_s, 2),
            "cpu_s": round(large.cpu_s, 2),
            "wall_s": round(large.wall_s, 2),
            "cpu_us_per_event": round(per_event * 1e6, 1),
            "evps": round(1 / per_event),
            "evps_wall_incl_startup": round(events / large.wall_s),
            "peak_rss_mb": round(large.rss_mb, 1),
        }
    return steps


def cores_for_1khz(steps: dict[str, Any]) -> float:
    """Cores kept busy by calib + rec + hist at 1 kHz, start-up spread over JUNO files."""
    per_event = sum(
        float(steps[s]["cpu_us_per_event"]) * 1e-6
        + float(steps[s]["startup_cpu_s"]) / JUNO_FILE_EVENTS
        for s in CHAIN
    )
    return round(RATE_HZ * per_event, 2)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events in the file")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step (median)")
    parser.add_argument(
        "--big", action="store_true", help="80,000 events (~5 GB raw file), run once"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where files go (/tmp)")
    args = parser.parse_args()
    if args.events < 1_000:
        parser.error("--events must be at least 1000: start-up would swamp the figures")
    events, repeat = (JUNO_FILE_EVENTS, 1) if args.big else (args.events, args.repeat)
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rw-juno-bench-", dir=args.workdir) as tmp:
        root = Path(tmp)
        log = root / "steps.log"
        small, big = [], []
        for i in range(repeat):
            small.append(measure(root / f"small{i}", SMALL_EVENTS, log)[0])
            figures, facts = measure(root / f"big{i}", events, log)
            big.append(figures)
            print(f"run {i + 1}: " + _line(figures, events), flush=True)
    steps = summarise(big, small, events)
    for step, figures in steps.items():
        print(f"{step}: {json.dumps(figures)}", flush=True)
    result = {
        "events": events,
        "repeat": repeat,
        **facts,
        "daqsim_evps": steps["daqsim"]["evps"],
        "calib_evps": steps["calib"]["evps"],
        "rec_evps": steps["rec"]["evps"],
        "rec_evps_sampled": steps["rec_sampled"]["evps"],
        "hist_evps": steps["hist"]["evps"],
        "peak_rss_mb": max(figures["peak_rss_mb"] for figures in steps.values()),
        "cores_for_1khz": cores_for_1khz(steps),
        "steps": steps,
    }
    print("RESULT " + json.dumps(result))


def _line(run: dict[str, Usage], events: int) -> str:
    return (
        ", ".join(
            f"{step} {u.cpu_s:.1f} s CPU ({u.wall_s:.1f} wall, {u.rss_mb:.0f} MB)"
            for step, u in run.items()
        )
        + f" for {events} events"
    )


if __name__ == "__main__":
    main()
