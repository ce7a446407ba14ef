"""`restitution users …`: staff accounts (operator commands, audited as the operator).

    users add NAME --role caseworker|finance|admin|auditor [--totp] [--json]
    users disable NAME · users enable NAME · users reset-password NAME · users list [--json]

The new password comes from RESTITUTION_PASSWORD or standard input (asked twice at a
terminal). Exit codes: 0 done; 2 bad input (short password, bad role or name, unknown user);
1 a conflict (the name is taken).
"""

from __future__ import annotations

import enum
import os
import sys

import typer

from cli.common import (
    EXIT_USAGE,
    JSON_OPTION,
    domain_errors,
    fail,
    in_session,
    print_json,
    read_password,
)


class RoleChoice(str, enum.Enum):
    caseworker = "caseworker"
    finance = "finance"
    admin = "admin"
    auditor = "auditor"


users = typer.Typer(help="Staff accounts: add, disable, enable, reset a password, list.",
                    no_args_is_help=True)


def _new_password(username: str) -> str:
    if not os.environ.get("RESTITUTION_PASSWORD") and sys.stdin is not None and sys.stdin.isatty():
        first = read_password(f"New password for {username}: ")
        again = read_password("Again: ")
        if first != again:
            fail("the two passwords differ", EXIT_USAGE)
        return first
    return read_password()


@users.command("add")
def add(
    name: str = typer.Argument(..., help="user name: lower-case letters, digits, . _ -"),
    role: RoleChoice = typer.Option(..., "--role", help="caseworker, finance, admin or auditor"),
    totp: bool = typer.Option(False, "--totp", help="enrol a TOTP second factor; prints its secret"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a staff account."""
    from claims.audit import Actor
    from claims.db import session_scope
    from claims.staff import validate_password, validate_role, validate_username

    with domain_errors():
        validate_username(name)
        validate_role(role.value)
        password = _new_password(name)
        validate_password(password)
        from claims.staff import create_user

        with session_scope() as s:
            new = create_user(s, name, role.value, password, totp, actor=Actor.operator())
    if as_json:
        out = {"username": name, "role": role.value, "totp": totp}
        if totp:
            out.update(totp_secret=new.totp_secret, totp_uri=new.totp_uri)
        print_json(out)
        return
    typer.echo(f"created {role.value} {name}")
    if totp:
        typer.echo("TOTP enrolment (add it to the authenticator app now; it is not shown again):")
        typer.echo(f"  secret: {new.totp_secret}")
        typer.echo(f"  uri:    {new.totp_uri}")


@users.command("disable")
def disable(name: str = typer.Argument(...)) -> None:
    """Disable an account: no sign-in, and its tokens stop working at once."""
    from claims.audit import Actor
    from claims.staff import disable_user

    in_session(lambda s: disable_user(s, name, actor=Actor.operator()))
    typer.echo(f"disabled {name}")


@users.command("enable")
def enable(name: str = typer.Argument(...)) -> None:
    """Enable an account again; also lifts a lock-out after repeated failed sign-ins."""
    from claims.audit import Actor
    from claims.staff import enable_user

    in_session(lambda s: enable_user(s, name, actor=Actor.operator()))
    typer.echo(f"enabled {name}")


@users.command("reset-password")
def reset_password_cmd(name: str = typer.Argument(...)) -> None:
    """Set a new password; earlier tokens stop working and a lock-out is lifted."""
    from claims.audit import Actor
    from claims.db import session_scope
    from claims.staff import get_user, reset_password, validate_password

    with domain_errors():
        with session_scope(write=False) as s:
            get_user(s, name)  # unknown user: say so before asking for a password
        password = _new_password(name)
        validate_password(password)
        with session_scope() as s:
            reset_password(s, name, password, actor=Actor.operator())
    typer.echo(f"password reset for {name}")


@users.command("list")
def list_cmd(as_json: bool = JSON_OPTION) -> None:
    """Staff accounts with role and state."""
    from claims.db import session_scope
    from claims.staff import list_users

    with session_scope(write=False) as s:
        rows = list_users(s)
    if as_json:
        print_json({"users": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("user", "role", "state", "totp", "failed sign-ins", "created")
    for r in rows:
        state = ("disabled" if r["disabled"] else "locked" if r["locked"]
                 else "throttled" if r["throttled"] else "active")
        table.add_row(r["username"], r["role"], state, "yes" if r["totp"] else "no",
                      str(r["failed_logins"]), r["created_at"][:19])
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(users, name="users")
