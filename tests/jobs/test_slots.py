"""Slots as file locks: one job per slot, all-or-nothing for multi-threaded jobs, and a
killed holder gives its slot back."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runwatch.jobs.slots import slots_env, slots_from_env, slots_held
from tests.waiting import wait_for


def test_the_environment_value_round_trips_and_bad_values_are_refused(tmp_path: Path) -> None:
    assert slots_from_env(slots_env(4, 2, tmp_path / "s:x")) == (4, 2, tmp_path / "s:x")
    assert slots_from_env(None) is None and slots_from_env("") is None
    for bad in ("4", "0:1:/x", "a:1:/x", "4:1:", "4:-1:/x"):
        with pytest.raises(ValueError, match="RUNWATCH_SLOTS"):
            slots_from_env(bad)


def hold_in_thread(
    directory: Path, count: int, threads: int, got: list[tuple[float, list[int]]]
) -> tuple[threading.Thread, threading.Event]:
    """Take slots in a thread and keep them until the returned event is set."""
    release = threading.Event()

    def hold() -> None:
        with slots_held(count, directory, threads) as held:
            got.append((time.monotonic(), held))
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    return thread, release


def test_a_second_job_waits_for_the_only_slot_and_gets_it_at_once(tmp_path: Path) -> None:
    first: list[tuple[float, list[int]]] = []
    second: list[tuple[float, list[int]]] = []
    t1, r1 = hold_in_thread(tmp_path, 1, 1, first)
    wait_for(lambda: first)
    t2, r2 = hold_in_thread(tmp_path, 1, 1, second)
    time.sleep(0.2)
    assert second == [], "two jobs in one slot"
    freed = time.monotonic()
    r1.set()
    t1.join()
    wait_for(lambda: second)
    assert second[0][1] == [0]
    assert second[0][0] - freed < 0.05, "the waiting job was slow to take the slot"
    r2.set()
    t2.join()


def test_a_two_thread_job_takes_two_slots_at_once_or_none(tmp_path: Path) -> None:
    small: list[tuple[float, list[int]]] = []
    big: list[tuple[float, list[int]]] = []
    huge: list[tuple[float, list[int]]] = []
    t1, r1 = hold_in_thread(tmp_path, 2, 1, small)
    wait_for(lambda: small)
    t2, r2 = hold_in_thread(tmp_path, 2, 2, big)
    time.sleep(0.2)
    assert big == [], "a two-thread job started with one slot free"
    r1.set()
    t1.join()
    wait_for(lambda: big)
    assert big[0][1] == [0, 1]
    r2.set()
    t2.join()
    t3, r3 = hold_in_thread(tmp_path, 2, 8, huge)  # more threads than slots: all slots
    wait_for(lambda: huge)
    assert huge[0][1] == [0, 1]
    r3.set()
    t3.join()


def test_a_killed_holder_gives_its_slot_back(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib\n"
            "from runwatch.jobs.slots import slots_held\n"
            "with slots_held(1, pathlib.Path(sys.argv[1]), 1):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        got: list[tuple[float, list[int]]] = []
        thread, release = hold_in_thread(tmp_path, 1, 1, got)
        time.sleep(0.1)
        assert got == []
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        wait_for(lambda: got)
        assert got and got[0][1] == [0]
        release.set()
        thread.join()
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
