"""File locations as URLs: ``file://`` for local and shared file systems, ``root://`` for
XRootD servers (EOS), ``https://`` and ``http://`` for web servers.

The database stores URLs, never bare paths, so that a file can move to another kind of
storage without a schema change. A bare absolute path is accepted wherever a ``file://`` URL
is, because that is what people type.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

FILE_SCHEMES = frozenset({"", "file"})
HTTP_SCHEMES = frozenset({"http", "https"})
# roots:// and xroots:// are XRootD over TLS; the client library handles them all.
ROOT_SCHEMES = frozenset({"root", "xroot", "roots", "xroots"})
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


def is_root_url(url: str) -> bool:
    return scheme(url) in ROOT_SCHEMES


def split_root_url(url: str) -> tuple[str, str]:
    """The server (``root://host:port``) and the path (``/eos/...``, with any ``?opaque``
    part the server is to get) of a ``root://`` URL.

    XRootD spells an absolute path with two slashes after the host
    (``root://eos.example//eos/juno/raw/f.raw``); one slash is read the same way, as the
    XRootD client does.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ROOT_SCHEMES:
        raise URLError(f"not an XRootD URL: {url}")
    if not parts.hostname:
        raise URLError(f"XRootD URL without a server: {url}")
    path = "/" + parts.path.lstrip("/")
    if path == "/":
        raise URLError(f"XRootD URL without a path: {url}")
    opaque = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{parts.netloc}", path + opaque


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


def folder_url(root: str, parts: Sequence[str]) -> str:
    """The URL of the folder ``root/part/part/.../`` (``root`` a URL or a local path)."""
    if is_file_url(root):
        base = Path(root) if scheme(root) == "" else url_to_path(root)
        return base.joinpath(*parts).as_uri() + "/"
    if is_root_url(root):
        # XRootD takes paths literally (no %-decoding): the names go in as they are.
        return root.rstrip("/") + "/" + "".join(f"{part}/" for part in parts)
    return root.rstrip("/") + "/" + "".join(f"{quote(part, safe='')}/" for part in parts)


def join_url(directory_url: str, name: str) -> str:
    """The URL of the file ``name`` inside the directory ``directory_url``."""
    if not name or "/" in name or name in (".", ".."):
        raise URLError(f"not a file name: {name!r}")
    base = directory_url if directory_url.endswith("/") else directory_url + "/"
    if is_root_url(directory_url):
        # XRootD takes paths literally (no %-decoding), and ? starts the opaque part.
        if urlsplit(directory_url).query or "?" in name or "#" in name:
            raise URLError(f"cannot put {name!r} into {directory_url}: ? or # in it")
        return base + name
    return base + quote(name, safe="")


def staged_path(url: str, inputs: Path) -> Path:
    """Where a job stages in the remote input ``url``: under its folder ``inputs``, at
    ``<scheme>/<server>/<path>``, so that the path tells the URL back (``staged_url``)
    and two inputs of one name do not collide."""
    parts = urlsplit(url)
    names = [p for p in unquote(parts.path).split("/") if p not in ("", ".", "..")]
    return inputs.joinpath(parts.scheme.lower(), parts.netloc, *names)


def staged_url(path: str | Path, inputs: str | Path) -> str | None:
    """The URL a file under ``inputs`` was staged in from (``staged_path``); None for a
    file elsewhere."""
    try:
        relative = Path(path).absolute().relative_to(Path(inputs).absolute())
    except ValueError:
        return None
    if len(relative.parts) < 3:
        return None
    scheme_, server, *names = relative.parts
    if scheme_ in ROOT_SCHEMES:
        return f"{scheme_}://{server}//" + "/".join(names)
    return f"{scheme_}://{server}/" + quote("/".join(names))
