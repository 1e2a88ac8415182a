"""``runwatch web user|token``: local accounts and API tokens for the web site.

Whoever can run these commands can read the database already, so they ask for no web
login; each change is written to the audit log (via "cli", actor the system user) like
the web's own actions.
"""

from __future__ import annotations

import datetime as dt
import getpass
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.orm import Session

from runwatch.context import Context
from runwatch.db import utcnow
from runwatch.web import accounts
from runwatch.web.models import Role

console = Console()
web_app = typer.Typer(help="The web site's accounts and API tokens.", no_args_is_help=True)
user_app = typer.Typer(
    help="Local accounts: add, list, disable, change role.", no_args_is_help=True
)
token_app = typer.Typer(help="API tokens for scripts: add, list, revoke.", no_args_is_help=True)
web_app.add_typer(user_app, name="user")
web_app.add_typer(token_app, name="token")

ROLE_HELP = "viewer, shifter, expert or admin."


def _time(value: dt.datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "-"


def _change(
    action: str, target: str, detail: dict[str, Any], change: Callable[[Session], Any]
) -> Any:
    """Do ``change`` and audit it (failed ones too); print the reason and exit 1 on failure."""
    ctx = Context.load()
    entry: dict[str, Any] = {
        "actor": _system_user(),
        "role": None,
        "via": "cli",
        "action": action,
        "target": target,
    }
    try:
        with ctx.db.session() as session:
            result = change(session)
            accounts.audit(session, **entry, outcome="done", detail=detail, now=utcnow())
    except accounts.AccountError as exc:
        with ctx.db.session() as session:
            failed = {**detail, "reason": str(exc)}
            accounts.audit(session, **entry, outcome="failed", detail=failed, now=utcnow())
        console.print(f"[red]error: {escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    finally:
        ctx.db.dispose()
    return result


def _system_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@user_app.command("add")
def user_add(
    name: str = typer.Argument(..., help="Login name."),
    role: Role = typer.Option(..., "--role", help=ROLE_HELP),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin."
    ),
) -> None:
    """Add a local account (the password is asked twice, or read from stdin)."""
    password = _read_password(password_stdin)
    _change(
        "user.add",
        f"user:{name}",
        {"role": role.value},
        lambda s: accounts.add_user(s, name, password, role, utcnow()),
    )
    console.print(f"user {escape(name)} added ({role.value})")


@user_app.command("list")
def user_list() -> None:
    """List the local accounts."""
    ctx = Context.load()
    table = Table("name", "role", "state", "created", "last login")
    try:
        with ctx.db.read_session() as session:
            for user in accounts.list_users(session):
                state = "disabled" if user.disabled else "active"
                table.add_row(
                    escape(user.name),
                    user.role.value,
                    state,
                    _time(user.created_at),
                    _time(user.last_login_at),
                )
    finally:
        ctx.db.dispose()
    console.print(table)


@user_app.command("disable")
def user_disable(name: str = typer.Argument(..., help="Login name.")) -> None:
    """Disable an account: its logins are refused and its sessions end at once."""
    _change("user.disable", f"user:{name}", {}, lambda s: accounts.disable_user(s, name))
    console.print(f"user {escape(name)} disabled")


@user_app.command("role")
def user_role(
    name: str = typer.Argument(..., help="Login name."),
    role: Role = typer.Argument(..., help=ROLE_HELP),
) -> None:
    """Change an account's role (open sessions get the new role at once)."""
    _change(
        "user.role",
        f"user:{name}",
        {"role": role.value},
        lambda s: accounts.set_role(s, name, role),
    )
    console.print(f"user {escape(name)} is now {role.value}")


@token_app.command("add")
def token_add(
    name: str = typer.Argument(..., help="A name for the token (e.g. the script using it)."),
    role: Role = typer.Option(..., "--role", help=ROLE_HELP),
    owner: str = typer.Option(..., "--owner", help="Who answers for the token."),
) -> None:
    """Make an API token and print it, once: only its SHA-256 is kept."""
    row, token = _change(
        "token.add",
        f"token:{name}",
        {"role": role.value, "owner": owner},
        lambda s: accounts.add_token(s, name, role, owner, utcnow()),
    )
    console.print(
        f"token {escape(row.name)} ({role.value}, owner {escape(owner)}):", highlight=False
    )
    print(token)  # plain, so that scripts can capture it
    console.print("Keep it now: it cannot be shown again. Use: Authorization: Bearer <token>")


@token_app.command("list")
def token_list() -> None:
    """List the API tokens (never the tokens themselves)."""
    ctx = Context.load()
    table = Table("name", "role", "owner", "state", "created", "last used")
    try:
        with ctx.db.read_session() as session:
            for row in accounts.list_tokens(session):
                state = f"revoked {_time(row.revoked_at)}" if row.revoked_at else "active"
                table.add_row(
                    escape(row.name),
                    row.role.value,
                    escape(row.owner),
                    state,
                    _time(row.created_at),
                    _time(row.last_used_at),
                )
    finally:
        ctx.db.dispose()
    console.print(table)


@token_app.command("revoke")
def token_revoke(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke an API token: requests bearing it are refused from now on."""
    _change("token.revoke", f"token:{name}", {}, lambda s: accounts.revoke_token(s, name, utcnow()))
    console.print(f"token {escape(name)} revoked")
