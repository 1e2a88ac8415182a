"""``runwatch serve --workers N``: N server processes share the port, each with its own app
built from the deployment in force, and all stop with the parent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from tests.waiting import wait_for
from tests.web.liveserver import free_port


def test_several_worker_processes_serve_one_port(deployment: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runwatch", "serve", "--port", str(port), "--workers", "2"],
        cwd=deployment,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parent = psutil.Process(proc.pid)
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 60, "the server answering")
        servers: list[psutil.Process] = []

        def two_servers() -> bool:
            servers[:] = [
                child
                for child in parent.children()
                if "--multiprocessing-fork" in child.cmdline()  # uvicorn's spawned workers
            ]
            return len(servers) == 2

        wait_for(two_servers, 30, "two server processes")
        runs = httpx.get(f"http://127.0.0.1:{port}/api/v1/runs", timeout=5)
        assert runs.status_code == 200 and runs.json()["runs"] == []
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0
    _gone, alive = psutil.wait_procs(servers, timeout=10)
    assert not alive, "a server process outlived the parent"
