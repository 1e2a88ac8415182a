"""runwatch's web app served for real (uvicorn in a thread, on a free port), for tests
that need a server a subprocess, nginx or a job wrapper can reach."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from runwatch.config import Settings
from runwatch.db import Database
from runwatch.web.app import create_app
from runwatch.web.live import Server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    """The app for ``settings`` (or for the settings ``settings(url)`` makes, for a server
    that must know its own address) on a fixed port; it can be stopped and started again
    on the same port (a server going away under a worker)."""

    def __init__(self, settings: Settings | Callable[[str], Settings], db: Database) -> None:
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = settings(self.url) if callable(settings) else settings
        self.app = create_app(self.settings, db)  # made once: a restart serves the same app
        self.server: Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            proxy_headers=False,  # as `runwatch serve`: the peer is who connected
            timeout_graceful_shutdown=2,
        )
        self.server = server = Server(config)
        self.thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert self.thread.is_alive(), "the server did not start"
            assert time.monotonic() < deadline, "the server did not start in time"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=30)
            assert not self.thread.is_alive(), "the server did not stop"
        self.server = self.thread = None
