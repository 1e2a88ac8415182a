"""Serving files: the data root's (merged ROOT files, step outputs) under ``/files/``, and
task logs from the work root under ``/tasks/{id}/log``.

Outputs stored on root:// or https:// (``[storage] output_root``) are served under
``/files/`` too, by the same relative path: only those the database records, each from a
local copy in ``<work_root>/cache`` checked against its recorded adler32 (never a proxy
to any URL).

A path is served only when, fully resolved (symbolic links followed), it is a regular
file inside the root it is served from; anything else -- ``..``, an absolute path, a link
out of the root, a directory -- is a plain 404, so nobody learns what exists outside.
``FileResponse`` answers HTTP range requests (``Accept-Ranges: bytes``, 206 partial
content), which is how JSROOT reads ROOT files: a few byte ranges, never the whole file.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import quote, unquote

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse

from runwatch.catalogue.models import Run
from runwatch.config import Settings
from runwatch.storage.cache import ReplacedError, output_cache
from runwatch.storage.transfer import StageError
from runwatch.storage.urls import (
    URLError,
    folder_url,
    is_file_url,
    is_http_url,
    join_url,
    url_to_path,
)
from runwatch.web.auth import require_read
from runwatch.web.state import app_db, app_settings
from runwatch.workflow.models import Attempt, Task, TaskOutput

router = APIRouter(tags=["files"], dependencies=[Depends(require_read)])

CONTENT_TYPES = {".root": "application/octet-stream", ".log": "text/plain", ".txt": "text/plain"}
FILES_PREFIX = "/files/"


def contained(root: str | Path, relative: str) -> Path | None:
    """``root/relative`` resolved, if it is a regular file inside ``root``; else None."""
    if not relative or relative.startswith(("/", "\\")) or "\x00" in relative:
        return None
    if any(part == ".." for part in Path(relative).parts):
        return None
    base = Path(root).resolve()
    try:
        path = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


def inside(root: str | Path, path: str | Path) -> Path | None:
    """``path`` resolved, if it is a regular file inside ``root``; else None."""
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(Path(root).resolve()) or not resolved.is_file():
        return None
    return resolved


def file_link(settings: Settings):  # type: ignore[no-untyped-def]
    """A ``Linker``: the ``/files/…`` link of a URL or path under the data root, or of a
    URL under a remote ``[storage] output_root``; else None.

    Only the text of the path is compared (no file system access), so a page linking
    many files costs nothing; serving the link checks the file itself.
    """
    base = Path(settings.data_root).resolve()
    remote = _remote_root(settings)

    def link(url: str | None) -> str | None:
        if not url:
            return None
        if remote is not None and url.startswith(remote):
            relative = unquote(url[len(remote) :]) if is_http_url(url) else url[len(remote) :]
            return None if _unsafe(relative) else FILES_PREFIX + quote(relative)
        try:
            path = url_to_path(url)
        except URLError:
            return None
        if ".." in path.parts or not path.is_relative_to(base):
            return None
        return FILES_PREFIX + quote(path.relative_to(base).as_posix())

    return link


def _remote_root(settings: Settings) -> str | None:
    """``[storage] output_root`` ending in ``/`` when outputs are on root:// or https://."""
    root = settings.storage.output_root
    if not root or is_file_url(root):
        return None
    return folder_url(root, ())


def _unsafe(relative: str) -> bool:
    return (
        not relative
        or relative.startswith("/")
        or "\x00" in relative
        or ".." in relative.split("/")
    )


def content_type(path: Path) -> str:
    return (
        CONTENT_TYPES.get(path.suffix)
        or mimetypes.guess_type(path.name)[0]
        or ("application/octet-stream")
    )


@router.get("/files/{path:path}", response_class=FileResponse)
def serve_file(path: str, request: Request) -> FileResponse:
    """A file under the data root (HTTP ranges supported; HEAD for its size); 404 for
    anything else."""
    settings = app_settings(request)
    found = contained(settings.data_root, path)
    if found is None and _remote_root(settings) is not None:
        found = _remote_output(request, settings, path)
    if found is None:
        raise HTTPException(status_code=404, detail="no such file")
    return FileResponse(found, media_type=content_type(found))


def _remote_output(request: Request, settings: Settings, relative: str) -> Path | None:
    """A local copy of the output ``<output_root>/<relative>`` when it is one the database
    records (``<stream>/<run>/<step>/<name>``: nothing else is fetched), checked against
    the recorded adler32; None for anything else."""
    parts = relative.split("/")
    if _unsafe(relative) or len(parts) != 4 or not parts[1].isdigit():
        return None
    stream, run, step, name = parts
    try:
        url = join_url(folder_url(settings.storage.output_root, (stream, run, step)), name)
    except URLError:
        return None
    query = (
        sa.select(TaskOutput.adler32)
        .join(Task, Task.id == TaskOutput.task_id)
        .join(Run, Run.id == Task.run_id)
        .where(Run.number == int(run), Task.step == step, TaskOutput.url == url)
        .order_by(TaskOutput.id.desc())
        .limit(1)
    )
    with app_db(request).read_session() as session:
        recorded = session.scalar(query)
    if recorded is None:
        return None
    cache = output_cache(settings)
    try:
        try:
            return cache.local_path(url, recorded)
        except ReplacedError:
            # Stored again (a re-run, the next live merge) and not yet recorded: the
            # server's own checksum still checks the copy.
            return cache.local_path(url)
    except StageError as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from exc


# HEAD as a route of its own: one route with both methods gives two OpenAPI operations
# of the same id.
router.add_api_route("/files/{path:path}", serve_file, methods=["HEAD"], include_in_schema=False)


def attempt_log(request: Request, task_id: int, attempt: int | None) -> tuple[Attempt, Path | None]:
    """The attempt (the task's latest without ``attempt``) and its log file, when that is a
    file under the work root; 404 for an unknown task or attempt."""
    settings = app_settings(request)
    db = app_db(request)
    query = sa.select(Attempt).where(Attempt.task_id == task_id)
    if attempt is not None:
        query = query.where(Attempt.number == attempt)
    with db.read_session() as session:
        found = session.scalar(query.order_by(Attempt.number.desc()).limit(1))
        if found is None:
            raise HTTPException(status_code=404, detail=f"no attempt of task {task_id}")
        session.expunge(found)
    log = inside(settings.work_root, found.log_path) if found.log_path else None
    return found, log


@router.get("/tasks/{task_id}/log.txt", response_class=FileResponse)
def serve_log(request: Request, task_id: int, attempt: int | None = None) -> FileResponse:
    """An attempt's log file as text (HTTP ranges supported)."""
    _, log = attempt_log(request, task_id, attempt)
    if log is None:
        raise HTTPException(status_code=404, detail="no log file under the work root")
    return FileResponse(log, media_type="text/plain; charset=utf-8")
