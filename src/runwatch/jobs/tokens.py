"""Attempt tokens: what a job outside the firewall shows the web server to report on its
own attempt, and on nothing else.

A token is ``rwa1.<attempt id>.<HMAC-SHA256 of the attempt id>``, signed with a secret
that the scheduler (which puts tokens into jobs' environments) and the web server (which
checks them) read from the same file, ``[worker] token_secret_file``. Tokens are
stateless: nothing is stored per attempt, and the server checks one with a hash, no
database read. Whoever needs the secret first makes the file (random, mode 0600).

Replacing the file invalidates every token handed out before: jobs still running then
cannot report (their attempts end LOST and are retried), so rotate between productions.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
from functools import lru_cache
from pathlib import Path

from runwatch.config import Settings

PREFIX = "rwa1"  # names the scheme, so that a later one can be told apart
SECRET_BYTES = 32
_DOMAIN = b"runwatch-attempt-token\0"  # this key signs attempt ids and nothing else


def secret_path(settings: Settings) -> Path:
    """``[worker] token_secret_file``, or ``<work_root>/secrets/attempt-token.key``."""
    configured = settings.worker.token_secret_file
    return Path(configured or Path(settings.work_root) / "secrets" / "attempt-token.key")


def load_secret(path: Path) -> bytes:
    """The secret in ``path``, made first (random, 0600) if there is none. Two processes
    making it at once agree: the file appears whole under its name (a link), and the one
    that loses the race reads the winner's."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A name of its own (the web server's threads may race each other too), mode 0600.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(secrets.token_hex(SECRET_BYTES) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return _read(path)


def _read(path: Path) -> bytes:
    # Read for every job the scheduler submits and every report the server takes: keep
    # the text while the file is unchanged (a stat instead of an open and a read).
    stat = path.stat()
    return _read_unchanged(str(path), stat.st_mtime_ns, stat.st_ino)


@lru_cache(maxsize=4)
def _read_unchanged(path: str, mtime_ns: int, inode: int) -> bytes:
    del mtime_ns, inode  # only the cache's key
    secret = Path(path).read_text(encoding="utf-8").strip()
    if len(secret) < 32:
        raise ValueError(f"{path}: the attempt-token secret is too short (32 characters at least)")
    return secret.encode()


def _signature(secret: bytes, attempt_id: int) -> str:
    return hmac.new(secret, _DOMAIN + str(attempt_id).encode(), hashlib.sha256).hexdigest()


def attempt_token(secret: bytes, attempt_id: int) -> str:
    """The token that lets a job report on attempt ``attempt_id`` only."""
    return f"{PREFIX}.{attempt_id}.{_signature(secret, attempt_id)}"


def token_allows(secret: bytes, token: str, attempt_id: int) -> bool:
    """Whether ``token`` was signed for attempt ``attempt_id`` (compared in constant time)."""
    expected = attempt_token(secret, attempt_id)
    return hmac.compare_digest(token.encode(), expected.encode())
