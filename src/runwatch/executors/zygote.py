"""A fork server for job wrappers: ``python -m runwatch.executors.zygote``.

Starting Python and importing the wrapper's modules (SQLAlchemy, the database drivers)
costs about 300 ms per job, far more than the engine's own work per task. The local
executor therefore starts this process once; it imports everything up front and then, for
each request, forks a copy of itself that runs the wrapper's ``main`` at once.

Protocol (JSON lines): the zygote writes ``{"ready": PID}`` on stdout once loaded; then for
each request ``{"argv": [...], "env": {...}, "cwd": "...", "log_path": "..."}`` read from
stdin it answers ``{"pid": N}`` (the wrapper's pid) or ``{"error": "..."}``. It exits when
stdin closes, which is also what happens when the scheduler that started it dies.

Each wrapper is forked once and starts a new session at once: it has no controlling
terminal and its own process group, so killing the zygote (or its exit) leaves running
wrappers alone; they are then adopted by init. While the zygote lives it reaps every
wrapper the moment it ends (SIGCHLD), so none lingers as a zombie. A double fork, which
would hand wrappers to init at once, costs a second fork plus waiting for the middle
process to exit (about 13 ms per job instead of 2 ms here), and init may reap slowly.

With ``RUNWATCH_DATABASE_URL`` in its environment the zygote also builds and warms the
wrappers' database engine once (``runwatch.jobs.warm``), so that no wrapper compiles its SQL
afresh; it closes its connections before serving, so none is ever shared with a wrapper.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import random
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

PRELOAD = (
    "runwatch.jobs.wrapper",
    "httpx",
    "sqlite3",
    "sqlalchemy.dialects.sqlite.pysqlite",
    "psycopg",
    "sqlalchemy.dialects.postgresql.psycopg",
    "pymysql",
    "sqlalchemy.dialects.mysql.pymysql",
)
DATABASE_URL_ENV = "RUNWATCH_DATABASE_URL"
WRAPPER_CRASHED = 70  # the wrapper raised instead of returning an exit code
# Signals whose handling a wrapper must start from scratch (the zygote may have changed them).
RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)


def preload() -> None:
    """Import what every wrapper needs, so that a forked wrapper starts with it loaded."""
    for module in PRELOAD:
        with contextlib.suppress(ImportError):  # an optional driver that is not installed
            importlib.import_module(module)
    from sqlalchemy.orm import configure_mappers

    from runwatch.db import import_all_models

    import_all_models()
    configure_mappers()
    # Objects made so far are never freed: keep the collector from touching (and so
    # copying) their memory pages in every forked wrapper.
    if url := os.environ.get(DATABASE_URL_ENV):
        from runwatch.jobs.warm import warm_database

        warm_database(url)
    gc.collect()
    gc.freeze()


def serve() -> None:
    """Answer requests from stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the scheduler
    signal.signal(signal.SIGCHLD, reap)
    preload()
    reply({"ready": os.getpid()})
    requests = sys.stdin.buffer
    while line := requests.readline():
        try:
            reply({"pid": spawn(json.loads(line))})
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})


def reply(message: dict[str, Any]) -> None:
    # Raw writes: nothing may sit in a stdio buffer when the process forks.
    data = json.dumps(message).encode() + b"\n"
    while data:
        data = data[os.write(1, data) :]


def spawn(request: dict[str, Any]) -> int:
    """Fork a detached wrapper for ``request``; return its pid."""
    argv = [str(a) for a in request["argv"]]
    env = {str(k): str(v) for k, v in request["env"].items()}
    cwd = str(request["cwd"])
    log_path = Path(request["log_path"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = os.fork()
        if pid == 0:
            os.setsid()
            _become_wrapper(log_fd, argv, env, cwd)
    finally:
        os.close(log_fd)
    return pid


def reap(_signum: int = 0, _frame: object = None) -> None:
    """Collect every wrapper that ended, so that none lingers as a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_wrapper(log_fd: int, argv: list[str], env: dict[str, str], cwd: str) -> None:
    """Turn this forked copy into a fresh wrapper process; never returns."""
    code = WRAPPER_CRASHED
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # Nothing of the zygote's may stay open here: above all not its reply pipe, whose
        # end-of-file tells the executor that the zygote died.
        _close_inherited_fds()
        for signum in RESET_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        random.seed()  # else every wrapper draws the same "random" numbers
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["runwatch-job", *argv]
        from runwatch.jobs.wrapper import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else WRAPPER_CRASHED
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _close_inherited_fds() -> None:
    try:  # only the descriptors that are open: the limit may be a million
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        return
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)


if __name__ == "__main__":
    serve()
