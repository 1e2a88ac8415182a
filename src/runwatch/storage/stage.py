"""Moving a job's files: stage-in of inputs before the step, stage-out of outputs after it.

Both directions write through a temporary file in the target directory and rename it into
place only once it is whole, checksummed and on disk: a job killed at any instant leaves
either the old file or the complete new one under the final name, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from runwatch.storage.checksum import CHUNK, adler32_file, adler32_hex, normalise_adler32
from runwatch.storage.urls import URLError, is_file_url, is_http_url, join_url, url_to_path

log = logging.getLogger(__name__)

# Errors that mean "the storage takes no more bytes", worth one clear message.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
HTTP_TIMEOUT_S = 30.0
HTTP_CONNECT_TIMEOUT_S = 10.0


class StageError(Exception):
    """A file could not be staged in or out; the text says which file and why."""


class _Retryable(Exception):
    """A transfer failure that may go away on its own (connection, server error)."""


def stage_in(
    url: str,
    dest_path: str | Path,
    adler32: str | None = None,
    retries: int = 3,
    backoff: float = 0.5,
) -> Path:
    """Make the input ``url`` available at ``dest_path`` and return that path.

    A ``file://`` URL whose path is ``dest_path`` itself is used in place; another is
    copied. ``http(s)://`` is downloaded, retrying ``retries`` times with exponential
    ``backoff`` on connection errors and server errors (5xx). With ``adler32`` given, the
    file's checksum must match.
    """
    dest = Path(dest_path)
    try:
        if is_file_url(url):
            source = url_to_path(url)
            if _same_path(source, dest):
                _verify_in_place(url, source, adler32)
                return dest
            _copy_in(url, source, dest, adler32)
        elif is_http_url(url):
            _download(url, dest, adler32, retries, backoff)
        else:
            raise StageError(f"cannot stage in {url}: unsupported URL scheme")
    except URLError as exc:
        raise StageError(f"cannot stage in {url}: {exc}") from exc
    return dest


def stage_out(src_path: str | Path, destination_dir_url: str, name: str) -> tuple[str, int, str]:
    """Store the file ``src_path`` as ``name`` in the directory ``destination_dir_url``;
    return its URL, size and adler32.

    Leftover temporary files of the same name (from a job killed while storing it) are
    removed first: only the current attempt of a task writes that name.
    """
    try:
        final = url_to_path(join_url(destination_dir_url, name))
    except URLError as exc:
        raise StageError(f"cannot stage out {name} to {destination_dir_url}: {exc}") from exc
    source = Path(src_path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(final)
        with open(source, "rb") as stream:
            checksum, size = _write_atomically(_read_blocks(stream), final)
    except FileNotFoundError as exc:
        if not source.exists():
            raise StageError(f"cannot stage out {source}: no such file") from exc
        raise StageError(f"cannot stage out {source} to {final}: {exc}") from exc
    except StageError:
        raise
    except OSError as exc:
        raise StageError(f"cannot stage out {source} to {final}: {exc}") from exc
    return join_url(destination_dir_url, name), size, checksum


# -- writing ------------------------------------------------------------------------------


def part_name(final: Path) -> Path:
    """A fresh temporary name beside ``final`` (hidden, random, never the final name)."""
    return final.with_name(f".{final.name}.part-{secrets.token_hex(6)}")


def _remove_stale_parts(final: Path) -> None:
    for stale in final.parent.glob(f".{_glob_escape(final.name)}.part-*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _write_atomically(blocks: Iterable[bytes], final: Path) -> tuple[str, int]:
    """Write ``blocks`` to ``final`` via a temp file, checksumming on the way; fsync, then
    rename. Return adler32 and size."""
    part = part_name(final)
    value, size = 1, 0
    try:
        with open(part, "wb") as out:
            for block in blocks:
                value = zlib.adler32(block, value)
                size += len(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise StageError(
                f"no space left ({exc.strerror}) on {final.parent} while writing {final.name}"
            ) from exc
        raise
    _fsync_directory(final.parent)
    return adler32_hex(value), size


def _read_blocks(stream: BinaryIO) -> Iterator[bytes]:
    while block := stream.read(CHUNK):
        yield block


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every file system, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- stage-in -----------------------------------------------------------------------------


def _same_path(source: Path, dest: Path) -> bool:
    if source == dest:
        return True
    try:
        return os.path.samefile(source, dest)
    except OSError:
        return False


def _verify_in_place(url: str, source: Path, adler32: str | None) -> None:
    if not source.is_file():
        raise StageError(f"cannot stage in {url}: no such file {source}")
    if adler32 is not None:
        _check(url, adler32, adler32_file(source))


def _copy_in(url: str, source: Path, dest: Path, adler32: str | None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(source, "rb") as stream:
            checksum, _ = _write_atomically(_read_blocks(stream), dest)
    except FileNotFoundError as exc:
        raise StageError(f"cannot stage in {url}: no such file {source}") from exc
    except IsADirectoryError as exc:
        raise StageError(f"cannot stage in {url}: {source} is a directory") from exc
    except OSError as exc:
        raise StageError(f"cannot stage in {url}: {exc}") from exc
    _check_staged(url, dest, adler32, checksum)


def _download(url: str, dest: Path, adler32: str | None, retries: int, backoff: float) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            checksum = _download_once(url, dest)
            break
        except _Retryable as exc:
            if attempt >= retries:
                raise StageError(
                    f"cannot stage in {url}: {exc} (gave up after {retries + 1} tries)"
                ) from exc
            delay = backoff * 2**attempt
            log.warning("stage-in of %s failed (%s); retrying in %.1f s", url, exc, delay)
            time.sleep(delay)
    _check_staged(url, dest, adler32, checksum)


def _download_once(url: str, dest: Path) -> str:
    import httpx  # only jobs with remote inputs pay for importing it

    timeout = httpx.Timeout(HTTP_TIMEOUT_S, connect=HTTP_CONNECT_TIMEOUT_S)
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
            if response.status_code >= 500:
                raise _Retryable(f"server error {response.status_code}")
            if response.status_code == 404:
                raise StageError(f"cannot stage in {url}: not found (HTTP 404)")
            if response.status_code >= 400:
                raise StageError(f"cannot stage in {url}: HTTP {response.status_code}")
            checksum, _ = _write_atomically(response.iter_bytes(CHUNK), dest)
            return checksum
    except httpx.TransportError as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise StageError(f"cannot stage in {url}: {exc}") from exc


def _check_staged(url: str, dest: Path, expected: str | None, actual: str) -> None:
    if expected is None:
        return
    try:
        _check(url, expected, actual)
    except StageError:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise


def _check(url: str, expected: str, actual: str) -> None:
    try:
        wanted = normalise_adler32(expected)
    except ValueError as exc:
        raise StageError(f"cannot stage in {url}: {exc}") from exc
    if wanted != actual:
        raise StageError(f"checksum mismatch for {url}: expected {wanted}, got {actual}")
