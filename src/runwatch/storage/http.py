"""Copies from and to web servers (``https://``, ``http://``), one try each; ``stage.py``
retries them.

A download asks for the file's adler32 (``Want-Digest``, RFC 3230), which XRootD's and
EOS's HTTP interfaces send back as ``Digest: adler32=<hex>``; the copy is checked against
it when it comes, and against the announced length always.

An upload is WebDAV, as XRootD's HTTP interface (XrdHttp), EOS, dCache and Apache or
nginx with WebDAV serve it: MKCOL for the missing folders, PUT to a hidden temporary
name beside the target, HEAD of that file asking for its adler32 (its size when the
server gives none), and MOVE to the final name (``Overwrite: T``) only once it matched.
"""

from __future__ import annotations

import contextlib
import html
import logging
import secrets
import ssl
import xml.etree.ElementTree as ElementTree
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urljoin, urlsplit

from runwatch.storage.checksum import CHUNK, adler32_hex, normalise_adler32
from runwatch.storage.transfer import Deadline, Progress, StageError, TransientError

if TYPE_CHECKING:
    import httpx

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # longest silence of the server within a download
# Answers worth another try: the server is busy, restarting or broken for a moment.
TRANSIENT_STATUS = frozenset({408, 425, 429})
MAX_FOLDER_DEPTH = 32  # MKCOL of missing folders stops there (a server that 409s forever)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Download:
    """A download under way: its bytes and what the server says they should be."""

    blocks: Iterator[bytes]
    adler32: str | None  # from the Digest header
    size: int | None  # from Content-Length, when the body is not encoded


@contextlib.contextmanager
def downloading(url: str, deadline: Deadline, what: str, ca_file: str = "") -> Iterator[Download]:
    """GET ``url``; ``StageError`` at once on 404 and other client errors. ``ca_file``:
    the CA certificates to check the server against (empty: the system's)."""
    import httpx  # only jobs with web inputs pay for importing it

    headers = {"Want-Digest": "adler32"}
    try:
        with httpx.stream(
            "GET",
            url,
            headers=headers,
            follow_redirects=True,
            timeout=_timeout(deadline),
            verify=_verify(ca_file),
        ) as response:
            _check_status(response, what)
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


def _timeout(deadline: Deadline) -> httpx.Timeout:
    import httpx

    seconds = min(READ_TIMEOUT_S, deadline.remaining())
    return httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT_S, seconds))


@cache
def _verify(ca_file: str) -> ssl.SSLContext | bool:
    """What httpx checks servers against: ``ca_file``'s CAs, else the system's."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


def _check_status(response: httpx.Response, what: str) -> None:
    """Raise for an error answer: ``TransientError`` when another try may get through."""
    status = response.status_code
    if status < 400:
        return
    if status >= 500 or status in TRANSIENT_STATUS:
        raise TransientError(f"{what}: server error {status}")
    if status == 404:
        raise StageError(f"{what}: not found (HTTP 404)")
    raise StageError(f"{what}: HTTP {status}{_reason(response)}")


def _reason(response: httpx.Response) -> str:
    """The server's explanation: its plain-text answer's first line (XrdHttp and EOS say
    why there), else the status's name."""
    kind = response.headers.get("Content-Type", "text/plain")
    with contextlib.suppress(Exception):
        text = response.read().decode("utf-8", errors="replace").strip()
        if text and kind.startswith("text/plain"):
            return f" ({html.unescape(text.splitlines()[0])[:200]})"
    return f" ({response.reason_phrase})" if response.reason_phrase else ""


# -- asking -------------------------------------------------------------------------------


def server_adler32(url: str, deadline: Deadline, what: str, ca_file: str = "") -> str | None:
    """The server's adler32 of the file at ``url`` (HEAD, ``Want-Digest``); None if it
    gives none. ``StageError`` when the file is missing."""
    import httpx

    with httpx.Client(timeout=_timeout(deadline), verify=_verify(ca_file)) as client:
        response = _send(client, "HEAD", url, what, {"Want-Digest": "adler32"})
        _check_status(response, what)
        return digest_adler32(response.headers.get("Digest", ""))


# -- writing ------------------------------------------------------------------------------


