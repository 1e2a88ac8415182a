"""Certificate subject DNs in one spelling, so that ``[web] dn_roles`` matches whatever
form the TLS proxy passes.

Proxies write the same DN differently: nginx's ``$ssl_client_s_dn`` and Apache's
``SSL_CLIENT_S_DN`` give RFC 2253 (``CN=Jane Shifter,OU=JUNO,O=Example Lab,C=CN``, most
specific first), older ones and grid tools OpenSSL's one-line form
(``/C=CN/O=Example Lab/OU=JUNO/CN=Jane Shifter``, most general first), some with spaces
(``C = CN, O = Example Lab``). ``canonical_dn`` turns each into the RFC 2253 order with
attribute names in upper case and no spaces around the separators; values are kept as
given (case matters in them), escaped commas included.
"""

from __future__ import annotations

import re

_SLASH_SPLIT = re.compile(r"/(?=[A-Za-z][A-Za-z0-9.]*\s*=)")
_COMMA_SPLIT = re.compile(r"(?<!\\),")  # an escaped comma is part of a value


class DNError(ValueError):
    """Not a distinguished name."""


def canonical_dn(text: str) -> str:
    """The DN ``text`` (RFC 2253, or OpenSSL's one-line form) in RFC 2253 spelling."""
    text = text.strip()
    if text.startswith("/"):
        parts = _SLASH_SPLIT.split(text[1:])
        parts.reverse()  # one-line form lists the most general part first
    else:
        parts = _COMMA_SPLIT.split(text)
    rdns = [_attribute(part) for part in parts]
    if not rdns:
        raise DNError(f"not a DN: {text!r}")
    return ",".join(rdns)


def _attribute(part: str) -> str:
    name, equals, value = part.partition("=")
    name, value = name.strip(), value.strip()
    if not equals or not name or not value or not re.fullmatch(r"[A-Za-z][A-Za-z0-9.]*", name):
        raise DNError(f"not a DN attribute: {part!r}")
    return f"{name.upper()}={value}"
