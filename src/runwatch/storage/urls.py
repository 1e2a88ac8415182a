"""File locations as URLs: ``file://`` for local and shared file systems, ``https://`` and
``http://`` for remote servers.

The database stores URLs, never bare paths, so that a file can move to another kind of
storage without a schema change. A bare absolute path is accepted wherever a ``file://`` URL
is, because that is what people type.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

FILE_SCHEMES = frozenset({"", "file"})
HTTP_SCHEMES = frozenset({"http", "https"})
LOCAL_HOSTS = frozenset({"", "localhost"})


class URLError(ValueError):
    """A URL runwatch cannot read or write, with the reason."""


def scheme(url: str) -> str:
    """The URL's scheme in lower case; "" for a bare path."""
    return "" if url.startswith("/") else urlsplit(url).scheme.lower()


def is_file_url(url: str) -> bool:
    return scheme(url) in FILE_SCHEMES


def is_http_url(url: str) -> bool:
    return scheme(url) in HTTP_SCHEMES


def url_to_path(url: str) -> Path:
    """The local path of a ``file://`` URL or of a bare absolute path (taken literally:
    a ``#`` or ``%`` in a path is part of the name)."""
    if url.startswith("/"):
        return Path(url)
    parts = urlsplit(url)
    if parts.scheme.lower() not in FILE_SCHEMES:
        raise URLError(f"not a file URL: {url}")
    if parts.netloc not in LOCAL_HOSTS:
        raise URLError(f"file URL on another host ({parts.netloc}): {url}")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise URLError(f"file URL or path is not absolute: {url}")
    return Path(path)


def path_to_url(path: str | Path) -> str:
    """``file://`` URL of ``path`` (made absolute)."""
    return Path(path).absolute().as_uri()


def join_url(directory_url: str, name: str) -> str:
    """The URL of the file ``name`` inside the directory ``directory_url``."""
    if not name or "/" in name or name in (".", ".."):
        raise URLError(f"not a file name: {name!r}")
    base = directory_url if directory_url.endswith("/") else directory_url + "/"
    return base + quote(name, safe="")
