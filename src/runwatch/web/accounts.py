"""Local accounts, API tokens and the audit log: the service layer under the web's
security and ``runwatch web user|token``.

Passwords are stored as salted scrypt hashes whose parameters travel in the hash string
(``scrypt$n=32768,r=8,p=1$<salt>$<hash>``), so the cost can be raised later without
invalidating existing accounts. Tokens are stored as their SHA-256 only: a token is 256
random bits, so a fast hash suffices (nobody can guess one to test against it), and the
token itself is shown once, when it is made.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from runwatch.web.models import ApiToken, AuditEntry, Role, WebUser

SCRYPT_N = 2**15  # about 50-100 ms and 32 MiB a hash: dear for a guesser, cheap for a login
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSWORD = 8
TOKEN_PREFIX = "rw_"
USED_EVERY = dt.timedelta(minutes=1)  # last_used_at is written at most this often


class AccountError(ValueError):
    """A request about accounts or tokens that cannot be carried out, with the reason."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: 128*n*r bytes are needed; the default cap (32 MiB) is exactly that at n=2**15.
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 2**20, dklen=32
    )


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """A salted scrypt hash of ``password``, parameters included (``n`` lower only in tests)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, SCRYPT_R, SCRYPT_P)
    return f"scrypt$n={n},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def password_matches(password: str, stored: str) -> bool:
    """Whether ``password`` hashes to ``stored`` (compared in constant time)."""
    try:
        scheme, params, salt, digest = stored.split("$")
        values = dict(item.split("=") for item in params.split(","))
        n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
        expected = base64.b64decode(digest)
        computed = _scrypt(password, base64.b64decode(salt), n, r, p)
    except (ValueError, KeyError):
        return False
    return scheme == "scrypt" and hmac.compare_digest(computed, expected)


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(16))


def check_password(session: Session, name: str, password: str, now: dt.datetime) -> WebUser | None:
    """The enabled account ``name`` if ``password`` is its password (its last_login_at set),
    else None. An unknown or disabled name costs the same hash as a known one, so the time
    taken does not tell which part was wrong."""
    user = session.scalar(sa.select(WebUser).where(WebUser.name == name))
    stored = user.password_hash if user is not None else _dummy_hash()
    if not password_matches(password, stored) or user is None or user.disabled:
        return None
    user.last_login_at = now
    return user


def active_user(session: Session, name: str) -> WebUser | None:
    """The account ``name`` unless it is missing or disabled."""
    user = session.scalar(sa.select(WebUser).where(WebUser.name == name))
    return None if user is None or user.disabled else user


def _user(session: Session, name: str) -> WebUser:
    user = session.scalar(sa.select(WebUser).where(WebUser.name == name))
    if user is None:
        raise AccountError(f"no user {name!r}")
    return user


def add_user(session: Session, name: str, password: str, role: Role, now: dt.datetime) -> WebUser:
    """A new local account."""
    if not name.strip() or name != name.strip():
        raise AccountError("a user name must be non-empty, without surrounding spaces")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if session.scalar(sa.select(WebUser.id).where(WebUser.name == name)) is not None:
        raise AccountError(f"user {name!r} exists already")
    user = WebUser(name=name, password_hash=hash_password(password), role=role, created_at=now)
    session.add(user)
    session.flush()
    return user


def set_role(session: Session, name: str, role: Role) -> WebUser:
    user = _user(session, name)
    user.role = role
    return user


def disable_user(session: Session, name: str) -> WebUser:
    """Disable ``name``: its logins are refused and its open sessions end at once."""
    user = _user(session, name)
    user.disabled = True
    return user


def list_users(session: Session) -> list[WebUser]:
    return list(session.scalars(sa.select(WebUser).order_by(WebUser.name)))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_token(
    session: Session, name: str, role: Role, owner: str, now: dt.datetime
) -> tuple[ApiToken, str]:
    """A new API token and the token itself (shown once: only its SHA-256 is stored)."""
    if not name.strip() or not owner.strip():
        raise AccountError("a token needs a name and an owner")
    if session.scalar(sa.select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise AccountError(f"token {name!r} exists already")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name, token_sha256=token_digest(token), role=role, owner=owner, created_at=now
    )
    session.add(row)
    session.flush()
    return row, token


def revoke_token(session: Session, name: str, now: dt.datetime) -> ApiToken:
    row = session.scalar(sa.select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise AccountError(f"no token {name!r}")
    if row.revoked_at is None:
        row.revoked_at = now
    return row


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(sa.select(ApiToken).order_by(ApiToken.name)))


def find_token(session: Session, token: str) -> ApiToken | None:
    """The unrevoked token ``token``, or None. Looked up by digest: comparing digests in
    SQL leaks nothing useful, since timing a digest match says nothing about the token."""
    row = session.scalar(sa.select(ApiToken).where(ApiToken.token_sha256 == token_digest(token)))
    return None if row is None or row.revoked_at is not None else row


def mark_used(session: Session, token_id: int, now: dt.datetime) -> None:
    """Record that a token was used, unless that was recorded within the last minute."""
    session.execute(
        sa.update(ApiToken)
        .where(
            ApiToken.id == token_id,
            sa.or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - USED_EVERY),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )


def logged_out_since(session: Session, name: str, issued: dt.datetime) -> bool:
    """Whether ``name`` logged out after ``issued`` (which ends the sessions issued before)."""
    query = sa.select(AuditEntry.id).where(
        AuditEntry.action == "logout",
        AuditEntry.outcome == "done",
        AuditEntry.actor == name,
        AuditEntry.at > issued,
    )
    return session.scalar(query.limit(1)) is not None


def audit(
    session: Session,
    *,
    actor: str,
    role: str | None,
    via: str,
    action: str,
    target: str,
    outcome: str,
    remote: str | None = None,
    detail: dict[str, Any] | None = None,
    now: dt.datetime,
) -> AuditEntry:
    """Write one audit entry: ``outcome`` is done, refused (not allowed) or failed."""
    entry = AuditEntry(
        at=now,
        actor=actor[:255],
        role=role,
        via=via,
        action=action,
        target=target[:255],
        outcome=outcome,
        remote=remote[:64] if remote else None,
        detail=detail or {},
    )
    session.add(entry)
    session.flush()
    return entry


def read_audit(
    session: Session,
    *,
    limit: int = 100,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
) -> list[AuditEntry]:
    """The newest audit entries first, optionally only one actor's, action's or outcome's."""
    query = sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if outcome is not None:
        query = query.where(AuditEntry.outcome == outcome)
    return list(session.scalars(query))


def audit_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "role": entry.role,
        "via": entry.via,
        "action": entry.action,
        "target": entry.target,
        "outcome": entry.outcome,
        "remote": entry.remote,
        "detail": entry.detail,
    }
