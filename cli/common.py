"""What every command shares: exit codes, JSON output, error mapping, ``--as`` sign-in.

Exit codes (docs/operations.md): 0 success; 1 a check failed or some rows were refused; 2 bad input
or usage (naming the field or line); 3 authentication or authorization refused.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3

#: The ``--json`` option every command that prints a result takes.
JSON_OPTION = typer.Option(False, "--json", help="print one JSON object")


def print_json(obj: Any) -> None:
    """Exactly one compact JSON object as the last line of stdout."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def err(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err(f"error: {message}")
    raise typer.Exit(code)


def exit_code_for(exc: Exception) -> int:
    from claims.errors import (
        AuthFailed, Conflict, DomainError, FourEyes, Forbidden, InvalidInput,
        LedgerImportError, NotFound, TooManyAttempts,
    )

    if isinstance(exc, (AuthFailed, Forbidden, FourEyes, TooManyAttempts)):
        return EXIT_AUTH
    if isinstance(exc, (InvalidInput, LedgerImportError, NotFound)):
        return EXIT_USAGE
    if isinstance(exc, Conflict):
        return EXIT_FAILED
    if isinstance(exc, DomainError):
        return EXIT_USAGE if exc.status in (400, 404, 422) else EXIT_FAILED
    return EXIT_FAILED


@contextmanager
def domain_errors() -> Iterator[None]:
    """Turn a refused rule into its message on stderr and the contract's exit code."""
    from claims.errors import DomainError, InvalidInput, LedgerImportError

    try:
        yield
    except LedgerImportError as exc:
        for line in exc.lines:
            err(line)
        raise typer.Exit(EXIT_USAGE)
    except InvalidInput as exc:
        for e in exc.errors:
            err(f"{e['field']}: {e['message']}")
        raise typer.Exit(EXIT_USAGE)
    except DomainError as exc:
        fail(exc.detail, exit_code_for(exc))


def in_session(work: Callable[[Any], Any], *, write: bool = True) -> Any:
    """``work(session)`` in one transaction (a read-only one unless ``write``); a refused
    rule ends the command with its message and exit code (:func:`domain_errors`)."""
    from claims.db import session_scope

    with domain_errors():
        with session_scope(write=write) as s:
            return work(s)


def read_password(prompt: str = "Password: ") -> str:
    """RESTITUTION_PASSWORD, else standard input (a prompt when it is a terminal)."""
    pw = os.environ.get("RESTITUTION_PASSWORD")
    if pw:
        return pw
    if sys.stdin is None:
        fail("no password: set RESTITUTION_PASSWORD or pipe it on standard input")
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt)
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        fail("no password: set RESTITUTION_PASSWORD or pipe it on standard input")
    return line


def sign_in_as(username: str, *roles: str):
    """Authenticate ``--as`` a staff member (password from the environment or stdin) and
    check the role; returns an ``Actor``. Refusals exit 3."""
    from claims.audit import Actor
    from claims.db import session_scope
    from claims.errors import DomainError
    from claims.staff import authenticate

    password = read_password()
    totp = os.environ.get("RESTITUTION_TOTP")
    try:
        with session_scope() as s:
            user = authenticate(s, username, password, totp=totp)
    except DomainError as exc:
        fail(exc.detail, EXIT_AUTH)
    if roles and user.role not in roles:
        fail(f"{username} is {user.role}; this needs {' or '.join(roles)}", EXIT_AUTH)
    return Actor(user.username, user.role, user.id)
