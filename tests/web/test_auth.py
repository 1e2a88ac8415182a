"""Sessions, passwords, API tokens, certificate DNs from trusted proxies, read access and
redirects: how the web site decides who is asking."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import Depends

from runwatch.db import Database, utcnow
from runwatch.web import accounts, login
from runwatch.web.auth import (
    SESSION_COOKIE,
    Principal,
    local_path,
    require_read,
    require_role,
    sign,
    unsign,
)
from runwatch.web.models import Role, WebUser
from tests.web.authkit import (
    DN_HEADER,
    OUTSIDER,
    PASSWORD,
    PROXY,
    Site,
    TestClient,
    add_user,
    audit_entries,
    build_site,
    dn,
    module_site,
    token_row,
)
from tests.web.authkit import login as log_in


@pytest.fixture
def site(tmp_path: Path, db: Database) -> Site:
    return build_site(tmp_path, db)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One site for the tests that change nothing (each other test has its own)."""
    yield from module_site(tmp_path_factory.mktemp("shared"))


@pytest.fixture
def client(site: Site) -> Iterator[TestClient]:
    with site.client() as client:
        yield client


def whoami(client: TestClient, **kw: object) -> dict[str, str | None]:
    body: dict[str, str | None] = client.get("/api/v1/whoami", **kw).json()  # type: ignore[arg-type]
    return body


def set_cookie(response: Any, name: str) -> Morsel[str]:
    """The Set-Cookie header of ``response`` for the cookie ``name``."""
    for header in response.headers.get_list("set-cookie"):
        cookie = SimpleCookie(header)
        if name in cookie:
            return cookie[name]
    raise AssertionError(f"no Set-Cookie for {name}")


# --- passwords -----------------------------------------------------------------------------


def test_password_hash_round_trip() -> None:
    stored = accounts.hash_password("s3cret-enough", n=2**10)
    assert stored.startswith("scrypt$n=1024,r=8,p=1$")
    assert "s3cret" not in stored
    assert accounts.password_matches("s3cret-enough", stored)
    assert not accounts.password_matches("s3cret-enougH", stored)
    assert not accounts.password_matches("", stored)
    assert stored != accounts.hash_password("s3cret-enough", n=2**10), "salted"


def test_the_default_cost_is_scrypt_2_15() -> None:
    stored = accounts.hash_password("x" * 12)
    assert stored.startswith("scrypt$n=32768,r=8,p=1$")
    assert accounts.password_matches("x" * 12, stored)


@pytest.mark.parametrize(
    "stored", ["", "plain", "scrypt$n=1024$a$b", "pbkdf2$n=1,r=1,p=1$AA==$AA=="]
)
def test_malformed_hashes_never_match(stored: str) -> None:
    assert not accounts.password_matches("anything", stored)


def test_check_password(db: Database) -> None:
    add_user(db, "alice", Role.SHIFTER)
    add_user(db, "bob", Role.SHIFTER, disabled=True)
    now = utcnow()
    with db.session() as session:
        assert accounts.check_password(session, "alice", "wrong password", now) is None
        assert accounts.check_password(session, "bob", PASSWORD, now) is None
        assert accounts.check_password(session, "nobody", PASSWORD, now) is None
        user = accounts.check_password(session, "alice", PASSWORD, now)
        assert user is not None and user.last_login_at == now


# --- login, sessions and cookies -----------------------------------------------------------


def test_login_sets_a_signed_httponly_samesite_cookie(site: Site, client: TestClient) -> None:
    response = log_in(client, "shifter", next="/runs?stream=physics")
    assert response.status_code == 303
    assert response.headers["location"] == "/runs?stream=physics"
    session = set_cookie(response, SESSION_COOKIE)
    assert session["httponly"] is True
    assert session["samesite"].lower() == "lax"
    assert session["secure"] == ""  # cookie_secure = false in this site
    assert session["path"] == "/"
    assert int(session["max-age"]) == 12 * 3600
    me = whoami(client)
    assert (me["name"], me["role"], me["via"]) == ("shifter", "shifter", "session")
    assert me["csrf_token"]
    with site.db.session() as s:
        user = s.scalar(sa.select(WebUser).where(WebUser.name == "shifter"))
        assert user is not None and user.last_login_at is not None
    assert [(e.action, e.outcome, e.actor) for e in audit_entries(site.db)] == [
        ("login", "done", "shifter")
    ]


