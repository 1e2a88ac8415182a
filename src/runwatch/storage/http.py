"""Downloads from web servers (``https://``, ``http://``), one try each; ``stage.py``
retries them.

The request asks for the file's adler32 (``Want-Digest``, RFC 3230), which XRootD's and
EOS's HTTP interfaces send back as ``Digest: adler32=<hex>``; the copy is checked against
it when it comes, and against the announced length always.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runwatch.storage.checksum import CHUNK, normalise_adler32
from runwatch.storage.transfer import Deadline, StageError, TransientError

if TYPE_CHECKING:
    import httpx

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # longest silence of the server within a download
# Answers worth another try: the server is busy, restarting or broken for a moment.
TRANSIENT_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Download:
    """A download under way: its bytes and what the server says they should be."""

    blocks: Iterator[bytes]
    adler32: str | None  # from the Digest header
    size: int | None  # from Content-Length, when the body is not encoded


@contextlib.contextmanager
def downloading(url: str, deadline: Deadline, what: str) -> Iterator[Download]:
    """GET ``url``; ``StageError`` at once on 404 and other client errors."""
    import httpx  # only jobs with web inputs pay for importing it

    seconds = min(READ_TIMEOUT_S, deadline.remaining())
    timeout = httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT_S, seconds))
    headers = {"Want-Digest": "adler32"}
    try:
        with httpx.stream(
            "GET", url, headers=headers, follow_redirects=True, timeout=timeout
        ) as response:
            status = response.status_code
            if status >= 500 or status in TRANSIENT_STATUS:
                raise TransientError(f"{what}: server error {status}")
            if status == 404:
                raise StageError(f"{what}: not found (HTTP 404)")
            if status >= 400:
                raise StageError(f"{what}: HTTP {status}")
            yield Download(
                blocks=_blocks(response, deadline),
                adler32=digest_adler32(response.headers.get("Digest", "")),
                size=_length(response.headers),
            )
    except httpx.TransportError as exc:
        raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _blocks(response: httpx.Response, deadline: Deadline) -> Iterator[bytes]:
    for block in response.iter_bytes(CHUNK):
        deadline.remaining()
        yield block


def _length(headers: httpx.Headers) -> int | None:
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        return None  # the length is the encoded one; the bytes we get are decoded
    text = headers.get("Content-Length")
    return int(text) if text is not None and text.isdigit() else None


def digest_adler32(header: str) -> str | None:
    """The adler32 in a ``Digest`` header (``adler32=0a1b2c3d, md5=...``), if any."""
    for item in header.split(","):
        algorithm, _, value = item.strip().partition("=")
        if algorithm.strip().lower() == "adler32":
            with contextlib.suppress(ValueError):
                return normalise_adler32(value)
    return None