def upload(
    source: Path,
    directory_url: str,
    name: str,
    deadline: Deadline,
    what: str,
    ca_file: str = "",
    progress: Progress | None = None,
) -> tuple[str, int]:
    """Store the local file ``source`` as ``name`` in the folder ``directory_url`` (made
    if missing); return its adler32 and size as the server has them.

    The bytes go to a hidden temporary name first; the server's adler32 of that file (its
    size when it gives no digest) is compared with the local one, and only then is it
    moved to ``name``: an upload broken off at any point leaves no whole-looking file.
    """
    import httpx

    folder = directory_url if directory_url.endswith("/") else directory_url + "/"
    final = urljoin(folder, _quoted(name))
    temporary = urljoin(folder, _quoted(f".{name}.part-{secrets.token_hex(6)}"))
    with httpx.Client(timeout=_timeout(deadline), verify=_verify(ca_file)) as client:
        _make_folder(client, folder, what)
        _remove_stale_parts(client, folder, name, what)
        try:
            checksum, size = _put(client, source, temporary, deadline, what, progress)
            _verify_upload(client, temporary, checksum, size, what)
            moved = _send(
                client,
                "MOVE",
                temporary,
                what,
                {"Destination": final, "Overwrite": "T"},
            )
            _check_status(moved, what)
        except BaseException:
            # Best effort: with the server gone the next try removes it (stale parts).
            with contextlib.suppress(Exception):
                client.delete(temporary, timeout=5)
            raise
    return checksum, size


def _quoted(name: str) -> str:
    return quote(name, safe="")


def _send(
    client: httpx.Client, method: str, url: str, what: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """One request; a failure to reach the server is worth another try."""
    import httpx

    try:
        return client.request(method, url, headers=headers)
    except httpx.TransportError as exc:
        raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _make_folder(client: httpx.Client, folder: str, what: str, depth: int = 0) -> None:
    """MKCOL ``folder`` and, when the server says its parent is missing (409), the parent
    first. A folder that exists already answers 405 (Method Not Allowed), which is fine."""
    response = _send(client, "MKCOL", folder, what)
    if response.status_code == 409 and depth < MAX_FOLDER_DEPTH:
        parent = urljoin(folder, "..")
        if parent != folder:
            _make_folder(client, parent, what, depth + 1)
            response = _send(client, "MKCOL", folder, what)
    if response.status_code in (200, 201, 204, 405):
        return
    _check_status(response, what)


def _remove_stale_parts(client: httpx.Client, folder: str, name: str, what: str) -> None:
    """Remove temporary files of ``name`` left by a try that was broken off (listed with
    PROPFIND; a server that does not list folders keeps them)."""
    response = _send(client, "PROPFIND", folder, what, {"Depth": "1"})
    if response.status_code != 207:
        return
    prefix = f".{name}.part-"
    with contextlib.suppress(ElementTree.ParseError):
        for href in ElementTree.fromstring(response.content).iter("{DAV:}href"):
            path = unquote(urlsplit((href.text or "").strip()).path).rstrip("/")
            if path.rsplit("/", 1)[-1].startswith(prefix):
                stale = urljoin(folder, _quoted(path.rsplit("/", 1)[-1]))
                _check_status(_send(client, "DELETE", stale, what), what)


def _put(
    client: httpx.Client,
    source: Path,
    url: str,
    deadline: Deadline,
    what: str,
    progress: Progress | None,
) -> tuple[str, int]:
    state = {"value": 1, "size": 0}

    def blocks() -> Iterator[bytes]:
        with open(source, "rb") as stream:
            while block := stream.read(CHUNK):
                deadline.remaining()
                state["value"] = zlib.adler32(block, state["value"])
                state["size"] += len(block)
                yield block
                if progress is not None:
                    progress(state["size"])

    import httpx

    length = source.stat().st_size
    try:
        response = client.put(url, content=blocks(), headers={"Content-Length": str(length)})
    except httpx.TransportError as exc:
        raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc
    _check_status(response, what)
    if state["size"] != length:
        raise TransientError(f"{what}: the file changed size while it was sent")
    return adler32_hex(state["value"]), state["size"]


def _verify_upload(client: httpx.Client, url: str, checksum: str, size: int, what: str) -> None:
    response = _send(client, "HEAD", url, what, {"Want-Digest": "adler32"})
    _check_status(response, what)
    server_sum = digest_adler32(response.headers.get("Digest", ""))
    if server_sum is not None:
        if server_sum != checksum:
            raise TransientError(
                f"checksum mismatch for {url}: the server has {server_sum}, the source {checksum}"
            )
        return
    stored = _length(response.headers)
    if stored is None:
        log.warning("%s gives neither a digest nor a size; the copy is unchecked", what)
        return
    log.warning("%s gives no adler32 digest; checking the size only", urlsplit(url).netloc)
    if stored != size:
        raise TransientError(f"{what}: the server has {stored} of {size} bytes")
