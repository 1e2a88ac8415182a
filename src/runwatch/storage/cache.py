"""Local copies of outputs stored on ``root://`` or ``https://``, for the readers that need
a file on disk: the DQM service (merged histogram files) and the web server (files for
JSROOT).

A ``file://`` output is read in place, never copied: that is the default and its speed
matters. Any other is fetched once into ``<work_root>/cache/`` through ``stage_in`` (so
with the ``[storage]`` retries and checksums) and read from there. A copy's name holds the
file's adler32, so a file replaced on the server (a re-run task, the next live merge) is
fetched again rather than read stale; the server is asked for its adler32 at each read (one
checksum query, no data). The folder is bounded (``[storage] cache_mb``): the copies used
least recently go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from runwatch.config import Settings, StorageSettings
from runwatch.storage import http, xrootd
from runwatch.storage.checksum import normalise_adler32
from runwatch.storage.stage import stage_in
from runwatch.storage.transfer import StageError, with_retries
from runwatch.storage.urls import is_file_url, is_http_url, is_root_url, url_to_path

MB = 1024 * 1024
STALE_PART_S = 3600.0  # a temporary copy this old was left by a reader that was killed


class ReplacedError(StageError):
    """The file at a URL no longer has the adler32 it was recorded with."""


@dataclass(frozen=True)
class OutputCache:
    """The cache folder and the copy policy of this process's readers."""

    folder: Path
    max_bytes: int
    policy: StorageSettings

    def local_path(self, url: str, adler32: str | None = None) -> Path:
        """A path to read the file at ``url`` from: its own for ``file://``, else a checked
        local copy. With ``adler32`` (the recorded checksum) the server's must match it
        (``ReplacedError`` otherwise). ``StageError`` when it cannot be fetched."""
        if is_file_url(url):
            return url_to_path(url)
        recorded = normalise_adler32(adler32) if adler32 else None
        current = remote_adler32(url, self.policy)
        if recorded is not None and current is not None and current != recorded:
            raise ReplacedError(
                f"{url} has adler32 {current} now, not {recorded}: it was replaced since"
            )
        checksum = recorded or current
        path = self.folder / copy_name(url, checksum)
        if checksum is not None and path.is_file():
            _mark_used(path)
            return path
        stage_in(url, path, checksum, self.policy)
        _mark_used(path)
        self.evict(keep=path)
        return path

    def evict(self, keep: Path) -> None:
        """Remove the least recently used copies until the folder fits ``max_bytes``
        (``keep``, the copy about to be read, stays), and temporary copies of killed
        readers."""
        entries = []
        now = time.time()
        for path in self.folder.iterdir():
            with contextlib.suppress(OSError):
                stat = path.stat()
                if path.name.startswith("."):
                    if now - stat.st_mtime > STALE_PART_S:
                        path.unlink()
                    continue
                entries.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path != keep:
                with contextlib.suppress(OSError):
                    path.unlink()
                    total -= size


_last_use_ns = 0


def _mark_used(path: Path) -> None:
    """Set the copy's time to now, later than any copy this process used before (file
    times are only as fine as the kernel's clock tick: two copies fetched within one would
    tie, and eviction would not know which came first)."""
    global _last_use_ns
    _last_use_ns = max(time.time_ns(), _last_use_ns + 1)
    with contextlib.suppress(OSError):
        os.utime(path, ns=(_last_use_ns, _last_use_ns))


def copy_name(url: str, adler32: str | None) -> str:
    """The cache's name for a copy of ``url`` with ``adler32``: the checksum, a digest of
    the URL (two outputs of one name), and the file's own name (for people and for the
    readers that look at the suffix)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = posixpath.basename(unquote(urlsplit(url).path)) or "file"
    return f"{adler32 or 'unchecked'}-{digest}-{name}"


def remote_adler32(url: str, policy: StorageSettings) -> str | None:
    """The server's adler32 of the file at ``url`` (None: it computes none), retried as
    every copy is; ``StageError`` for a missing file."""
    what = f"cannot read {url}"
    if is_root_url(url):
        return with_retries(what, policy, lambda d: xrootd.server_adler32(url, d, what))
    if is_http_url(url):
        return with_retries(
            what, policy, lambda d: http.server_adler32(url, d, what, policy.ca_file)
        )
    raise StageError(f"{what}: unsupported URL scheme")


def output_cache(settings: Settings) -> OutputCache:
    """The cache under ``settings.work_root``, with its ``[storage]`` settings."""
    storage = settings.storage
    return _cache_at(settings.work_root, storage.cache_mb, storage.model_dump_json())


def default_cache() -> OutputCache:
    """A cache for callers given no settings: in the temporary folder, default policy."""
    folder = Path(tempfile.gettempdir()) / f"runwatch-cache-{os.getuid()}"
    return _cache_at(str(folder.parent), StorageSettings().cache_mb, "{}", folder.name)


@cache
def _cache_at(root: str, cache_mb: int, policy: str, name: str = "cache") -> OutputCache:
    # The folder is made by the first copy: a site with file:// outputs never has one.
    policy_settings = StorageSettings.model_validate_json(policy)
    return OutputCache(Path(root) / name, cache_mb * MB, policy_settings)
