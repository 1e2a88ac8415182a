"""Moving a job's files: stage-in of inputs before the step, stage-out of outputs after it.

Inputs come from ``file://``, ``root://`` (XRootD, EOS) or ``https://`` URLs; outputs go to
``file://``, ``root://`` or ``https://`` (WebDAV) directories. Both directions write
through a temporary file beside the target and rename it into place only once it is
whole, on disk and its adler32 checked: against the source's (what was read, the XRootD
server's, a web server's ``Digest``), against the checksum the caller expects, and, for a
local copy, against the file read back from disk. A job killed at any instant leaves
either the old file or the complete new one under the final name, never a torn one.

Every copy is retried with backoff (``[storage]`` settings, passed as ``policy``) when it
failed for a reason that may pass: a server down or restarting, a broken connection, a
checksum that does not match. A missing file fails at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runwatch.config import StorageSettings
from runwatch.storage import http, xrootd
from runwatch.storage.checksum import CHUNK, adler32_file, adler32_hex, normalise_adler32
from runwatch.storage.transfer import (
    Deadline,
    Progress,
    StageError,
    TransientError,
    with_retries,
)
from runwatch.storage.urls import (
    URLError,
    is_file_url,
    is_http_url,
    is_root_url,
    join_url,
    split_root_url,
    url_to_path,
)

__all__ = ["StageError", "part_name", "policy_of", "stage_in", "stage_out"]

# Errors that mean "the storage takes no more bytes", worth one clear message.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

Verify = Callable[[str, int], None]  # adler32 and size of a copy, before it is renamed


def policy_of(spec: Mapping[str, object]) -> StorageSettings:
    """The ``[storage]`` settings a job spec carries (``spec["storage"]``), else defaults."""
    return StorageSettings.model_validate(spec.get("storage") or {})


def stage_in(
    url: str,
    dest_path: str | Path,
    adler32: str | None = None,
    policy: StorageSettings | None = None,
    progress: Progress | None = None,
) -> Path:
    """Make the input ``url`` available at ``dest_path`` and return that path.

    A ``file://`` URL whose path is ``dest_path`` itself is used in place; another is
    copied. ``root://`` and ``http(s)://`` are downloaded. With ``adler32`` given, the
    file's checksum must match it. ``policy`` holds the retries, backoff and time limit of
    one try (default: the ``[storage]`` defaults); ``progress`` is called with the bytes
    copied so far after each block.
    """
    policy = policy or StorageSettings()
    dest = Path(dest_path)
    what = f"cannot stage in {url}"
    expected = _expected(what, adler32)
    try:
        if is_file_url(url):
            source = url_to_path(url)
            if _same_path(source, dest):
                _verify_in_place(url, source, expected)
                return dest
            fetch = _file_fetcher(url, source, dest, expected, progress)
        elif is_root_url(url):
            split_root_url(url)  # a malformed URL fails here, before any try
            fetch = _root_fetcher(url, dest, expected, progress)
        elif is_http_url(url):
            fetch = _http_fetcher(url, dest, expected, policy.ca_file, progress)
        else:
            raise StageError(f"{what}: unsupported URL scheme")
    except URLError as exc:
        raise StageError(f"{what}: {exc}") from exc
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StageError(f"{what}: {exc}") from exc
    with_retries(what, policy, fetch)
    return dest


def stage_out(
    src_path: str | Path,
    destination_dir_url: str,
    name: str,
    policy: StorageSettings | None = None,
    progress: Progress | None = None,
) -> tuple[str, int, str]:
    """Store the file ``src_path`` as ``name`` in the directory ``destination_dir_url``
    (``file://``, ``root://`` or ``https://``, made if missing); return its URL, size and
    adler32.

    Leftover temporary files of the same name (from a job killed while storing it) are
    removed first: only the current attempt of a task writes that name.
    """
    policy = policy or StorageSettings()
    source = Path(src_path)
    refused = f"cannot stage out {name} to {destination_dir_url}"
    try:
        url = join_url(destination_dir_url, name)
        store: Callable[[Deadline], tuple[str, int]]
        if is_root_url(destination_dir_url):
            where = url
            store = lambda deadline: xrootd.upload(  # noqa: E731
                source, destination_dir_url, name, deadline, what, progress
            )
        elif is_http_url(destination_dir_url):
            where = url
            store = lambda deadline: http.upload(  # noqa: E731
                source, destination_dir_url, name, deadline, what, policy.ca_file, progress
            )
        elif is_file_url(destination_dir_url):
            final = url_to_path(url)
            where = str(final)
            store = lambda deadline: _store(source, final, deadline, progress)  # noqa: E731
        else:
            raise StageError(f"{refused}: unsupported URL scheme")
    except URLError as exc:
        raise StageError(f"{refused}: {exc}") from exc
    what = f"cannot stage out {source} to {where}"
    _require_file(source)
    checksum, size = with_retries(what, policy, store)
    return url, size, checksum


def _require_file(source: Path) -> None:
    if not source.is_file():
        raise StageError(f"cannot stage out {source}: no such file")


def _store(
    source: Path, final: Path, deadline: Deadline, progress: Progress | None
) -> tuple[str, int]:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(final)
        with open(source, "rb") as stream:
            return _write_atomically(_counted(_read_blocks(stream, deadline), progress), final)
    except (StageError, TransientError):
        raise
    except FileNotFoundError as exc:
        if not source.exists():
            raise StageError(f"cannot stage out {source}: no such file") from exc
        raise StageError(f"cannot stage out {source} to {final}: {exc}") from exc
    except OSError as exc:
        raise StageError(f"cannot stage out {source} to {final}: {exc}") from exc


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


def _write_atomically(
    blocks: Iterable[bytes], final: Path, verify: Verify | None = None
) -> tuple[str, int]:
    """Write ``blocks`` to ``final`` via a temp file, checksumming on the way; fsync, read
    the file back to check that the disk has what was written, let ``verify`` check it,
    then rename. Return adler32 and size."""
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
        checksum = adler32_hex(value)
        on_disk = adler32_file(part)
        if on_disk != checksum:
            raise TransientError(
                f"checksum mismatch for {final}: wrote {checksum}, read back {on_disk}"
            )
        if verify is not None:
            verify(checksum, size)
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
    return checksum, size


def _read_blocks(stream: BinaryIO, deadline: Deadline) -> Iterator[bytes]:
    while block := stream.read(CHUNK):
        deadline.remaining()
        yield block


def _counted(blocks: Iterable[bytes], progress: Progress | None) -> Iterator[bytes]:
    done = 0
    for block in blocks:
        yield block
        done += len(block)
        if progress is not None:
            progress(done)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every file system, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- stage-in -----------------------------------------------------------------------------

Fetch = Callable[[Deadline], None]


def _file_fetcher(
    url: str, source: Path, dest: Path, expected: str | None, progress: Progress | None
) -> Fetch:
    def fetch(deadline: Deadline) -> None:
        try:
            with open(source, "rb") as stream:
                blocks = _counted(_read_blocks(stream, deadline), progress)
                _write_atomically(blocks, dest, _checker(url, expected))
        except FileNotFoundError as exc:
            raise StageError(f"cannot stage in {url}: no such file {source}") from exc
        except IsADirectoryError as exc:
            raise StageError(f"cannot stage in {url}: {source} is a directory") from exc
        except OSError as exc:
            raise StageError(f"cannot stage in {url}: {exc}") from exc

    return fetch


def _root_fetcher(url: str, dest: Path, expected: str | None, progress: Progress | None) -> Fetch:
    what = f"cannot stage in {url}"

    def fetch(deadline: Deadline) -> None:
        with xrootd.reading(url, deadline, what) as remote:
            blocks = _counted(remote.blocks(deadline, what), progress)
            source = Source(remote.size, lambda: xrootd.server_adler32(url, deadline, what))
            _write_download(url, blocks, source, dest, expected)

    return fetch


def _http_fetcher(
    url: str, dest: Path, expected: str | None, ca_file: str, progress: Progress | None
) -> Fetch:
    def fetch(deadline: Deadline) -> None:
        with http.downloading(url, deadline, f"cannot stage in {url}", ca_file) as download:
            blocks = _counted(download.blocks, progress)
            source = Source(download.size, lambda: download.adler32)
            _write_download(url, blocks, source, dest, expected)

    return fetch


@dataclass(frozen=True)
class Source:
    """What the server says of a file being downloaded (None: it does not say)."""

    size: int | None
    adler32: Callable[[], str | None]  # asked once the copy is complete


def _write_download(
    url: str, blocks: Iterable[bytes], source: Source, dest: Path, expected: str | None
) -> None:
    what = f"cannot stage in {url}"

    def verify(checksum: str, size: int) -> None:
        if source.size is not None and size != source.size:
            raise TransientError(f"{what}: got {size} of {source.size} bytes")
        _check_source(url, source.adler32(), checksum)
        _checker(url, expected)(checksum, size)

    try:
        _write_atomically(blocks, dest, verify)
    except OSError as exc:
        raise StageError(f"{what}: {exc}") from exc


def _same_path(source: Path, dest: Path) -> bool:
    if source == dest:
        return True
    try:
        return os.path.samefile(source, dest)
    except OSError:
        return False


def _verify_in_place(url: str, source: Path, expected: str | None) -> None:
    if not source.is_file():
        raise StageError(f"cannot stage in {url}: no such file {source}")
    if expected is not None:
        actual = adler32_file(source)
        if actual != expected:
            raise StageError(_mismatch(url, expected, actual))


def _expected(what: str, adler32: str | None) -> str | None:
    if adler32 is None:
        return None
    try:
        return normalise_adler32(adler32)
    except ValueError as exc:
        raise StageError(f"{what}: {exc}") from exc


def _checker(url: str, expected: str | None) -> Verify:
    def check(checksum: str, size: int) -> None:
        if expected is not None and checksum != expected:
            # The source may still have been in writing, or the copy went wrong: try again.
            raise TransientError(_mismatch(url, expected, checksum))

    return check


def _check_source(url: str, source_sum: str | None, checksum: str) -> None:
    if source_sum is not None and source_sum != checksum:
        raise TransientError(
            f"checksum mismatch for {url}: the source has {source_sum}, the copy {checksum}"
        )


def _mismatch(url: str, expected: str, actual: str) -> str:
    return f"checksum mismatch for {url}: expected {expected}, got {actual}"
