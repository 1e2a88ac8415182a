"""``runwatch web user|token`` on a deployment's database: what they store, what they
print, and the audit entry each change leaves."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from runwatch.db import Database
from runwatch.web import accounts
from runwatch.web.models import ApiToken, Role, WebUser
from tests.web.authkit import audit_entries

runner = CliRunner()


def invoke(app: typer.Typer, *args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, ["web", *args], input=input, env={"COLUMNS": "250"})
    return result.exit_code, result.output


def user(db: Database, name: str) -> WebUser:
    with db.session() as session:
        row = session.scalar(sa.select(WebUser).where(WebUser.name == name))
        assert row is not None
        return row


def test_users(app: typer.Typer, deployment: Path, db: Database) -> None:
    code, out = invoke(
        app, "user", "add", "li", "--role", "shifter", "--password-stdin", input="a long secret\n"
    )
    assert code == 0, out
    stored = user(db, "li")
    assert stored.role is Role.SHIFTER and not stored.disabled
    assert accounts.password_matches("a long secret", stored.password_hash)

    code, out = invoke(
        app, "user", "add", "wang", "--role", "expert", input="pass-word-1\npass-word-1\n"
    )
    assert code == 0, out
    assert accounts.password_matches("pass-word-1", user(db, "wang").password_hash)
    code, out = invoke(
        app,
        "user",
        "add",
        "zhao",
        "--role",
        "viewer",
        input="pass-word-1\nother-word\npass-word-1\npass-word-1\n",
    )
    assert code == 0 and "do not match" in out, out

    code, out = invoke(
        app, "user", "add", "li", "--role", "admin", "--password-stdin", input="another secret\n"
    )
    assert code == 1 and "user 'li' exists already" in out
    code, out = invoke(
        app, "user", "add", "short", "--role", "admin", "--password-stdin", input="abc\n"
    )
    assert code == 1 and "at least 8 characters" in out
    code, out = invoke(
        app, "user", "add", "x", "--role", "boss", "--password-stdin", input="abcdefgh\n"
    )
    assert code == 2

    assert invoke(app, "user", "role", "li", "expert")[0] == 0
    assert user(db, "li").role is Role.EXPERT
    assert invoke(app, "user", "disable", "wang")[0] == 0
    assert user(db, "wang").disabled
    code, out = invoke(app, "user", "disable", "nobody")
    assert code == 1 and "no user 'nobody'" in out

    code, out = invoke(app, "user", "list")
    assert code == 0
    cells = [line.replace("│", " ").split() for line in out.splitlines()]
    lines = {row[0]: row[1:3] for row in cells if len(row) > 3}
    assert lines["li"] == ["expert", "active"]
    assert lines["wang"] == ["expert", "disabled"]
    assert "secret" not in out and "scrypt" not in out

    log = [(e.action, e.target, e.outcome, e.via) for e in audit_entries(db)]
    assert log == [
        ("user.add", "user:li", "done", "cli"),
        ("user.add", "user:wang", "done", "cli"),
        ("user.add", "user:zhao", "done", "cli"),
        ("user.add", "user:li", "failed", "cli"),
        ("user.add", "user:short", "failed", "cli"),
        ("user.role", "user:li", "done", "cli"),
        ("user.disable", "user:wang", "done", "cli"),
        ("user.disable", "user:nobody", "failed", "cli"),
    ]
    assert all(e.actor for e in audit_entries(db))


def test_tokens(app: typer.Typer, deployment: Path, db: Database) -> None:
    code, out = invoke(app, "token", "add", "shift-bot", "--role", "shifter", "--owner", "li")
    assert code == 0, out
    token = next(line for line in out.splitlines() if line.startswith(accounts.TOKEN_PREFIX))
    with db.session() as session:
        found = accounts.find_token(session, token)
        assert found is not None and (found.role, found.owner) == (Role.SHIFTER, "li")
        assert session.scalar(sa.select(ApiToken.token_sha256)) == accounts.token_digest(token)

    code, out = invoke(app, "token", "add", "shift-bot", "--role", "admin", "--owner", "li")
    assert code == 1 and "exists already" in out

    code, out = invoke(app, "token", "list")
    assert code == 0 and "shift-bot" in out and "active" in out and token not in out

    assert invoke(app, "token", "revoke", "shift-bot")[0] == 0
    with db.session() as session:
        assert accounts.find_token(session, token) is None
    code, out = invoke(app, "token", "list")
    assert "revoked" in out
    assert invoke(app, "token", "revoke", "nothing")[0] == 1

    log = [(e.action, e.outcome) for e in audit_entries(db)]
    assert log == [
        ("token.add", "done"),
        ("token.add", "failed"),
        ("token.revoke", "done"),
        ("token.revoke", "failed"),
    ]
    assert token not in str([e.detail for e in audit_entries(db)])
