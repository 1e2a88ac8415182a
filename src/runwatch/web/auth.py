"""Who is asking: the principal behind a request, and the role checks every route uses.

The interface the pages and the API code against:

- ``current_principal(request)``: the ``Principal`` making the request, or None
  (anonymous);
- ``require_read``: a dependency for every read-only page and API route; lets anyone
  through when ``[web] public_read`` is true, else only a logged-in principal (401 for
  the API, a redirect to the login page for pages);
- ``require_role(role)``: a dependency factory for mutating routes (401 anonymous, 403
  below ``role`` or, for a browser's POST, without the CSRF token);
- ``csrf_token(request)``: the token a page puts in its forms (``csrf_field`` in
  templates).

A principal is proved one of three ways, tried in this order:

1. ``Authorization: Bearer <token>``: an API token (``runwatch web token add``). A Bearer
   header that names no valid token makes the request anonymous; it never falls back to a
   cookie, so a script always acts as its token.
2. The client-certificate DN in ``[web] dn_header``, believed only when the request's
   direct peer is in ``[web] trusted_proxies`` (the TLS proxy that verified the
   certificate); from anywhere else the header is ignored. A DN not in ``[web] dn_roles``
   is nobody: a CA vouches for who someone is, not for what they may do here.
3. The session cookie set by the login page: HMAC-signed, holding the user, role, issue
   and expiry times and the session's CSRF token. The account is looked up on every
   request, so disabling it or changing its role takes effect at once; and a logout
   (found in the audit log) ends every session of that user issued before it, so a copy
   of the cookie is worthless after logging out.

CSRF: browsers send cookies and client certificates by themselves, so a POST from a
session or a certificate must carry the token (form field ``csrf_token`` or header
``X-CSRF-Token``); Bearer tokens are exempt, since a browser never adds that header on
its own and, without CORS, no other site's script may.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runwatch.db import utcnow
from runwatch.web import accounts
from runwatch.web.dn import DNError, canonical_dn
from runwatch.web.models import Role
from runwatch.web.state import app_db, app_settings

SESSION_COOKIE = "runwatch_session"
LOGIN_CSRF_COOKIE = "runwatch_login_csrf"  # the login form's token, before any session
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_UNSET = object()


@dataclass(frozen=True)
class Principal:
    """Someone authenticated: a name, a role, and how they proved it."""

    name: str
    role: Role
    via: str  # "session", "token" or "x509"
    csrf: str = ""  # the session's CSRF token ("" for tokens; derived for x509)


def _key(request: Request) -> bytes:
    key: bytes = request.app.state.session_key
    return key


def install_auth(app: FastAPI) -> None:
    """Give ``app`` its signing key and turn a page's 401 into a redirect to the login page.

    An empty ``[web] session_secret`` gets a random key for this process: logins then end
    when the server restarts, which is safe, only inconvenient.
    """
    web = app.state.settings.web
    # A mistyped proxy or role is refused when the server starts, not on some request.
    try:
        _networks(tuple(web.trusted_proxies))
    except ValueError as exc:
        raise ValueError(f"[web] trusted_proxies: {exc}") from None
    if unknown := sorted(set(web.dn_roles.values()) - {role.value for role in Role}):
        raise ValueError(f"[web] dn_roles: unknown roles {', '.join(unknown)}")
    try:
        dn_roles(web.dn_roles)
    except DNError as exc:
        raise ValueError(f"[web] dn_roles: {exc}") from exc
    secret = web.session_secret or secrets.token_urlsafe(32)
    app.state.session_key = hashlib.sha256(b"runwatch-web-session\0" + secret.encode()).digest()
    app.add_exception_handler(StarletteHTTPException, _login_redirect)
    app.add_middleware(SecurityHeaders)


class SecurityHeaders:
    """Headers on every response: no framing by other sites (a page with one-click action
    buttons must not be overlaid by another site's page: clickjacking), no content-type
    guessing, and the Referer (which the action forms return to) kept to this site.

    Plain ASGI rather than ``BaseHTTPMiddleware``: it touches only the response start,
    costs next to nothing, and leaves streamed responses (server-sent events) streaming.
    """

    HEADERS = (
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", b"frame-ancestors 'none'"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.HEADERS if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _login_redirect(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 401 and wants_html(request):
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":  # a refused POST returns to the page it came from
            back = referring_page(request, "/")
        return RedirectResponse(f"/login?next={quote(back)}", status_code=303)
    return await http_exception_handler(request, exc)


def wants_html(request: Request) -> bool:
    """A browser asking for a page (the JSON API under /api/ always answers JSON)."""
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get(
        "accept", ""
    )


# --- signed values -----------------------------------------------------------------------


def sign(key: bytes, payload: dict[str, Any]) -> str:
    """``payload`` as compact JSON, base64url, then a dot and its HMAC-SHA256."""
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return (body + b"." + base64.urlsafe_b64encode(mac)).decode().replace("=", "")


def unsign(key: bytes, value: str) -> dict[str, Any] | None:
    """The payload of a value made by ``sign`` with ``key``, or None if it was altered."""
    body, _, mac = value.encode().partition(b".")
    try:
        given = base64.urlsafe_b64decode(mac + b"=" * (-len(mac) % 4))
        expected = hmac.new(key, body + b"=" * (-len(body) % 4), hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            return None
        payload = json.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
    except (ValueError, TypeError):
        return None
    return payload if isinstance(payload, dict) else None


# --- sessions ----------------------------------------------------------------------------


def start_session(request: Request, response: Response, name: str, role: Role) -> None:
    """Log ``name`` in: set the signed session cookie (HttpOnly, SameSite=Lax, Secure per
    ``[web] cookie_secure``) with a fresh CSRF token, and drop the login form's token."""
    web = app_settings(request).web
    seconds = int(web.session_hours * 3600)
    now = time.time()
    payload = {
        "user": name,
        "role": role.value,
        "iat": now,
        "exp": int(now) + seconds,
        "csrf": secrets.token_urlsafe(24),
    }
    set_cookie(request, response, SESSION_COOKIE, sign(_key(request), payload), seconds)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


def set_cookie(request: Request, response: Response, name: str, value: str, seconds: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=seconds,
        path="/",
        httponly=True,
        samesite="lax",
        secure=app_settings(request).web.cookie_secure,
    )


def _session_payload(request: Request) -> dict[str, Any] | None:
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    payload = unsign(_key(request), value)
    if payload is None or not isinstance(payload.get("exp"), int) or payload["exp"] <= time.time():
        return None
    return payload


def _session_principal(request: Request) -> Principal | None:
    payload = _session_payload(request)
    if payload is None or not isinstance(payload.get("user"), str):
        return None
    issued = dt.datetime.fromtimestamp(float(payload.get("iat", 0)), dt.UTC)
    with app_db(request).read_session() as session:
        user = accounts.active_user(session, payload["user"])
        if user is None or accounts.logged_out_since(session, user.name, issued):
            return None
        return Principal(user.name, user.role, "session", str(payload.get("csrf", "")))


# --- API tokens --------------------------------------------------------------------------


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _token_principal(request: Request, token: str) -> Principal | None:
    db = app_db(request)
    with db.read_session() as session:
        row = accounts.find_token(session, token)
        if row is None:
            return None
        principal = Principal(row.name, row.role, "token")
        now = utcnow()
        stale = row.last_used_at is None or row.last_used_at < now - accounts.USED_EVERY
        token_id = row.id
    if stale:  # a write only once a minute per token, not on every request
        with db.session() as session:
            accounts.mark_used(session, token_id, now)
    return principal


# --- client certificates through a trusted proxy -----------------------------------------


@lru_cache(maxsize=16)
def _networks(
    proxies: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies)


def peer_address(request: Request) -> str | None:
    """The direct peer's address (the proxy's, behind one), never a forwarded header."""
    return request.client.host if request.client else None


def from_trusted_proxy(request: Request) -> bool:
    peer = peer_address(request)
    proxies = tuple(app_settings(request).web.trusted_proxies)
    if peer is None or not proxies:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in _networks(proxies))


