"""Copies to and from XRootD servers (``root://``, as EOS serves files), one try each, with
the ``xrootd`` wheel's client; ``stage.py`` retries them.

The client library retries a lost connection by itself, five times in windows of two
minutes: a job would hang for ten minutes on a server that is down. It is told to try
once (``CLIENT_SETTINGS``) so that the ``[storage]`` retries and backoff decide instead;
an ``XRD_*`` variable set in the job's environment still wins.

Checksums come from the server (a checksum query, answered by EOS and by an xrootd with
``xrootd.chksum adler32``); a server that cannot answer one is checked by size only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from runwatch.storage.checksum import CHUNK, adler32_hex, normalise_adler32
from runwatch.storage.transfer import Deadline, Progress, StageError, TransientError
from runwatch.storage.urls import split_root_url

log = logging.getLogger(__name__)

# XrdCl settings (names as in XrdCl's DefaultEnv; XRD_<NAME upper case> overrides them).
CLIENT_SETTINGS = {
    "ConnectionRetry": 1,  # one connection try per call: our retries back off instead
    "ConnectionWindow": 10,  # seconds one connection try may take
    # After a failed connection the client refuses every call to that server for this
    # long (default 30 min): a server back after a restart would stay unusable.
    "StreamErrorWindow": 0,
    "TimeoutResolution": 1,  # check the per-call timeouts every second, not every 15
}

# XRootD protocol error numbers (XProtocol.hh) that a server answers.
kXR_NotFound = 3011
kXR_Unsupported = 3013
# Worth another try: the server or its disk is busy, restarting or broken for a moment.
TRANSIENT_ERRNOS = frozenset(
    {
        3007,  # kXR_IOError
        3008,  # kXR_NoMemory
        3012,  # kXR_ServerError
        3014,  # kXR_noserver
        3019,  # kXR_ChkSumErr
        3024,  # kXR_Overloaded
        3034,  # kXR_ReqTimedOut
        3035,  # kXR_TimerExpired
    }
)


@cache
def xrootd_client() -> Any:
    """``XRootD.client``, configured; imported only by jobs that use root:// URLs."""
    from XRootD import client as module

    client: Any = module  # the wheel's typing is partial
    for name, value in CLIENT_SETTINGS.items():
        if f"XRD_{name.upper()}" not in os.environ:
            client.EnvPutInt(name, value)
    return client


def _flags() -> Any:
    from XRootD.client import flags

    return flags


@cache
def _transient_codes() -> frozenset[int]:
    """XrdCl status codes of a failure on the way to the server, not an answer from it."""
    status = _status_class()
    return frozenset(
        getattr(status, name)
        for name in (
            "errRetry",
            "errSocketError",
            "errSocketTimeout",
            "errSocketDisconnected",
            "errPollerError",
            "errStreamDisconnect",
            "errConnectionError",
            "errInvalidSession",
            "errTlsError",
            "errOperationExpired",
            "errOperationInterrupted",
            "errThresholdExceeded",
            "errCheckSumError",
            "errCorruptedHeader",
        )
    )


def _status_class() -> Any:
    from XRootD.client.responses import XRootDStatus

    return XRootDStatus


def failure(status: Any, what: str) -> StageError | TransientError:
    """The error to raise for the failed XRootD ``status`` of the copy ``what``."""
    reason = str(status.message).strip()
    if status.errno == kXR_NotFound or status.code == _status_class().errNotFound:
        return StageError(f"{what}: no such file ({reason})")
    if status.code in _transient_codes() or status.errno in TRANSIENT_ERRNOS:
        return TransientError(f"{what}: {reason}")
    return StageError(f"{what}: {reason}")


def _checked(result: tuple[Any, Any], what: str) -> Any:
    status, response = result
    if not status.ok:
        raise failure(status, what)
    return response


# -- reading ------------------------------------------------------------------------------


class RemoteFile:
    """A file open for reading on an XRootD server."""

    def __init__(self, url: str, handle: Any, size: int) -> None:
        self.url = url
        self.handle = handle
        self.size = size

    def blocks(self, deadline: Deadline, what: str) -> Iterator[bytes]:
        offset = 0
        while offset < self.size:
            block = _checked(
                self.handle.read(offset, CHUNK, timeout=deadline.whole_seconds()), what
            )
            if not block:
                raise TransientError(f"{what}: the file ended at {offset} of {self.size} bytes")
            offset += len(block)
            yield block


@contextlib.contextmanager
def reading(url: str, deadline: Deadline, what: str) -> Iterator[RemoteFile]:
    """``url`` open for reading (``StageError`` at once if it does not exist)."""
    handle = xrootd_client().File()
    _checked(handle.open(url, _flags().OpenFlags.READ, timeout=deadline.whole_seconds()), what)
    try:
        info = _checked(handle.stat(timeout=deadline.whole_seconds()), what)
        yield RemoteFile(url, handle, int(info.size))
    finally:
        _close_quietly(handle)