def test_cookies_are_secure_when_configured(tmp_path: Path, db: Database) -> None:
    site = build_site(tmp_path, db, cookie_secure=True)
    with site.client() as client:  # https://testserver
        response = log_in(client, "viewer")
    assert response.status_code == 303
    assert set_cookie(response, SESSION_COOKIE)["secure"] is True


@pytest.mark.parametrize(
    ("name", "password"),
    [("shifter", "wrong password"), ("nobody", PASSWORD), ("disabled", PASSWORD)],
)
def test_a_failed_login_says_nothing_about_which_part_was_wrong(
    site: Site, client: TestClient, name: str, password: str
) -> None:
    add_user(site.db, "disabled", Role.ADMIN, disabled=True)
    response = log_in(client, name, password)
    assert response.status_code == 401
    assert "Wrong name or password." in response.text
    assert SESSION_COOKIE not in response.cookies
    assert whoami(client)["name"] is None
    entry = audit_entries(site.db)[-1]
    assert (entry.action, entry.outcome, entry.actor) == ("login", "refused", name)
    assert password not in str(entry.detail)


def test_login_needs_the_forms_csrf_token(site: Site, client: TestClient) -> None:
    client.get("/login")
    response = client.post(
        "/login", data={"name": "admin", "password": PASSWORD, "csrf_token": "guessed"}
    )
    assert response.status_code == 403
    assert whoami(client)["name"] is None
    # Nor does a token from another browser (its cookie) work.
    with site.client() as other:
        token = other.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    response = client.post(
        "/login", data={"name": "admin", "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 403


def test_repeated_failures_from_one_address_are_throttled(
    site: Site, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(login, "MAX_FAILURES", 3)
    for _ in range(3):
        assert log_in(client, "admin", "wrong password").status_code == 401
    blocked = log_in(client, "admin")  # even the right password, for now
    assert blocked.status_code == 429
    assert whoami(client)["name"] is None
    with site.client(("198.51.100.9", 1)) as elsewhere:  # another address is not affected
        assert log_in(elsewhere, "admin").status_code == 303


def test_a_tampered_cookie_is_refused(client: TestClient) -> None:
    assert log_in(client, "viewer").status_code == 303
    value = client.cookies[SESSION_COOKIE]
    key = client.app.state.session_key  # type: ignore[attr-defined]
    payload = unsign(key, value)
    assert payload is not None and payload["user"] == "viewer"
    body, _, mac = value.partition(".")
    forged = sign(b"another key", {**payload, "user": "admin", "role": "admin"})
    for bad in (forged, forged.split(".")[0] + "." + mac, body[:-2] + "xx." + mac, "garbage"):
        client.cookies.set(SESSION_COOKIE, bad)
        assert whoami(client)["name"] is None, bad


def test_an_expired_session_is_refused(client: TestClient) -> None:
    assert log_in(client, "admin").status_code == 303
    key = client.app.state.session_key  # type: ignore[attr-defined]
    payload = unsign(key, client.cookies[SESSION_COOKIE])
    assert payload is not None
    client.cookies.set(SESSION_COOKIE, sign(key, {**payload, "exp": int(time.time()) - 1}))
    assert whoami(client)["name"] is None
    client.cookies.set(SESSION_COOKIE, sign(key, {**payload, "exp": int(time.time()) + 60}))
    assert whoami(client)["name"] == "admin"


def test_the_account_is_checked_on_every_request(site: Site, client: TestClient) -> None:
    assert log_in(client, "admin").status_code == 303
    with site.db.session() as session:
        accounts.set_role(session, "admin", Role.VIEWER)
    assert whoami(client)["role"] == "viewer"
    with site.db.session() as session:
        accounts.disable_user(session, "admin")
    assert whoami(client)["name"] is None


def test_logout_ends_the_session_even_for_a_copy_of_the_cookie(client: TestClient) -> None:
    assert log_in(client, "expert").status_code == 303
    copy = client.cookies[SESSION_COOKIE]
    csrf = whoami(client)["csrf_token"]
    assert client.post("/logout", data={"csrf_token": "wrong"}).status_code == 403
    assert whoami(client)["name"] == "expert", "a forged logout does nothing"
    response = client.post("/logout", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert whoami(client)["name"] is None
    client.cookies.set(SESSION_COOKIE, copy)
    assert whoami(client)["name"] is None
    client.cookies.clear()
    assert log_in(client, "expert").status_code == 303, "a new login works"
    assert whoami(client)["name"] == "expert"


def test_logout_without_a_session_does_nothing(site: Site, client: TestClient) -> None:
    assert client.post("/logout").status_code == 303
    with site.client(headers={"Authorization": f"Bearer {site.tokens[Role.ADMIN]}"}) as script:
        assert script.post("/logout").status_code == 303
        assert whoami(script)["name"] == "admin-script"
    assert audit_entries(site.db) == []


# --- API tokens ----------------------------------------------------------------------------


def test_tokens_are_stored_hashed_and_revocable(site: Site) -> None:
    token = site.tokens[Role.SHIFTER]
    row = token_row(site.db, "shifter-script")
    assert row.token_sha256 == accounts.token_digest(token) and token not in row.token_sha256
    with site.client(headers={"Authorization": f"Bearer {token}"}) as client:
        assert whoami(client)["via"] == "token"
        with site.db.session() as session:
            accounts.revoke_token(session, "shifter-script", utcnow())
        assert whoami(client)["name"] is None


@pytest.mark.parametrize(
    "header", ["Bearer not-a-token", "Bearer ingest-token", "Basic abc", "Bearer ", "bearer"]
)
def test_other_authorization_headers_are_nobody(shared: Site, header: str) -> None:
    with shared.client(headers={"Authorization": header}) as client:
        assert whoami(client)["name"] is None


def test_an_invalid_bearer_header_does_not_fall_back_to_the_session(
    site: Site, client: TestClient
) -> None:
    assert log_in(client, "admin").status_code == 303
    assert whoami(client, headers={"Authorization": "Bearer nonsense"})["name"] is None


def test_last_used_is_written_at_most_once_a_minute(site: Site) -> None:
    with site.client(headers={"Authorization": f"Bearer {site.tokens[Role.VIEWER]}"}) as client:
        whoami(client)
        first = token_row(site.db, "viewer-script").last_used_at
        assert first is not None
        whoami(client)
        assert token_row(site.db, "viewer-script").last_used_at == first
        with site.db.session() as session:
            row = session.scalar(
                sa.select(accounts.ApiToken).where(accounts.ApiToken.name == "viewer-script")
            )
            assert row is not None
            row.last_used_at = first - dt.timedelta(minutes=2)
        whoami(client)
        later = token_row(site.db, "viewer-script").last_used_at
        assert later is not None and later >= first


def test_the_ingest_token_still_posts_messages(site: Site) -> None:
    with site.client(headers={"Authorization": "Bearer ingest-token"}) as client:
        assert client.get("/api/v1/messages").status_code == 200
    with site.client(headers={"Authorization": f"Bearer {site.tokens[Role.ADMIN]}"}) as client:
        assert client.get("/api/v1/messages").status_code == 401


# --- certificates through a trusted proxy --------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        (PROXY, dn(Role.EXPERT), ("expert", "x509")),
        (("::1", 5), dn(Role.SHIFTER), ("shifter", "x509")),
        (PROXY, "CN=someone else,O=IHEP,C=CN", (None, "anonymous")),  # unknown DN: nobody
        (PROXY, "", (None, "anonymous")),
        (OUTSIDER, dn(Role.ADMIN), (None, "anonymous")),  # forged: ignored entirely
        (("10.0.1.5", 5), dn(Role.ADMIN), (None, "anonymous")),  # just outside 10.0.0.0/24
        (("testclient", 5), dn(Role.ADMIN), (None, "anonymous")),  # not an address
    ],
)
def test_a_dn_counts_only_from_a_trusted_proxy(
    shared: Site, peer: tuple[str, int], header: str, expected: tuple[str | None, str]
) -> None:
    with shared.client(peer, headers={DN_HEADER: header}) as client:
        me = whoami(client)
    assert (me["role"], me["via"]) == expected
    if expected[0] is not None:
        assert me["name"] == header and me["csrf_token"]


@pytest.mark.parametrize(
    "spelling",
    [
        "/C=CN/O=IHEP/OU=JUNO/CN=expert person",  # OpenSSL's one-line form
        "cn = expert person, ou=JUNO, O=IHEP, C=CN",  # spaces, lower-case names
    ],
)
def test_a_dn_matches_however_the_proxy_spells_it(shared: Site, spelling: str) -> None:
    with shared.client(PROXY, headers={DN_HEADER: spelling}) as client:
        me = whoami(client)
    assert (me["name"], me["role"], me["via"]) == (dn(Role.EXPERT), "expert", "x509")


@pytest.mark.parametrize("garbage", ["nonsense", "CN=", "/C=CN/garbage", ","])
def test_a_header_that_is_no_dn_is_anonymous(shared: Site, garbage: str) -> None:
    with shared.client(PROXY, headers={DN_HEADER: garbage}) as client:
        assert whoami(client)["via"] == "anonymous"


def test_no_trusted_proxy_no_certificates(tmp_path: Path, db: Database) -> None:
    site = build_site(tmp_path, db, trusted_proxies=[])
    with site.client(PROXY, headers={DN_HEADER: dn(Role.ADMIN)}) as client:
        assert whoami(client)["name"] is None


# --- read access and redirects -------------------------------------------------------------


def _with_probes(client: TestClient) -> TestClient:
    app = client.app

    @app.get("/api/v1/probe", dependencies=[Depends(require_read)])  # type: ignore[attr-defined]
    def api_probe() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/probe", dependencies=[Depends(require_read)])  # type: ignore[attr-defined]
    def page_probe() -> dict[str, bool]:
        return {"ok": True}

    return client


def test_read_routes_are_public_by_default(client: TestClient) -> None:
    _with_probes(client)
    assert client.get("/api/v1/probe").status_code == 200
    assert client.get("/probe", headers={"Accept": "text/html"}).status_code == 200


def test_without_public_read_pages_send_to_login_and_the_api_says_401(
    tmp_path: Path, db: Database
) -> None:
    site = build_site(tmp_path, db, public_read=False)
    with site.client() as client:
        _with_probes(client)
        assert client.get("/api/v1/probe").status_code == 401
        page = client.get("/probe?a=1&b=2", headers={"Accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=/probe%3Fa%3D1%26b%3D2"
        assert client.get("/probe").status_code == 401  # not a browser: no redirect
        assert log_in(client, "viewer", next="/probe?a=1&b=2").headers["location"] == (
            "/probe?a=1&b=2"
        )
        assert client.get("/api/v1/probe").status_code == 200
    with site.client(headers={"Authorization": f"Bearer {site.tokens[Role.VIEWER]}"}) as script:
        _with_probes(script)
        assert script.get("/api/v1/probe").status_code == 200


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/runs/5?tab=jobs", "/runs/5?tab=jobs"),
        ("/", "/"),
        ("//evil.example/x", None),
        ("/\\evil.example", None),
        ("https://evil.example/", None),
        ("javascript:alert(1)", None),
        ("runs", None),
        ("/runs\r\nSet-Cookie: x=1", None),
        ("", None),
        (None, None),
    ],
)
def test_local_path(target: str | None, expected: str | None) -> None:
    assert local_path(target) == expected


@pytest.mark.parametrize("next", ["//evil.example/x", "https://evil.example/", "/\\evil.example"])
def test_login_never_redirects_off_site(client: TestClient, next: str) -> None:
    response = log_in(client, "viewer", next=next)
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_require_role_checks_the_role_and_a_browsers_csrf_token(client: TestClient) -> None:
    """Other features' mutating routes use require_role directly."""
    app = client.app

    @app.post("/api/v1/probe-change")  # type: ignore[attr-defined]
    def change(principal: Principal = Depends(require_role(Role.EXPERT))) -> dict[str, str]:
        return {"by": principal.name}

    assert client.post("/api/v1/probe-change").status_code == 401
    assert log_in(client, "expert").status_code == 303
    csrf = whoami(client)["csrf_token"]
    assert csrf
    assert client.post("/api/v1/probe-change").status_code == 403
    assert client.post("/api/v1/probe-change", headers={"X-CSRF-Token": "x"}).status_code == 403
    ok = client.post("/api/v1/probe-change", headers={"X-CSRF-Token": csrf})
    assert ok.json() == {"by": "expert"}
    assert client.post("/api/v1/probe-change", data={"csrf_token": csrf}).status_code == 200
    client.cookies.clear()
    assert log_in(client, "shifter").status_code == 303
    shifter_csrf = whoami(client)["csrf_token"]
    headers = {"X-CSRF-Token": shifter_csrf or ""}
    assert client.post("/api/v1/probe-change", headers=headers).status_code == 403


@pytest.mark.parametrize(
    ("web", "message"),
    [
        ({"trusted_proxies": ["10.0.0.0/33"]}, "[web] trusted_proxies"),
        ({"trusted_proxies": ["proxy.example"]}, "[web] trusted_proxies"),
        ({"dn_roles": {"CN=x": "boss"}}, "[web] dn_roles: unknown roles boss"),
        ({"dn_roles": {"Jane Shifter": "shifter"}}, "[web] dn_roles: not a DN attribute"),
    ],
)
def test_bad_security_settings_stop_the_app_at_once(
    tmp_path: Path, db: Database, web: dict[str, object], message: str
) -> None:
    site = build_site(tmp_path, db, **web)
    with pytest.raises(ValueError, match=re.escape(message)):
        site.client()


def test_the_audit_log_names_the_client_behind_the_proxy(site: Site) -> None:
    headers = {DN_HEADER: dn(Role.SHIFTER), "X-Forwarded-For": "203.0.113.1, 198.51.100.20"}
    with site.client(PROXY, headers=headers) as client:
        assert client.post("/api/v1/tasks/1/retry").status_code == 403  # no CSRF token
    entry = audit_entries(site.db)[-1]
    assert (entry.remote, entry.detail["client"]) == (PROXY[0], "198.51.100.20")
    with site.client(OUTSIDER, headers={"X-Forwarded-For": "203.0.113.1"}) as client:
        assert client.post("/api/v1/tasks/1/retry").status_code == 401
    entry = audit_entries(site.db)[-1]
    assert entry.remote == OUTSIDER[0] and "client" not in entry.detail


@pytest.mark.parametrize("path", ["/", "/login", "/api/v1/whoami", "/api/v1/nothing"])
def test_no_other_site_may_frame_the_pages(shared: Site, path: str) -> None:
    with shared.client() as client:
        headers = client.get(path, headers={"Accept": "text/html"}).headers
    assert headers["x-frame-options"] == "DENY"
    assert headers["content-security-policy"] == "frame-ancestors 'none'"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