def client_address(request: Request) -> str:
    """The client's address: behind a trusted proxy, the last hop it forwarded for."""
    peer = peer_address(request) or "unknown"
    forwarded = request.headers.get("x-forwarded-for", "")
    if forwarded and from_trusted_proxy(request):
        return forwarded.split(",")[-1].strip() or peer
    return peer


def _x509_principal(request: Request, key: bytes) -> Principal | None:
    web = app_settings(request).web
    given = request.headers.get(web.dn_header, "").strip()
    if not given or not from_trusted_proxy(request):
        return None
    try:
        dn = canonical_dn(given)
    except DNError:
        return None
    role = dn_roles(web.dn_roles).get(dn)
    if role is None:
        return None
    # The browser presents the certificate by itself, like a cookie: forms need a token.
    # It is derived from the DN, so it needs no storage and no other site can compute it.
    csrf = hmac.new(key, b"x509\0" + dn.encode(), hashlib.sha256).hexdigest()
    return Principal(dn, Role(role), "x509", csrf)


def dn_roles(configured: dict[str, str]) -> dict[str, str]:
    """``[web] dn_roles`` by canonical DN (``runwatch.web.dn``): the proxy may spell a DN
    otherwise than the configuration does."""
    return _canonical_roles(tuple(sorted(configured.items())))


