"""One spelling of a certificate DN, from the forms TLS proxies pass."""

from __future__ import annotations

import pytest

from runwatch.web.dn import DNError, canonical_dn

JANE = "CN=Jane Shifter,OU=JUNO,O=Example Lab,C=CN"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (JANE, JANE),
        ("/C=CN/O=Example Lab/OU=JUNO/CN=Jane Shifter", JANE),
        ("cn=Jane Shifter, ou = JUNO,O=Example Lab ,c=CN", JANE),
        (r"CN=Doe\, John,O=Lab,C=CN", r"CN=Doe\, John,O=Lab,C=CN"),  # an escaped comma
        ("/DC=org/DC=example/OU=People/CN=A/B Person", "CN=A/B Person,OU=People,DC=example,DC=org"),
        ("CN=jane shifter,C=CN", "CN=jane shifter,C=CN"),  # values keep their case
    ],
)
def test_each_spelling_becomes_rfc_2253(given: str, expected: str) -> None:
    assert canonical_dn(given) == expected


@pytest.mark.parametrize("given", ["", "Jane", "CN=", "=x", "/", "CN=a,,C=CN", "1CN=a"])
def test_what_is_no_dn_is_refused(given: str) -> None:
    with pytest.raises(DNError):
        canonical_dn(given)