def _close_quietly(handle: Any) -> None:
    # After a lost connection the client has closed the file itself (and says so).
    with contextlib.suppress(ValueError):
        if handle.is_open():
            handle.close(timeout=5)


def server_adler32(url: str, deadline: Deadline, what: str) -> str | None:
    """The server's adler32 of the file at ``url``; None if it computes no adler32."""
    server, path = split_root_url(url)
    status, answer = _filesystem(server).query(
        _flags().QueryCode.CHECKSUM, path, timeout=deadline.whole_seconds()
    )
    if not status.ok:
        if status.errno == kXR_Unsupported or status.code in (
            _status_class().errNotSupported,
            _status_class().errQueryNotSupported,
        ):
            log.warning("%s computes no checksums; checking the size only", server)
            return None
        raise failure(status, what)
    # The answer is "<algorithm> <value>", NUL-terminated.
    text = answer.decode("ascii", errors="replace").strip("\x00 \n") if answer else ""
    algorithm, _, value = text.partition(" ")
    if algorithm.lower() != "adler32":
        log.warning("%s answers %s, not adler32; checking the size only", server, algorithm)
        return None
    try:
        return normalise_adler32(value)
    except ValueError as exc:
        raise TransientError(f"{what}: the server's checksum {text!r} is not adler32") from exc


_filesystems: dict[str, Any] = {}
_filesystems_lock = threading.Lock()


def _filesystem(server: str) -> Any:
    """One ``FileSystem`` per server: the client keeps its connection open for reuse."""
    with _filesystems_lock:
        if server not in _filesystems:
            _filesystems[server] = xrootd_client().FileSystem(server)
        return _filesystems[server]


# -- writing ------------------------------------------------------------------------------


def upload(
    source: Path,
    directory_url: str,
    name: str,
    deadline: Deadline,
    what: str,
    progress: Progress | None = None,
) -> tuple[str, int]:
    """Store the local file ``source`` as ``name`` in ``directory_url``; return its adler32
    and size as the server has them.

    The bytes go to a hidden temporary name first, the server's checksum of that file is
    compared with the local one, and only then is it renamed to ``name``: a copy broken
    off at any point leaves no whole-looking file under ``name``.
    """
    server, directory = split_root_url(directory_url.rstrip("/") + "/")
    directory = directory.rstrip("/")
    fs = _filesystem(server)
    flags = _flags()
    timeout = deadline.whole_seconds
    _checked(fs.mkdir(directory, flags.MkDirFlags.MAKEPATH, timeout=timeout()), what)
    _remove_stale_parts(fs, directory, name, deadline, what)
    temporary = f"{directory}/.{name}.part-{secrets.token_hex(6)}"
    try:
        checksum, size = _write(f"{server}/{temporary}", source, deadline, what, progress)
        _verify(f"{server}/{temporary}", checksum, size, deadline, what)
        _checked(fs.mv(temporary, f"{directory}/{name}", timeout=timeout()), what)
    except BaseException:
        # Best effort: with the server gone the next try removes it (stale parts).
        with contextlib.suppress(Exception):
            fs.rm(temporary, timeout=5)
        raise
    return checksum, size


def _write(
    url: str, source: Path, deadline: Deadline, what: str, progress: Progress | None
) -> tuple[str, int]:
    handle = xrootd_client().File()
    _checked(handle.open(url, _flags().OpenFlags.NEW, timeout=deadline.whole_seconds()), what)
    value, size = 1, 0
    try:
        with open(source, "rb") as stream:
            while block := stream.read(CHUNK):
                _checked(handle.write(block, size, timeout=deadline.whole_seconds()), what)
                value = zlib.adler32(block, value)
                size += len(block)
                if progress is not None:
                    progress(size)
        _checked(handle.close(timeout=deadline.whole_seconds()), what)
    finally:
        _close_quietly(handle)
    return adler32_hex(value), size


def _verify(url: str, checksum: str, size: int, deadline: Deadline, what: str) -> None:
    server_sum = server_adler32(url, deadline, what)
    if server_sum is not None:
        if server_sum != checksum:
            raise TransientError(
                f"checksum mismatch for {url}: the server has {server_sum}, the source {checksum}"
            )
        return
    server, path = split_root_url(url)
    stored = _checked(_filesystem(server).stat(path, timeout=deadline.whole_seconds()), what)
    if int(stored.size) != size:
        raise TransientError(f"{what}: the server has {stored.size} of {size} bytes")


def _remove_stale_parts(fs: Any, directory: str, name: str, deadline: Deadline, what: str) -> None:
    """Remove temporary files of ``name`` left by a try that was broken off."""
    listing = _checked(fs.dirlist(directory, timeout=deadline.whole_seconds()), what)
    prefix = f".{name}.part-"
    for entry in listing or ():
        if entry.name.startswith(prefix):
            _checked(fs.rm(f"{directory}/{entry.name}", timeout=deadline.whole_seconds()), what)