@lru_cache(maxsize=8)
def _canonical_roles(configured: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return {canonical_dn(dn): role for dn, role in configured}


def ignored_dn(request: Request) -> str | None:
    """A DN header sent from an address that is no trusted proxy (ignored; worth auditing)."""
    dn = request.headers.get(app_settings(request).web.dn_header)
    return dn if dn and not from_trusted_proxy(request) else None


# --- the interface -----------------------------------------------------------------------


def current_principal(request: Request) -> Principal | None:
    """The principal behind ``request``, or None (anonymous); worked out once a request."""
    cached = getattr(request.state, "principal", _UNSET)
    if cached is not _UNSET:
        return cast(Principal | None, cached)
    token = bearer_token(request)
    principal: Principal | None
    if token is not None:
        principal = _token_principal(request, token)
    else:
        principal = _x509_principal(request, _key(request)) or _session_principal(request)
    request.state.principal = principal
    return principal


def require_read(request: Request) -> Principal | None:
    """Read access: anyone when the pages are public, else a logged-in principal."""
    principal = current_principal(request)
    if principal is None and not app_settings(request).web.public_read:
        raise HTTPException(
            status_code=401, detail="log in to read", headers={"WWW-Authenticate": "Bearer"}
        )
    return principal


def refusal(
    principal: Principal | None, role: Role, csrf_given: str | None
) -> HTTPException | None:
    """Why ``principal`` may not do an action needing ``role`` (None: it may).

    ``csrf_given`` is the token the request carried (None for a safe method: no check).
    """
    if principal is None:
        return HTTPException(
            status_code=401, detail="log in first", headers={"WWW-Authenticate": "Bearer"}
        )
    if csrf_given is not None and not csrf_matches(principal, csrf_given):
        return HTTPException(status_code=403, detail="missing or wrong CSRF token")
    if not principal.role.allows(role):
        return HTTPException(status_code=403, detail=f"needs the {role.value} role")
    return None


def require_role(role: Role):  # type: ignore[no-untyped-def]
    """A dependency refusing anyone below ``role`` (401 anonymous, 403 too low), and an
    unsafe request from a browser (session, certificate) without the CSRF token."""

    async def check(request: Request) -> Principal:
        principal = await run_in_threadpool(current_principal, request)
        given = await given_csrf(request) if request.method in UNSAFE_METHODS else None
        problem = refusal(principal, role, given)
        if problem is not None:
            raise problem
        assert principal is not None
        return principal

    return check


def csrf_token(request: Request) -> str:
    """The CSRF token for forms on this page: the session's (or the certificate's); "" for
    an anonymous visitor, whose only form, the login form, has its own (``login_csrf``)."""
    principal = current_principal(request)
    return principal.csrf if principal is not None else ""


def csrf_matches(principal: Principal, given: str) -> bool:
    if principal.via == "token":
        return True
    return bool(principal.csrf) and hmac.compare_digest(given.encode(), principal.csrf.encode())


async def form_fields(request: Request) -> dict[str, str]:
    """An url-encoded form body's fields (first value of each); {} for any other body.

    Parsed here with the standard library, which spares a multipart dependency: the
    site's forms post nothing but short text fields.
    """
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return {}
    body = await request.body()
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {name: values[0] for name, values in fields.items()}


async def given_csrf(request: Request) -> str:
    """The CSRF token a request carries: header ``X-CSRF-Token``, else form field."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    return (await form_fields(request)).get(CSRF_FIELD, "")


def login_csrf(request: Request) -> str:
    """The login form's CSRF token: kept in a signed cookie of its own until login (there
    is no session yet; ``keep_login_csrf`` sets it), it stops another site from logging a
    browser in as someone else."""
    return _login_csrf_cookie(request) or secrets.token_urlsafe(24)


def keep_login_csrf(request: Request, response: Response, token: str) -> None:
    set_cookie(request, response, LOGIN_CSRF_COOKIE, sign(_key(request), {"csrf": token}), 3600)


def login_csrf_matches(request: Request, given: str) -> bool:
    expected = _login_csrf_cookie(request)
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def _login_csrf_cookie(request: Request) -> str:
    payload = unsign(_key(request), request.cookies.get(LOGIN_CSRF_COOKIE, ""))
    return str(payload.get("csrf", "")) if payload else ""


# --- redirects ---------------------------------------------------------------------------


def local_path(target: str | None) -> str | None:
    """``target`` if it is a path on this site (no scheme, host or ``//``), else None."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(c) < 32 for c in target):
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


def referring_page(request: Request, default: str) -> str:
    """The page a form was posted from (the Referer, if it is this site's), else ``default``."""
    referer = request.headers.get("referer", "")
    parts = urlsplit(referer)
    if parts.netloc and parts.netloc == request.url.netloc:
        page = local_path(parts.path + (f"?{parts.query}" if parts.query else ""))
        if page is not None:
            return page
    return default
