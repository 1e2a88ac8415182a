"""Who is asking: the principal behind a request, and the role checks every route uses.

The interface the pages and the API code against (its implementation -- sessions, local
accounts, API tokens, client-certificate DNs from trusted proxies, CSRF, the audit log --
is filled in behind it):

- ``current_principal(request)``: the ``Principal`` making the request, or None
  (anonymous);
- ``require_read``: a dependency for every read-only page and API route; lets anyone
  through when ``[web] public_read`` is true, else only a logged-in principal (401 for
  the API, a redirect to the login page for pages);
- ``require_role(role)``: a dependency factory for mutating routes (403 below ``role``);
- ``csrf_token(request)``: the token a page puts in its forms (``csrf_field`` in
  templates).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request

from runwatch.config import Settings
from runwatch.web.models import Role


@dataclass(frozen=True)
class Principal:
    """Someone authenticated: a name, a role, and how they proved it."""

    name: str
    role: Role
    via: str  # "session", "token" or "x509"


def current_principal(request: Request) -> Principal | None:
    """The principal behind ``request`` (placeholder: nobody is logged in yet)."""
    return None


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def require_read(request: Request) -> Principal | None:
    """Read access: anyone when the pages are public, else a logged-in principal."""
    principal = current_principal(request)
    if principal is None and not _settings(request).web.public_read:
        raise HTTPException(status_code=401, detail="log in to read")
    return principal


def require_role(role: Role):  # type: ignore[no-untyped-def]
    """A dependency refusing anyone below ``role`` (401 anonymous, 403 too low)."""

    def check(request: Request) -> Principal:
        principal = current_principal(request)
        if principal is None:
            raise HTTPException(status_code=401, detail="log in first")
        if not principal.role.allows(role):
            raise HTTPException(status_code=403, detail=f"needs the {role.value} role")
        return principal

    return check


def csrf_token(request: Request) -> str:
    """The CSRF token for forms on this page (placeholder until sessions exist)."""
    return ""
