"""``runwatch demo --serve``: the demo's deployment serves the web site at the printed address."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from rich.console import Console

from runwatch.experiments.juno.demo import open_web_site, prepare, stop
from tests.web.liveserver import free_port


def test_the_demo_serves_its_web_site_and_prints_the_address(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    prepare(folder)
    port = free_port()
    out = io.StringIO()
    web = open_web_site(folder, port, Console(file=out, width=200))
    try:
        assert f"web site: http://localhost:{port}/" in out.getvalue()
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "No runs match." in page.text
    finally:
        stop(web)
    assert web.returncode is not None
