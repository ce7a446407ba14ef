"""`restitution cases …`: open and close cases (operator commands, audited as the operator).

    cases create CODE --name NAME [--deadline YYYY-MM-DD] [--json]
    cases close CODE [--json]

Exit codes: 0 done; 2 bad input (a bad code, name or deadline; an unknown case); 1 a conflict
(the code is taken, the case is already closed).
"""

from __future__ import annotations

import typer

from cli.common import JSON_OPTION, domain_errors, in_session, print_json

cases = typer.Typer(help="Cases: open one, stop its filings.", no_args_is_help=True)


@cases.command("create")
def create(
    code: str = typer.Argument(..., help="the case CODE: lower-case letters, digits and hyphens (2 to 64, starting with a letter or digit)"),
    name: str = typer.Option(..., "--name", help="the case's name (shown to claimants)"),
    deadline: str = typer.Option(None, "--deadline", help="last day for claims, YYYY-MM-DD (UTC)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Open a case."""
    from claims.audit import Actor
    from claims.cases import case_view, create_case
    from claims.db import session_scope

    with domain_errors():
        with session_scope() as s:
            case = create_case(s, code, name, deadline, Actor.operator())
            view = case_view(case)
    if as_json:
        print_json(view)
    else:
        until = f", claims until {view['deadline']}" if view["deadline"] else ""
        typer.echo(f"created case {view['code']}: {view['name']}{until}")


@cases.command("close")
def close(
    code: str = typer.Argument(..., help="the case CODE"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Close a case: new filings are refused (422 naming case_id)."""
    from claims.audit import Actor
    from claims.cases import case_view, close_case

    view = in_session(lambda s: case_view(close_case(s, code, Actor.operator())))
    if as_json:
        print_json(view)
    else:
        typer.echo(f"closed case {view['code']}")


def register(app: typer.Typer) -> None:
    app.add_typer(cases, name="cases")
